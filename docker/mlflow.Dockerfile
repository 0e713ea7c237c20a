# The MLflow tracking server with the PostgreSQL driver baked in (never pip-installed at start).
FROM python:3.11-slim
RUN pip install --no-cache-dir mlflow==3.17.2 psycopg2-binary==2.9.13
EXPOSE 5000
