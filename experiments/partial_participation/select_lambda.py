"""Choose the clipping heuristic's lambda on the validation split against the worst attack.

For each lambda (and "no clipping"), the accuracy curves are averaged over
seeds, the best step of the mean curve is taken per attack (the ARC authors'
reduction, as ``jaxrobust report``), and the worst attack gives the lambda's
score; lambda is the best score on ``validation_accuracy``, and its *test*
accuracy is reported next to no clipping's. Run from the project root:

    python experiments/partial_participation/select_lambda.py \
        experiments/partial_participation/results_mnist_lambda_grid
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd


def per_attack(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows: lambda ("none": no clipping); columns: attack; cells: best step of the seed mean."""
    mean_curve = runs.groupby(["lambda", "attack", "step"])[metric].mean()
    return mean_curve.groupby(["lambda", "attack"]).max().unstack("attack")


def main(sweep_dir: str) -> str:
    runs = pd.read_csv(Path(sweep_dir) / "runs.csv")
    runs["lambda"] = runs["clipping_heuristic"].map(lambda v: "none" if pd.isna(v) else f"{v:g}")
    validation = per_attack(runs, "validation_accuracy")
    test = per_attack(runs, "test_accuracy")
    clipped = validation.drop(index="none")
    chosen = clipped.min(axis=1).idxmax()
    lines = [
        "Validation accuracy (max over steps of the 2-seed mean curve), per lambda and attack:",
        "",
        "| lambda | " + " | ".join(validation.columns) + " | worst case |",
        "| --- |" + " ---: |" * (len(validation.columns) + 1),
    ]
    for name, row in validation.iterrows():
        cells = " | ".join(f"{v:.4f}" for v in row)
        lines.append(f"| {name} | {cells} | {row.min():.4f} |")
    lines += [
        "",
        f"lambda chosen on validation against the worst attack: {chosen}",
        "",
        "Test accuracy (same reduction):",
        "",
        "| clipping heuristic | " + " | ".join(test.columns) + " | worst case |",
        "| --- |" + " ---: |" * (len(test.columns) + 1),
    ]
    for name in ("none", chosen):
        row = test.loc[name]
        label = "no" if name == "none" else f"lambda = {name} (chosen)"
        cells = " | ".join(f"{v:.4f}" for v in row)
        lines.append(f"| {label} | {cells} | {row.min():.4f} |")
    text = "\n".join(lines) + "\n"
    (Path(sweep_dir) / "lambda_selection.md").write_text(text)
    return text


if __name__ == "__main__":
    print(
        main(
            sys.argv[1]
            if len(sys.argv) > 1
            else "experiments/partial_participation/results_mnist_lambda_grid"
        )
    )
