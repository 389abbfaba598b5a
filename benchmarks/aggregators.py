#!/usr/bin/env python
"""Aggregator throughput: every jaxrobust rule against one memory pass, the
Gram matrix, and (when it is importable) ByzFL on the same data.

    python benchmarks/aggregators.py                       # n = 8 16 32 128
    python benchmarks/aggregators.py --n 16 --repeats 5    # the key setting
    python benchmarks/aggregators.py --n 16 --rules nnm caf --profile
    python benchmarks/aggregators.py --skip-byzfl --json out.json

For each ``n`` the input is one leaf of shape ``(n, d)`` float32 (default
``d = 1,663,370``, the parameter count of the ARC paper's MNIST CNN) drawn
from ``jax.random.normal``; ``f = n // 4 - 1`` (1, 3, 7, 31 for n = 8, 16,
32, 128). Every rule runs through its optax transformation
(``tx = jaxrobust.<rule>(...); tx.update(x, state)``) under ``jax.jit``; the
time is the best of ``--repeats`` calls after compilation, each waited for
with ``block_until_ready``.

References measured in the same run:

* one memory pass: ``sum(x[i] for i in range(n))`` under jit (XLA fuses the
  adds into one loop over the data);
* the Gram matrix as a plain ``x @ x.T`` under jit;
* the Gram matrix by ``jaxrobust.kernels.gram_matrix`` (our blocked kernel);
* torch's ``x @ x.T`` on the same data, when torch is importable.

ByzFL is never a dependency of jaxrobust. It lives in a separate benchmark
venv (see ``benchmarks/README.md``); its ``import`` needs ``torchvision``,
which has no CPU build there, so a minimal stand-in module is put into
``sys.modules`` first (ByzFL only uses it in its training benchmark, never in
the aggregators). ByzFL runs on ``torch.from_numpy`` of the same array
(converted once, outside the timing), best of ``--byzfl-repeats`` calls.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
try:
    import jaxrobust  # noqa: F401  (installed, e.g. pip install -e .)
except ImportError:  # a plain checkout
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jaxrobust as jr  # noqa: E402
from jaxrobust import kernels  # noqa: E402
from jaxrobust.rules import distance, geometric, mixing, spectral  # noqa: E402

D_DEFAULT = 1_663_370
N_DEFAULT = (8, 16, 32, 128)
BUCKET_SIZE = 2  # bucketing: s = 2 for both libraries
CLIP_NORM = 2.0  # static clipping threshold for both libraries
CC_TAU, CC_ITERS = 10.0, 3  # centered clipping: our defaults, passed to ByzFL too
GM_NU, GM_ITERS = 0.1, 8  # geometric median: our defaults, passed to ByzFL too

COORDINATEWISE = ("median", "trimmed_mean", "meamed")
# Rules whose cost is a Gram matrix (or distances) plus a pass over the data.
DISTANCE_BASED = ("krum", "multi_krum", "nnm", "geometric_median", "mda", "monna", "caf")
# Different random draws in the two libraries: outputs are not compared.
RANDOMISED = ("bucketing", "dnc")
# The targets of the summary at n = 16.
TARGET_N = 16
COORD_MAX_PASSES, COORD_MIN_SPEEDUP = 3.0, 50.0
DIST_TARGET_RULES = ("krum", "multi_krum", "nnm", "geometric_median", "mda")
DIST_MAX_RATIO, DIST_MIN_SPEEDUP = 2.0, 10.0


# glibc malloc maps every buffer over 32 MiB (and, from a thread arena, over
# 64 MiB) afresh and the kernel zero-fills it page by page on first touch:
# writing a new (16, 1.66M) float32 array costs ~26,000 page faults. These
# settings keep freed memory for reuse instead (see benchmarks/README.md).
MALLOC_REUSE_ENV = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(64 << 30),
}


def default_f(n: int) -> int:
    return max(0, n // 4 - 1)


# --------------------------------------------------------------------------
# The rules: ours (an optax transformation) and ByzFL's counterpart
# --------------------------------------------------------------------------
# Each entry: (our constructor (n, f) -> tx,
#              ByzFL class name or None, ByzFL kwargs (n, f) -> dict,
#              flags). Flags: "inplace" (ByzFL mutates its input: clone it
# before each call, outside the timing), "fresh" (ByzFL keeps state between
# calls: build a fresh instance per call, outside the timing).

RULES = {
    "mean": (lambda n, f: jr.mean(n=n), "Average", lambda n, f: {}, ()),
    "median": (lambda n, f: jr.median(f, n=n), "Median", lambda n, f: {}, ()),
    "trimmed_mean": (lambda n, f: jr.trimmed_mean(f, n=n), "TrMean", lambda n, f: {"f": f}, ()),
    "meamed": (lambda n, f: jr.meamed(f, n=n), "Meamed", lambda n, f: {"f": f}, ()),
    "geometric_median": (
        lambda n, f: jr.geometric_median(f, nu=GM_NU, iterations=GM_ITERS, n=n),
        "GeometricMedian",
        lambda n, f: {"nu": GM_NU, "T": GM_ITERS},
        (),
    ),
    "krum": (lambda n, f: jr.krum(f, n=n), "Krum", lambda n, f: {"f": f}, ()),
    "multi_krum": (lambda n, f: jr.multi_krum(f, n=n), "MultiKrum", lambda n, f: {"f": f}, ()),
    "mda": (lambda n, f: jr.mda(f, n=n), "MDA", lambda n, f: {"f": f}, ()),
    "monna": (lambda n, f: jr.monna(f, 0, n=n), "MoNNA", lambda n, f: {"f": f, "idx": 0}, ()),
    "centered_clipping": (
        lambda n, f: jr.centered_clipping(tau=CC_TAU, iterations=CC_ITERS, n=n),
        "CenteredClipping",
        lambda n, f: {"tau": CC_TAU, "L": CC_ITERS},
        ("fresh",),
    ),
    "dnc": (lambda n, f: jr.dnc(f, n=n), None, None, ()),
    "caf": (lambda n, f: jr.caf(f, n=n), "CAF", lambda n, f: {"f": f}, ()),
    "arc": (lambda n, f: jr.arc(f, n=n), "ARC", lambda n, f: {"f": f}, ("inplace",)),
    "clip": (
        lambda n, f: jr.clip(CLIP_NORM),
        "Clipping",
        lambda n, f: {"c": CLIP_NORM},
        ("inplace",),
    ),
    "nnm": (lambda n, f: jr.nnm(f, n=n), "NNM", lambda n, f: {"f": f}, ()),
    "bucketing": (
        lambda n, f: jr.bucketing(BUCKET_SIZE, n=n),
        "Bucketing",
        lambda n, f: {"s": BUCKET_SIZE},
        (),
    ),
}


# --------------------------------------------------------------------------
# ByzFL, imported behind a torchvision stand-in
# --------------------------------------------------------------------------


def _install_torchvision_stub() -> None:
    """Put a minimal ``torchvision`` (and the submodules ByzFL names) into sys.modules.

    ByzFL imports ``from torchvision import datasets, transforms`` in its
    training benchmark only; none of the aggregators or attacks use them.
    """
    if "torchvision" in sys.modules:
        return
    try:
        importlib.import_module("torchvision")
        return
    except Exception:  # no (working) torchvision: stand in for it
        sys.modules.pop("torchvision", None)
    root = types.ModuleType("torchvision")
    root.__path__ = []  # a package, so "torchvision.x" imports resolve
    root.__version__ = "0.0.0-stub"
    for sub in ("datasets", "transforms", "models", "utils", "io", "ops"):
        mod = types.ModuleType(f"torchvision.{sub}")

        def _placeholder(name, _sub=sub):
            # ByzFL builds transforms.Compose([...]) at import time: any name
            # is a class that can be constructed, and fails only when used.
            if name.startswith("__"):
                raise AttributeError(name)

            def _unusable(self, *args, **kwargs):
                raise RuntimeError(f"torchvision.{_sub}.{name} is a benchmark stand-in")

            return type(
                name,
                (),
                {"__init__": lambda self, *a, **k: None, "__call__": _unusable},
            )

        mod.__getattr__ = _placeholder
        setattr(root, sub, mod)
        sys.modules[f"torchvision.{sub}"] = mod
    sys.modules["torchvision"] = root


def load_byzfl():
    """``(torch, the byzfl.aggregators package, None)``, or ``(.., None, reason)``."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        return None, None, f"torch not importable: {exc}"
    _install_torchvision_stub()
    try:
        importlib.import_module("byzfl")
        # byzfl/__init__ star-imports its subpackages, which rebinds the
        # attribute ``byzfl.aggregators`` to the *module* aggregators.py (no
        # ARC, NNM, ...): take the package from sys.modules instead.
        aggregators = importlib.import_module("byzfl.aggregators")
    except Exception as exc:  # noqa: BLE001
        return torch, None, f"byzfl not importable: {type(exc).__name__}: {exc}"
    return torch, aggregators, None


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------


