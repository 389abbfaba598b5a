"""One prepared suite for an accelerator: every section next to its reference, in one run.

``python benchmarks/gpu_suite.py OUT_DIR [--data-dir data/mnist] [--quick]
[--budget-s 450]`` writes ``OUT_DIR/gpu_suite.json`` and ``OUT_DIR/gpu_suite.md``.
Sections, each measured side by side with its reference in the same process:

1. ``rules``: every rule at ``n = 16``, ``d = 1,663,370`` against one memory
   pass over the same data, then at the large-``n`` workloads (``n`` = 64,
   80, 256, 1,024, ``d = 65,536``), as ``benchmarks/large_n.py``.
2. ``step``: the robust step of the ARC MNIST setting (13 workers, the
   431,080-parameter CNN, batch 25, CWTM o NNM o ARC, aggregator-aware ALIE)
   against a plain data-parallel step of the same total batch (325), on MNIST
   read from ``--data-dir``.
3. ``sweep``: runs per minute of the first 80-run program of
   ``experiments/arc/table_full.yaml`` (a few hundred steps, with and
   without its compilation) and the extrapolated time of the whole table.
4. ``precision``: squared distances from the Gram product at the device's
   default matmul precision against ``Precision.HIGHEST``, raw and centred,
   on data sharing a common offset: relative errors against float64 numpy.
5. ``memory``: XLA's memory estimate per run of that program, and the
   largest number of runs per program that compiles and runs (doubling up to
   ``--max-runs``), with the device's peak memory where it reports one.

Every section has a time budget (a share of ``--budget-s``): what would
start after it is skipped with a note, so the command ends in time (about
8 minutes with compilation on one H200). ``--quick`` runs the same code at
tiny sizes, with the MLP in place of the CNN (whose programs take minutes to
compile on CPU); ``tests/test_benchmarks.py`` runs it.

The suite installs nothing. On a bare machine with jax, flax and optax:
``pip install -e . --no-deps`` (plus any missing dependency of jaxrobust as a
wheel), copy MNIST's four IDX files into the git-ignored ``data/mnist``
(``mkdir -p data && cp -r /work/shared/datasets/mnist data/``), then
``bash benchmarks/gpu_suite.sh OUT_DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import aggregators as bench  # noqa: E402  (benchmarks/aggregators.py)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import large_n  # noqa: E402
import numpy as np  # noqa: E402
import step as step_bench  # noqa: E402

from jaxrobust import kernels, simulator  # noqa: E402
from jaxrobust import sweep as sweeps  # noqa: E402
from jaxrobust.config import Config  # noqa: E402

TABLE = ROOT / "experiments" / "arc" / "table_full.yaml"

FULL = {
    "n_small": 16,
    "d_small": bench.D_DEFAULT,
    "n_large": large_n.N_LARGE,
    "d_large": large_n.D_LARGE,
    "repeats": 3,
    "step_steps": 20,
    "sweep_runs": 80,
    "sweep_steps": 200,
    "max_train": None,
    "max_test": None,
    "model": "arc_cnn",
    "precision_n": 16,
    "precision_d": 1 << 20,
    "max_runs": 4096,
}
QUICK = {
    "n_small": 16,
    "d_small": 2048,
    "n_large": (kernels.SORT_NETWORK_MAX_N + 32,),  # above the network: the large-n kernels
    "d_large": 256,
    "repeats": 1,
    "step_steps": 1,
    "sweep_runs": 2,
    "sweep_steps": 2,
    "max_train": 1000,
    "max_test": 100,
    # The MLP instead of the CNN: on CPU the CNN's programs take minutes to compile, and
    # without convolutions the CPU runs the same lax.scan chunk an accelerator runs.
    "model": "mlp",
    "precision_n": 8,
    "precision_d": 4096,
    "max_runs": 2,
}
# Shares of the whole budget, in the order the sections run.
SHARES = {"rules": 0.32, "step": 0.14, "sweep": 0.24, "precision": 0.06, "memory": 0.24}


class Budget:
    """A section's deadline: ``left()`` seconds, ``spent()`` when nothing more should start."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def spent(self) -> bool:
        return self.left() <= 0


