"""Property-based tests over every rule of the shared table (``test_rules.RULES``).

Hypothesis draws the number of workers ``n``, the declared ``f`` (inside and
outside each rule's bound), the pytree's shapes, the dtype, the data's scale
and common offset, and which rows are bad and how (NaN, +-inf, mixed, entries
near the float32 maximum). For every draw:

- a setting outside the rule's bound (the papers' bounds: ``n > 2f``, Krum's
  ``n > 2f + 2``, NNM's ``n > f``, none for the mean, clipping and
  centered clipping) is refused with a ``ValueError`` naming ``f`` and ``n``;
  one inside it runs;
- up to ``f`` bad rows never make a robust rule's output non-finite (MoNNA's
  trusted row, row 0, stays finite: see the README);
- the output does not depend on the workers' order (invariant rules), or
  follows it (equivariant pre-aggregators: the good rows' outputs), bad rows
  included.

The runs are deterministic: the ``ci`` profile of ``tests/conftest.py``
(derandomized, no example database) applies, and each test fixes its own
number of examples, so CI runs the same cases every time in a few seconds.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_rules import RULES, as_flat, run

BY_NAME = {rule.name: rule for rule in RULES}

#: Each rule's bound on (n, f), as its paper states it.
BOUNDS = {
    "mean": lambda n, f: True,
    "centered_clipping": lambda n, f: True,
    "clip": lambda n, f: True,
    "nnm": lambda n, f: n > f,
    "krum": lambda n, f: n > 2 * f + 2,
    "multi_krum": lambda n, f: n > 2 * f + 2,
    "multi_krum_m2": lambda n, f: n > 2 * f + 2,
}


def within_bound(name: str, n: int, f: int) -> bool:
    return BOUNDS.get(name, lambda n, f: n > 2 * f)(n, f)


DTYPES = {"float32": (jnp.float32, 1e-4), "bfloat16": (jnp.bfloat16, 3e-2)}
#: Leaf shapes of the worker-stacked pytree (the worker axis comes first).
SHAPES = (((4,),), ((2, 3), (3,)))
BAD = {
    "nan": lambda rng, shape: np.full(shape, np.nan),
    "inf": lambda rng, shape: np.full(shape, np.inf),
    "neg_inf": lambda rng, shape: np.full(shape, -np.inf),
    "mixed": lambda rng, shape: rng.choice([np.nan, np.inf, -np.inf, 1.0], size=shape),
    "huge": lambda rng, shape: np.full(shape, 3e38) * rng.choice([-1.0, 1.0], size=shape),
}
#: Four examples per rule in CI (each new shape compiles); more with
#: HYPOTHESIS_MAX_EXAMPLES=100 HYPOTHESIS_PROFILE=explore. Derandomized, without
#: a database and without deadline: the profile of tests/conftest.py.
PROPERTIES = settings(
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "4")),
    suppress_health_check=[HealthCheck.too_slow],
)


def largest_f(name: str, n: int) -> int:
    """The largest ``f`` within the rule's bound at ``n`` (``n - 1`` without a bound)."""
    return max((f for f in range(n) if within_bound(name, n, f)), default=-1)


