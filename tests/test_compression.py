import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import flat, flat_one
from scipy import stats

from jaxrobust import compression as C
from jaxrobust import kernels

SHAPES = {"w": (3, 4), "b": (5,)}  # d = 17, two leaves
D = 17
SAMPLES = 20_000


def one_tree(rng, scale=1.0, shapes=SHAPES, dtype=np.float32):
    return {k: (scale * rng.standard_normal(s)).astype(dtype) for k, s in shapes.items()}


def stack(tree, n):
    return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), tree)


def samples(compressor, tree, n=SAMPLES, seed=0):
    """``n`` independent compressions of one vector, flattened, float64, and the bits."""
    out, bits = jax.jit(lambda k, s: C.compress_workers(compressor, k, s))(
        jax.random.key(seed), stack(tree, n)
    )
    return flat(out), np.asarray(bits)


UNBIASED = [
    C.identity(),
    C.rand_k(3),
    C.rand_k(0.5),
    C.rand_k(12),
    C.random_dithering(1),
    C.random_dithering(4),
    C.natural_compression(),
]


@pytest.mark.parametrize("compressor", UNBIASED, ids=lambda c: f"{c.name}{c.params}")
def test_unbiased_and_variance_bound(compressor, rng):
    assert compressor.unbiased
    tree = one_tree(rng)
    x = flat_one(tree)
    s, _ = samples(compressor, tree)
    omega = compressor.omega(D)
    sq = float(x @ x)
    # Every coordinate's variance is at most the total, omega ||x||^2: a 5-sigma bound.
    sigma = math.sqrt(omega * sq / SAMPLES)
    np.testing.assert_array_less(np.abs(s.mean(0) - x), 5 * sigma + 1e-5)
    err = np.sum((s - x) ** 2, axis=1)
    assert err.mean() <= omega * sq + 5 * err.std() / math.sqrt(SAMPLES) + 1e-5


def test_variance_bound_is_attained_by_rand_k_and_natural_compression(rng):
    # RandK: E||C(x) - x||^2 = (d/K - 1) ||x||^2 exactly.
    tree = one_tree(rng)
    x = flat_one(tree)
    c = C.rand_k(4)
    s, _ = samples(c, tree)
    err = np.sum((s - x) ** 2, axis=1)
    assert abs(err.mean() - c.omega(D) * (x @ x)) <= 5 * err.std() / math.sqrt(SAMPLES)
    # Natural compression: 1/8 is attained at |x_i| = (4/3) 2^a.
    signs = np.where(rng.random(D) < 0.5, -1.0, 1.0)
    tree = {"v": (signs * (4 / 3) * 2.0 ** rng.integers(-6, 6, D)).astype(np.float32)}
    x = flat_one(tree)
    c = C.natural_compression()
    s, _ = samples(c, tree)
    err = np.sum((s - x) ** 2, axis=1)
    assert abs(err.mean() - c.omega(D) * (x @ x)) <= 5 * err.std() / math.sqrt(SAMPLES)


@pytest.mark.parametrize("k", [1, 5, 8, 9, 16, 17, 0.3])
def test_top_k_keeps_the_k_largest_over_the_whole_pytree(k, rng):
    # "w" dominates, so a per-leaf selection would differ from the global one.
    tree = {"w": 5 * rng.standard_normal((3, 4)), "b": rng.standard_normal(5), "s": 0.5}
    tree = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float32), tree)
    c = C.top_k(k)
    out, bits = c.compress(jax.random.key(0), tree)
    x = flat_one(tree)
    d = x.size
    kk = k if isinstance(k, int) else round(k * d)
    expected = np.zeros(d)
    keep = np.argsort(-np.abs(x), kind="stable")[:kk]
    expected[keep] = x[keep]
    np.testing.assert_array_equal(flat_one(out), expected)
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(tree)
    assert np.sum((expected - x) ** 2) <= (1 - kk / d) * (x @ x) + 1e-6
    assert c.omega(d) == pytest.approx(1 - kk / d)
    assert float(bits) == kk * (32 + math.ceil(math.log2(d)))
    assert not c.unbiased


def test_top_k_ties_go_to_lower_indices():
    tree = {"v": jnp.array([1.0, -3.0, 3.0, 2.0, -3.0, 1.0])}
    out, _ = C.top_k(2).compress(None, tree)
    np.testing.assert_array_equal(out["v"], [0, -3, 3, 0, 0, 0])
    out, _ = C.top_k(5).compress(None, tree)  # K > d/2: the d - K smallest are dropped
    np.testing.assert_array_equal(out["v"], [1, -3, 3, 2, -3, 0])


