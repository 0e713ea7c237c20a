#!/usr/bin/env bash
# One `sweep run STUDY [ARGS]` in a fresh folder (new stores), on the package of checkout CODE:
#   benchmarks/fresh_run.sh CODE STUDY.yaml [ARGS ...]
# for timing two checkouts' whole processes side by side, in turn (A B A B ...), e.g. with
# `git worktree add /tmp/before REV`. Its output goes to the folder's `log`. PYTHON: the
# interpreter with sweep's dependencies (default: python on PATH).
set -euo pipefail
code=$(cd "$1" && pwd)
study=$(realpath "$2")
work=$(mktemp -d "${TMPDIR:-/tmp}/sweep-fresh-XXXXXX")
cd "$work"
PYTHONPATH="$code" TF_CPP_MIN_LOG_LEVEL=3 exec "${PYTHON:-python}" -m sweep run "$study" "${@:3}" > log 2>&1
