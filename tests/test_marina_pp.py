"""Byz-VR-MARINA-PP (jaxrobust.algorithms.marina_pp) and the reference optimum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from jaxrobust import functional, models, optimum, simulator
from jaxrobust.algorithms import marina_pp
from jaxrobust.config import Config
from jaxrobust.data import datasets


def synthetic(m=600, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, dim)).astype(np.float32)
    w = rng.standard_normal(dim)
    y = (x @ w + 0.5 * rng.standard_normal(m) > 0).astype(np.int32)
    return datasets.Dataset("synthetic", x, y, x[:100], y[:100], 2)


@pytest.fixture(scope="module")
def data():
    return synthetic()


BASE = dict(
    dataset="synthetic",
    model="logistic_regression",
    l2=0.01,
    num_honest=15,
    num_byzantine=5,
    algorithm="marina_pp",
    defence=("bucketing", "median"),
    batch_size=32,
    lr=0.5,
    momentum=0.0,
)


def run_steps(sim, state, steps):
    """``steps`` rounds; returns the state and the last round's metrics."""
    step = jax.jit(sim.step)
    metrics = None
    for _ in range(steps):
        state, metrics = step(state)
    return state, metrics


def start(config, data, sim, seed=0):
    indices, sizes = simulator.worker_tables(config, data.y_train, [seed])
    return jax.jit(sim.init)(jax.random.key(seed), indices[0], sizes[0], simulator.hyper_of(config))


def flat(tree):
    return np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(tree)])


# --------------------------------------------------------------------------
# Reference optimum
# --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["newton", pytest.param("lbfgs", marks=pytest.mark.slow)])
def test_reference_optimum_matches_scipy(method):
    data = synthetic(m=300, dim=5, seed=3)
    module = models.LogisticRegression(num_classes=1)
    loss = models.cross_entropy_loss(module, 0.05)
    params0 = models.init_params(module, jax.random.key(0), (5,))
    params, f_star, info = optimum.reference_optimum(
        loss, params0, data.x_train, data.y_train, method=method, return_info=True
    )
    assert info.converged and info.grad_norm < 1e-10
    assert jax.tree.structure(params) == jax.tree.structure(params0)
    x = np.hstack([data.x_train, np.ones((300, 1))]).astype(np.float64)
    s = 2.0 * data.y_train - 1.0

    def fun(w):
        return np.mean(np.logaddexp(0.0, -s * (x @ w))) + 0.025 * w @ w

    def jac(w):
        return x.T @ (-s / (1.0 + np.exp(s * (x @ w)))) / len(x) + 0.05 * w

    ref = scipy.optimize.minimize(fun, np.zeros(6), jac=jac, method="BFGS", options={"gtol": 1e-12})
    assert f_star == pytest.approx(ref.fun, abs=1e-13)
    ours = np.concatenate(
        [params["params"]["dense"]["kernel"].ravel(), params["params"]["dense"]["bias"]]
    )
    np.testing.assert_allclose(ours, ref.x, atol=1e-6)


# --------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------


def test_clipping_bound_holds(rng):
    v = {"a": rng.standard_normal((6, 3, 4)).astype(np.float32), "b": rng.standard_normal((6, 5))}
    v["a"][4, 0, 0] = np.nan
    v["b"][5, 1] = np.inf
    v["a"][3] *= 1e-3
    v["b"][3] *= 1e-3
    for lam in [0.0, 0.1, 2.0, 100.0]:
        out = functional.clip_to(jax.tree.map(jnp.asarray, v), jnp.float32(lam))
        rows = np.concatenate(
            [np.asarray(out["a"]).reshape(6, -1), np.asarray(out["b"]).reshape(6, -1)], 1
        )
        assert np.all(np.isfinite(rows))
        norms = np.linalg.norm(rows, axis=1)
        assert np.all(norms <= lam * (1 + 1e-6) + 1e-12)
        np.testing.assert_array_equal(rows[4:], 0.0)  # non-finite rows are dropped
        original = np.concatenate([v["a"].reshape(6, -1), v["b"].reshape(6, -1)], 1)
        small = np.linalg.norm(original[:4], axis=1) <= lam
        np.testing.assert_allclose(rows[:4][small], original[:4][small], rtol=1e-6)