def time_jax(fn, args, repeats: int, keep: bool = False):
    """(best seconds after compilation, seconds of the first call incl. compilation[, output])."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    if not keep:
        del out
    best = math.inf
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    # Minor page faults per call: fresh large buffers are zero-filled page by page.
    time_jax.faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / repeats
    return (best, first, out) if keep else (best, first)


def time_call(call, repeats: int, prepare=None, keep: bool = False):
    """Best wall time of ``call(prepare())`` (``prepare`` runs outside the timing)."""
    best, out = math.inf, None
    for _ in range(repeats):
        arg = prepare() if prepare is not None else None
        t0 = time.perf_counter()
        out = call(arg)
        best = min(best, time.perf_counter() - t0)
        del arg
        if not keep:
            out = None
    return (best, out) if keep else best


def mem_available_bytes() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def byzfl_skip_reason(rule: str, n: int, f: int, d: int):
    """Why ByzFL cannot run this rule at this size in reasonable time or memory, or None."""
    if rule == "mda":
        count = math.comb(n, n - f)
        if count > distance.MDA_MAX_SUBSETS:
            return f"skipped: ByzFL MDA loops over C({n},{f}) = {count:,} subsets in Python"
    if rule == "nnm":
        # vectors[indices] gathers an (n, n - f, d) float32 tensor.
        need = n * (n - f) * d * 4
        if need > 0.6 * mem_available_bytes():
            return f"skipped: ByzFL NNM gathers an (n, n-f, d) tensor of {need / 2**30:.0f} GiB"
    return None


# --------------------------------------------------------------------------
# One setting of n
# --------------------------------------------------------------------------


def make_input(n: int, d: int, seed: int):
    return jax.random.normal(jax.random.key(seed), (n, d), jnp.float32)


def references(x, n: int, repeats: int, torch_mod, xt):
    one_pass = jax.jit(lambda a: sum(a[i] for i in range(n)))
    gram_plain = jax.jit(lambda a: a @ a.T)
    gram_ours = jax.jit(kernels.gram_matrix)
    refs = {}
    refs["pass_ms"] = time_jax(one_pass, (x,), repeats)[0] * 1e3
    # What any rule that outputs n vectors (arc, clip, nnm) pays at least.
    refs["write_ms"] = time_jax(jax.jit(lambda a: a * 2.0), (x,), repeats)[0] * 1e3
    refs["gram_plain_ms"] = time_jax(gram_plain, (x,), repeats)[0] * 1e3
    refs["gram_kernel_ms"] = time_jax(gram_ours, (x,), repeats)[0] * 1e3
    if torch_mod is not None and xt is not None:
        torch_mod.mm(xt[:, :1024], xt[:, :1024].T)  # warm up the thread pool
        refs["torch_gram_ms"] = time_call(lambda _: torch_mod.mm(xt, xt.T), repeats) * 1e3
    return refs


def run_ours(rule: str, x, n: int, f: int, repeats: int):
    """(record, output of the first call or None)."""
    build = RULES[rule][0]
    try:
        tx = build(n, f)
        state = tx.init(x[0])
        fn = jax.jit(lambda a, s: tx.update(a, s)[0])
        best, first, out = time_jax(fn, (x, state), repeats, keep=True)
    except ValueError as exc:
        return {"status": "refused", "message": str(exc)}, None
    except Exception as exc:  # noqa: BLE001  (report, keep going)
        return {"status": "error", "message": f"{type(exc).__name__}: {exc}"}, None
    record = {"status": "ok", "ms": best * 1e3, "first_call_s": first, "faults": time_jax.faults}
    if out.shape == x.shape:
        record["loop_ms"] = time_in_loop(tx, state, x, repeats)
    return record, out


LOOP_CALLS = 16


def time_in_loop(tx, state, x, repeats: int) -> float:
    """Milliseconds per call of a pre-aggregator run ``LOOP_CALLS`` times in one jitted loop.

    This is how the simulator calls a rule: inside a compiled ``lax.scan``, where
    XLA allocates its buffers once per execution, so the ``(n, d)`` output does
    not pay for fresh pages on every call (it still does once per loop, for
    the loop's copy of the input). Each call's input is the previous call's
    output, so nothing can be hoisted out of the loop. Only for rules whose
    output has the input's shape.
    """

    def body(_, carry):
        a, s = carry
        return tx.update(a, s)

    loop = jax.jit(lambda a, s: jax.lax.fori_loop(0, LOOP_CALLS, body, (a, s))[0])
    best = time_jax(loop, (x, state), max(1, repeats // 2))[0]
    return best * 1e3 / LOOP_CALLS


def run_byzfl(rule: str, byzfl, torch_mod, xt, n: int, f: int, d: int, repeats: int):
    """(record, output of the last call or None)."""
    _, cls_name, kwargs_of, flags = RULES[rule]
    if cls_name is None:
        return {"status": "absent", "message": "ByzFL has no such rule"}, None
    cls = getattr(byzfl, cls_name, None)
    if cls is None:
        return {"status": "absent", "message": f"byzfl.aggregators.{cls_name} not found"}, None
    reason = byzfl_skip_reason(rule, n, f, d)
    if reason:
        return {"status": "skipped", "message": reason, "class": cls_name}, None
    kwargs = kwargs_of(n, f)
    if "inplace" in flags:
        agg = cls(**kwargs)

        def prepare():
            return xt.clone()

        def call(arg):
            return agg(arg)
    elif "fresh" in flags:

        def prepare():
            return cls(**kwargs)

        def call(agg):
            return agg(xt)
    else:
        agg = cls(**kwargs)
        prepare = None

        def call(_):
            return agg(xt)

    try:
        with torch_mod.no_grad():
            best, out = time_call(call, repeats, prepare, keep=True)
    except Exception as exc:  # noqa: BLE001
        record = {"status": "error", "message": f"{type(exc).__name__}: {exc}", "class": cls_name}
        return record, None
    return {"status": "ok", "ms": best * 1e3, "class": cls_name, "kwargs": kwargs}, out


def max_abs_diff(ours, theirs):
    """Largest coordinate difference between our output and ByzFL's, or None if shapes differ."""
    try:
        a = np.asarray(jax.tree_util.tree_leaves(ours)[0])
        b = theirs.detach().numpy()
    except Exception:  # noqa: BLE001
        return None
    if a.shape != b.shape:
        return None
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


# --------------------------------------------------------------------------
# Sub-pieces, for finding what is slow (--profile)
# --------------------------------------------------------------------------


def profile_pieces(x, n: int, f: int, repeats: int) -> dict:
    """Time the kernels the distance and randomised rules are built from."""

    d = x.shape[1]
    key = jax.random.key(1)
    gram = jax.jit(kernels.gram_matrix)(x)
    dist = jax.jit(kernels.pairwise_squared_distances)(x)
    weights_nn = jnp.full((n, n), 1.0 / n, jnp.float32)
    w = jnp.full((n,), 1.0 / n, jnp.float32)
    cols = jax.random.choice(key, d, (min(10_000, d),), replace=False)

    pieces = {
        "kernels.gram_matrix": (kernels.gram_matrix, (x,)),
        "kernels.pairwise_squared_distances": (kernels.pairwise_squared_distances, (x,)),
        "kernels.worker_squared_norms": (kernels.worker_squared_norms, (x,)),
        "kernels.squared_distances_to(x, x[0])": (
            lambda a: kernels.squared_distances_to(a, a[0]),
            (x,),
        ),
        "kernels.weighted_sum(w, x)": (lambda ww, a: kernels.weighted_sum(ww, a), (w, x)),
        "kernels.mix_rows(W(n,n), x)": (lambda ww, a: kernels.mix_rows(ww, a), (weights_nn, x)),
        "kernels.mix_rows(W, x, finite)": (
            lambda ww, a: kernels.mix_rows(ww, a, jnp.ones((n,), bool)),
            (weights_nn, x),
        ),
        "plain jnp.dot(W(n,n), x)": (lambda ww, a: jnp.dot(ww, a), (weights_nn, x)),
        "sum_j W[:, j] * x[j] (n fused rows)": (
            lambda ww, a: jnp.stack([sum(ww[i, j] * a[j] for j in range(n)) for i in range(n)]),
            (weights_nn, x),
        ),
        "jax.random.choice(d, 10000, replace=False)": (
            lambda k: jax.random.choice(k, d, (min(10_000, d),), replace=False),
            (key,),
        ),
        "jax.random.permutation(d)[:10000]": (
            lambda k: jax.random.permutation(k, d)[: min(10_000, d)],
            (key,),
        ),
        "jnp.take(x, cols, axis=1)": (lambda a, c: jnp.take(a, c, axis=1), (x, cols)),
        "functional._flat_columns(x, cols)": (
            lambda a, c: spectral._flat_columns(a, c),
            (x, cols),
        ),
        "functional.caf_weights(gram, f)": (lambda g: spectral.caf_weights(g, f), (gram,)),
        "functional.weiszfeld_weights(gram)": (
            lambda g: geometric.weiszfeld_weights(g, nu=GM_NU, iterations=GM_ITERS),
            (gram,),
        ),
        "functional.krum_scores(dist, f)": (lambda dd: distance.krum_scores(dd, f), (dist,)),
        "preaggregators.nnm_weights(dist, f)": (lambda dd: mixing.nnm_weights(dd, f), (dist,)),
        "kernels.smallest_mask(dist, n-f)": (lambda dd: kernels.smallest_mask(dd, n - f), (dist,)),
    }

    # Candidate fixes, written here (not in jaxrobust) to measure them side by side.
    def select_sort(rows):
        # The same network with compare + select instead of jnp.minimum/maximum
        # (XLA lowers those with NaN propagation; NaN is already +inf here).
        out = [jnp.where(jnp.isnan(r), jnp.inf, r) for r in rows]
        for i, j in kernels.sorting_network(len(out)):
            less = out[i] < out[j]
            out[i], out[j] = jnp.where(less, out[i], out[j]), jnp.where(less, out[j], out[i])
        return out

    def select_median(a):
        s = select_sort([a[i] for i in range(n)])
        return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])

    def select_trimmed_mean(a):
        s = select_sort([a[i] for i in range(n)])
        return sum(s[f : n - f]) / (n - 2 * f)

    def nnm_plain_dot(a):
        weights, finite = mixing.nnm_weights(kernels.pairwise_squared_distances(a), f)
        # Zero the bad rows only when there are some; mix with XLA's plain dot.
        return jax.lax.cond(
            jnp.all(finite),
            lambda: jnp.dot(weights, a),
            lambda: jnp.dot(weights, jnp.where(finite[:, None], a, 0.0)),
        )

    def topk_subsample(k):
        # Indices of the largest of d iid 30-bit keys (bit patterns of
        # non-negative float32s order like the integers): a uniform subset.
        bits = jax.random.bits(k, (d,), jnp.uint32) >> 2
        return jax.lax.top_k(jax.lax.bitcast_convert_type(bits, jnp.float32), min(10_000, d))[1]

    if n <= 64:  # the network's compile time grows quickly with n
        pieces["candidate: median, compare+select network"] = (select_median, (x,))
        pieces["candidate: trimmed_mean, compare+select network"] = (select_trimmed_mean, (x,))
    pieces["candidate: nnm = distances + cond + plain jnp.dot"] = (nnm_plain_dot, (x,))
    pieces["candidate: lax.top_k of random keys (10000 of d)"] = (topk_subsample, (key,))

    if math.comb(n, n - f) <= distance.MDA_MAX_SUBSETS:

        def mda_search(dd):
            masks = jnp.asarray(distance._subset_masks(n, n - f))

            def diameter(mask):
                pair = mask[:, None] & mask[None, :]
                return jnp.max(jnp.where(pair, dd, -jnp.inf))

            return jnp.argmin(jax.lax.map(diameter, masks, batch_size=4096))

        pieces["mda subset search on dist"] = (mda_search, (dist,))

    out = {}
    for name, (fn, args) in pieces.items():
        try:
            best, first = time_jax(jax.jit(fn), args, repeats)
            out[name] = {"ms": best * 1e3, "first_call_s": first}
        except Exception as exc:  # noqa: BLE001
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


