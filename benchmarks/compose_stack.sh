#!/usr/bin/env bash
# The compose stack's figures on this machine: the local bases and the project's images built
# (cold with --cold: the bases' and images' tags removed and docker's build cache pruned first;
# warm otherwise), their sizes, and the time from `up -d postgres mlflow` to both healthchecks
# passing. Prints them with the CPU and the date; tests/test_compose_stack.py is what checks the stack.
# Needs what that test needs (root or sudo, dockerd running, debootstrap, docker-compose).
set -euo pipefail
cd "$(dirname "$0")/.."

compose=(docker-compose); command -v docker-compose >/dev/null || compose=(docker compose)
project=sweepbench$$
folder=$(mktemp -d); trap 'rm -rf "$folder"' EXIT
env_file=$folder/stack.env
umask 077
# the password only in the env file, never printed
{ echo "POSTGRES_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"
  echo "PYTHON_IMAGE=sweep-local/python:3.11-bookworm"; echo "POSTGRES_IMAGE=sweep-local/postgres:15-bookworm"
  echo "POSTGRES_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  echo "MLFLOW_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  echo "SWEEP_DATA_DIR=$folder"; } >"$env_file"
dc() { "${compose[@]}" --env-file "$env_file" -p "$project" -f docker-compose.yml -f tests/docker/compose.test.yml "$@"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f s", b - a }'; }

if [ "${1:-}" = --cold ]; then
  docker image rm -f sweep-mlflow:latest sweep-worker:latest sweep-local/python:3.11-bookworm \
    sweep-local/postgres:15-bookworm sweep-local/postgres:15-bookworm-rootfs >/dev/null 2>&1 || true
  docker builder prune -af >/dev/null 2>&1 || true
  docker image prune -f >/dev/null
  kind=cold
else
  kind=warm
fi

t0=$(now); tests/docker/build-bases.sh 2>/dev/null; t1=$(now)
dc build mlflow >/dev/null 2>&1; t2=$(now)
dc build worker >/dev/null 2>&1; t3=$(now)
# a commit's change to sweep/ and README.md: the worker image built again from a copy of the build
# context with both changed (a tag of its own, removed after), on the cache the build above left
changed=$folder/context
mkdir "$changed"
git ls-files -z | xargs -0 cp -a --parents -t "$changed" 2>/dev/null || true
cp -a deploy/docker/wheelhouse "$changed/deploy/docker/"
echo "# changed" >>"$changed/sweep/__init__.py"; echo >>"$changed/README.md"
tc0=$(now)
DOCKER_BUILDKIT=0 docker build -q -f "$changed/deploy/docker/worker.Dockerfile" \
  --build-arg BASE_IMAGE=sweep-local/python:3.11-bookworm -t "sweep-bench-changed:$$" "$changed" >/dev/null
tc1=$(now)
docker image rm "sweep-bench-changed:$$" >/dev/null
dc up -d postgres mlflow >/dev/null 2>&1; t4=$(now)
until [ "$(docker inspect -f '{{.State.Health.Status}}' "$(dc ps -q mlflow)")" = healthy ]; do sleep 0.5; done
t5=$(now)
dc down -v >/dev/null 2>&1

echo "compose stack, $kind build, $(date -u +%F), $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
echo "  local bases (build-bases.sh):   $(secs "$t0" "$t1")"
echo "  sweep-mlflow build:             $(secs "$t1" "$t2")"
echo "  sweep-worker build:             $(secs "$t2" "$t3")"
echo "  sweep-worker after a change:    $(secs "$tc0" "$tc1") (sweep/ and README.md changed)"
echo "  up -d postgres mlflow, healthy: $(secs "$t3" "$t5") (up returned after $(secs "$t3" "$t4"): postgres healthy)"
for image in sweep-local/python:3.11-bookworm sweep-local/postgres:15-bookworm sweep-mlflow:latest sweep-worker:latest; do
  printf '  %-34s %s\n' "$image" "$(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%d MB", $1/1e6}')"
done
