# A sweep worker: `sweep worker STUDY` against the stack's PostgreSQL and MLflow server (compose and
# Kubernetes both run this image). It runs as a non-root user.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY sweep ./sweep
RUN pip install --no-cache-dir .
COPY studies ./studies
RUN useradd --uid 10001 --user-group --create-home sweep && chown sweep:sweep /app
USER 10001
ENTRYPOINT ["sweep"]