@pytest.mark.parametrize("k", [1, 4, 12])
def test_rand_k_keeps_exactly_k_scaled_coordinates_uniformly(k, rng):
    tree = one_tree(rng)
    x = flat_one(tree).astype(np.float32)
    n = 4000
    s, bits = samples(C.rand_k(k), tree, n=n)
    kept = s != 0
    np.testing.assert_array_equal(kept.sum(1), k)
    scaled = np.broadcast_to(x * np.float32(D / k), s.shape)
    np.testing.assert_allclose(s[kept], scaled[kept], rtol=1e-6)
    # Every coordinate is kept with probability K/d (binomial, 5 sigma).
    p = k / D
    np.testing.assert_array_less(np.abs(kept.mean(0) - p), 5 * math.sqrt(p * (1 - p) / n))
    np.testing.assert_array_equal(bits, k * (32 + 5))


def _subset_counts(d, k, n, seed=0):
    keys = jax.random.split(jax.random.key(seed), n)
    masks = np.asarray(jax.jit(jax.vmap(lambda key: C._random_subset(key, d, k)))(keys))
    np.testing.assert_array_equal(masks.sum(1), k)
    return masks.sum(0)


@pytest.mark.parametrize(("d", "k"), [(3000, 10), (3000, 2990), (40, 7)])
def test_random_subset_is_exact_and_uniform(d, k):
    counts = _subset_counts(d, k, n=2000)
    assert stats.chisquare(counts).pvalue > 1e-4


def test_random_subset_stays_uniform_when_the_draw_is_rejected(monkeypatch):
    # A one-sigma margin rejects about a third of the draws: the while_loop runs.
    monkeypatch.setattr(kernels, "_MARGIN_SIGMAS", 1.0)
    monkeypatch.setattr(kernels, "_MARGIN_FLOOR", 0.0)
    counts = _subset_counts(500, 50, n=2000, seed=1)
    assert stats.chisquare(counts).pvalue > 1e-4
    # Unbatched, the while_loop is a real loop.
    draw = jax.jit(lambda k: C._random_subset(k, 500, 50))
    assert all(int(draw(jax.random.key(i)).sum()) == 50 for i in range(3))


def test_natural_compression_gives_bracketing_signed_powers_of_two(rng):
    x = rng.standard_normal(40) * 10.0 ** rng.integers(-4, 4, 40)
    x[:3] = [0.0, 0.25, -8.0]
    tree = {"v": x.astype(np.float32)}
    s, bits = samples(C.natural_compression(), tree, n=200)
    x = flat_one(tree)
    lo = np.sign(x) * 2.0 ** np.floor(np.log2(np.where(x == 0, 1, np.abs(x))))
    lo[x == 0] = 0
    assert np.all((s == lo) | (s == 2 * lo))
    nonzero = s[s != 0]
    np.testing.assert_array_equal(np.abs(np.frexp(nonzero)[0]), 0.5)
    np.testing.assert_array_equal(s[:, :3], np.broadcast_to([0.0, 0.25, -8.0], (200, 3)))
    np.testing.assert_array_equal(bits, 9 * 40)


@pytest.mark.parametrize("levels", [1, 3])
def test_random_dithering_sends_a_norm_signs_and_levels(levels, rng):
    tree = one_tree(rng)
    x = flat_one(tree)
    s, bits = samples(C.random_dithering(levels), tree, n=200)
    norm = np.linalg.norm(x)
    lv = np.abs(s) * levels / norm
    np.testing.assert_allclose(lv, np.round(lv), atol=1e-4)
    assert lv.max() <= levels + 1e-4
    assert np.all((s == 0) | (np.sign(s) == np.sign(x)))
    np.testing.assert_array_equal(bits, 32 + D * (1 + math.ceil(math.log2(levels + 1))))
    zero = jax.tree_util.tree_map(np.zeros_like, tree)
    out, _ = jax.jit(C.random_dithering(levels).compress)(jax.random.key(0), zero)
    np.testing.assert_array_equal(flat_one(out), 0)


def test_bits_follow_the_documented_formulas(rng):
    tree = one_tree(rng)
    log_d = math.ceil(math.log2(D))
    expected = {
        C.identity(): 32 * D,
        C.rand_k(4): 4 * (32 + log_d),
        C.rand_k(0.1): 2 * (32 + log_d),  # 1.7 rounds to K = 2
        C.top_k(4): 4 * (32 + log_d),
        C.random_dithering(4): 32 + D * (1 + 3),
        C.random_dithering(7): 32 + D * (1 + 3),
        C.natural_compression(): 9 * D,
    }
    key = jax.random.key(0)
    got = jax.jit(lambda k, s: [C.compress_workers(c, k, s)[1] for c in expected])(
        key, stack(tree, 3)
    )
    for (c, bits), b in zip(expected.items(), got, strict=True):
        assert b.dtype == jnp.float32 and b.shape == (3,)
        np.testing.assert_array_equal(b, np.full(3, bits, np.float32), err_msg=c.name)
    half = jax.tree_util.tree_map(lambda v: v.astype(jnp.bfloat16), tree)
    for c, bits in [
        (C.identity(), 16 * D),
        (C.natural_compression(), 9 * D),
        (C.top_k(4), 4 * (16 + log_d)),
    ]:
        assert float(jax.jit(c.compress)(key, half)[1]) == bits, c.name


