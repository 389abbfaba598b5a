"""Where the CPU tops out: the Gram product of Krum, Multi-Krum and MDA under XLA:CPU options.

``python benchmarks/cpu_threads.py [--n 16] [--d 1663370] [--repeats 5] [--json PATH]``

The Gram matrix ``x @ x.T`` of ``n`` worker vectors of length ``d`` has a
tiny ``(n, n)`` output and a long contraction, so a matrix-multiply library
that parallelises over output blocks runs it on one core. Each variant
below runs in its own process (XLA reads its flags once, at start-up), on
the same data (``jax.random.normal(key(0), (n, d))``), and reports the best
of ``--repeats`` calls after compilation and the largest difference from a
float64 numpy Gram matrix relative to its largest entry, so a faster
variant that loses digits shows it:

* ``default``: :func:`jaxrobust.kernels.gram_matrix` as the rules call it;
* ``one thread``: the same with ``--xla_cpu_multi_thread_eigen=false``;
* ``plain XLA dot``: ``jnp.dot(x, x.T)`` at ``HIGHEST`` precision;
* ``outer vmap``: the columns split in ``k`` halves, one Gram per part under
  ``jax.vmap``, summed;
* ``shard_map``: the columns split over ``k`` host devices
  (``--xla_force_host_platform_device_count=k``), one Gram per device, then
  ``psum``;
* ``krum`` with the default kernel and with ``shard_map`` (the rule end to end);
* ``torch`` (when installed): MKL's ``x @ x.T`` on the same data, with
  ``torch.get_num_threads()`` threads, for scale.

The parent process prints one table with every variant's time and its
ratio to ``default``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = {
    "default": ("", "gram"),
    "one thread": ("--xla_cpu_multi_thread_eigen=false", "gram"),
    "plain XLA dot": ("", "dot"),
    "outer vmap": ("", "vmap"),
    "shard_map": ("--xla_force_host_platform_device_count={k}", "shard_map"),
    "krum": ("", "krum"),
    "krum, shard_map Gram": ("--xla_force_host_platform_device_count={k}", "krum_shard_map"),
    "torch": ("", "torch"),
}


def _best_ms(fn, args, repeats: int) -> float:
    import jax

    jax.block_until_ready(fn(*args))  # compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def _split_gram(kernels, x, k: int):
    """``k`` column parts, one Gram each, summed: the same sums in another order."""
    import jax
    import jax.numpy as jnp

    n, d = x.shape
    body = (d // k) * k
    parts = x[:, :body].reshape(n, k, d // k).transpose(1, 0, 2)
    total = jnp.sum(jax.vmap(kernels.gram_matrix)(parts), axis=0)
    return total + kernels.gram_matrix(x[:, body:]) if body < d else total


def _shard_map_gram(gram, rows, k: int, centre=None):
    """``gram(rows, centre)`` with the columns split over ``k`` host devices and ``psum``-ed;
    the columns past a multiple of ``k`` are added on one device."""
    import jax
    from jax.sharding import Mesh, PartitionSpec

    body = (rows.shape[1] // k) * k
    columns = PartitionSpec(None, "columns")
    args = (rows,) if centre is None else (rows, centre)
    specs = columns if centre is None else (columns, PartitionSpec("columns"))
    fn = jax.shard_map(
        lambda *a: jax.lax.psum(gram(*a), "columns"),
        mesh=Mesh(jax.devices()[:k], ("columns",)),
        in_specs=specs,
        out_specs=PartitionSpec(),
        check_vma=False,
    )
    total = fn(*(a[..., :body] for a in args))
    return total + gram(*(a[..., body:] for a in args)) if body < rows.shape[1] else total


def child(kind: str, n: int, d: int, k: int, repeats: int) -> dict:
    """Time one variant in this process; returns ``{ms, rel_err, ...}``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxrobust import kernels

    x = jax.random.normal(jax.random.key(0), (n, d))
    x64 = np.asarray(x, np.float64)
    reference = x64 @ x64.T
    record = {"devices": len(jax.devices()), "threads_hint": os.cpu_count()}
    if kind == "torch":
        try:
            import torch
        except ImportError:
            return {"status": "torch not installed"}
        xt = torch.from_numpy(np.asarray(x).copy())
        out = (xt @ xt.T).numpy()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            xt @ xt.T
            best = min(best, time.perf_counter() - start)
        record.update(ms=best * 1e3, threads=torch.get_num_threads())
    elif kind in ("krum", "krum_shard_map"):
        import jaxrobust

        f = n // 4 - 1
        if kind == "krum_shard_map":
            kernels.gram_matrix = _one_leaf_shard_map_gram(kernels.gram_matrix, k)
        tx = jaxrobust.krum(f)
        state = tx.init(x[0])
        fn = jax.jit(lambda u: tx.update(u, state)[0])
        record["ms"] = _best_ms(fn, (x,), repeats)
        out = None
    else:
        fns = {
            "gram": lambda a: kernels.gram_matrix(a),
            "dot": lambda a: jnp.dot(a, a.T, precision=jax.lax.Precision.HIGHEST),
            "vmap": lambda a: _split_gram(kernels, a, k),
            "shard_map": lambda a: _shard_map_gram(kernels.gram_matrix, a, k),
        }
        fn = jax.jit(fns[kind])
        if kind == "shard_map" and x.shape[1] % k == 0:  # the data already split, as it would live
            from jax.sharding import Mesh, NamedSharding, PartitionSpec

            mesh = Mesh(jax.devices()[:k], ("columns",))
            x = jax.device_put(x, NamedSharding(mesh, PartitionSpec(None, "columns")))
        record["ms"] = _best_ms(fn, (x,), repeats)
        out = np.asarray(fn(x), np.float64)
    if out is not None:
        record["rel_err"] = float(np.max(np.abs(out - reference)) / np.max(np.abs(reference)))
    record["status"] = "ok"
    return record