# --------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------


def fmt_ms(v):
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_ratio(v):
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}x"
    if v >= 10:
        return f"{v:.1f}x"
    return f"{v:.2f}x"


def print_table(res: dict, with_byzfl: bool) -> None:
    n, f, refs = res["n"], res["f"], res["references"]
    print()
    print(f"### n = {n}, f = {f}, d = {res['d']:,} ({n * res['d'] * 4 / 1e6:,.0f} MB)")
    print()
    if "loadavg_1min" in res:
        before, after = res["loadavg_1min"]
        print(
            f"1-minute load average before / after: {before:.2f} / {after:.2f} "
            f"(nproc {os.cpu_count()})"
        )
        print()
    line = (
        f"References: one pass {fmt_ms(refs['pass_ms'])} ms | x * 2 (writes n x d) "
        f"{fmt_ms(refs['write_ms'])} ms | x @ x.T (XLA) "
        f"{fmt_ms(refs['gram_plain_ms'])} ms | kernels.gram_matrix "
        f"{fmt_ms(refs['gram_kernel_ms'])} ms"
    )
    if "torch_gram_ms" in refs:
        line += f" | torch x @ x.T {fmt_ms(refs['torch_gram_ms'])} ms"
    print(line)
    print()
    head = (
        "| rule | ms | / pass | / (gram + pass) | ms in a loop | / (gram + pass) in a loop "
        "| compile + 1st call (s) | page faults / call |"
    )
    sep = "|---|---:|---:|---:|---:|---:|---:|---:|"
    if with_byzfl:
        head += " ByzFL class | ByzFL ms | ByzFL / ours | max abs diff |"
        sep += "---|---:|---:|---:|"
    print(head)
    print(sep)
    for rule, row in res["rules"].items():
        ours = row["ours"]
        if ours["status"] == "ok":
            cells = [
                fmt_ms(ours["ms"]),
                fmt_ratio(ours["per_pass"]),
                fmt_ratio(ours.get("per_gram_pass")),
                fmt_ms(ours.get("loop_ms")),
                fmt_ratio(ours.get("loop_per_gram_pass")),
                f"{ours['first_call_s']:.1f}",
                f"{ours['faults']:,.0f}",
            ]
        else:
            cells = [f"{ours['status']}: {ours['message']}", "-", "-", "-", "-", "-", "-"]
        if with_byzfl:
            b = row.get("byzfl", {"status": "absent", "message": ""})
            if b["status"] == "ok":
                diff = row.get("max_abs_diff")
                cells += [
                    b["class"],
                    fmt_ms(b["ms"]),
                    fmt_ratio(row.get("speedup")),
                    "-" if diff is None else f"{diff:.1e}",
                ]
            elif b["status"] == "absent":
                cells += ["(none)", "-", "-", "-"]
            else:
                msg = b["message"]
                if not msg.startswith(b["status"]):
                    msg = f"{b['status']}: {msg}"
                cells += [b.get("class", "-"), msg, "-", "-"]
        print(f"| {rule} | " + " | ".join(cells) + " |")
    if res.get("profile"):
        print()
        print(f"Sub-pieces at n = {n} (best of repeats, ms):")
        print()
        print("| piece | ms | / pass |")
        print("|---|---:|---:|")
        for name, p in res["profile"].items():
            if "ms" in p:
                print(f"| {name} | {fmt_ms(p['ms'])} | {fmt_ratio(p['ms'] / refs['pass_ms'])} |")
            else:
                print(f"| {name} | {p['error']} | - |")
    sys.stdout.flush()


