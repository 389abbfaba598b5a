"""Order-statistics kernels chosen by n: every method equals the float64 sort reference."""

import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref

from jaxrobust import functional, kernels

METHODS = kernels.ORDER_STATISTIC_METHODS


def awkward(rng, n, d, bad=True):
    """Rows with ties, signed zeros, and (optionally) NaN / +-inf bad entries."""
    x = rng.integers(-3, 4, size=(n, d)).astype(np.float32) * 0.5
    x[:, : d // 2] = rng.standard_normal((n, d // 2)).astype(np.float32)
    x[rng.random((n, d)) < 0.1] = -0.0
    if bad:
        x[0, ::3] = np.nan
        x[min(1, n - 1), 1::4] = np.inf
        x[n - 1, 2::5] = -np.inf
    return x


def sorted_reference(x):
    return np.sort(np.where(np.isnan(x), np.inf, x).astype(np.float64), axis=0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [1, 2, 7, 12])
def test_every_rank_equals_the_sort(method, n):
    rng = np.random.default_rng(n)
    x = awkward(rng, n, 41)
    got = kernels.order_statistics(jnp.asarray(x), list(range(n)), method=method)
    np.testing.assert_array_equal(np.stack([np.asarray(g) for g in got]), sorted_reference(x))


@pytest.mark.parametrize("method", METHODS)
def test_leaf_shape_and_low_precision_dtype(method):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 3, 5)).astype(jnp.bfloat16)
    (got,) = kernels.order_statistics(jnp.asarray(x), [6], method=method)
    assert got.shape == (3, 5) and got.dtype == jnp.bfloat16
    expected = np.sort(np.asarray(x, np.float64), axis=0)[6]
    np.testing.assert_array_equal(np.asarray(got, np.float64), expected)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("lo", "hi"), [(0, 9), (2, 7), (3, 4)])
def test_rank_range_sum_matches_the_sorted_sum(method, lo, hi):
    rng = np.random.default_rng(hi)
    x = awkward(rng, 9, 60, bad=False)
    x[:, :5] = 1.5  # a whole coordinate of ties
    got = np.asarray(kernels.rank_range_sum(jnp.asarray(x), lo, hi, method=method))
    expected = sorted_reference(x)[lo:hi].sum(0)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_rank_range_sum_with_bad_rows_follows_the_sort(method):
    x = np.array(
        [[1.0, np.nan, np.nan, -np.inf], [2.0, 2.0, np.nan, np.inf], [3.0, 1.0, np.inf, 0.0]],
        np.float32,
    )
    for lo, hi in [(0, 2), (1, 3), (1, 2), (0, 3)]:
        got = np.asarray(kernels.rank_range_sum(jnp.asarray(x), lo, hi, method=method))
        with np.errstate(invalid="ignore"):
            expected = sorted_reference(x)[lo:hi].sum(0)
        np.testing.assert_array_equal(got, expected)


def test_invalid_ranks_and_method_are_refused():
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="rank 4 is outside"):
        kernels.order_statistics(x, [4])
    with pytest.raises(ValueError, match="unknown order-statistics method"):
        kernels.order_statistics(x, [1], method="heap")
    with pytest.raises(ValueError, match="rank range"):
        kernels.rank_range_sum(x, 2, 2)


def test_method_is_chosen_by_n():
    small, large = kernels.SORT_NETWORK_MAX_N, kernels.SORT_NETWORK_MAX_N + 1
    assert kernels.order_statistic_method(small) == "network"
    assert kernels.order_statistic_method(large) != "network"


@pytest.mark.parametrize("n", [kernels.SORT_NETWORK_MAX_N + 3])
def test_coordinate_rules_above_the_crossover_match_numpy(n):
    # The real large-n route (no patching), on few coordinates so it stays fast.
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    x[: n // 4, 0] = 1e30  # far values (a subtract-back sum would lose the rest)
    x[3, 1] = np.nan
    f = n // 4
    np.testing.assert_array_equal(
        np.asarray(functional.median(jnp.asarray(x))),
        ref.median(np.where(np.isnan(x), np.inf, x).astype(np.float64)).astype(np.float32),
    )
    tm = np.asarray(functional.trimmed_mean(jnp.asarray(x), f))
    clean = np.where(np.isnan(x), np.inf, x).astype(np.float64)
    np.testing.assert_allclose(tm, ref.trimmed_mean(clean, f), rtol=1e-5, atol=1e-6)
    mm = np.asarray(functional.meamed(jnp.asarray(x[:, 1:]), f))
    np.testing.assert_allclose(mm, ref.meamed(clean[:, 1:], f), rtol=1e-5, atol=1e-6)
    ref_centre = sorted_reference(x)[(n - 1) // 2]
    np.testing.assert_array_equal(
        np.asarray(kernels.coordinate_reference(jnp.asarray(x))),
        np.where(np.isfinite(ref_centre), ref_centre, 0.0),
    )


@pytest.mark.parametrize("n", [10, 11])
def test_rules_agree_across_the_crossover(monkeypatch, n):
    # The same input through the network and through the large-n kernels.
    rng = np.random.default_rng(n)
    x = jnp.asarray(awkward(rng, n, 33))
    f = 2
    small = [functional.median(x), functional.trimmed_mean(x, f), functional.meamed(x, f)]
    monkeypatch.setattr(kernels, "SORT_NETWORK_MAX_N", 4)
    assert kernels.order_statistic_method(n) != "network"
    large = [functional.median(x), functional.trimmed_mean(x, f), functional.meamed(x, f)]
    np.testing.assert_array_equal(np.asarray(large[0]), np.asarray(small[0]))
    np.testing.assert_allclose(np.asarray(large[1]), np.asarray(small[1]), rtol=1e-6, atol=1e-6)
    # meamed: the window on sorted values and the two selections, ties included
    np.testing.assert_allclose(np.asarray(large[2]), np.asarray(small[2]), rtol=1e-6, atol=1e-6)


def test_bisection_over_column_blocks_and_a_tail(monkeypatch):
    # Blocks of 64 columns (the CPU route): 3 whole blocks and a tail of 8.
    monkeypatch.setattr(kernels, "_SELECT_BLOCK_BYTES", 1)
    rng = np.random.default_rng(3)
    x = awkward(rng, 9, 200)
    got = kernels.order_statistics(jnp.asarray(x), [0, 4, 8], method="bisection")
    np.testing.assert_array_equal(
        np.stack([np.asarray(g) for g in got]), sorted_reference(x)[[0, 4, 8]]
    )
