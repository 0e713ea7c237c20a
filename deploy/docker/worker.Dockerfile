# A sweep worker: `sweep worker STUDY` against the stack's PostgreSQL and MLflow server (compose and
# Kubernetes both run this image). It runs as a non-root user.
#
# BASE_IMAGE and WHEELHOUSE as in mlflow.Dockerfile: a local base and a folder of wheels build it
# with no image registry and no package index; the defaults build it from the public ones.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE} AS build
ARG WHEELHOUSE=deploy/docker/wheelhouse
COPY ${WHEELHOUSE} /wheelhouse
COPY pyproject.toml README.md /src/
COPY sweep /src/sweep
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
       $(ls /wheelhouse/*.whl >/dev/null 2>&1 && echo --no-index --find-links /wheelhouse) /src

FROM ${BASE_IMAGE}
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY studies ./studies
# ~/.cache/sweep holds models waiting for MLflow (sweep/tracking/outbox.py); made here so a volume
# mounted on it (docker-compose.yml) starts out the worker's own
RUN useradd --uid 10001 --user-group --create-home sweep && chown sweep:sweep /app \
    && mkdir -p /home/sweep/.cache/sweep && chown -R sweep:sweep /home/sweep/.cache
USER 10001
ENTRYPOINT ["sweep"]
