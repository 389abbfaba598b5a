#!/usr/bin/env bash
# From the project root; results and plots under experiments/partial_participation/results_<name>/
# (the CNN grid by default; pass mnist_clipping_heuristic for the earlier MLP grid, whose
# results are in results/).
set -euo pipefail
cd "$(dirname "$0")/../.."
jr="${JAXROBUST:-jaxrobust}"
name="${1:-mnist_cnn_clipping_heuristic}"
out="experiments/partial_participation/results_${name}"
[ "$name" = mnist_clipping_heuristic ] && out="experiments/partial_participation/results"
start=$(date +%s)
"$jr" sweep "experiments/partial_participation/${name}.yaml" --out "$out"
"$jr" report "$out"
echo "wall time: $(( $(date +%s) - start )) s"
