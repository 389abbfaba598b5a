#!/usr/bin/env python
"""Time per round of the decentralized algorithms against the number of nodes.

    python benchmarks/gossip.py                        # 10, 100, 1000 nodes
    python benchmarks/gossip.py --nodes 10 100 --repeats 5 --topology exponential

For each number of nodes ``n`` the script builds, on the digits MLP (the
default model; batch 25 per node), one round of:

* ``gossip`` (plain gossip averaging) with ``n`` honest nodes;
* ``clipped_gossip`` with ``n`` nodes of which ``n // 10`` are Byzantine
  (highest degree), sending the dissensus attack along each edge;
* a server round of D-SGD (``dsgd``) with ``n`` workers and the mean, the
  same total work: ``n`` minibatch gradients and one combination of ``n``
  vectors (the trimmed mean is left out: its sorting network over 1,000
  workers takes minutes to compile on a CPU).

Each step is jitted on one run's state; the time is the best of
``--repeats`` calls after compilation, each waited for with
``block_until_ready``. The gossip round gathers every node's neighbours
from fixed-degree tables: its cost grows with the edges (``n x degree``),
never with ``n^2``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import jaxrobust  # noqa: F401  (installed, e.g. pip install -e .)
except ImportError:  # a plain checkout
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

from jaxrobust import simulator  # noqa: E402
from jaxrobust.config import Config  # noqa: E402
from jaxrobust.data import load_dataset  # noqa: E402
from jaxrobust.server import hyper_of  # noqa: E402
from jaxrobust.topology import graph_of  # noqa: E402


def time_step(config: Config, dataset, repeats: int) -> tuple[float, float]:
    """``(compile seconds, best seconds per round)`` of one run's jitted step."""
    config.validate()
    sim = simulator.build(config, dataset)
    indices, sizes = simulator.worker_tables(config, dataset.y_train, [0])
    state = jax.jit(sim.init)(jax.random.key(0), indices[0], sizes[0], hyper_of(config))
    step = jax.jit(sim.step)
    start = time.perf_counter()
    state, metrics = step(state)
    jax.block_until_ready((state, metrics))
    compile_seconds = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        state, metrics = step(state)
        jax.block_until_ready((state, metrics))
        best = min(best, time.perf_counter() - start)
    return compile_seconds, best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--topology", default="torus")
    parser.add_argument("--model", default="mlp")
    args = parser.parse_args(argv)

    dataset = load_dataset("digits")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({platform.processor() or '?'})")
    print(f"digits, model {args.model}, batch 25 per node, topology {args.topology}")
    header = (
        f"{'nodes':>6} {'degree':>7} {'gossip ms':>10} {'clipped+attack ms':>18} "
        f"{'dsgd mean ms':>13} {'gossip/dsgd':>12} {'compile s (gossip)':>19}"
    )
    print(header)
    print("-" * len(header))
    for n in args.nodes:
        b = n // 10
        common = dict(model=args.model, steps=1, eval_every=1, batch_size=25)
        gossip = Config(
            algorithm="gossip", topology=args.topology, num_honest=n, num_byzantine=0, **common
        )
        clipped = Config(
            algorithm="clipped_gossip",
            topology=args.topology,
            num_honest=n - b,
            num_byzantine=b,
            byzantine_placement="highest_degree",
            attack="dissensus",
            **common,
        )
        mean = Config(num_honest=n, num_byzantine=0, defence=("mean",), **common)
        degree = graph_of(gossip).degrees.max()
        measured = [time_step(c, dataset, args.repeats) for c in (gossip, clipped, mean)]
        times = [best * 1e3 for _, best in measured]
        print(
            f"{n:>6} {degree:>7} {times[0]:>10.2f} {times[1]:>18.2f} {times[2]:>13.2f} "
            f"{times[0] / times[2]:>12.2f} {measured[0][0]:>19.1f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
