#!/usr/bin/env python
"""Decentralized MNIST under per-edge attacks: every gossip algorithm x {none, dissensus, spectral}.

    python experiments/gossip/run.py          # from the repository root; writes results.csv, plot

Reads ``base.yaml`` next to this file, runs each (algorithm, attack) pair
with :func:`jaxrobust.simulator.simulate` and writes every evaluation to
``results.csv`` and the final accuracy and consensus distance to
``results.png``.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
try:
    import jaxrobust  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT))

from jaxrobust import simulator  # noqa: E402
from jaxrobust.config import Config  # noqa: E402

ALGORITHMS = {
    "gossip": {"algorithm": "gossip"},
    "NNA (robust_gossip nnm+mean)": {"algorithm": "robust_gossip", "defence": ["nnm", "mean"]},
    "bridge": {"algorithm": "bridge"},
    "clipped_gossip": {"algorithm": "clipped_gossip"},
    "cs_plus_rg": {"algorithm": "cs_plus_rg"},
    "gts_rg": {"algorithm": "gts_rg"},
}
ATTACKS = ("none", "dissensus", "spectral")


def main() -> int:
    base = Config.from_yaml(str(HERE / "base.yaml"))
    dataset = simulator.load_for(base)
    rows = []
    for label, changes in ALGORITHMS.items():
        for attack in ATTACKS:
            config = base.replace(attack=attack, **changes)
            result = simulator.simulate(config, dataset)
            for row in result.rows:
                rows.append({"algorithm": label, "attack": attack, **row})
            last = result.rows[-1]
            print(
                f"{label:30s} {attack:10s} accuracy {last['test_accuracy']:.4f} "
                f"worst node {last['worst_node_accuracy']:.4f} "
                f"consensus {last['consensus_distance']:.3g} ({result.seconds:.0f} s)",
                flush=True,
            )
    with open(HERE / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows)
    return 0


def plot(rows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    final = {}
    for row in rows:
        final[(row["algorithm"], row["attack"])] = row  # the last evaluation wins
    labels = list(ALGORITHMS)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    width = 0.8 / len(ATTACKS)
    x = np.arange(len(labels))
    for k, attack in enumerate(ATTACKS):
        acc = [final[(a, attack)]["test_accuracy"] for a in labels]
        worst = [final[(a, attack)]["worst_node_accuracy"] for a in labels]
        cons = [final[(a, attack)]["consensus_distance"] for a in labels]
        axes[0].bar(x + k * width, acc, width, label=f"{attack}: average model")
        axes[0].scatter(x + k * width, worst, color="black", marker="_", s=80, zorder=3)
        axes[1].bar(x + k * width, cons, width, label=attack)
    for ax in axes:
        ax.set_xticks(x + width, [label.split(" (")[0] for label in labels], rotation=20)
    axes[0].set_ylabel("test accuracy after 300 rounds (bars: average model; -: worst node)")
    axes[0].legend(fontsize=8)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("consensus distance (1/h) sum ||x_i - x_bar||^2")
    axes[1].legend(fontsize=8)
    fig.suptitle("MNIST, ER(19, 0.4), 16 honest + 3 Byzantine nodes, logistic regression")
    fig.tight_layout()
    fig.savefig(HERE / "results.png", dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
