# The MLflow tracking server with the PostgreSQL driver baked in (never pip-installed at start).
# It runs as a non-root user; /mlartifacts belongs to it, so a fresh compose volume does too.
#
# BASE_IMAGE: any Debian-like image with Python 3.11 and its venv module (the default is the public
# one; tests/docker/build-bases.sh makes a local one where no image registry answers). WHEELHOUSE: a
# folder in the build context; when it holds wheels, pip installs from them alone (--no-index), so
# the build needs no network; empty (the default), from PyPI. The wheels stay in the build stage.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE} AS build
ARG WHEELHOUSE=deploy/docker/wheelhouse
COPY ${WHEELHOUSE} /wheelhouse
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
       $(ls /wheelhouse/*.whl >/dev/null 2>&1 && echo --no-index --find-links /wheelhouse) \
       mlflow==3.17.2 psycopg2-binary==2.9.13

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title=sweep-mlflow
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN useradd --uid 10001 --user-group --create-home mlflow && mkdir /mlartifacts && chown mlflow:mlflow /mlartifacts
USER 10001
EXPOSE 5000