def _one_leaf_shard_map_gram(original, k: int):
    """``kernels.gram_matrix`` with a single 2-D leaf's columns split over ``k`` devices."""
    import jax

    def gram(updates, centre=None):
        leaves = jax.tree_util.tree_leaves(updates)
        if len(leaves) != 1 or leaves[0].ndim != 2:
            return original(updates, centre)
        c = None if centre is None else jax.tree_util.tree_leaves(centre)[0]
        return _shard_map_gram(original, leaves[0], k, c)

    return gram


def run_variant(name: str, n: int, d: int, k: int, repeats: int) -> dict:
    flags, kind = VARIANTS[name]
    env = dict(os.environ)
    flags = flags.format(k=k)
    if flags:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
    cmd = [sys.executable, __file__, "--child", kind, "--n", str(n), "--d", str(d)]
    cmd += ["--k", str(k), "--repeats", str(repeats)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"variant": name, "flags": flags, "status": proc.stderr.strip()[-300:]}
    return {"variant": name, "flags": flags, **json.loads(proc.stdout.strip().splitlines()[-1])}


def markdown(rows: list[dict], n: int, d: int) -> str:
    base = next((r["ms"] for r in rows if r["variant"] == "default" and "ms" in r), None)
    krum = next((r["ms"] for r in rows if r["variant"] == "krum" and "ms" in r), None)
    lines = [
        f"n = {n}, d = {d:,}, float32; load {os.getloadavg()[0]:.2f} at the end",
        "",
        "| variant | XLA_FLAGS | ms | vs its reference | max rel. error vs float64 |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        if "ms" not in r:
            lines.append(f"| {r['variant']} | `{r['flags']}` | - | - | {r['status']} |")
            continue
        ref = krum if r["variant"].startswith("krum") else base
        ratio = f"{r['ms'] / ref:.2f}x" if ref else "-"
        err = f"{r['rel_err']:.1e}" if "rel_err" in r else "-"
        name = r["variant"] + (f" ({r['threads']} threads)" if "threads" in r else "")
        lines.append(f"| {name} | `{r['flags']}` | {r['ms']:.1f} | {ratio} | {err} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--d", type=int, default=1_663_370)
    p.add_argument("--k", type=int, default=2, help="column parts / host devices")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--json", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.n, args.d, args.k, args.repeats)))
        return 0
    rows = []
    for name in args.variants:
        row = run_variant(name, args.n, args.d, args.k, args.repeats)
        print(f"{name:24s} {row.get('ms', float('nan')):9.2f} ms  {row['status'][:80]}", flush=True)
        rows.append(row)
    print()
    print(markdown(rows, args.n, args.d))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"n": args.n, "d": args.d, "k": args.k, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