def summary(results: list[dict], with_byzfl: bool) -> list[dict]:
    res = next((r for r in results if r["n"] == TARGET_N), None)
    print()
    print(f"### Targets at n = {TARGET_N}")
    print()
    if res is None:
        print(f"n = {TARGET_N} was not measured in this run: no summary.")
        return []
    lines = []

    def check(rule, what, value, ok):
        verdict = "n/a" if value is None else ("PASS" if ok(value) else "MISS")
        lines.append({"rule": rule, "target": what, "value": value, "verdict": verdict})

    for rule in COORDINATEWISE + DIST_TARGET_RULES:
        row = res["rules"].get(rule)
        if row is None:
            continue
        ours = row["ours"]
        if rule in COORDINATEWISE:
            v = ours.get("per_pass") if ours["status"] == "ok" else None
            check(rule, f"<= {COORD_MAX_PASSES:g} passes", v, lambda v: v <= COORD_MAX_PASSES)
            min_speed = COORD_MIN_SPEEDUP
        else:
            v = ours.get("per_gram_pass") if ours["status"] == "ok" else None
            check(rule, f"<= {DIST_MAX_RATIO:g}x (gram + pass)", v, lambda v: v <= DIST_MAX_RATIO)
            v = ours.get("loop_per_gram_pass") if ours["status"] == "ok" else None
            if v is not None:
                check(
                    rule,
                    f"<= {DIST_MAX_RATIO:g}x (gram + pass), in a loop",
                    v,
                    lambda v: v <= DIST_MAX_RATIO,
                )
            min_speed = DIST_MIN_SPEEDUP
        s = row.get("speedup") if with_byzfl else None
        check(rule, f">= {min_speed:g}x faster than ByzFL", s, lambda v, m=min_speed: v >= m)

    print("| rule | target | measured | verdict |")
    print("|---|---|---:|---|")
    for ln in lines:
        print(f"| {ln['rule']} | {ln['target']} | {fmt_ratio(ln['value'])} | {ln['verdict']} |")
    passed = sum(ln["verdict"] == "PASS" for ln in lines)
    missed = sum(ln["verdict"] == "MISS" for ln in lines)
    print()
    print(f"{passed} PASS, {missed} MISS, {len(lines) - passed - missed} n/a")
    return lines


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def machine_info() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "nproc": os.cpu_count(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(dv) for dv in jax.devices()],
        "numpy": np.__version__,
    }
    digest = hashlib.sha256()
    for path in sorted(Path(jr.__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    info["jaxrobust_sources_sha256"] = digest.hexdigest()[:16]
    try:
        info["lscpu"] = subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=False
        ).stdout.splitlines()[:12]
    except OSError:
        pass
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=list(N_DEFAULT), help="worker counts")
    p.add_argument("--d", type=int, default=D_DEFAULT, help="coordinates per worker")
    p.add_argument("--f", type=int, default=None, help="override f (default n // 4 - 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per rule (best is kept)")
    p.add_argument(
        "--byzfl-repeats",
        type=int,
        default=None,
        help="timed ByzFL calls per rule (default 1 at n >= 128, 3 otherwise)",
    )
    p.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    p.add_argument("--skip-byzfl", action="store_true", help="do not run ByzFL")
    p.add_argument("--profile", action="store_true", help="also time the kernels' sub-pieces")
    p.add_argument(
        "--malloc-reuse",
        action="store_true",
        help="re-run under glibc settings that reuse freed memory instead of mmap'ing "
        "(and page-faulting) every large buffer: MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 "
        "MALLOC_TRIM_THRESHOLD_=64GiB",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=str, default=None, help="dump all measurements to this path")
    args = p.parse_args(argv)
    if args.malloc_reuse and argv is None and os.environ.get("MALLOC_MMAP_MAX_") != "0":
        # glibc reads these once at start-up: re-execute with them set.
        os.environ.update(MALLOC_REUSE_ENV)
        os.execv(sys.executable, [sys.executable] + sys.argv)

    torch_mod = byzfl = None
    byzfl_note = "skipped (--skip-byzfl)"
    if not args.skip_byzfl:
        torch_mod, byzfl, byzfl_note = load_byzfl()
    with_byzfl = byzfl is not None

    info = machine_info()
    if torch_mod is not None:
        info["torch"] = torch_mod.__version__
        info["torch_threads"] = torch_mod.get_num_threads()
    if byzfl is not None:
        try:
            from importlib.metadata import version

            info["byzfl"] = version("byzfl")
        except Exception:  # noqa: BLE001
            info["byzfl"] = getattr(byzfl, "__version__", "?")
    info["command"] = " ".join([os.path.basename(sys.executable)] + sys.argv)
    info["malloc_env"] = {k: os.environ[k] for k in MALLOC_REUSE_ENV if k in os.environ}
    info["xla_flags"] = os.environ.get("XLA_FLAGS", "")

    print("# jaxrobust aggregator benchmark")
    print()
    print(f"command: {info['command']}")
    print(
        f"jax {info['jax']} ({info['jax_backend']}, {len(info['jax_devices'])} device(s)), "
        f"nproc {info['nproc']}, torch {info.get('torch', '-')}, byzfl {info.get('byzfl', '-')}"
    )
    print(f"jaxrobust sources sha256: {info['jaxrobust_sources_sha256']}")
    if not with_byzfl:
        print(f"ByzFL: {byzfl_note}")
    print(
        f"malloc env: {info['malloc_env'] or 'glibc defaults'}; "
        f"repeats {args.repeats}; times are the best call after compilation"
    )
    sys.stdout.flush()

    results = []
    for n in args.n:
        f = default_f(n) if args.f is None else args.f
        load_before = os.getloadavg()
        x = make_input(n, args.d, args.seed)
        jax.block_until_ready(x)
        xt = None
        if torch_mod is not None:
            xt = torch_mod.from_numpy(np.array(x))  # a writable copy, converted once
        refs_start = references(x, n, args.repeats, torch_mod, xt)
        res = {"n": n, "f": f, "d": args.d, "rules": {}}
        byzfl_repeats = args.byzfl_repeats or (1 if n >= 128 else 3)
        for rule in args.rules:
            ours, our_out = run_ours(rule, x, n, f, args.repeats)
            row = {"ours": ours}
            if with_byzfl:
                b, their_out = run_byzfl(rule, byzfl, torch_mod, xt, n, f, args.d, byzfl_repeats)
                row["byzfl"] = b
                if b["status"] == "ok" and ours["status"] == "ok":
                    row["speedup"] = b["ms"] / ours["ms"]
                    if rule not in RANDOMISED:
                        row["max_abs_diff"] = max_abs_diff(our_out, their_out)
                del their_out
            del our_out
            res["rules"][rule] = row
            print(
                f"  n={n} {rule}: ours {ours.get('ms', ours['status'])}"
                + (
                    f", byzfl {row['byzfl'].get('ms', row['byzfl']['status'])}"
                    if with_byzfl
                    else ""
                ),
                file=sys.stderr,
                flush=True,
            )
        # The references again, after the rules: the first measurement can pay
        # for page faults that later ones do not (glibc raises its mmap
        # threshold as buffers are freed). Keep the best of both.
        refs_end = references(x, n, args.repeats, torch_mod, xt)
        refs = {k: min(refs_start[k], refs_end[k]) for k in refs_start}
        res["references"] = refs
        res["references_start_end"] = {"start": refs_start, "end": refs_end}
        gram_pass = refs["gram_kernel_ms"] + refs["pass_ms"]
        for rule, row in res["rules"].items():
            ours = row["ours"]
            if ours["status"] == "ok":
                ours["per_pass"] = ours["ms"] / refs["pass_ms"]
                if rule in DISTANCE_BASED:
                    ours["per_gram_pass"] = ours["ms"] / gram_pass
                    if "loop_ms" in ours:
                        ours["loop_per_gram_pass"] = ours["loop_ms"] / gram_pass
        if args.profile:
            res["profile"] = profile_pieces(x, n, f, args.repeats)
        # Other processes on the machine show up here: this run alone keeps it near 1-2.
        res["loadavg_1min"] = [load_before[0], os.getloadavg()[0]]
        results.append(res)
        print_table(res, with_byzfl)
        del x, xt

    verdicts = summary(results, with_byzfl)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "machine": info,
                    "byzfl_note": byzfl_note if not with_byzfl else None,
                    "args": vars(args),
                    "results": results,
                    "targets": verdicts,
                },
                fh,
                indent=2,
            )
        print(f"\nmeasurements written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
