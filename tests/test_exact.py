"""Control flow that must not depend on float rounding, against float64 references.

CAF (Allouah, Guerraoui and Stephan, ICML 2025) removes at every round the
workers whose ``tau_i`` equals ``max_j tau_j``; the removal is decided by a
comparison, so the path of the jitted float32 rule is the algorithm's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref

from jaxrobust.rules import spectral


def _cases(count: int, seed: int):
    """``count`` random (x, f) with planted outliers, several shapes per (n, f, d)."""
    rng = np.random.default_rng(seed)
    settings = [(11, 3, 5), (7, 2, 3), (9, 4, 2), (5, 1, 1), (13, 5, 8), (6, 2, 12)]
    out = []
    for k in range(count):
        n, f, d = settings[k % len(settings)]
        x = rng.standard_normal((n, d))
        kind = k % 4
        if kind == 1:  # f far outliers
            x[:f] += 10.0 * rng.standard_normal(d)
        elif kind == 2:  # heavy tails
            x = rng.standard_t(2, (n, d))
        elif kind == 3:  # an offset far larger than the spread
            x = x + 1e3 * rng.standard_normal(d)
        out.append((x.astype(np.float32), f))
    return out


CAF_CASES = _cases(240, seed=11)


@pytest.mark.parametrize("batch", range(4))
def test_caf_follows_the_float64_algorithm_on_random_cases(batch):
    """240 random cases (60 per batch), jitted float32 against float64 numpy."""
    rules = {}
    worst = 0.0
    for x, f in CAF_CASES[batch::4]:
        rule = rules.setdefault((x.shape, f), jax.jit(lambda u, f=f: spectral.caf(u, f)))
        got = np.asarray(rule(jnp.asarray(x)), np.float64)
        want = ref.caf(x.astype(np.float64), f)
        spread = np.max(np.linalg.norm(x - x.mean(0), axis=1))
        err = np.max(np.abs(got - want)) / spread
        worst = max(worst, err)
        assert err < 2e-4, (x.shape, f, got, want)
    assert worst < 2e-4


def test_caf_removes_the_argmax_exactly_under_jit():
    """Every round zeroes at least one weight, so CAF ends within n rounds exactly as numpy."""
    rng = np.random.default_rng(3)
    for _ in range(40):
        x = rng.standard_normal((11, 5)).astype(np.float32)
        gram = spectral.caf_gram(jnp.asarray(x))
        a = jax.jit(lambda g: spectral.caf_weights(g, 3))(gram)
        want = ref.caf(x.astype(np.float64), 3)
        got = np.asarray(a, np.float64) @ x.astype(np.float64)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_caf_is_exact_to_rounding_under_a_large_common_offset():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((9, 4))
    offset = 1e4 * rng.standard_normal(4)
    got = np.asarray(spectral.caf(jnp.asarray((x + offset).astype(np.float32)), 2), np.float64)
    want = ref.caf(x, 2) + offset
    np.testing.assert_allclose(got, want, rtol=0, atol=1e4 * 1e-6 * 4)


def test_caf_gram_leaves_bad_rows_out_of_the_centre():
    x = np.array([[1.0, 2.0], [3.0, 2.0], [np.nan, 0.0], [2.0, 5.0]], np.float32)
    g = np.asarray(spectral.caf_gram(jnp.asarray(x)))
    good = x[[0, 1, 3]].astype(np.float64)
    y = good - good.mean(0)
    np.testing.assert_allclose(g[np.ix_([0, 1, 3], [0, 1, 3])], y @ y.T, atol=1e-5)
    assert np.all(np.isinf(g[2])) and np.all(np.isinf(g[:, 2]))
