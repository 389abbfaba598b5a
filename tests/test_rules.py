"""Every robust rule against a numpy reference, and its properties."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference as ref
from conftest import flat, flat_one, make_tree

import jaxrobust as jr
from jaxrobust import aggregators, functional, kernels, preaggregators

N, F = 11, 3


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    build: Callable[[int, int], optax.GradientTransformation]  # (n, f) -> tx
    reference: Callable[[np.ndarray, int], np.ndarray]  # (x, f) -> output
    reduces: bool = True  # aggregator (drops the worker axis) or pre-aggregator
    robust: bool = True  # tolerates f bad vectors
    permutation: str = "invariant"  # "invariant", "equivariant" or "none"
    far_outliers: str = "honest_radius"  # bound checked with planted far vectors


RULES = [
    Rule("mean", lambda n, f: jr.mean(), lambda x, f: ref.mean(x), robust=False, far_outliers=""),
    Rule(
        "median",
        lambda n, f: jr.median(f),
        lambda x, f: ref.median(x),
        far_outliers="coordinate_range",
    ),
    Rule(
        "trimmed_mean",
        lambda n, f: jr.trimmed_mean(f),
        ref.trimmed_mean,
        far_outliers="coordinate_range",
    ),
    Rule("meamed", lambda n, f: jr.meamed(f), ref.meamed, far_outliers="coordinate_range"),
    Rule(
        "geometric_median",
        lambda n, f: jr.geometric_median(f),
        lambda x, f: ref.geometric_median(x),
    ),
    Rule("krum", lambda n, f: jr.krum(f), ref.krum),
    Rule("multi_krum", lambda n, f: jr.multi_krum(f), ref.multi_krum),
    Rule("multi_krum_m2", lambda n, f: jr.multi_krum(f, m=2), lambda x, f: ref.multi_krum(x, f, 2)),
    Rule("mda", lambda n, f: jr.mda(f), ref.mda),
    Rule("monna", lambda n, f: jr.monna(f, trusted=0), ref.monna, permutation="none"),
    Rule(
        "centered_clipping",
        lambda n, f: jr.centered_clipping(tau=1.0, iterations=3),
        lambda x, f: ref.centered_clipping(x, np.zeros(x.shape[1]), 1.0, 3),
        far_outliers="cc_step",
    ),
    Rule("caf", lambda n, f: jr.caf(f), ref.caf),
    Rule("dnc", lambda n, f: jr.dnc(f, subsample=10**6), ref.dnc_all_coordinates),
    Rule(
        "arc",
        lambda n, f: jr.arc(f),
        ref.arc,
        reduces=False,
        permutation="equivariant",
        far_outliers="arc_norm",
    ),
    Rule(
        "clip",
        lambda n, f: jr.clip(2.0),
        lambda x, f: ref.clip(x, 2.0),
        reduces=False,
        permutation="equivariant",
        far_outliers="clip_norm",
    ),
    Rule(
        "nnm",
        lambda n, f: jr.nnm(f),
        ref.nnm,
        reduces=False,
        permutation="equivariant",
        far_outliers="nnm_honest_rows",
    ),
]
IDS = [r.name for r in RULES]
ROBUST = [r for r in RULES if r.robust]


def run(tx, tree, params=None):
    params = jax.tree_util.tree_map(lambda leaf: jnp.zeros(leaf.shape[1:], leaf.dtype), tree)
    state = tx.init(params)
    out, _ = tx.update(tree, state, params)
    return out


def as_flat(rule: Rule, out) -> np.ndarray:
    return flat_one(out) if rule.reduces else flat(out)


@pytest.mark.parametrize("rule", RULES, ids=IDS)
@pytest.mark.parametrize("n,f", [(N, F), (7, 1), (12, 2)])
def test_matches_numpy_reference(rule, n, f):
    rng = np.random.default_rng(n * 100 + f)
    tree = make_tree(rng, n)
    out = jax.jit(lambda t: run(rule.build(n, f), t))(tree)
    expected = rule.reference(flat(tree), f)
    np.testing.assert_allclose(as_flat(rule, out), expected, rtol=2e-4, atol=2e-5)
    # Output structure: same pytree, worker axis removed (or kept).
    for leaf, inp in zip(
        jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(tree), strict=True
    ):
        assert leaf.dtype == inp.dtype
        assert leaf.shape == (inp.shape[1:] if rule.reduces else inp.shape)


@pytest.mark.parametrize("rule", RULES, ids=IDS)
def test_jit_equals_no_jit(rule):
    tree = make_tree(np.random.default_rng(1), N)
    jitted = jax.jit(lambda t: run(rule.build(N, F), t))(tree)
    with jax.disable_jit():
        eager = run(rule.build(N, F), tree)
    np.testing.assert_allclose(as_flat(rule, jitted), as_flat(rule, eager), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", RULES, ids=IDS)
def test_outer_vmap_equals_loop(rule):
    rng = np.random.default_rng(2)
    batch = [make_tree(rng, N) for _ in range(3)]
    stacked = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *batch)
    tx = rule.build(N, F)
    state = tx.init(jax.tree_util.tree_map(lambda leaf: jnp.zeros(leaf.shape[1:]), batch[0]))
    vmapped, _ = jax.jit(jax.vmap(lambda t: tx.update(t, state)))(stacked)
    for b, tree in enumerate(batch):
        one, _ = tx.update(tree, state)
        got = jax.tree_util.tree_map(lambda leaf, b=b: leaf[b], vmapped)
        np.testing.assert_allclose(as_flat(rule, got), as_flat(rule, one), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "rule", [r for r in RULES if r.permutation != "none"], ids=lambda r: r.name
)
def test_permutation(rule):
    rng = np.random.default_rng(3)
    tree = make_tree(rng, N)
    perm = rng.permutation(N)
    shuffled = jax.tree_util.tree_map(lambda leaf: leaf[perm], tree)
    a = as_flat(rule, run(rule.build(N, F), tree))
    b = as_flat(rule, run(rule.build(N, F), shuffled))
    if rule.permutation == "equivariant":
        a = a[perm]
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def _plant(tree, rows, value_fn):
    out = {k: v.copy() for k, v in tree.items()}
    for k in out:
        for r in rows:
            out[k][r] = value_fn(out[k][r].shape)
    return out


BAD_PATTERNS = {
    "nan": lambda rng: lambda shape: np.full(shape, np.nan, np.float32),
    "inf": lambda rng: lambda shape: np.full(shape, np.inf, np.float32),
    "neg_inf": lambda rng: lambda shape: np.full(shape, -np.inf, np.float32),
    "mixed": lambda rng: (
        lambda shape: rng.choice(np.array([np.nan, np.inf, -np.inf, 1.0], np.float32), size=shape)
    ),
    "huge": lambda rng: lambda shape: np.full(shape, 3e38, np.float32),
}


@pytest.mark.parametrize("pattern", list(BAD_PATTERNS))
@pytest.mark.parametrize("rule", ROBUST, ids=lambda r: r.name)
def test_f_bad_vectors_never_give_nan(rule, pattern):
    rng = np.random.default_rng(4)
    tree = make_tree(rng, N)
    bad = _plant(tree, rows=range(N - F, N), value_fn=BAD_PATTERNS[pattern](rng))
    out = jax.jit(lambda t: run(rule.build(N, F), t))(bad)
    for leaf in jax.tree_util.tree_leaves(out):
        assert np.isfinite(np.asarray(leaf)).all(), (
            f"{rule.name} gave non-finite output on {pattern} vectors"
        )


def test_mean_is_spoiled_by_one_nan():
    tree = _plant(make_tree(np.random.default_rng(5), N), [0], BAD_PATTERNS["nan"](None))
    assert np.isnan(flat_one(run(jr.mean(), tree))).all()


@pytest.mark.parametrize("rule", [r for r in ROBUST if r.far_outliers], ids=lambda r: r.name)
def test_bounds_with_planted_far_outliers(rule):
    rng = np.random.default_rng(6)
    tree = make_tree(rng, N)
    far = _plant(
        tree, range(N - F, N), lambda shape: (1e6 * rng.standard_normal(shape)).astype(np.float32)
    )
    honest = flat(tree)[: N - F]
    centre = honest.mean(0)
    radius = np.linalg.norm(honest - centre, axis=1).max()
    out = as_flat(rule, run(rule.build(N, F), far))
    if rule.far_outliers == "honest_radius":
        assert np.linalg.norm(out - centre) <= radius
    elif rule.far_outliers == "coordinate_range":
        assert (out >= honest.min(0) - 1e-6).all() and (out <= honest.max(0) + 1e-6).all()
    elif rule.far_outliers == "cc_step":  # each of the 3 iterations moves at most tau = 1
        assert np.linalg.norm(out) <= 3 * 1.0 + 1e-5
    elif rule.far_outliers == "arc_norm":  # ARC bounds every norm by the largest honest norm
        assert np.linalg.norm(out, axis=1).max() <= np.linalg.norm(honest, axis=1).max() * (
            1 + 1e-6
        )
    elif rule.far_outliers == "clip_norm":
        assert np.linalg.norm(out, axis=1).max() <= 2.0 * (1 + 1e-6)
    elif rule.far_outliers == "nnm_honest_rows":  # honest rows only mix honest rows
        assert (np.linalg.norm(out[: N - F] - centre, axis=1) <= radius).all()
    else:
        raise AssertionError(rule.far_outliers)


@pytest.mark.parametrize(
    "rule",
    [
        jr.trimmed_mean(0),
        jr.meamed(0),
        jr.multi_krum(0),
        jr.mda(0),
        jr.monna(0),
        jr.caf(0),
        jr.dnc(0),
        optax.chain(jr.nnm(0), jr.median()),
    ],
    ids=["trimmed_mean", "meamed", "multi_krum", "mda", "monna", "caf", "dnc", "nnm_then_median"],
)
def test_f_zero_gives_the_mean(rule):
    tree = make_tree(np.random.default_rng(7), N)
    np.testing.assert_allclose(flat_one(run(rule, tree)), flat(tree).mean(0), rtol=1e-5, atol=1e-6)


def test_arc_with_f_zero_is_the_identity():
    tree = make_tree(np.random.default_rng(8), N)
    np.testing.assert_array_equal(flat(run(jr.arc(0), tree)), flat(tree))


@pytest.mark.parametrize(
    "n,f,k",
    [(10, 3, 4), (13, 3, 4), (5, 2, 2), (4, 1, 1), (3, 1, 1), (17, 1, 1), (20, 9, 9), (7, 0, 0)],
)
def test_arc_clips_exactly_floor_2f_n_minus_f_over_n(n, f, k):
    assert jr.functional.arc_clipped_count(n, f) == k == (2 * f * (n - f)) // n
    rng = np.random.default_rng(n)
    norms = rng.permutation(np.arange(1, n + 1)).astype(np.float32)
    directions = rng.standard_normal((n, 6)).astype(np.float32)
    x = directions / np.linalg.norm(directions, axis=1, keepdims=True) * norms[:, None]
    out = np.asarray(run(jr.arc(f), x))
    out_norms = np.linalg.norm(out, axis=1)
    changed = ~np.isclose(out_norms, norms, rtol=1e-6)
    assert changed.sum() == k
    assert set(np.flatnonzero(changed)) == set(np.argsort(norms)[n - k :])
    np.testing.assert_allclose(out_norms[changed], n - k, rtol=1e-6)  # (k+1)-th largest norm
    # directions are kept
    np.testing.assert_allclose(out / out_norms[:, None], x / norms[:, None], rtol=1e-5, atol=1e-6)


def test_arc_turns_inf_vectors_into_zeros_not_nan():
    x = np.ones((5, 3), np.float32)
    x[4] = [np.inf, -np.inf, 1.0]
    out = np.asarray(run(jr.arc(2), x))
    np.testing.assert_array_equal(out[4], 0.0)
    np.testing.assert_array_equal(out[:4], x[:4])


def test_bucketing_matches_reference_with_the_same_permutation():
    tree = make_tree(np.random.default_rng(9), N)
    key = jax.random.key(42)
    tx = jr.bucketing(3)
    out, _ = tx.update(tree, tx.init(None), key=key)
    perm = np.asarray(jax.random.permutation(key, N))
    np.testing.assert_allclose(flat(out), ref.bucketing(flat(tree), 3, perm), rtol=1e-6, atol=1e-7)
    assert flat(out).shape[0] == 4  # ceil(11 / 3)


def test_bucketing_key_in_state_gives_fresh_reproducible_shuffles():
    tree = make_tree(np.random.default_rng(10), N)
    tx = jr.bucketing(2, key=3)
    s0 = tx.init(None)
    a, s1 = tx.update(tree, s0)
    b, _ = tx.update(tree, s1)
    a_again, _ = tx.update(tree, tx.init(None))
    np.testing.assert_array_equal(flat(a), flat(a_again))
    assert not np.allclose(flat(a), flat(b))
    # bucketing preserves the total when the bucket size divides n ... up to the ragged last bucket
    sizes = np.array([2] * 5 + [1])
    np.testing.assert_allclose(
        (sizes[:, None] * flat(a)).sum(0), flat(tree).sum(0), rtol=1e-5, atol=1e-5
    )


def test_centered_clipping_keeps_its_centre_in_the_state():
    tree = make_tree(np.random.default_rng(11), N)
    tx = jr.centered_clipping(tau=1.0, iterations=2)
    params = jax.tree_util.tree_map(lambda leaf: jnp.zeros(leaf.shape[1:]), tree)
    state = tx.init(params)
    out1, state = tx.update(tree, state)
    out2, state = tx.update(tree, state)
    x = flat(tree)
    v1 = ref.centered_clipping(x, np.zeros(x.shape[1]), 1.0, 2)
    v2 = ref.centered_clipping(x, v1, 1.0, 2)
    np.testing.assert_allclose(flat_one(out1), v1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flat_one(out2), v2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flat_one(state.center), v2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", RULES, ids=IDS)
def test_bfloat16_in_bfloat16_out(rule):
    tree = make_tree(np.random.default_rng(12), N)
    tree_bf16 = jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf, jnp.bfloat16), tree)
    rounded = jax.tree_util.tree_map(lambda leaf: np.asarray(leaf.astype(jnp.float32)), tree_bf16)
    out = run(rule.build(N, F), tree_bf16)
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree_util.tree_leaves(out))
    expected = as_flat(rule, run(rule.build(N, F), rounded))
    np.testing.assert_allclose(as_flat(rule, out), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("rule", RULES, ids=IDS)
def test_inputs_are_never_modified(rule):
    tree = make_tree(np.random.default_rng(13), N)
    tree["b"][-1] = np.inf
    before = {k: v.copy() for k, v in tree.items()}
    run(rule.build(N, F), tree)
    for k in tree:
        np.testing.assert_array_equal(tree[k], before[k])


def test_chain_in_a_users_optax_loop_converges_under_attack():
    # Minimise ||x - target||^2 with 8 honest workers and 3 sending huge vectors.
    target = np.array([1.0, -2.0, 3.0], np.float32)
    tx = optax.chain(jr.arc(3), jr.nnm(3), jr.trimmed_mean(3), optax.sgd(0.1))
    params = jnp.zeros(3)
    state = tx.init(params)
    rng = np.random.default_rng(14)

    @jax.jit
    def step(params, state, noise):
        honest = 2 * (params - target) + noise[:8]
        byzantine = jnp.broadcast_to(-1e4 * jnp.ones(3), (3, 3))
        grads = jnp.concatenate([honest, byzantine])
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(200):
        params, state = step(params, state, 0.1 * rng.standard_normal((11, 3)).astype(np.float32))
    np.testing.assert_allclose(params, target, atol=0.1)


def test_per_worker_ema_is_worker_momentum():
    n, beta = 4, 0.9
    tx = jr.per_worker(optax.ema(beta, debias=False), n)
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    rng = np.random.default_rng(15)
    m = np.zeros((n, 3))
    for _ in range(3):
        g = rng.standard_normal((n, 3)).astype(np.float32)
        out, state = tx.update({"w": g}, state, params)
        m = beta * m + (1 - beta) * g
        np.testing.assert_allclose(out["w"], m, rtol=1e-5)


def test_per_worker_needs_n_and_checks_it():
    with pytest.raises(ValueError, match="per_worker needs n >= 1"):
        jr.per_worker(optax.sgd(1.0), 0)
    tx = jr.per_worker(optax.scale(2.0), 3)
    with pytest.raises(ValueError, match="built for n=3"):
        tx.update(jnp.ones((4, 2)), tx.init(jnp.ones(2)))


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: jr.trimmed_mean(2, n=4), "trimmed_mean needs n > 2f, got n=4, f=2"),
        (lambda: jr.median(2, n=4), "median needs n > 2f, got n=4, f=2"),
        (lambda: jr.meamed(3, n=6), "meamed needs n > 2f, got n=6, f=3"),
        (lambda: jr.krum(2, n=6), r"krum needs n > 2f \+ 2, got n=6, f=2"),
        (lambda: jr.multi_krum(2, n=6), r"multi_krum needs n > 2f \+ 2, got n=6, f=2"),
        (lambda: jr.multi_krum(1, m=9, n=6), "multi_krum needs 1 <= m <= n, got n=6, m=9"),
        (
            lambda: jr.mda(10, n=40),
            r"mda needs at most max_subsets=200000 subsets to enumerate, "
            r"got C\(n, f\) = C\(40, 10\)",
        ),
        (lambda: jr.monna(1, trusted=5, n=5), "monna needs 0 <= trusted < n, got n=5, trusted=5"),
        (lambda: jr.geometric_median(3, n=6), "geometric_median needs n > 2f, got n=6, f=3"),
        (lambda: jr.arc(2, n=4), "arc needs n > 2f, got n=4, f=2"),
        (lambda: jr.nnm(3, n=3), "nnm needs n > f, got n=3, f=3"),
        (lambda: jr.caf(2, n=4), "caf needs n > 2f, got n=4, f=2"),
        (lambda: jr.dnc(2, n=4), "dnc needs n > 2f, got n=4, f=2"),
        (lambda: jr.bucketing(5, n=3), "bucketing needs bucket_size <= n, got n=3, bucket_size=5"),
        (lambda: jr.bucketing(0), "bucketing needs bucket_size >= 1, got bucket_size=0"),
        (lambda: jr.trimmed_mean(-1), "trimmed_mean needs f >= 0, got f=-1"),
        (lambda: jr.geometric_median(nu=0.0), "geometric_median needs nu > 0"),
        (lambda: jr.centered_clipping(tau=-1.0), "centered_clipping needs tau > 0"),
        (lambda: jr.clip(-1.0), "clip needs max_norm >= 0"),
    ],
)
def test_impossible_settings_fail_at_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_non_integer_f_is_a_type_error():
    with pytest.raises(TypeError, match="trimmed_mean needs an integer f"):
        jr.trimmed_mean(1.5)


@pytest.mark.parametrize(
    "tx,n,message",
    [
        (jr.trimmed_mean(2), 4, "trimmed_mean needs n > 2f, got n=4, f=2"),
        (jr.krum(1), 4, r"krum needs n > 2f \+ 2, got n=4, f=1"),
        (jr.mda(10), 40, "mda needs at most max_subsets"),
        (jr.arc(3), 5, "arc needs n > 2f, got n=5, f=3"),
        (
            jr.trimmed_mean(1, n=5),
            6,
            "trimmed_mean was built for n=5 workers, got updates with n=6",
        ),
    ],
)
def test_bounds_checked_at_trace_time_when_n_comes_from_the_input(tx, n, message):
    x = jnp.zeros((n, 3))
    with pytest.raises(ValueError, match=message):
        jax.jit(lambda x: tx.update(x, tx.init(jnp.zeros(3))))(x)


def test_every_rule_is_importable_from_its_module():
    for name in jr.AGGREGATORS:
        assert getattr(aggregators, name) is getattr(jr, name)
    for name in jr.PREAGGREGATORS:
        assert getattr(preaggregators, name) is getattr(jr, name)


# --------------------------------------------------------------------------
# Matrix products pinned at Precision.HIGHEST
# --------------------------------------------------------------------------


def _dot_precisions(jaxpr) -> list:
    """The ``precision`` of every dot_general in a jaxpr, sub-jaxprs included."""
    found = []

    def subjaxprs(value):
        if hasattr(value, "eqns"):  # a Jaxpr
            yield value
        elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):  # a ClosedJaxpr
            yield value.jaxpr
        elif isinstance(value, (tuple, list)):
            for v in value:
                yield from subjaxprs(v)

    def walk(j):
        for eqn in j.eqns:
            if eqn.primitive.name == "dot_general":
                found.append(eqn.params["precision"])
            for value in eqn.params.values():
                for sub in subjaxprs(value):
                    walk(sub)

    walk(jaxpr.jaxpr)
    return found


def _is_highest(precision) -> bool:
    pair = precision if isinstance(precision, tuple) else (precision, precision)
    return all(p == jax.lax.Precision.HIGHEST for p in pair)


def _attack_fn(name):
    from jaxrobust import attacks

    attack = attacks.make_attack(name)
    return lambda x: attack.apply(attacks.AttackInput(x, 2, jax.random.key(0)), ())[0]


# Every rule or attack that multiplies matrices (CAF is checked with its own rule).
GRAM_RULES = {
    "krum": lambda x: functional.krum(x, 2),
    "multi_krum": lambda x: functional.multi_krum(x, 2),
    "mda": lambda x: functional.mda(x, 2),
    "nnm": lambda x: functional.nnm(x, 2),
    "geometric_median": lambda x: functional.geometric_median(x),
    "dnc": lambda x: functional.dnc(x, 2, jax.random.key(0)),
    "gram_matrix": lambda x: kernels.gram_matrix(x),
    "pairwise_squared_distances": lambda x: kernels.pairwise_squared_distances(x),
    "mix_rows": lambda x: kernels.mix_rows(jnp.ones((3, x.shape[0])) / 3, x),
    "min_max": _attack_fn("min_max"),
    "min_sum": _attack_fn("min_sum"),
}


def _mimic(x):
    from jaxrobust import attacks

    attack = attacks.make_attack("mimic", warmup=1)
    state = attack.init(x[0])
    return attack.apply(attacks.AttackInput(x, 2, jax.random.key(0)), state)[0]


GRAM_RULES["mimic"] = _mimic  # an attack with a state


@pytest.mark.parametrize("d", [5, 4 * 8192 + 3])  # plain and blocked (CPU) Gram paths
@pytest.mark.parametrize("name", list(GRAM_RULES))
def test_every_matrix_product_runs_at_highest_precision(name, d):
    # Without the pin, a product takes the platform default (TF32 / bfloat16
    # passes on accelerators) and its precision param is None or DEFAULT.
    x = jnp.ones((7, d), jnp.float32)
    with jax.default_matmul_precision("bfloat16"):
        jaxpr = jax.make_jaxpr(GRAM_RULES[name])(x)
    precisions = _dot_precisions(jaxpr)
    assert precisions, f"{name} has no matrix product"
    assert all(_is_highest(p) for p in precisions), (name, precisions)
