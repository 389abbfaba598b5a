#!/usr/bin/env bash
# The prepared accelerator suite: one command, about 8 minutes with compilation on one H200.
#   bash benchmarks/gpu_suite.sh OUT_DIR [--data-dir data/mnist] [--quick] [--budget-s 450]
# Run from the repository root. It installs nothing; on a bare machine first:
#   pip install -e . --no-deps        # jax, flax, optax present; add missing deps as wheels
#   mkdir -p data && cp -r /work/shared/datasets/mnist data/   # git-ignored MNIST copy
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
exec "$PY" benchmarks/gpu_suite.py "$@"
