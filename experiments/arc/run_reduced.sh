#!/usr/bin/env bash
# The reduced ARC grids on real data, from the project root; results and plots
# under experiments/arc/results/<name>/. JAXROBUST=.venv/bin/jaxrobust picks the command.
# Names: fig1_reduced table_reduced cifar10_reduced (default: all three, in that order).
set -euo pipefail
cd "$(dirname "$0")/../.."
jr="${JAXROBUST:-jaxrobust}"
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(fig1_reduced table_reduced cifar10_reduced)
for name in "${names[@]}"; do
  start=$(date +%s)
  "$jr" sweep "experiments/arc/$name.yaml" --out "experiments/arc/results/$name"
  "$jr" report "experiments/arc/results/$name"
  echo "$name: $(( $(date +%s) - start )) s"
done
