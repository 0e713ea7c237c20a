# A sweep worker: `sweep run STUDY` against the stack's PostgreSQL and MLflow server.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY sweep ./sweep
RUN pip install --no-cache-dir .
COPY studies ./studies
ENTRYPOINT ["sweep"]
