"""Scale-aware defaults: ``rule(s X) = s rule(X)``, and the defaults against float64 references.

The papers' absolute parameters (geometric median's smoothing ``nu``,
centered clipping's radius ``tau``, static clipping's norm ``C``) stay
available by name; the defaults are relative to the received vectors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxrobust as jr
from jaxrobust import defence
from jaxrobust.config import Config
from jaxrobust.rules import base, clipping, geometric

# Rules equivariant under x -> s x (s > 0), with their default options.
EQUIVARIANT = {
    "geometric_median": lambda n, f: jr.geometric_median(f),
    "centered_clipping": lambda n, f: jr.centered_clipping(),  # from its zero state
    "clip": lambda n, f: jr.clip(),
    "mean": lambda n, f: jr.mean(),
    "median": lambda n, f: jr.median(f),
    "trimmed_mean": lambda n, f: jr.trimmed_mean(f),
    "meamed": lambda n, f: jr.meamed(f),
    "krum": lambda n, f: jr.krum(f),
    "multi_krum": lambda n, f: jr.multi_krum(f),
    "monna": lambda n, f: jr.monna(f),
    "caf": lambda n, f: jr.caf(f),
    "arc": lambda n, f: jr.arc(f),
    "nnm": lambda n, f: jr.nnm(f),
}
_JITTED: dict = {}


def _apply(name, n, f, x):
    key = (name, n, f, x.shape)
    if key not in _JITTED:
        tx = EQUIVARIANT[name](n, f)

        def fn(u):
            out, _ = tx.update(u, tx.init(u[0]))
            return out

        _JITTED[key] = jax.jit(fn)
    return np.asarray(_JITTED[key](jnp.asarray(x)), np.float64)


@settings(derandomize=True, deadline=None, max_examples=60)
@given(
    name=st.sampled_from(sorted(EQUIVARIANT)),
    n=st.sampled_from([7, 9]),
    seed=st.integers(0, 2**16),
    log_scale=st.floats(-4.0, 4.0),
    outliers=st.booleans(),
)
def test_equivariant_rules_commute_with_scaling(name, n, seed, log_scale, outliers):
    f = 2
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6))
    if outliers:
        x[:f] = 50.0 * rng.standard_normal((f, 6))
    s = 10.0**log_scale
    base = _apply(name, n, f, x.astype(np.float32))
    scaled = _apply(name, n, f, (s * x).astype(np.float32))
    size = np.max(np.abs(x))
    np.testing.assert_allclose(scaled / s, base, rtol=1e-4, atol=1e-5 * size)


def test_absolute_parameters_are_not_scale_equivariant():
    """The papers' absolute lengths, kept by name, fail the property the defaults pass."""
    x = jnp.array([[0.0], [1.0], [2.0], [10.0]])
    small = 0.01 * x
    gm_abs = np.asarray(geometric.geometric_median(small, nu=0.1))
    np.testing.assert_allclose(gm_abs, np.asarray(jnp.mean(small, 0)), rtol=1e-6)  # the mean
    gm = np.asarray(geometric.geometric_median(x))
    assert abs(gm_abs[0] - 0.01 * gm[0]) > 1e-3
    np.testing.assert_allclose(np.asarray(geometric.geometric_median(small)), 0.01 * gm, rtol=1e-5)
    clip_abs = np.asarray(clipping.clip(100.0 * x, 2.0))
    assert not np.allclose(clip_abs, 100.0 * np.asarray(clipping.clip(x, 2.0)))


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("seed", range(4))
def test_scale_aware_defaults_match_float64_references(scale, seed):
    rng = np.random.default_rng(seed)
    n, d = 9, 7
    x = rng.standard_normal((n, d))
    x[:2] = 30.0 * rng.standard_normal((2, d))
    x = scale * x
    x32 = jnp.asarray(x.astype(np.float32))
    x64 = np.asarray(x32, np.float64)
    tol = dict(rtol=2e-4, atol=2e-5 * scale)
    np.testing.assert_allclose(
        np.asarray(geometric.geometric_median(x32)), ref.geometric_median(x64), **tol
    )
    center = scale * rng.standard_normal(d)
    c32 = jnp.asarray(center.astype(np.float32))
    got = geometric.centered_clipping(x32, c32, iterations=3)
    want = ref.centered_clipping(x64, np.asarray(c32, np.float64))
    np.testing.assert_allclose(np.asarray(got), want, **tol)
    np.testing.assert_allclose(np.asarray(clipping.clip(x32)), ref.clip(x64), **tol)


def test_defaults_with_bad_rows_and_coinciding_vectors_stay_finite():
    x = np.ones((7, 3), np.float32)
    x[0] = np.nan
    x[1] = np.inf
    for out in (
        geometric.geometric_median(jnp.asarray(x)),
        geometric.centered_clipping(jnp.asarray(x), jnp.ones(3)),  # tau = 0: v stays put
    ):
        np.testing.assert_allclose(np.asarray(out), 1.0, rtol=1e-6)
    # From 0, nothing is clipped (tau = the common distance); the two bad rows add 0 of 1/7.
    out = geometric.centered_clipping(jnp.asarray(x), jnp.zeros(3), iterations=3)
    np.testing.assert_allclose(np.asarray(out), 1.0 - (2 / 7) ** 3, rtol=1e-6)
    clipped = np.asarray(clipping.clip(jnp.asarray(x)))
    np.testing.assert_allclose(clipped[2:], 1.0)
    np.testing.assert_array_equal(clipped[:2], 0.0)


def test_finite_median_is_numpys_median_of_the_finite_entries():
    rng = np.random.default_rng(0)
    for n in range(1, 12):
        v = rng.standard_normal(n)
        finite = rng.random(n) < 0.7
        got = float(base.finite_median(jnp.asarray(v, jnp.float32), jnp.asarray(finite)))
        want = float(np.median(v[finite])) if finite.any() else 0.0
        assert got == pytest.approx(want, abs=1e-6)


def test_configs_keep_the_papers_absolute_lengths_unless_set_to_none():
    """Every existing configuration (and its run id) means what it meant."""
    config = Config(num_honest=8, num_byzantine=2, defence=("clip", "geometric_median"))
    assert (config.clip_norm, config.cc_tau) == (2.0, 10.0)
    assert defence.rule_options(config) == {
        "clip": {"max_norm": 2.0},
        "geometric_median": {"nu": 0.1},
    }
    cc = config.replace(defence=("clip", "centered_clipping"))
    assert defence.rule_options(cc)["centered_clipping"] == {"tau": 10.0}
    assert defence.rule_options(cc.replace(cc_tau=None))["centered_clipping"] == {"tau": None}
    relative = config.replace(clip_norm=None, defence_options={"geometric_median": {"nu": None}})
    assert defence.rule_options(relative) == {
        "clip": {"max_norm": None},
        "geometric_median": {"nu": None},
    }
    x = 0.01 * np.random.default_rng(1).standard_normal((10, 5)).astype(np.float32)
    x[:2] += 0.5
    for c, expected in (
        (config, ref.geometric_median(ref.clip(x.astype(np.float64), 2.0), nu=0.1)),
        (relative, ref.geometric_median(ref.clip(x.astype(np.float64)))),
    ):
        chain = defence.make_defence(c)
        out, _ = chain.update(jnp.asarray(x), chain.init(jnp.zeros(5)))
        np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-7)
