"""Translation equivariance of the robust rules under a large common offset.

Model weights and low-noise momenta share a component far larger than their
spread; a rule that computes distances as ``|a|^2 + |b|^2 - 2 <a, b>`` on
the raw vectors loses the spread there and chooses different rows. Every
translation-equivariant rule must satisfy ``rule(X + c) == rule(X) + c`` to
float rounding for offsets ``c`` from 1e2 to 1e4 times the spread.

The data are small integers and the offsets integers, so ``X + c`` is exact
in the input dtype (below 2**24 in float32, below 2**8 in bfloat16): any
difference beyond the rounding of the final average is the rule's own error,
e.g. a different selection (which moves the output by at least ``1 / n``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from conftest import flat, flat_one
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrobust import functional as F
from jaxrobust import kernels

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True, database=None)

# name -> (rule(tree, f), float64 numpy reference(x, f) or None, reduces); the
# distance rules break ties by the lower index, as their references do
RULES = {
    # coordinate-wise: integer data ties often, and MeaMed breaks ties unlike
    # numpy's stable sort, so these are checked for equivariance only
    "mean": (lambda x, f: F.mean(x), None, True),
    "median": (lambda x, f: F.median(x), None, True),
    "trimmed_mean": (F.trimmed_mean, None, True),
    "meamed": (F.meamed, None, True),
    "krum": (F.krum, ref.krum, True),
    "multi_krum": (F.multi_krum, ref.multi_krum, True),
    "mda": (F.mda, ref.mda, True),
    "monna": (F.monna, ref.monna, True),
    "geometric_median": (lambda x, f: F.geometric_median(x), None, True),
    "nnm": (F.nnm, ref.nnm, False),
    "dnc": (
        lambda x, f: F.dnc(x, f, jax.random.key(0), subsample=10**6),
        ref.dnc_all_coordinates,
        True,
    ),
}

# Integer data in [-K, K]; offsets up to scale * K with integer entries.
DTYPES = {
    "float32": (jnp.float32, 8, (1e2, 1e3, 1e4)),
    "bfloat16": (jnp.bfloat16, 2, (1e2,)),  # integers are exact in bfloat16 up to 256
}
SHAPES = {"w": (3, 2), "b": (3,)}


@functools.cache
def _jitted(name: str, f: int):
    rule = RULES[name][0]
    return jax.jit(lambda tree: rule(tree, f))


def _offset_case(seed: int, n: int, dtype_name: str, scale_index: int):
    dtype, k, scales = DTYPES[dtype_name]
    scale = scales[scale_index % len(scales)]
    rng = np.random.default_rng(seed)
    tree, offset = {}, {}
    for key, shape in SHAPES.items():
        tree[key] = rng.integers(-k, k + 1, (n, *shape)).astype(np.float64)
        sign = rng.choice([-1.0, 1.0], shape)
        offset[key] = sign * np.round(scale * k * rng.uniform(0.5, 1.0, shape))
    shifted = {key: tree[key] + offset[key][None] for key in tree}
    assert max(np.abs(v).max() for v in shifted.values()) < (2**24 if k == 8 else 256)
    cast = functools.partial(jax.tree_util.tree_map, lambda v: jnp.asarray(v, dtype))
    return cast(tree), cast(shifted), offset, scale


def _tolerance(dtype, n: int, magnitude: float) -> float:
    # Rounding of an average of n values of size `magnitude`, then of the output dtype.
    eps = float(jnp.finfo(jnp.float32).eps)
    out_eps = float(jnp.finfo(dtype).eps)
    return 2.0 * n * eps * magnitude + out_eps * magnitude


@pytest.mark.parametrize("name", list(RULES))
@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.sampled_from([7, 10]),
    dtype_name=st.sampled_from(list(DTYPES)),
    scale_index=st.integers(0, 2),
)
def test_rule_commutes_with_a_large_common_offset(name, seed, n, dtype_name, scale_index):
    f = (n - 3) // 2  # within every rule's bound (Krum: n > 2f + 2)
    _, reference, reduces = RULES[name]
    tree, shifted, offset, scale = _offset_case(seed, n, dtype_name, scale_index)
    dtype = DTYPES[dtype_name][0]
    rule = _jitted(name, f)
    c = flat_one(offset)
    base = flat(rule(tree)) if not reduces else flat_one(rule(tree))
    moved = flat(rule(shifted)) if not reduces else flat_one(rule(shifted))
    tol = _tolerance(dtype, n, float(np.abs(c).max()))
    np.testing.assert_allclose(moved, base + c, rtol=0, atol=tol, err_msg=f"offset {scale:g}")
    if reference is not None:
        # The offset data against the float64 numpy reference on the same values.
        expected = reference(flat(shifted), f)
        np.testing.assert_allclose(moved, expected, rtol=0, atol=tol)


def test_the_small_case_of_four_scalars():
    x = jnp.array([[4096.0], [4096.5], [4097.0], [4100.0]], jnp.float32)
    assert float(F.krum(x, 0)[0]) == 4096.5
    # multi_krum with m = 1 is Krum
    assert float(F.multi_krum(x, 0, m=1)[0]) == 4096.5
    # NNM with f = 1: the mean of each vector's 3 nearest (ties to the lower index)
    expected = [4096.5, 4096.5, 4096.5, (4100.0 + 4097.0 + 4096.5) / 3]
    np.testing.assert_allclose(np.asarray(F.nnm(x, 1))[:, 0], expected, rtol=0, atol=1e-3)


def test_krum_and_nnm_on_weights_with_a_shared_gaussian_offset():
    # 9 workers, d = 100,000, a shared N(0, 1) offset, a spread of 1e-3: the
    # raw Gram route is off by up to 30 % here and picks other rows.
    rng = np.random.default_rng(3)
    n, d, f = 9, 100_000, 2
    x = (rng.standard_normal(d) + 1e-3 * rng.standard_normal((n, d))).astype(np.float32)
    x64 = x.astype(np.float64)
    expected = ref.sq_dist(x64)
    got = np.asarray(jax.jit(lambda v: F.krum(v, f))(x))
    np.testing.assert_array_equal(got, x[np.argmin(ref.krum_scores(x64, f))])
    mixed = np.asarray(jax.jit(lambda v: F.nnm(v, f))(x), np.float64)
    np.testing.assert_allclose(mixed, ref.nnm(x64, f), rtol=0, atol=1e-6)
    dist = np.asarray(kernels.pairwise_squared_distances(x))
    np.testing.assert_allclose(dist, expected, rtol=1e-5)
