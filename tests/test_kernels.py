import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import flat, make_tree

import jaxrobust.functional
from jaxrobust import kernels


@pytest.mark.parametrize("n", range(1, 13))
def test_sorting_network_sorts_every_zero_one_input(n):
    # 0-1 principle: a comparator network sorts everything iff it sorts all 0/1 inputs.
    pairs = kernels.sorting_network(n)
    for bits in itertools.product((0, 1), repeat=n):
        v = list(bits)
        for i, j in pairs:
            assert i < j
            v[i], v[j] = min(v[i], v[j]), max(v[i], v[j])
        assert v == sorted(bits)


@pytest.mark.parametrize("n", [13, 16, 31, 64, 128])
def test_sort_rows_matches_numpy(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 257)).astype(np.float32)
    out = jnp.stack(kernels.sort_rows([jnp.asarray(r) for r in x]))
    np.testing.assert_array_equal(np.asarray(out), np.sort(x, axis=0))


def test_sort_rows_puts_nan_last():
    x = np.array([[1.0, np.nan], [np.nan, -2.0], [0.5, 3.0]], np.float32)
    out = np.asarray(jnp.stack(kernels.sort_rows([jnp.asarray(r) for r in x])))
    np.testing.assert_array_equal(out, [[0.5, -2.0], [1.0, 3.0], [np.inf, np.inf]])


def test_norms_gram_and_distances_match_numpy(rng):
    tree = make_tree(rng, 9)
    x = flat(tree)
    np.testing.assert_allclose(kernels.worker_norms(tree), np.linalg.norm(x, axis=1), rtol=1e-6)
    np.testing.assert_allclose(kernels.gram_matrix(tree), x @ x.T, rtol=1e-5, atol=1e-5)
    expected = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.testing.assert_allclose(
        kernels.pairwise_squared_distances(tree), expected, rtol=1e-4, atol=1e-4
    )


def test_blocked_products_match_plain_on_long_leaves(rng):
    # Long enough to take the blocked CPU path with a ragged tail.
    d = 4 * kernels._BLOCK + 123
    x = rng.standard_normal((5, d)).astype(np.float32)
    np.testing.assert_allclose(kernels.gram_matrix(x), x.astype(np.float64) @ x.T, rtol=1e-4)
    w = rng.random((3, 5)).astype(np.float32)
    np.testing.assert_allclose(kernels.mix_rows(w, x), w @ x, rtol=1e-5, atol=1e-5)


def test_bad_rows_have_infinite_norm_and_distance(rng):
    x = rng.standard_normal((5, 7)).astype(np.float32)
    x[1, 3] = np.nan
    x[3, 0] = np.inf
    norms = np.asarray(kernels.worker_norms(x))
    assert np.isinf(norms[[1, 3]]).all() and np.isfinite(norms[[0, 2, 4]]).all()
    d = np.asarray(kernels.pairwise_squared_distances(x))
    assert not np.isnan(d).any()
    assert np.isinf(d[[1, 3]]).all() and np.isinf(d[:, [1, 3]]).all()
    good = [0, 2, 4]
    assert np.isfinite(d[np.ix_(good, good)]).all()


def test_weighted_sum_skips_zero_weight_bad_rows():
    x = np.array([[1.0, 2.0], [np.nan, np.inf], [3.0, 4.0]], np.float32)
    out = kernels.weighted_sum(jnp.array([0.5, 0.0, 0.5]), x)
    np.testing.assert_allclose(out, [2.0, 3.0])


@pytest.mark.parametrize("n", [5, 64, 65, 130])  # one chain; a product or scanned chains
@pytest.mark.parametrize("skip_zero", [True, False])
def test_weighted_sum_against_float64_at_every_size(n, skip_zero, rng):
    x = rng.standard_normal((n, 3, 7)).astype(np.float32)
    w = rng.uniform(-1.0, 1.0, n).astype(np.float32)
    w[::7] = 0.0
    if skip_zero:
        x[::7] = np.inf  # zero-weight bad rows are skipped
    reference = np.einsum("i,ijk->jk", w.astype(np.float64), np.where(w[:, None, None] != 0, x, 0))
    out = jax.jit(lambda a, b: kernels.weighted_sum(a, b, skip_zero=skip_zero))(w, x)
    assert out.shape == (3, 7) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5)


