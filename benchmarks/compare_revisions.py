"""One benchmark on two revisions of jaxrobust, side by side in one run.

Checks out ``BASE`` (any git revision) in a temporary worktree, then runs the
same benchmark script of each tree (``BASE`` and the working tree) in
alternation, ``--rounds`` times each, so that load on the machine falls on
both alike. Each run writes its ``--json``; every timing (a number whose key
path ends in ``ms``, or under ``ms_per_step``) is kept at its best over the
rounds and printed old / new / ratio.

Run::

    python benchmarks/compare_revisions.py f1ec05e --rounds 2 -- \\
        benchmarks/step.py --steps 10 --repeats 2 --skip-byzfl
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timings(tree, path: tuple = ()) -> dict[str, float]:
    """Every timing leaf of a benchmark's JSON, by its key path."""
    out = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(timings(value, (*path, str(key))))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            label = value.get("n", i) if isinstance(value, dict) else i
            out.update(timings(value, (*path, f"[{label}]")))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool) and path:
        if (path[-1] == "ms" or "ms_per_step" in path) and "byzfl" not in path:
            out["/".join(path)] = float(tree)
    return out


def run_once(tree: str, command: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.json")
        env = {**os.environ, "PYTHONPATH": tree}
        subprocess.run(
            [sys.executable, os.path.join(tree, command[0]), *command[1:], "--json", out],
            cwd=tree,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        with open(out) as fh:
            return timings(json.load(fh))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="git revision to compare against (e.g. main~3)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each tree, alternated")
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        parser.error("give the benchmark script after --: BASE [--rounds N] -- SCRIPT [ARGS...]")
    split = argv.index("--")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1 :]
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = os.path.join(tmp, "base")
        subprocess.run(
            ["git", "-C", ROOT, "worktree", "add", "-q", "--detach", old_tree, args.base],
            check=True,
        )
        try:
            best: dict[str, dict[str, float]] = {"old": {}, "new": {}}
            for _ in range(args.rounds):
                for label, tree in (("old", old_tree), ("new", ROOT)):
                    for key, ms in run_once(tree, command).items():
                        best[label][key] = min(ms, best[label].get(key, float("inf")))
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", old_tree])
    keys = [k for k in best["old"] if k in best["new"]]
    width = max((len(k) for k in keys), default=10)
    print(f"{'timing (ms, best of rounds)':{width}s} {args.base:>10s} {'new':>10s} {'new/old':>8s}")
    for key in keys:
        old, new = best["old"][key], best["new"][key]
        print(f"{key:{width}s} {old:10.2f} {new:10.2f} {new / old:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
