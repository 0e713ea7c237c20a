# A sweep worker: `sweep worker STUDY` against the stack's PostgreSQL and MLflow server (compose and
# Kubernetes both run this image). It runs as a non-root user.
#
# BASE_IMAGE and WHEELHOUSE as in mlflow.Dockerfile: a local base and a folder of wheels build it
# with no image registry and no package index; the defaults build it from the public ones.
#
# Three stages, so that a change to sweep/ (or the README) rebuilds a small layer, not 2 GB: `deps`
# is the venv with sweep's dependencies only (pyproject.toml's; an empty package and README stand in
# for the real ones), `wheel` is sweep's own wheel, and the image is `deps`' venv with it installed.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE} AS deps
ARG WHEELHOUSE=deploy/docker/wheelhouse
COPY ${WHEELHOUSE} /wheelhouse
COPY pyproject.toml /src/
RUN mkdir /src/sweep && touch /src/sweep/__init__.py /src/README.md \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
       $(ls /wheelhouse/*.whl >/dev/null 2>&1 && echo --no-index --find-links /wheelhouse) /src \
    && /opt/venv/bin/pip uninstall --yes --disable-pip-version-check sweep

FROM deps AS wheel
COPY README.md /src/
COPY sweep /src/sweep
RUN /opt/venv/bin/pip wheel --no-cache-dir --disable-pip-version-check --no-deps --wheel-dir /dist \
       $(ls /wheelhouse/*.whl >/dev/null 2>&1 && echo --no-index --find-links /wheelhouse) /src

FROM ${BASE_IMAGE}
# the label tells this project's images from others' (tests/test_compose_stack.py prunes the ones a
# rebuild has superseded by it)
LABEL org.opencontainers.image.title=sweep-worker
COPY --from=deps /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY --from=wheel /dist /dist
RUN pip install --no-cache-dir --disable-pip-version-check --no-deps --no-index /dist/*.whl && rm -rf /dist
WORKDIR /app
COPY studies ./studies
# ~/.cache/sweep holds models waiting for MLflow (sweep/tracking/outbox.py); made here so a volume
# mounted on it (docker-compose.yml) starts out the worker's own
RUN useradd --uid 10001 --user-group --create-home sweep && chown sweep:sweep /app \
    && mkdir -p /home/sweep/.cache/sweep && chown -R sweep:sweep /home/sweep/.cache
USER 10001
ENTRYPOINT ["sweep"]
