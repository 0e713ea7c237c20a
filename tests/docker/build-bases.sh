#!/usr/bin/env bash
# What the stack's images are built from on a machine with no image registry (the README's
# "No image registry"), each made once and then reused by its tag:
#   sweep-local/python:3.11-bookworm    Debian bookworm's Python 3.11 (the Dockerfiles' BASE_IMAGE)
#   sweep-local/postgres:15-bookworm    Debian's PostgreSQL 15 behind an entrypoint that honours what
#                                       docker-compose.yml uses of the official image (POSTGRES_IMAGE)
#   deploy/docker/wheelhouse            the wheels both images install (WHEELHOUSE), from PyPI
# The bases come from Debian's mirror (debootstrap, then `docker import`); their label holds the
# hash of their recipe (the part of this script that makes them), so a changed recipe makes them
# again. The wheelhouse is made again when pyproject.toml or the MLflow image's pins change.
# Network: Debian's mirror and PyPI, on the first run only.
# Needs root (debootstrap, sudo otherwise), a running dockerd, and Python 3.11 ($PYTHON, python3).
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON_BASE=sweep-local/python:3.11-bookworm
POSTGRES_BASE=sweep-local/postgres:15-bookworm
WHEELHOUSE=deploy/docker/wheelhouse
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PYTHON=${PYTHON:-python3}
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
# the recipe of the bases: this script from rootfs_image() to the entrypoint's build (not the wheels')
hash=$(sed -n '/^rootfs_image() {/,/^# the entrypoint on top/p' tests/docker/build-bases.sh | sha256sum | cut -c1-16)
say() { echo "build-bases: $*" >&2; }

{ [ -x /usr/sbin/debootstrap ] || command -v debootstrap >/dev/null; } || { say "debootstrap is not installed (apt-get install debootstrap;" \
  "tests/setup-machine.sh does it)"; exit 1; }

current() {  # the image $1 exists and was made by this version of the script
  [ "$(docker image inspect -f '{{index .Config.Labels "sweep.local-base"}}' "$1" 2>/dev/null)" = "$hash" ]
}

# debootstrap into a fresh folder, trim what no container reads (the downloaded .debs, apt lists,
# docs, translations), then `docker import` it with the image settings in $@
rootfs_image() {
  local tag=$1 include=$2 trim=$3; shift 3
  local dir; dir=$(mktemp -d /tmp/sweep-rootfs.XXXXXX)
  say "$tag: debootstrap bookworm ($include)"
  $sudo debootstrap --variant=minbase --include="$include" bookworm "$dir" "$MIRROR" >"$dir.log" 2>&1 \
    || { tail -20 "$dir.log" >&2; say "$tag: debootstrap failed (log: $dir.log)"; exit 1; }
  $sudo sh -c "cd '$dir' && rm -rf var/cache/apt/archives/*.deb var/lib/apt/lists/* usr/share/doc/* \
    usr/share/man/* usr/share/locale/* $trim"
  $sudo tar -C "$dir" -c . | docker import --change "LABEL sweep.local-base=$hash" \
    --change "ENV LANG=C.UTF-8" "$@" - "$tag" >/dev/null
  $sudo rm -rf "$dir" "$dir.log"
  say "$tag: made ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%d MB", $1/1e6}'))"
}

if ! current "$PYTHON_BASE"; then
  # Debian's python3 where the official image has /usr/local's: `python3 -m venv` is all the
  # Dockerfiles ask of it
  rootfs_image "$PYTHON_BASE" python3,python3-venv,ca-certificates "" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' --change 'CMD ["python3"]'
fi

if ! current "$POSTGRES_BASE-rootfs"; then
  # without the cluster Debian's package makes at install (the entrypoint makes its own in PGDATA)
  # and without JIT (LLVM, 105 MB; PostgreSQL runs without it)
  rootfs_image "$POSTGRES_BASE-rootfs" postgresql-15 \
    "etc/postgresql/15 var/lib/postgresql/15 usr/lib/x86_64-linux-gnu/libLLVM* usr/lib/postgresql/15/lib/llvmjit*" \
    --change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/bin:/usr/bin:/bin'
fi
# the entrypoint on top (docker's build cache keeps it until it changes)
out=$(docker build -t "$POSTGRES_BASE" --build-arg ROOTFS="$POSTGRES_BASE-rootfs" \
  -f tests/docker/postgres.Dockerfile tests/docker 2>&1) || { echo "$out" >&2; say "$POSTGRES_BASE: docker build failed"; exit 1; }

# The wheels: the project's (pyproject.toml, dependencies pinned there) and the MLflow image's pins
pins=$(grep -oE '(mlflow|psycopg2-binary)==[0-9.]+' deploy/docker/mlflow.Dockerfile | sort -u | tr '\n' ' ')
stamp=$({ cat pyproject.toml; echo "$pins"; "$PYTHON" -c 'import sys; print(sys.version_info[:2])'; } | sha256sum | cut -c1-16)
if [ "$(cat "$WHEELHOUSE/.stamp" 2>/dev/null)" != "$stamp" ]; then
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { say "$PYTHON is not Python 3.11:" \
    "the wheels must match the images' Python (Debian bookworm's 3.11); set PYTHON"; exit 1; }
  say "$WHEELHOUSE: pip wheel (the project's dependencies and $pins)"
  find "$WHEELHOUSE" -name '*.whl' -delete
  # shellcheck disable=SC2086
  "$PYTHON" -m pip wheel -q --disable-pip-version-check --wheel-dir "$WHEELHOUSE" . $pins setuptools wheel 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
  ls "$WHEELHOUSE"/tensorflow_cpu-*.whl >/dev/null 2>&1 || { say "$WHEELHOUSE: pip wheel failed"; exit 1; }
  rm -f "$WHEELHOUSE"/sweep-*.whl  # the worker image installs the project from its own source
  echo "$stamp" > "$WHEELHOUSE/.stamp"
fi
say "ready: BASE_IMAGE=$PYTHON_BASE POSTGRES_IMAGE=$POSTGRES_BASE WHEELHOUSE=$WHEELHOUSE"
