"""A thousand simulated workers on this CPU: time per round of the robust step.

``python benchmarks/many_workers.py [--n 100 1000] [--models logistic_regression mlp]
[--steps 20] [--repeats 3] [--json PATH]``

Digits (the offline scikit-learn set), 10 % of the ``n`` workers Byzantine,
batch 1 per worker (digits has 1,617 training images: 1.6 per worker at
n = 1,000), momentum 0.9. For each ``n`` and model, in the same run:

* ``CWTM o NNM o ARC, ALIE``: the defence of the ARC paper (ARC, then NNM,
  then the coordinate-wise trimmed mean) against ALIE, as one jitted step of
  all workers run ``--steps`` times in one ``lax.scan`` (the simulator's
  chunk), best of ``--repeats``;
* ``mean, no attack``: the same program with the plain average and no
  Byzantine worker (what the robustness costs);
* ``data-parallel step``: one SGD step on one gradient of ``n`` examples (the
  same total batch), the cheapest way to train on that data.

Compilation is timed separately (first call of the chunk).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import jax  # noqa: E402
import numpy as np  # noqa: E402
from step import best_time, data_parallel_ms  # noqa: E402

from jaxrobust import simulator  # noqa: E402
from jaxrobust.config import Config  # noqa: E402
from jaxrobust.data import load_dataset  # noqa: E402


def program_ms(config: Config, dataset, steps: int, repeats: int) -> tuple[float, float]:
    """``(compile s, ms per round)`` of ``steps`` rounds in one scanned chunk."""
    config = config.replace(steps=steps, eval_every=steps)
    start = time.perf_counter()
    init, chunk, _, _ = simulator.compiled_run(config, dataset)
    states = simulator.initial_states(config, dataset, init, np.arange(1))
    jax.block_until_ready(chunk(states))  # the first call compiles
    compile_s = time.perf_counter() - start
    return compile_s, 1e3 * best_time(chunk, states, repeats=repeats) / steps


def rows_for(n: int, model: str, dataset, steps: int, repeats: int) -> list[dict]:
    f = n // 10
    base = Config(
        dataset="digits",
        model=model,
        num_honest=n - f,
        num_byzantine=f,
        batch_size=1,
        lr=0.1,
        momentum=0.9,
    )
    robust = base.replace(defence=("arc", "nnm", "trimmed_mean"), attack="alie")
    plain = base.replace(num_honest=n, num_byzantine=0, defence=("mean",), attack="none")
    rows = []
    for label, config in (("CWTM o NNM o ARC, ALIE", robust), ("mean, no attack", plain)):
        compile_s, ms = program_ms(config, dataset, steps, repeats)
        rows.append(
            {"n": n, "f": config.num_byzantine, "model": model, "program": label,
             "ms_per_round": ms, "compile_s": compile_s}
        )  # fmt: skip
    ms = data_parallel_ms(dataset, n, steps, repeats, model_name=model)
    rows.append(
        {"n": n, "f": 0, "model": model, "program": f"data-parallel step (batch {n})",
         "ms_per_round": ms, "compile_s": float("nan")}
    )  # fmt: skip
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| n | f | model | program | ms / round | rounds / s | compile (s) |",
        "| ---: | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        compile_s = "-" if np.isnan(r["compile_s"]) else f"{r['compile_s']:.1f}"
        lines.append(
            f"| {r['n']} | {r['f']} | {r['model']} | {r['program']} | {r['ms_per_round']:.2f} | "
            f"{1e3 / r['ms_per_round']:.0f} | {compile_s} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--models", nargs="+", default=["logistic_regression", "mlp"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    dataset = load_dataset("digits")
    rows = []
    print(f"load {os.getloadavg()[0]:.2f} before", flush=True)
    for n in args.n:
        for model in args.models:
            for row in rows_for(n, model, dataset, args.steps, args.repeats):
                print(row, flush=True)
                rows.append(row)
    print(f"load {os.getloadavg()[0]:.2f} after\n")
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
