# A sweep worker: `sweep worker STUDY` against the stack's PostgreSQL and MLflow server (compose and
# Kubernetes both run this image). It runs as a non-root user.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY sweep ./sweep
RUN pip install --no-cache-dir .
COPY studies ./studies
# ~/.cache/sweep holds models waiting for MLflow (sweep/tracking/outbox.py); made here so a volume
# mounted on it (docker-compose.yml) starts out the worker's own
RUN useradd --uid 10001 --user-group --create-home sweep && chown sweep:sweep /app \
    && mkdir -p /home/sweep/.cache/sweep && chown -R sweep:sweep /home/sweep/.cache
USER 10001
ENTRYPOINT ["sweep"]