# --------------------------------------------------------------------------
# 1. Rules against one memory pass
# --------------------------------------------------------------------------


def section_rules(sizes: dict, budget: Budget) -> dict:
    blocks = []
    settings = [(sizes["n_small"], sizes["d_small"])] + [
        (n, sizes["d_large"]) for n in sizes["n_large"]
    ]
    for i, (n, d) in enumerate(settings):
        if budget.spent():
            blocks.append({"n": n, "d": d, "skipped": "time budget spent"})
            continue
        # An equal share of what is left for each remaining setting, so n = 1,024 runs too.
        deadline = time.monotonic() + budget.left() / (len(settings) - i)
        pass_ms, rows = large_n.rule_rows(
            n,
            d,
            list(bench.RULES),
            sizes["repeats"],
            deadline,
            (None, None, "not run on the device"),
        )
        blocks.append({"n": n, "d": d, "pass_ms": pass_ms, "rows": rows})
    return {
        "blocks": blocks,
        "order_statistics": {
            "SORT_NETWORK_MAX_N": kernels.SORT_NETWORK_MAX_N,
            "methods": {str(b["n"]): kernels.order_statistic_method(b["n"]) for b in blocks},
        },
    }


# --------------------------------------------------------------------------
# 2. The ARC MNIST robust step against a data-parallel step
# --------------------------------------------------------------------------


def arc_config(data_dir: str, sizes: dict) -> Config:
    """``step.py``'s ARC setting with CWTM o NNM o ARC under aggregator-aware ALIE."""
    return step_bench.ARC_SETTING.replace(
        data_dir=data_dir,
        max_train=sizes["max_train"],
        max_test=sizes["max_test"],
        model=sizes["model"],
        defence=("arc", "nnm", "trimmed_mean"),
        attack="alie_aware",
    )


def section_step(sizes: dict, budget: Budget, data_dir: str) -> dict:
    config = arc_config(data_dir, sizes)
    dataset = simulator.load_for(config)
    steps, repeats = sizes["step_steps"], sizes["repeats"]
    plain = step_bench.data_parallel_ms(dataset, 325, steps, repeats, sizes["model"])
    out = {"dataset": repr(dataset), "steps": steps, "plain_data_parallel_ms": plain}
    if budget.spent():
        out["skipped"] = "time budget spent before the robust step"
        return out
    robust = step_bench.robust_ms(config, dataset, steps, repeats)
    out.update(robust_ms=robust, robust_over_plain=robust / plain)
    return out


# --------------------------------------------------------------------------
# 3. Sweep throughput: one program of the ARC main table
# --------------------------------------------------------------------------


