"""Short runs of every algorithm on two revisions: are the numbers the same?

Runs a fixed set of short configurations (D-SGD with several attacks, client
sampling, the clipping heuristic and local steps; Byz-EF21-SGDM, Byz-EF21 and
BR-CSGD with compressors; MARINA-PP with and without shift-back) on the
working tree and on ``BASE`` (a git revision, checked out in a temporary
worktree), and prints, per configuration, whether every metric of every
evaluation is identical, the largest relative difference, and the columns the
new revision adds. A refactoring should print ``identical=True`` or
differences of float rounding only.

Run: ``python benchmarks/same_numbers.py f1ec05e``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BASE = dict(steps=12, eval_every=6, seeds=2, max_train=600)
CASES = {
    "dsgd": {},
    "dsgd_alie_aware_arc": dict(
        attack="alie_aware", attack_options={"points": 4}, defence=["arc", "nnm", "trimmed_mean"]
    ),
    "dsgd_lf_pp_heur": dict(
        attack="label_flip",
        clients_per_round=8,
        clipping_heuristic=1.0,
        defence=["bucketing", "median"],
        declared_f=1,
    ),
    "dsgd_local_shift": dict(
        attack="shift_back",
        clients_per_round=6,
        local_steps=3,
        defence=["median"],
        momentum=0.0,
        declared_f=2,
    ),
    "dsgd_cc": dict(defence=["centered_clipping"], attack="ipm"),
    "ef21_sgdm": dict(
        algorithm="byz_ef21_sgdm", compressor="top_k", compressor_options={"k": 0.1}, attack="alie"
    ),
    "ef21_lf": dict(
        algorithm="byz_ef21",
        compressor="rand_k",
        compressor_options={"k": 0.2},
        attack="label_flip",
    ),
    "br_csgd": dict(
        algorithm="br_csgd", compressor="rand_k", compressor_options={"k": 0.2}, attack="sign_flip"
    ),
    "marina": dict(
        algorithm="marina_pp",
        clients_per_round=5,
        momentum=0.0,
        attack="alie",
        lr=0.05,
        model="logistic_regression",
        l2=0.01,
    ),
    "marina_shift": dict(
        algorithm="marina_pp",
        clients_per_round=5,
        momentum=0.0,
        attack="shift_back",
        lr=0.05,
        algorithm_options={"plus": True},
    ),
}

RUNNER = """
import json, sys
from jaxrobust import simulator
from jaxrobust.config import Config
cases = json.loads(sys.argv[1])
out = {name: simulator.simulate(Config(**c)).rows for name, c in cases.items()}
json.dump(out, open(sys.argv[2], "w"))
"""


def run_tree(tree: str, path: str) -> dict:
    cases = {name: {**BASE, **case} for name, case in CASES.items()}
    subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(cases), path],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": tree},
        check=True,
    )
    with open(path) as fh:
        return json.load(fh)


def compare(old: list[dict], new: list[dict]) -> tuple[bool, float, list[str]]:
    identical, worst = True, 0.0
    for a, b in zip(old, new, strict=True):
        for key, va in a.items():
            vb = b[key]
            if isinstance(va, float) and math.isnan(va) and math.isnan(vb):
                continue
            if va != vb:
                identical = False
                worst = max(worst, abs(va - vb) / max(abs(va), 1e-12))
    return identical, worst, sorted(set(new[0]) - set(old[0]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="git revision to compare against")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = os.path.join(tmp, "base")
        subprocess.run(
            ["git", "-C", ROOT, "worktree", "add", "-q", "--detach", old_tree, args.base],
            check=True,
        )
        try:
            old = run_tree(old_tree, os.path.join(tmp, "old.json"))
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", old_tree])
        new = run_tree(ROOT, os.path.join(tmp, "new.json"))
    for name in CASES:
        identical, worst, added = compare(old[name], new[name])
        print(
            f"{name:22s} evaluations={len(old[name])} identical={identical} "
            f"max_rel_diff={worst:.1e} new_columns={added}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