@st.composite
def settings_of(draw, name: str):
    """One setting; the simplest draws (shrunk to first) are already hard ones: the largest
    ``f`` of the bound with ``f`` bad rows, or the first ``f`` outside the bound."""
    n = draw(st.sampled_from([8, 11, 5, 3]))
    top = largest_f(name, n)
    outside = draw(st.booleans()) and top < n
    if outside:
        f = top + 1 + draw(st.integers(0, 1))
    else:
        f = max(top - draw(st.integers(0, 2)), 0)
    leaves = draw(st.sampled_from(SHAPES[::-1]))
    dtype = draw(st.sampled_from(sorted(DTYPES, reverse=True)))  # float32 first
    scale = 10.0 ** draw(st.integers(-3, 3))
    offset = draw(st.sampled_from([3.0, 0.0]))  # in units of the spread
    seed = draw(st.integers(0, 2**16))
    rows = list(range(1, n)) if name == "monna" else list(range(n))  # MoNNA trusts row 0
    # up to f bad rows (a minority where the rule has no f)
    count = 0 if outside else min(f, len(rows), n - 1 if name in BOUNDS else f)
    if name in ("mean", "centered_clipping", "clip"):
        count = min(count, (n - 1) // 2)
    if not BY_NAME[name].robust:
        count = 0  # the mean: one bad row spoils it (tests/test_rules.py)
    count -= draw(st.integers(0, count)) if count and draw(st.booleans()) else 0
    bad_rows = draw(st.permutations(rows))[:count]
    patterns = [draw(st.sampled_from(sorted(BAD))) for _ in bad_rows]
    permutation = np.array(draw(st.permutations(range(n))))
    bad = dict(zip(bad_rows, patterns, strict=True))
    return n, f, leaves, dtype, scale, offset, seed, bad, permutation


def make_input(n, leaves, dtype, scale, offset, seed, bad):
    rng = np.random.default_rng(seed)
    tree = {}
    for i, shape in enumerate(leaves):
        centre = offset * scale * rng.standard_normal(shape)
        values = centre + scale * rng.standard_normal((n, *shape))
        for row, pattern in bad.items():
            values[row] = BAD[pattern](rng, shape)
        with np.errstate(over="ignore"):
            tree[f"leaf{i}"] = jnp.asarray(values, DTYPES[dtype][0])
    return tree


@functools.cache
def jitted(name: str, n: int, f: int):
    tx = BY_NAME[name].build(n, f)
    return jax.jit(lambda tree: run(tx, tree))


def check(name: str, case) -> None:
    n, f, leaves, dtype, scale, offset, seed, bad, perm = case
    rule = BY_NAME[name]
    tree = make_input(n, leaves, dtype, scale, offset, seed, bad)
    if not within_bound(name, n, f):
        with pytest.raises(ValueError) as info:
            jitted(name, n, f)(tree)
        message = str(info.value)
        assert "f" in message and str(f) in message and ("n" in message), message
        return
    out = as_flat(rule, jitted(name, n, f)(tree))
    if rule.robust or not bad:
        finite = out if rule.reduces else np.delete(out, list(bad), axis=0)
        assert np.isfinite(finite).all(), f"{name}: non-finite output with bad rows {bad}"
    if rule.permutation == "none":
        return
    if "krum" in name and n - f - 2 <= 1:
        # each score is one distance: the closest pair ties by construction (index breaks it)
        return
    shuffled = jax.tree_util.tree_map(lambda leaf: leaf[perm], tree)
    got = as_flat(rule, jitted(name, n, f)(shuffled))
    want = out[perm] if rule.permutation == "equivariant" else out
    if rule.permutation == "equivariant":  # a bad row's own output is not specified
        good = [i for i in range(n) if perm[i] not in bad]
        got, want = got[good], want[good]
    tol = DTYPES[dtype][1] * scale * (1 + offset)
    np.testing.assert_allclose(got, want, rtol=DTYPES[dtype][1], atol=tol, equal_nan=True)


@pytest.mark.parametrize("name", list(BY_NAME))
def test_bounds_bad_rows_and_worker_order(name):
    @PROPERTIES
    @given(case=settings_of(name))
    def prop(case):
        check(name, case)

    prop()


def test_the_bounds_table_covers_every_rule_of_the_shared_table():
    """Every rule is in the table, with the default bound (n > 2f) or its own."""
    assert set(BOUNDS) <= set(BY_NAME)
    for name in BY_NAME:
        assert within_bound(name, 3, 1) == (name not in ("krum", "multi_krum", "multi_krum_m2"))
        assert within_bound(name, 5, 2) == (name not in ("krum", "multi_krum", "multi_krum_m2"))
