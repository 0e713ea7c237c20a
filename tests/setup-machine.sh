#!/usr/bin/env bash
# What the tests need from the machine, beside the Python packages (`pip install -e '.[test]'`):
# - PostgreSQL answering on 127.0.0.1:5432 (the PostgreSQL tests; started if installed but down);
# - Debian's docker-compose: tests/test_compose.py validates docker-compose.yml with a real parser, and
#   tests/test_compose_stack.py runs the stack with it on Debian's Docker engine (docker.io; the test
#   starts dockerd when it is not running);
# - debootstrap: tests/docker/build-bases.sh makes the stack's base images from Debian's packages
#   (no image registry here);
# - Debian's Chromium: tests/test_ui.py drives the MLflow UI with Playwright (no browser download);
# - kubectl with kustomize v5: tests/test_kubernetes.py renders deploy/kubernetes (said, not installed:
#   Debian's kubernetes-client is too old; the Kubernetes apt repository has it).
# The README's test command runs this first; .ci/run runs that command. Safe to run again: it
# installs only what is missing (apt-get, as root or through sudo).
set -euo pipefail

sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_updated=""
apt_install() {
  echo "setup-machine: installing Debian's $*" >&2
  [ -n "$apt_updated" ] || { $sudo apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  echo "setup-machine: PostgreSQL is not answering on 127.0.0.1:5432; starting it" >&2
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    $sudo pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
  for _ in $(seq 30); do pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null && break; sleep 1; done
  pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null || echo "setup-machine: PostgreSQL still not answering on" \
    "127.0.0.1:5432: the PostgreSQL tests will fail (install Debian's postgresql, or set" \
    "SWEEP_TEST_POSTGRES_URL to one that answers)" >&2
fi

if ! command -v docker-compose >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then
  apt_install docker-compose
fi

if [ ! -x /usr/sbin/dockerd ] && ! command -v dockerd >/dev/null 2>&1; then
  apt_install docker.io
fi

if [ ! -x /usr/sbin/debootstrap ] && ! command -v debootstrap >/dev/null 2>&1; then
  apt_install debootstrap
fi

if [ ! -x /usr/bin/chromium ]; then
  apt_install chromium
fi

if ! command -v kubectl >/dev/null 2>&1; then
  echo "setup-machine: kubectl is not installed: tests/test_kubernetes.py renders deploy/kubernetes with it" \
    "(kubectl 1.27 or later, from the Kubernetes apt repository)" >&2
fi