ALL = [
    C.identity(),
    C.rand_k(3),
    C.rand_k(0.8),
    C.top_k(3),
    C.top_k(0.8),
    C.random_dithering(2),
    C.natural_compression(),
]


@pytest.mark.parametrize("compressor", ALL, ids=lambda c: f"{c.name}{c.params}")
def test_structure_dtypes_and_jit_match(compressor, rng):
    tree = {
        "a": rng.standard_normal((3, 4)).astype(np.float32),
        "b": jnp.asarray(rng.standard_normal(5), jnp.bfloat16),
        "c": np.float32(0.7),
    }
    key = jax.random.key(1)
    out, bits = compressor.compress(key, tree)
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(tree)
    for o, t in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(tree), strict=True):
        assert o.shape == jnp.shape(t) and o.dtype == jnp.asarray(t).dtype
    jitted, jbits = jax.jit(compressor.compress)(key, tree)
    np.testing.assert_allclose(flat_one(jitted), flat_one(out), rtol=1e-6)
    assert float(jbits) == float(bits)
    # compress_workers compresses row i with the i-th key of jax.random.split(key, n).
    rows, rbits = jax.jit(lambda k, s: C.compress_workers(compressor, k, s))(key, stack(tree, 3))
    for i, sub in enumerate(jax.random.split(key, 3)):
        row = jax.tree_util.tree_map(lambda v, i=i: v[i], rows)
        np.testing.assert_allclose(
            flat_one(row), flat_one(jax.jit(compressor.compress)(sub, tree)[0]), rtol=1e-6
        )
    np.testing.assert_array_equal(rbits, float(bits))


@pytest.mark.parametrize(
    "compressor",
    [C.rand_k(5), C.random_dithering(2), C.natural_compression()],
    ids=lambda c: c.name,
)
def test_compress_workers_independent_per_worker_and_reproducible(compressor, rng):
    stacked = stack(one_tree(rng), 4)
    run = jax.jit(lambda k, s: C.compress_workers(compressor, k, s)[0])
    a = flat(run(jax.random.key(7), stacked))
    b = flat(run(jax.random.key(7), stacked))
    c = flat(run(jax.random.key(8), stacked))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    for i in range(4):
        for j in range(i):
            assert not np.array_equal(a[i], a[j])
    if compressor.name != "rand_k":
        return
    # Nested vmap (e.g. over simulated runs) works too, with RandK's while_loop.
    keys = jax.random.split(jax.random.key(0), 2)
    twice = jax.tree_util.tree_map(lambda v: jnp.stack([v, v]), stacked)
    out, bits = jax.jit(jax.vmap(lambda k, s: C.compress_workers(compressor, k, s)))(keys, twice)
    assert bits.shape == (2, 4)
    first, second = (flat(jax.tree_util.tree_map(lambda v, r=r: v[r], out)) for r in (0, 1))
    assert not np.array_equal(first, second)


def test_omega_values():
    assert C.identity().omega(10) == 0.0
    assert C.rand_k(4).omega(17) == pytest.approx(17 / 4 - 1)
    assert C.rand_k(0.25).omega(100) == pytest.approx(3.0)
    assert C.top_k(0.1).omega(100) == pytest.approx(0.9)
    assert C.random_dithering(2).omega(16) == pytest.approx(2.0)  # min(16/4, 4/2)
    assert C.random_dithering(8).omega(16) == pytest.approx(0.25)  # min(16/64, 4/8)
    assert C.natural_compression().omega(3) == 0.125


