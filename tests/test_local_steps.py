"""FedAvg-style local steps in the D-SGD simulator, against a numpy reference."""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust import simulator
from jaxrobust.config import Config
from jaxrobust.data import datasets

H, D = 4, 3


def one_example_per_worker() -> datasets.Dataset:
    """``H`` examples, so the iid partition gives each honest worker exactly one."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(H, D)).astype(np.float32)
    y = np.arange(H, dtype=np.int32) % 2
    return datasets.Dataset("tiny", x, y, x, y, num_classes=2)


def least_squares() -> simulator.Problem:
    """``0.5 (<w, x> - y)^2`` averaged over the batch, from ``w = 1``."""

    def loss(params, batch):
        x, y = batch
        return 0.5 * jnp.mean((x @ params["w"] - y.astype(jnp.float32)) ** 2)

    return simulator.Problem(init=lambda key: {"w": jnp.ones(D, jnp.float32)}, loss=loss)


def local_model(w, x, y, steps, lr):
    """Plain gradient descent on one example (every minibatch repeats it)."""
    for _ in range(steps):
        w = w - lr * (x @ w - y) * x
    return w


def config(**changes) -> Config:
    base = dict(
        num_honest=H,
        num_byzantine=0,
        defence=("mean",),
        momentum=0.0,
        lr=0.1,
        steps=1,
        eval_every=1,
        batch_size=3,
        local_steps=4,
    )
    return Config(**{**base, **changes})


def one_round(cfg: Config) -> np.ndarray:
    data = one_example_per_worker()
    indices, sizes = simulator.worker_tables(cfg, data.y_train, [cfg.seed])
    assert (sizes == 1).all()
    result = simulator.simulate(cfg, data, problem=least_squares())
    return np.asarray(result.params["w"][0]), indices[0, :, 0]


def test_full_participation_is_fedavg():
    cfg = config()
    data = one_example_per_worker()
    w, examples = one_round(cfg)
    start = np.ones(D, np.float32)
    models = [
        local_model(start, data.x_train[e], float(data.y_train[e]), cfg.local_steps, cfg.lr)
        for e in examples
    ]
    # lr == local_lr, momentum 0, mean: the new model is the average of the local models.
    np.testing.assert_allclose(w, np.mean(models, axis=0), rtol=1e-5, atol=1e-6)


def test_local_lr_and_server_lr_are_separate():
    cfg = config(local_lr=0.05, lr=0.5, local_steps=3)
    data = one_example_per_worker()
    w, examples = one_round(cfg)
    start = np.ones(D, np.float32)
    vectors = [
        (start - local_model(start, data.x_train[e], float(data.y_train[e]), 3, 0.05)) / 0.05
        for e in examples
    ]
    np.testing.assert_allclose(w, start - 0.5 * np.mean(vectors, axis=0), rtol=1e-5, atol=1e-6)


def test_small_local_rate_sends_the_sum_of_gradients():
    # As local_lr -> 0 the vector (x - x_K) / local_lr tends to K gradients at x.
    data = one_example_per_worker()
    w_local, _ = one_round(config(local_steps=2, local_lr=1e-4))
    start = np.ones(D, np.float32)
    grads = [(data.x_train[i] @ start - data.y_train[i]) * data.x_train[i] for i in range(H)]
    np.testing.assert_allclose(w_local, start - 0.1 * 2 * np.mean(grads, axis=0), rtol=1e-3)


def test_sampled_clients_only():
    cfg = config(clients_per_round=2)
    data = one_example_per_worker()
    w, examples = one_round(cfg)
    start = np.ones(D, np.float32)
    models = [
        local_model(start, data.x_train[e], float(data.y_train[e]), cfg.local_steps, cfg.lr)
        for e in examples
    ]
    candidates = [
        np.mean([models[i] for i in pair], axis=0) for pair in itertools.combinations(range(H), 2)
    ]
    gaps = [np.max(np.abs(w - c)) for c in candidates]
    assert min(gaps) < 1e-5, gaps
    everyone = np.mean(models, axis=0)
    assert np.max(np.abs(w - everyone)) > 1e-4  # not all clients trained


def test_rounds_with_only_byzantine_clients_stay_finite():
    # 2 of 4 workers Byzantine, 2 sampled per round: each round holds only Byzantine
    # clients with probability 1/6, so 60 rounds miss that with probability 2e-5.
    cfg = Config(
        num_honest=2,
        num_byzantine=2,
        clients_per_round=2,
        declared_f=0,
        defence=("median",),
        local_steps=3,
        attack="label_flip",
        steps=60,
        eval_every=20,
        max_train=400,
        max_test=200,
    )
    result = simulator.simulate(cfg)
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["test_loss"]) for r in result.rows)


def test_same_seed_same_result_and_seeds_differ():
    cfg = Config(
        num_honest=5,
        num_byzantine=1,
        clients_per_round=4,
        defence=("nnm", "trimmed_mean"),
        local_steps=2,
        steps=10,
        eval_every=10,
        max_train=300,
        max_test=100,
        seeds=2,
    )
    a = simulator.simulate(cfg)
    b = simulator.simulate(cfg)
    np.testing.assert_array_equal(a.final("test_loss"), b.final("test_loss"))
    assert a.final("test_loss")[0] != a.final("test_loss")[1]


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(local_steps=0), "local_steps needs to be >= 1"),
        (dict(local_lr=-1.0), "local_lr needs to be > 0"),
        (
            dict(local_steps=2, algorithm="marina_pp"),
            "local_steps > 1 is an option of algorithm dsgd",
        ),
    ],
)
def test_bad_settings(changes, message):
    with pytest.raises(ValueError, match=message):
        Config(**changes).validate()
