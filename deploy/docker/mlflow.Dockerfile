# The MLflow tracking server with the PostgreSQL driver baked in (never pip-installed at start).
# It runs as a non-root user; /mlartifacts belongs to it, so a fresh compose volume does too.
FROM python:3.11-slim
RUN pip install --no-cache-dir mlflow==3.17.2 psycopg2-binary==2.9.13
RUN useradd --uid 10001 --user-group --create-home mlflow && mkdir /mlartifacts && chown mlflow:mlflow /mlartifacts
USER 10001
EXPOSE 5000