def test_cyclic_honest_view():
    view = marina_pp.cyclic_honest_view(jnp.array([True, False, True, False, True]))
    assert [int(i) for i in view] == [1, 3, 1, 3, 1]
    view = marina_pp.cyclic_honest_view(jnp.array([True, True, True]))
    assert [int(i) for i in view] == [0, 1, 2]


# --------------------------------------------------------------------------
# The algorithm
# --------------------------------------------------------------------------


def test_full_participation_p1_mean_is_gradient_descent(data):
    # 600 examples over 15 good workers: equal local sizes, so the mean of the
    # local full gradients is the full gradient.
    config = Config(
        **{**BASE, "num_byzantine": 0, "defence": ("mean",)},
        attack="none",
        algorithm_options={"p": 1.0, "binary": True, "f_star": None},
    )
    sim = simulator.build(config, data)
    state = start(config, data, sim)
    module = models.LogisticRegression(num_classes=1)
    loss = models.cross_entropy_loss(module, config.l2)
    grad = jax.jit(jax.grad(loss))
    x = state.params
    batch = (jnp.asarray(data.x_train), jnp.asarray(data.y_train))
    np.testing.assert_allclose(flat(state.g), flat(grad(x, batch)), rtol=1e-5, atol=1e-7)
    state, metrics = run_steps(sim, state, 25)
    assert float(metrics.bits_sent) == 15 * 32 * 9  # every good client sends 9 float32
    assert float(metrics.full_round) == 1.0
    for _ in range(25):
        x = jax.tree.map(lambda p, g: p - config.lr * g, x, grad(x, batch))
    np.testing.assert_allclose(flat(state.params), flat(x), rtol=1e-5, atol=1e-6)
    assert float(state.epochs) == pytest.approx(26.0)  # the initial gradient, then one per round


def test_difference_uses_the_same_batch_at_both_points(data):
    # loss(w; B) = 0.5 ||w - mean(x_B)||^2: grad(w_new; B) - grad(w_old; B) = w_new - w_old
    # exactly for the same batch B (and differs by mean(x_B) - mean(x_B') otherwise),
    # so with the mean, no clipping and no full round: g_{k+1} = (1 - gamma) g_k.
    def loss(params, batch):
        return 0.5 * jnp.sum((params["w"] - jnp.mean(batch[0], axis=0)) ** 2)

    problem = simulator.Problem(
        init=lambda key: {"w": 3.0 + jax.random.normal(key, (8,))}, loss=loss
    )
    config = Config(
        **{**BASE, "num_byzantine": 0, "defence": ("mean",), "batch_size": 4, "lr": 0.1},
        attack="none",
        clients_per_round=5,
        algorithm_options={"p": 0.0, "clip_alpha": None, "f_star": None},
    )
    sim = simulator.build(config, data, problem)
    state = start(config, data, sim)
    g0 = flat(state.g)
    assert np.linalg.norm(g0) > 1.0
    state, metrics = run_steps(sim, state, 10)
    np.testing.assert_allclose(flat(state.g), 0.9**10 * g0, rtol=1e-5)
    assert float(metrics.bits_sent) == 5 * 32 * 8  # identity compressor, 5 good clients
    assert float(state.epochs) == pytest.approx(1.0 + 10 * 5 * 2 * 4 / 600)


def forced(workers):
    """A sampler whose sample starts with ``workers`` (then the other clients in order)."""

    def sampler(key, n, size):
        rest = [w for w in range(n) if w not in workers]
        return jnp.asarray((list(workers) + rest)[:size], jnp.int32)

    return sampler


def test_shift_back_sends_the_model_to_x0(data):
    # Every sampled client Byzantine, difference rounds, plain mean, no clipping:
    # the attack of round 0 makes x_2 = x_0.
    config = Config(
        **{**BASE, "num_honest": 3, "num_byzantine": 4, "defence": ("median",)},
        attack="shift_back",
        clients_per_round=4,
        algorithm_options={
            "p": 0.0,
            "plus": True,
            "clip_alpha": None,
            "binary": True,
            "f_star": None,
            "shared_data": True,
            "sampler": forced([3, 4, 5, 6]),
        },
    )
    sim = simulator.build(config, data)
    state = start(config, data, sim)
    x0 = flat(state.params)
    state, _ = run_steps(sim, state, 1)
    assert np.linalg.norm(flat(state.params) - x0) > 1e-3
    state, _ = run_steps(sim, state, 1)
    np.testing.assert_allclose(flat(state.params), x0, atol=1e-5)


