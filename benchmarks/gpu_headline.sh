#!/usr/bin/env bash
# The seeds' comparison on a GPU machine that reaches no package registry, in one device call.
#
#   benchmarks/gpu_headline.sh prepare     # here: .gpu/ = the wheels that machine lacks + MNIST
#   benchmarks/gpu_headline.sh run         # there (device `run`, carry [".gpu"]): install, measure
#
# `prepare` downloads, for that machine's Python 3.12 (x86-64), the wheels of what sweep needs
# and its image lacks: keras, optuna, optuna-integration, mlflow, sqlalchemy, pydantic and their
# dependencies less the packages the device page lists as installed (JAX with CUDA 13, NumPy,
# pandas, SciPy, scikit-learn, matplotlib, psutil, nvidia-ml-py, ...): about 38 MiB, with
# MNIST (11 MiB) under the 64 MiB a call carries. `.gpu/` is ignored by git
# (.git/info/exclude). `run` installs the wheels and sweep itself into that Python without
# touching what is there, checks the imports and the GPU, then runs benchmarks/gpu_headline.py (sweep run --workers N against the tutorial scripts), its logs and
# headline.json under $OUT. Settings: WORKERS (16), REPEATS (5), EPOCHS (25), SCRIPT_SEEDS (1).
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
prepare)
    mkdir -p .gpu/wheels
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    cp ../shared/data/mnist.npz .gpu/mnist.npz
    all=$(mktemp -d)
    pip download -q --python-version 3.12 --implementation cp --abi cp312 --only-binary=:all: \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$all" keras==3.15.1 optuna==5.0.0 optuna-integration==5.0.0 mlflow==3.17.2 \
        sqlalchemy==2.1.9 pydantic==2.13.4 typer==0.28.0 pyyaml
    python3 - "$all" .gpu/wheels <<'EOF'
import re, shutil, sys
from pathlib import Path
# installed in the device's image (/work/.library/device/KINDS.md, "Python packages already there")
THERE = set("""absl-py aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi
charset-normalizer click cloudpickle contourpy cycler filelock fonttools frozenlist fsspec grpcio
h11 h5py httpcore httpx idna jax jaxlib jinja2 joblib kiwisolver markdown markdown-it-py markupsafe
matplotlib mdurl ml-dtypes multidict numpy nvidia-ml-py opt-einsum packaging pandas pillow
pluggy propcache protobuf psutil pyarrow pygments pyparsing python-dateutil pyyaml requests rich
scikit-learn scipy setuptools shellingham six threadpoolctl tqdm typer typing-extensions urllib3
werkzeug wheel wrapt yarl zipp""".split())
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
size = 0
for whl in sorted(src.glob("*.whl")):
    if re.sub(r"[-_.]+", "-", whl.name.split("-")[0]).lower() not in THERE:
        shutil.copy(whl, dst / whl.name)
        size += whl.stat().st_size
print(f"{len(list(dst.glob('*.whl')))} wheels, {size / 2**20:.1f} MiB in .gpu/wheels")
EOF
    rm -rf "$all"
    du -sh .gpu
    ;;
run)
    out=${OUT:-/tmp/gpu-headline}
    mkdir -p "$out"
    nvidia-smi -L || true
    python3 --version
    # into that Python's own environment (the machine is given back bare): a venv with
    # --system-site-packages would see the base interpreter's packages, not that venv's JAX.
    # What is there stays: only the missing wheels, then sweep without its pins (tensorflow-cpu
    # and the PostgreSQL drivers are not needed for Keras on JAX with SQLite)
    python3 -m pip install -q --no-index --find-links .gpu/wheels keras optuna optuna-integration mlflow sqlalchemy pydantic
    python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | tail -3
    python3 -c "import jax, keras, optuna, mlflow, sweep; print('jax', jax.__version__, jax.devices()); \
print('keras', keras.__version__, 'optuna', optuna.__version__, 'mlflow', mlflow.__version__)"
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_headline.py --npz .gpu/mnist.npz --out "$out" \
        --workers "${WORKERS:-16}" --repeats "${REPEATS:-5}" --epochs "${EPOCHS:-25}" \
        --script-seeds "${SCRIPT_SEEDS:-1}"
    ;;
*)
    echo "usage: $0 prepare|run" >&2
    exit 2
    ;;
esac