def table_program(sizes: dict, data_dir: str, steps: int):
    """``(units of the first program, groups of the whole table, units of the whole table)``."""
    table = sweeps.Sweep.from_yaml(str(TABLE))
    units = table.units()
    groups = sweeps.groups(units)
    eval_every = max(1, steps // 4)
    first = [
        dataclasses.replace(
            u,
            config=u.config.replace(
                data_dir=data_dir,
                model=sizes["model"],
                max_train=sizes["max_train"],
                max_test=sizes["max_test"],
                steps=steps,
                eval_every=eval_every,
            ),
        )
        for u in groups[0][: sizes["sweep_runs"]]
    ]
    return first, groups, units


def run_program(units, dataset, compiled, width) -> float:
    start = time.perf_counter()
    rows = sweeps.run_batch(units, dataset, compiled, mesh=None, width=width)
    jax.block_until_ready(rows[-1]) if rows else None
    return time.perf_counter() - start


def section_sweep(sizes: dict, budget: Budget, data_dir: str, context: dict) -> dict:
    steps = sizes["sweep_steps"]
    units, groups, everything = table_program(sizes, data_dir, steps)
    config = units[0].config
    dataset = simulator.load_for(config)
    compiled = simulator.compiled_run(config, dataset)
    width = sweeps.table_width(units, dataset.y_train)
    context.update(units=units, dataset=dataset, compiled=compiled, width=width)
    first = run_program(units, dataset, compiled, width)  # with compilation
    out = {
        "program": f"{len(units)} runs: {sweeps.structure(config)[:160]}",
        "runs": len(units),
        "steps": steps,
        "first_s_with_compile": first,
        "table_runs": len(everything),
        "table_programs": len(groups),
        "table_steps": groups[0][0].config.steps,
    }
    if budget.spent():
        out["skipped"] = "time budget spent before the warm run"
        return out
    warm = run_program(units, dataset, compiled, width)
    compile_s = max(0.0, first - warm)
    per_step = warm / steps
    table_steps = out["table_steps"]
    runs_per_program = len(groups[0])
    # Each program of the table: its compilation plus table_steps steps of all its runs,
    # scaled from this program's runs to the table's (equal-sized) programs.
    program_s = compile_s + per_step * table_steps * runs_per_program / len(units)
    out.update(
        warm_s=warm,
        compile_s=compile_s,
        runs_per_minute=60 * len(units) / warm,
        runs_per_minute_with_compile=60 * len(units) / first,
        table_programs_runs=runs_per_program,
        extrapolated_table_minutes=len(groups) * program_s / 60,
    )
    return out


# --------------------------------------------------------------------------
# 4. Matmul precision of the distance products
# --------------------------------------------------------------------------


def section_precision(sizes: dict, budget: Budget) -> dict:
    n, d = sizes["precision_n"], sizes["precision_d"]
    rng = np.random.default_rng(0)
    spread = rng.standard_normal((n, d)).astype(np.float32) * 0.01
    rows = []
    for offset in (0.0, 1.0, 100.0):
        if budget.spent():
            rows.append({"offset": offset, "skipped": "time budget spent"})
            continue
        x64 = spread.astype(np.float64) + offset
        x = jnp.asarray(x64.astype(np.float32))
        xf = np.asarray(x, np.float64)
        diff = xf[:, None, :] - xf[None, :, :] if n * n * d <= 1 << 27 else None
        if diff is not None:
            exact = np.einsum("ijk,ijk->ij", diff, diff)
        else:
            c = xf - np.median(xf, axis=0)
            g = c @ c.T
            exact = np.diag(g)[:, None] + np.diag(g)[None, :] - 2 * g
        scale = np.max(exact)
        row = {"offset": offset}
        for name, precision, centred in (
            ("raw_default", None, False),
            ("raw_highest", jax.lax.Precision.HIGHEST, False),
            ("centred_default", None, True),
            ("centred_highest", jax.lax.Precision.HIGHEST, True),
        ):

            def dist(a, precision=precision, centred=centred):
                if centred:
                    a = a - kernels.coordinate_reference(a)[None]
                g = jnp.dot(a, a.T, precision=precision)
                return kernels.distances_from_gram(g)

            fn = jax.jit(dist)
            got = np.asarray(fn(x), np.float64)
            best, _ = bench.time_jax(fn, (x,), sizes["repeats"])
            row[name + "_max_rel_err"] = float(np.max(np.abs(got - exact)) / scale)
            row[name + "_ms"] = best * 1e3
        got = np.asarray(jax.jit(kernels.pairwise_squared_distances)(x), np.float64)
        row["kernels_max_rel_err"] = float(np.max(np.abs(got - exact)) / scale)
        rows.append(row)
    return {"n": n, "d": d, "spread": 0.01, "rows": rows}


# --------------------------------------------------------------------------
# 5. Memory per run, largest runs per program
# --------------------------------------------------------------------------


def peak_bytes():
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use"), stats.get("bytes_limit")


def try_sizes(start: int, fit: int, cap: int) -> list[int]:
    """Runs per program to try: ``start``, ``2 start``, and the powers-of-two multiples of
    ``start`` around the estimate ``fit`` (the last below it and the first above it).

    >>> try_sizes(80, 1000, 4096)
    [80, 160, 640, 1280]
    """
    sizes = {start, 2 * start}
    if fit > start:
        below = start * 2 ** int(math.log2(fit / start))
        sizes |= {below, 2 * below}
    return sorted(v for v in sizes if v <= cap)


def section_memory(sizes: dict, budget: Budget, context: dict) -> dict:
    if "units" not in context:
        return {"skipped": "the sweep section did not build its program"}
    units, dataset, width = (context[k] for k in ("units", "dataset", "width"))
    # The same program with a one-step chunk: the memory of a run does not grow with the
    # scan's length, and each try then costs one step of all its runs.
    config = units[0].config.replace(steps=1, eval_every=1)
    unit = dataclasses.replace(units[0], config=config)
    compiled = simulator.compiled_run(config, dataset)
    per_unit = sweeps.memory_per_unit(compiled, [unit], dataset, width)
    _, limit = peak_bytes()
    available = sweeps.device_memory()
    fit = available // max(per_unit, 1)
    out = {
        "estimate_bytes_per_run": per_unit,
        "device_bytes_limit": limit,
        "available_bytes": available,
        "estimated_runs_that_fit": fit,
        "tries": [],
    }
    init, chunk, _, _ = compiled
    largest, stopped = None, "cap"
    for runs in try_sizes(sizes["sweep_runs"], fit, sizes["max_runs"]):
        if budget.spent():
            stopped = "time budget"
            break
        try:
            start = time.perf_counter()
            states = sweeps.batch_states([unit] * runs, dataset, init, width=width)
            analysis = chunk.lower(states).compile().memory_analysis()
            jax.block_until_ready(chunk(states))
            estimate = None
            if analysis is not None:
                estimate = int(
                    analysis.temp_size_in_bytes
                    + analysis.argument_size_in_bytes
                    + analysis.output_size_in_bytes
                )
            peak, _ = peak_bytes()
            out["tries"].append(
                {
                    "runs": runs,
                    "ok": True,
                    "estimate_bytes": estimate,
                    "peak_bytes_in_use": peak,
                    "s": time.perf_counter() - start,
                }
            )
            largest = runs
            del states
        except Exception as exc:  # noqa: BLE001  (out of memory ends the doubling)
            first = (str(exc).splitlines() or [""])[0][:200]
            out["tries"].append(
                {"runs": runs, "ok": False, "error": f"{type(exc).__name__}: {first}"}
            )
            stopped = "error"
            break
    out["largest_runs_per_program"] = largest
    out["stopped_by"] = stopped
    ok = [t for t in out["tries"] if t["ok"] and t.get("estimate_bytes")]
    if len(ok) >= 2:
        a, b = ok[0], ok[-1]
        out["estimate_bytes_per_extra_run"] = (b["estimate_bytes"] - a["estimate_bytes"]) / (
            b["runs"] - a["runs"]
        )
    return out


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def fmt(v, spec=".2f"):
    if v is None:
        return ""
    if isinstance(v, float):
        return format(v, spec) if math.isfinite(v) else str(v)
    return str(v)


def markdown(report: dict) -> str:
    m = report["machine"]
    out = [
        "# GPU suite",
        "",
        f"jax {m['jax']} on {m['jax_backend']} ({', '.join(m['jax_devices'])}); "
        f"jaxrobust sources `{m['jaxrobust_sources_sha256']}`; total {report['total_s']:.0f} s"
        + (" (--quick)" if report["quick"] else ""),
        "",
    ]
    sec = report["sections"]
    rules = sec.get("rules", {})
    if "blocks" in rules:
        out += ["## Rules against one memory pass", ""]
        for b in rules["blocks"]:
            if "skipped" in b:
                out += [f"n = {b['n']}, d = {b['d']:,}: skipped ({b['skipped']})", ""]
                continue
            out += [f"n = {b['n']}, d = {b['d']:,}: one pass {b['pass_ms']:.3f} ms", ""]
            out += ["| rule | ms | passes | note |", "|---|---:|---:|---|"]
            for r in b["rows"]:
                note = r.get("message", "") if r.get("status") != "ok" else ""
                out.append(
                    f"| {r['rule']} | {fmt(r.get('ms'), '.3f')} | "
                    f"{fmt(r.get('passes'), '.1f')} | {note[:90]} |"
                )
            out.append("")
    for name, title in (
        ("step", "ARC MNIST step"),
        ("sweep", "Sweep throughput"),
        ("memory", "Memory per run"),
    ):
        s = sec.get(name)
        if s is None:
            continue
        out += [f"## {title}", "", "| quantity | value |", "|---|---|"]
        for k, v in s.items():
            if k != "tries":
                out.append(f"| {k} | {fmt(v)} |")
        out.append("")
        if name == "memory" and s.get("tries"):
            out += ["| runs | ok | XLA estimate MiB | peak MiB | s |", "|---:|---|---:|---:|---:|"]
            for t in s["tries"]:
                est, pk = t.get("estimate_bytes"), t.get("peak_bytes_in_use")
                out.append(
                    f"| {t['runs']} | {t['ok']} | {fmt(est and est / 2**20, '.1f')} | "
                    f"{fmt(pk and pk / 2**20, '.1f')} | {fmt(t.get('s'), '.1f')} |"
                )
            out.append("")
    p = sec.get("precision")
    if p and "rows" in p:
        out += [
            f"## Distance products: default precision against HIGHEST (n = {p['n']}, "
            f"d = {p['d']:,}, spread {p['spread']})",
            "",
            "max |error| / max distance against float64:",
            "",
            "| offset | raw default | raw highest | centred default | centred highest | "
            "kernels | ms default / highest (raw) |",
            "|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in p["rows"]:
            if "skipped" in r:
                continue
            out.append(
                f"| {r['offset']} | {r['raw_default_max_rel_err']:.2e} | "
                f"{r['raw_highest_max_rel_err']:.2e} | {r['centred_default_max_rel_err']:.2e} | "
                f"{r['centred_highest_max_rel_err']:.2e} | {r['kernels_max_rel_err']:.2e} | "
                f"{r['raw_default_ms']:.3f} / {r['raw_highest_ms']:.3f} |"
            )
        out.append("")
    for name, err in report.get("errors", {}).items():
        out += [f"Section {name} failed: `{err.splitlines()[-1][:200]}`", ""]
    for name, why in report.get("skipped", {}).items():
        out += [f"Section {name} skipped: {why}", ""]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="folder for gpu_suite.json and gpu_suite.md")
    p.add_argument(
        "--data-dir",
        default=str(ROOT / "data" / "mnist"),
        help="MNIST IDX files (default: the git-ignored data/mnist of the checkout)",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes (a CPU check of the code)")
    p.add_argument(
        "--budget-s", type=float, default=None, help="whole suite (default 450; 150 quick)"
    )
    p.add_argument("--sections", nargs="+", default=list(SHARES), choices=list(SHARES))
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    total = args.budget_s if args.budget_s is not None else (150.0 if args.quick else 450.0)
    os.makedirs(args.out, exist_ok=True)
    start = time.monotonic()
    report = {
        "machine": bench.machine_info(),
        "quick": args.quick,
        "sizes": sizes,
        "budget_s": total,
        "sections": {},
        "errors": {},
        "skipped": {},
        "seconds": {},
    }
    context: dict = {}
    carried = 0.0  # time left over by earlier sections goes to the later ones
    for name in SHARES:
        if name not in args.sections:
            continue
        share = SHARES[name] * total + carried
        remaining = total - (time.monotonic() - start)
        budget = Budget(min(share, remaining))
        if budget.spent():
            report["skipped"][name] = "the suite's time budget is spent"
            continue
        t0 = time.monotonic()
        print(
            f"[{time.monotonic() - start:6.1f} s] {name} (budget {budget.left():.0f} s)", flush=True
        )
        try:
            if name == "rules":
                result = section_rules(sizes, budget)
            elif name == "step":
                result = section_step(sizes, budget, args.data_dir)
            elif name == "sweep":
                result = section_sweep(sizes, budget, args.data_dir, context)
            elif name == "precision":
                result = section_precision(sizes, budget)
            else:
                result = section_memory(sizes, budget, context)
            report["sections"][name] = result
        except Exception:  # noqa: BLE001  (a failed section must not lose the others)
            report["errors"][name] = traceback.format_exc()
            print(report["errors"][name], flush=True)
        used = time.monotonic() - t0
        report["seconds"][name] = used
        carried = max(0.0, share - used)
    report["total_s"] = time.monotonic() - start
    Path(args.out, "gpu_suite.json").write_text(json.dumps(report, indent=1, default=str))
    text = markdown(report)
    Path(args.out, "gpu_suite.md").write_text(text + "\n")
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
