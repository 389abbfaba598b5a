"""Every rule at large n against one memory pass, and the order-statistics crossovers.

``python benchmarks/large_n.py [--n 64 80 256 1024] [--d 65536] [--repeats 3]
[--budget-s 900] [--json PATH]`` times every rule (its optax transformation
under ``jax.jit``, best of ``--repeats`` after compilation) on one ``(n, d)``
float32 leaf, ``f = n // 4 - 1``, next to one memory pass over the same data
measured in the same run, and ByzFL's counterpart when ``import byzfl`` works
(the columns say "not installed" otherwise).

``--crossover`` instead times the order-statistics kernels themselves
(:func:`jaxrobust.kernels.order_statistics` with each method, for the median
ranks and the trimmed-mean sum) at each ``n``; it produced the constant
``SORT_NETWORK_MAX_N`` in ``jaxrobust/kernels.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import aggregators as bench  # noqa: E402  (benchmarks/aggregators.py: rules, ByzFL, timing)
import jax  # noqa: E402

from jaxrobust import kernels  # noqa: E402

N_LARGE = (64, 80, 256, 1024)
D_LARGE = 65_536
# Largest n at which the crossover mode builds a sorting network (at n = 256 it had not
# finished compiling after 15 minutes on the shared 2-core CPU).
NETWORK_TRACE_MAX = 128


def one_pass_ms(x, repeats: int) -> float:
    """One fused read of the data: the faster of ``sum(x[i] for i in range(n))`` (the
    reference of ``aggregators.py``) and ``kernels.sum_workers(x)`` (pairwise halving),
    under jit; at n = 1,024 the chain of 1,024 additions is far from one pass on CPU."""
    n = x.shape[0]
    chain = bench.time_jax(jax.jit(lambda a: sum(a[i] for i in range(n))), (x,), repeats)[0]
    halving = bench.time_jax(jax.jit(kernels.sum_workers), (x,), repeats)[0]
    return min(chain, halving) * 1e3


def rule_rows(
    n: int, d: int, rules, repeats: int, deadline: float, byzfl=None, seed: int = 0
) -> tuple[float, list[dict]]:
    """``(pass ms, one record per rule)``; rules past ``deadline`` are skipped with a note."""
    f = bench.default_f(n)
    x = bench.make_input(n, d, seed)
    pass_ms = one_pass_ms(x, repeats)
    torch_mod, byz, why = byzfl if byzfl is not None else (None, None, "not installed")
    xt = None
    if byz is not None:
        xt = torch_mod.from_numpy(jax.device_get(x).copy())
    rows = []
    for rule in rules:
        row = {"n": n, "d": d, "f": f, "rule": rule}
        if time.monotonic() > deadline:
            row.update(status="skipped", message="time budget spent")
            rows.append(row)
            continue
        rec, out = bench.run_ours(rule, x, n, f, repeats)
        row.update(rec)
        if rec.get("status") == "ok":
            row["passes"] = rec["ms"] / pass_ms
        if byz is None:
            row["byzfl"] = why or "not installed"
        elif time.monotonic() < deadline:
            brec, _ = bench.run_byzfl(rule, byz, torch_mod, xt, n, f, d, 1)
            row["byzfl"] = brec.get("status")
            if brec.get("status") == "ok" and rec.get("status") == "ok":
                row["byzfl_ms"] = brec["ms"]
                ours = rec.get("loop_ms", rec["ms"]) if rule in ("arc", "clip") else rec["ms"]
                row["byzfl_over_ours"] = brec["ms"] / ours
            elif brec.get("message"):
                row["byzfl"] = brec["message"]
        rows.append(row)
        del out
    return pass_ms, rows


def crossover_rows(n: int, d: int, repeats: int, methods, seed: int = 0) -> list[dict]:
    """The order-statistics methods for the median ranks and the trimmed-mean sum at ``n``."""
    f = bench.default_f(n)
    x = bench.make_input(n, d, seed)
    pass_ms = one_pass_ms(x, repeats)
    ranks = sorted({(n - 1) // 2, n // 2})
    rows = []
    for method in methods:
        if method == "network" and n > NETWORK_TRACE_MAX:
            rows.append({"n": n, "method": method, "status": "skipped (compile time)"})
            continue
        for what, fn in (
            ("median ranks", lambda a, m=method: kernels.order_statistics(a, ranks, m)),
            ("trimmed sum", lambda a, m=method: kernels.rank_range_sum(a, f, n - f, m)),
        ):
            best, first = bench.time_jax(jax.jit(fn), (x,), repeats)
            rows.append(
                {
                    "n": n,
                    "method": method,
                    "what": what,
                    "ms": best * 1e3,
                    "passes": best * 1e3 / pass_ms,
                    "first_call_s": first,
                    "status": "ok",
                }
            )
            print(
                f"  n={n} {method:9s} {what:13s} {best * 1e3:9.1f} ms "
                f"{best * 1e3 / pass_ms:6.1f} passes (first call {first:.1f} s)",
                flush=True,
            )
    return rows


def fmt(v, spec=".1f") -> str:
    return "" if v is None else (v if isinstance(v, str) else format(v, spec))


def rules_markdown(results: list[dict]) -> str:
    lines = [
        "| n | f | rule | ms | passes | ByzFL ms | ByzFL / ours | note |",
        "|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for block in results:
        for r in block["rows"]:
            note = r.get("message", "") if r.get("status") != "ok" else ""
            byz = r.get("byzfl", "") if "byzfl_ms" not in r else ""
            lines.append(
                f"| {r['n']} | {r['f']} | {r['rule']} | {fmt(r.get('ms'))} | "
                f"{fmt(r.get('passes'))} | {fmt(r.get('byzfl_ms'))} | "
                f"{fmt(r.get('byzfl_over_ours'))} | {'; '.join(x for x in (note, byz) if x)} |"
            )
    return "\n".join(lines)


def crossover_markdown(rows: list[dict]) -> str:
    lines = ["| n | method | what | ms | passes | first call s |", "|---:|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['method']} | {r.get('what', '')} | {fmt(r.get('ms'))} | "
            f"{fmt(r.get('passes'))} | {fmt(r.get('first_call_s'))} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=list(N_LARGE))
    p.add_argument("--d", type=int, default=D_LARGE)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rules", nargs="+", default=list(bench.RULES), choices=list(bench.RULES))
    p.add_argument("--crossover", action="store_true", help="time the kernels, not the rules")
    p.add_argument("--methods", nargs="+", default=list(kernels.ORDER_STATISTIC_METHODS))
    p.add_argument("--budget-s", type=float, default=1800.0, help="skip what starts later")
    p.add_argument("--skip-byzfl", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    deadline = time.monotonic() + args.budget_s
    print(
        f"jax {jax.__version__} on {jax.default_backend()}, nproc {os.cpu_count()}, "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    out = {"machine": bench.machine_info(), "argv": sys.argv, "load_before": os.getloadavg()[0]}
    if args.crossover:
        rows = []
        for n in args.n:
            rows += crossover_rows(n, args.d, args.repeats, args.methods)
        out["crossover"] = rows
        print(crossover_markdown(rows))
    else:
        byzfl = (None, None, "skipped") if args.skip_byzfl else bench.load_byzfl()
        if byzfl[1] is None and not args.skip_byzfl:
            byzfl = (None, None, "not installed")
        results = []
        for n in args.n:
            load = os.getloadavg()[0]
            pass_ms, rows = rule_rows(n, args.d, args.rules, args.repeats, deadline, byzfl)
            results.append({"n": n, "pass_ms": pass_ms, "load_before": load, "rows": rows})
            print(
                f"n = {n}: one pass {pass_ms:.2f} ms, load {load:.2f} -> {os.getloadavg()[0]:.2f}",
                flush=True,
            )
            print(rules_markdown(results[-1:]), flush=True)
        out["results"] = results
    out["load_after"] = os.getloadavg()[0]
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