def test_smallest_mask_breaks_ties_by_index():
    mask = kernels.smallest_mask(jnp.array([3.0, 1.0, 1.0, jnp.inf, 0.0]), 3)
    np.testing.assert_array_equal(mask, [False, True, True, False, True])


@pytest.mark.parametrize("n", [1, 5, 16, 100, 129, 300])  # argsort, network, bisection
def test_smallest_mask_equals_a_stable_argsort(n, rng):
    values = rng.integers(0, 4, (6, n)).astype(np.float32)  # many ties
    values[0, ::3] = np.inf
    values[1, ::4] = np.nan  # counts as +inf, taken last in index order
    ranked = np.where(np.isnan(values), np.inf, values)
    order = np.argsort(ranked, axis=-1, kind="stable")
    for k in sorted({0, n // 3, n - 1, n}):
        expected = np.zeros(values.shape, bool)
        np.put_along_axis(expected, order[:, :k], True, axis=-1)
        mask = jax.jit(kernels.smallest_mask, static_argnums=1)(values, k)
        np.testing.assert_array_equal(mask, expected)


def test_num_workers_rejects_mismatched_leaves():
    with pytest.raises(ValueError, match="same worker axis"):
        kernels.num_workers({"a": jnp.zeros((3, 2)), "b": jnp.zeros((4,))})
    with pytest.raises(ValueError, match="scalar leaf"):
        kernels.num_workers({"a": jnp.zeros(())})


def test_kernels_under_jit_and_vmap(rng):
    x = rng.standard_normal((4, 6, 10)).astype(np.float32)
    batched = jax.jit(jax.vmap(kernels.pairwise_squared_distances))(x)
    for b in range(4):
        np.testing.assert_allclose(
            batched[b], kernels.pairwise_squared_distances(x[b]), rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize("population,size", [(100_000, 1000), (5000, 10), (50, 7), (30, 30)])
def test_sample_without_replacement_gives_distinct_indices_in_range(population, size):
    draw = jax.jit(kernels.sample_without_replacement, static_argnums=(1, 2))
    for seed in range(3):
        got = np.asarray(draw(jax.random.key(seed), population, size))
        assert got.shape == (size,) and len(set(got.tolist())) == size
        assert got.min() >= 0 and got.max() < population


def test_sample_without_replacement_is_uniform_and_fast_under_vmap():
    from scipy import stats

    keys = jax.random.split(jax.random.key(0), 3000)
    draws = np.asarray(
        jax.jit(jax.vmap(lambda k: kernels.sample_without_replacement(k, 400, 20)))(keys)
    )
    counts = np.bincount(draws.ravel(), minlength=400)
    assert stats.chisquare(counts).pvalue > 1e-4
    with pytest.raises(ValueError, match="cannot draw 5 distinct indices from 4"):
        kernels.sample_without_replacement(jax.random.key(0), 4, 5)


def _offset_rows(rng, n, d, offset_over_spread, spread=1e-3):
    """float32 rows with a shared N(0, 1)-scaled offset far larger than their spread."""
    offset = offset_over_spread * spread * (1.0 + rng.random(d))
    return (offset + spread * rng.standard_normal((n, d))).astype(np.float32)


@pytest.mark.parametrize("offset_over_spread", [1e2, 1e3, 1e4])
@pytest.mark.parametrize("d", [1000, 4 * kernels._BLOCK + 123])  # plain and blocked CPU paths
def test_distances_are_exact_under_a_common_offset(offset_over_spread, d):
    rng = np.random.default_rng(d)
    x = _offset_rows(rng, 9, d, offset_over_spread)
    x64 = x.astype(np.float64)  # the float32 values, exactly
    expected = ((x64[:, None] - x64[None]) ** 2).sum(-1)
    got = np.asarray(kernels.pairwise_squared_distances(x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * expected.max())
    centre = np.asarray(kernels.coordinate_reference(x), np.float64)
    expected_gram = (x64 - centre) @ (x64 - centre).T
    gram = np.asarray(kernels.centred_gram_matrix(x))
    np.testing.assert_allclose(gram, expected_gram, rtol=1e-5, atol=1e-5 * expected.max())
    rows = [np.asarray(kernels.squared_distances_to(x, x[i])) for i in range(3)]
    np.testing.assert_allclose(rows, expected[:3], rtol=1e-5, atol=1e-5 * expected.max())


def test_distances_of_the_four_scalars():
    x = jnp.array([[4096.0], [4096.5], [4097.0], [4100.0]], jnp.float32)
    np.testing.assert_array_equal(kernels.pairwise_squared_distances(x)[0], [0.0, 0.25, 1.0, 16.0])
    # min_max / min_sum read their bounds from the same distances
    tree = {"a": jnp.tile(x, (1, 3)), "b": x}
    np.testing.assert_array_equal(kernels.pairwise_squared_distances(tree)[0], [0, 1, 4, 64])


def test_bad_and_huge_rows_do_not_move_the_centre():
    rng = np.random.default_rng(1)
    x = _offset_rows(rng, 9, 500, 1e4)
    x[1, 7] = np.nan
    x[4] = np.inf
    x[6] = 1e30  # finite, but its squared distance to anything overflows
    honest = [0, 2, 3, 5, 7, 8]
    centre = np.asarray(kernels.coordinate_reference(x))
    assert np.isfinite(centre).all()
    lo, hi = x[honest].min(0), x[honest].max(0)
    assert ((centre >= lo) & (centre <= hi)).all()
    h64 = x[honest].astype(np.float64)
    expected = ((h64[:, None] - h64[None]) ** 2).sum(-1)
    got = np.asarray(kernels.pairwise_squared_distances(x))
    np.testing.assert_allclose(got[np.ix_(honest, honest)], expected, rtol=1e-5, atol=1e-9)
    for bad in (1, 4, 6):
        assert np.isinf(got[bad]).all() and np.isinf(got[:, bad]).all()


def test_coordinate_reference_with_more_than_half_bad_is_zero_there():
    x = np.array([[np.nan, 1.0], [np.inf, 2.0], [5.0, 3.0]], np.float32)
    np.testing.assert_array_equal(kernels.coordinate_reference(x), [0.0, 2.0])


def _closest_sum_reference(x: np.ndarray, centre: np.ndarray, keep: int) -> np.ndarray:
    """float64: the ``keep`` values nearest ``centre``; boundary ties from below first."""
    out = []
    for k in range(x.shape[1]):
        v = np.where(np.isnan(x[:, k]), np.inf, x[:, k]).astype(np.float64)
        dist = np.abs(v - centre[k])
        # nearest first; at equal distance the lower value first
        order = np.lexsort((v, dist))
        out.append(v[order[:keep]].sum())
    return np.array(out)


@pytest.mark.parametrize("n", [7, 257])  # a sorting network, then bisection
def test_closest_sum_against_float64(n, rng):
    x = rng.integers(-3, 4, (n, 40)).astype(np.float32)  # many ties at the boundary
    x[: n // 8] = np.inf
    x[n // 8 : n // 4] = np.nan
    centre = np.asarray(kernels.coordinate_median(jnp.asarray(x)))
    for keep in (1, n // 2, n - n // 4):
        got = jax.jit(kernels.closest_sum, static_argnums=2)(x, centre, keep)
        np.testing.assert_allclose(got, _closest_sum_reference(x, centre, keep), rtol=1e-6)


@pytest.mark.parametrize("n", [130, 200])
def test_meamed_by_selection_against_float64(n, rng):
    f = n // 4
    x = rng.standard_normal((n, 64)).astype(np.float32)
    x[:f] = 1e30  # f planted outliers
    x[0, :5] = np.nan
    out = jax.jit(lambda u: jaxrobust.functional.meamed(u, f))(x)
    v = np.where(np.isnan(x), np.inf, x).astype(np.float64)
    srt = np.sort(v, 0)
    centre = 0.5 * (srt[n // 2 - 1] + srt[n // 2]) if n % 2 == 0 else srt[n // 2]
    np.testing.assert_allclose(out, _closest_sum_reference(x, centre, n - f) / (n - f), rtol=1e-5)
    assert np.all(np.abs(np.asarray(out)) < 10)