@pytest.mark.parametrize(
    "attack", ["shift_back", "alie_aware", pytest.param("label_flip", marks=pytest.mark.slow)]
)
def test_all_byzantine_rounds_stay_finite(data, attack):
    config = Config(
        **{**BASE, "num_honest": 3, "num_byzantine": 3, "defence": ("median",)},
        attack=attack,
        clients_per_round=3,
        compressor="rand_k",
        compressor_options={"k": 3},
        algorithm_options={
            "p": 0.5,
            "clients_full": 3,
            "binary": True,
            "f_star": None,
            "sampler": forced([5, 3, 4]),
        },
    )
    sim = simulator.build(config, data)
    state = start(config, data, sim)
    step = jax.jit(sim.step)
    kinds = set()
    for _ in range(12):
        state, metrics = step(state)
        kinds.add(float(metrics.full_round))
        assert np.all(np.isfinite(flat(state.params))) and np.all(np.isfinite(flat(state.g)))
        assert np.isfinite(float(metrics.train_loss))
        assert float(metrics.bits_sent) == 0.0  # no good client was sampled
    assert kinds == {0.0, 1.0}


def logistic_objective(data, l2):
    x = np.hstack([data.x_train, np.ones((len(data.x_train), 1))]).astype(np.float64)
    s = 2.0 * data.y_train - 1.0

    def fun(w):
        return np.mean(np.logaddexp(0.0, -s * (x @ w))) + 0.5 * l2 * w @ w

    def jac(w):
        return x.T @ (-s / (1.0 + np.exp(s * (x @ w)))) / len(x) + l2 * w

    return fun, jac


def test_suboptimality_is_precise_near_the_optimum(data):
    config = Config(**BASE, attack="none", algorithm_options={"binary": True})
    sim = simulator.build(config, data)  # computes (x*, f*) with optimum.py
    fun, jac = logistic_objective(data, config.l2)
    ref = scipy.optimize.minimize(fun, np.zeros(9), jac=jac, method="BFGS", options={"gtol": 1e-12})
    evaluate = jax.jit(sim.evaluate)
    rng = np.random.default_rng(0)
    for scale in [1.0, 1e-2, 1e-4]:
        w = (ref.x + scale * rng.standard_normal(9)).astype(np.float32)
        params = {"params": {"dense": {"kernel": w[:8, None], "bias": w[8:]}}}
        exact = fun(w.astype(np.float64)) - ref.fun
        got = float(evaluate(params)["suboptimality"])
        assert got == pytest.approx(exact, rel=1e-3), scale


def subopt(fun, f_star, params):
    p = params["params"]["dense"]
    w = np.concatenate([np.ravel(p["kernel"]), np.ravel(p["bias"])]).astype(np.float64)
    return fun(w) - f_star


def test_simulate_seeds_and_clipping_against_shift_back(data):
    """simulate() with 2 vmapped seeds equals separate un-vmapped runs, and clipping wins.

    15 good + 5 Byzantine clients, 4 sampled per difference round (20 %), all 20 in
    the full rounds (p = 0.2), CWMed, shift-back.
    """
    options = {"binary": True, "shared_data": True, "p": 0.2, "f_star": None}
    config = Config(
        **{**BASE, "defence": ("median",)},
        attack="shift_back",
        clients_per_round=4,
        steps=400,
        eval_every=200,
        seeds=2,
        algorithm_options={**options, "clip_alpha": 1.0},
    )
    together = simulator.simulate(config, data)
    assert sorted({r["seed"] for r in together.rows}) == [0, 1]
    assert {r["step"] for r in together.rows} == {200, 400}
    fun, jac = logistic_objective(data, config.l2)
    f_star = scipy.optimize.minimize(
        fun, np.zeros(9), jac=jac, method="BFGS", options={"gtol": 1e-12}
    ).fun
    final = {}
    for alpha in [1.0, None]:
        sim = simulator.build(
            config.replace(algorithm_options={**options, "clip_alpha": alpha}), data
        )
        for seed in range(2):
            state, _ = run_steps(sim, start(config, data, sim, seed), config.steps)
            final[alpha, seed] = subopt(fun, f_star, state.params)
            if alpha is None:
                continue
            # Separate, un-vmapped runs (lax.cond runs one branch there) match the vmapped ones.
            np.testing.assert_allclose(
                flat(state.params),
                flat(jax.tree.map(lambda v, s=seed: v[s], together.params)),
                rtol=1e-4,
                atol=1e-6,
            )
            # The reported epochs are the cumulative value at the evaluation (last value).
            row = [r for r in together.rows if r["seed"] == seed and r["step"] == config.steps]
            assert row[0]["epochs"] == pytest.approx(float(state.epochs), rel=1e-5)
    for seed in range(2):
        assert final[1.0, seed] < 1e-5
        assert not final[None, seed] < 1e-3