def test_registry_and_errors(rng):
    assert set(C.COMPRESSORS) == {
        "identity",
        "rand_k",
        "top_k",
        "random_dithering",
        "natural_compression",
    }
    c = C.make_compressor("top_k", k=3)
    assert c.name == "top_k" and c.params == (("k", 3),)
    with pytest.raises(ValueError, match="rand_k"):
        C.make_compressor("nope")
    for bad in (0, -3, 0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="K"):
            C.top_k(bad)
        with pytest.raises(ValueError, match="K"):
            C.rand_k(bad)
    for bad in (True, "3", None):
        with pytest.raises(TypeError, match="K"):
            C.top_k(bad)
    with pytest.raises(ValueError, match="levels >= 1"):
        C.random_dithering(0)
    with pytest.raises(TypeError, match="levels"):
        C.random_dithering(2.0)
    tree = one_tree(rng)
    for make in (C.top_k, C.rand_k):
        with pytest.raises(ValueError, match=r"K=18.*d=17"):
            make(18).compress(jax.random.key(0), tree)
        with pytest.raises(ValueError, match=r"K=18.*d=17"):
            jax.jit(make(18).compress)(jax.random.key(0), tree)
        with pytest.raises(ValueError, match=r"K=18.*d=17"):
            make(18).omega(17)
    with pytest.raises(TypeError, match="floating"):
        C.identity().compress(None, {"i": np.arange(3)})
    with pytest.raises(ValueError, match="empty"):
        C.rand_k(1).compress(jax.random.key(0), {})
    with pytest.raises(ValueError, match="d=0"):
        C.rand_k(1).compress(jax.random.key(0), {"e": np.zeros((0,), np.float32)})


# --------------------------------------------------------------------------
# contractive: C / (1 + omega) of an unbiased compressor
# --------------------------------------------------------------------------


@pytest.mark.parametrize("compressor", UNBIASED, ids=lambda c: f"{c.name}{c.params}")
def test_contractive_scales_by_one_over_one_plus_omega_and_contracts(compressor, rng):
    """``E||C'(x) - x||^2 <= (1 - 1/(1 + omega)) ||x||^2``, same bits, same randomness."""
    contracted = C.contractive(compressor)
    omega = compressor.omega(D)
    assert not contracted.unbiased and contracted.name == compressor.name
    assert contracted.params == (*compressor.params, ("contractive", True))
    assert contracted.omega(D) == pytest.approx(omega / (1.0 + omega))
    assert contracted.omega(D) == pytest.approx(1.0 - 1.0 / (1.0 + omega))
    tree = one_tree(rng)
    x = flat_one(tree)
    s, bits = samples(contracted, tree)
    original, original_bits = samples(compressor, tree)
    # The same keys give the same draw, scaled: C'(x) = C(x) / (1 + omega), bits unchanged.
    np.testing.assert_allclose(s, original / (1.0 + omega), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(bits, original_bits)
    err = np.sum((s - x) ** 2, axis=1)
    sq = float(x @ x)
    assert err.mean() <= contracted.omega(D) * sq + 5 * err.std() / math.sqrt(SAMPLES) + 1e-5
    if omega == 0.0:  # identity: unchanged
        np.testing.assert_array_equal(s, np.broadcast_to(x, s.shape))


def test_contractive_rand_k_is_unscaled_rand_k_and_attains_the_bound(rng):
    """RandK / (d/K) keeps K coordinates exactly: ||C'(x) - x||^2 = (1 - K/d) ||x||^2 on average."""
    k = 4
    contracted = C.contractive(C.rand_k(k))
    assert contracted.omega(D) == pytest.approx(1.0 - k / D)
    tree = one_tree(rng)
    x = flat_one(tree)
    s, _ = samples(contracted, tree)
    kept = s != 0
    assert (kept.sum(1) == k).all()
    # unscaled (up to float32 rounding of (d/K) * (K/d))
    np.testing.assert_allclose(s[kept], np.broadcast_to(x, s.shape)[kept], rtol=1e-6)
    err = np.sum((s - x) ** 2, axis=1)
    # Each draw drops D - k coordinates: err is the dropped part of ||x||^2 exactly.
    np.testing.assert_allclose(err, np.sum(np.where(kept, 0.0, x**2), axis=1), rtol=1e-5)
    expected = (1.0 - k / D) * (x @ x)
    assert abs(err.mean() - expected) <= 5 * err.std() / math.sqrt(SAMPLES)


def test_contractive_natural_compression_attains_the_bound(rng):
    # omega = 1/8 is attained at |x_i| = (4/3) 2^a, so E||C'(x) - x||^2 = (1/9) ||x||^2 there.
    signs = np.where(rng.random(D) < 0.5, -1.0, 1.0)
    tree = {"v": (signs * (4 / 3) * 2.0 ** rng.integers(-6, 6, D)).astype(np.float32)}
    x = flat_one(tree)
    contracted = C.contractive(C.natural_compression())
    assert contracted.omega(D) == pytest.approx(1 / 9)
    s, _ = samples(contracted, tree)
    err = np.sum((s - x) ** 2, axis=1)
    assert abs(err.mean() - (x @ x) / 9) <= 5 * err.std() / math.sqrt(SAMPLES)


def test_contractive_refuses_biased_compressors():
    with pytest.raises(ValueError, match="unbiased"):
        C.contractive(C.top_k(3))
    with pytest.raises(ValueError, match="unbiased"):
        C.contractive(C.contractive(C.rand_k(3)))