def test_bad_options_are_clear_errors(data):
    with pytest.raises(ValueError, match="unknown algorithm_options"):
        simulator.build(Config(**BASE, algorithm_options={"q": 1}), data)
    with pytest.raises(ValueError, match="weight decay"):
        simulator.build(Config(**BASE, weight_decay=0.1), data)


def test_epochs_at_every_evaluation_are_the_exact_cumulative_values(data):
    """The reported epochs are the running total after the evaluation's round.

    A fixed sample (3 good clients in a full round of 6, 2 good in a
    difference round of 4), so a round's increment only depends on its kind;
    the number of full rounds of each chunk is ``eval_every`` times the
    chunk's mean of ``full_round``.
    """
    config = Config(
        **{**BASE, "defence": ("median",)},
        attack="sign_flip",
        clients_per_round=4,
        heterogeneity="dirichlet",
        alpha=0.5,
        steps=21,
        eval_every=7,
        seeds=2,
        algorithm_options={
            "p": 0.4,
            "clients_full": 6,
            "binary": True,
            "f_star": None,
            "sampler": forced([0, 15, 1, 16, 2, 17]),
        },
    )
    init, chunk, _, _ = simulator.compiled_run(config, data)
    seeds = [0, 1]
    states = simulator.initial_states(config, data, init, seeds)
    _, sizes = simulator.worker_tables(config, data.y_train, seeds)
    sizes = sizes.astype(np.float64)
    total = sizes.sum(1)
    full_inc = sizes[:, :3].sum(1) / total  # good clients 0, 1, 2: full local gradients
    diff_inc = 2 * 2 * config.batch_size / total  # good clients 0, 1: two batch gradients
    expected = np.ones(2)  # the initial full gradient of every good client
    kinds = set()
    for _ in range(config.steps // config.eval_every):
        states, metrics = chunk(states)
        full = np.asarray(metrics.full_round, np.float64) * config.eval_every
        np.testing.assert_allclose(full, np.round(full), atol=1e-4)
        full = np.round(full)
        kinds.update(full.tolist())
        expected = expected + full * full_inc + (config.eval_every - full) * diff_inc
        np.testing.assert_allclose(np.asarray(metrics.epochs), expected, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(states.epochs), expected, rtol=1e-6)
    assert len(kinds) > 1  # chunks with different numbers of full rounds


@pytest.mark.parametrize(
    "attack", [pytest.param("alie_aware", marks=pytest.mark.slow), "ipm_aware"]
)
def test_aggregator_aware_attacks_run_inside_the_round_kinds(data, attack):
    """The attack's defence (inside lax.cond, vmapped over runs) traces and runs; the
    vmapped runs equal the runs one by one."""
    config = Config(
        **{**BASE, "steps": 4, "eval_every": 2, "clients_per_round": 5},
        attack=attack,
        attack_options={"points": 4},
        seeds=2,
    )
    together = simulator.simulate(config, data)
    alone = simulator.simulate(config.replace(seeds=1, seed=1), data)
    rows = [r for r in together.rows if r["seed"] == 1]
    for a, b in zip(rows, alone.rows, strict=True):
        assert np.isfinite(a["train_loss"])
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
