"""The CPU chunk for convolutional models: separate step calls equal the scanned chunk."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust import models, simulator
from jaxrobust.config import Config
from jaxrobust.data import datasets


class TinyConv(nn.Module):
    """One 3x3 convolution and a dense head, for 8x8 digits."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), padding="SAME")(x))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def test_has_convolution():
    data = datasets.load_dataset("digits")
    config = Config()
    conv = simulator.problem_for(config, data, TinyConv())
    mlp = simulator.problem_for(config, data, models.MLP(10))
    assert simulator.has_convolution(conv, data)
    assert not simulator.has_convolution(mlp, data)


def test_step_loop_equals_the_scanned_chunk():
    data = datasets.load_dataset("digits", max_train=400)
    config = Config(
        num_honest=4,
        num_byzantine=1,
        defence=("arc", "nnm", "trimmed_mean"),
        attack="alie",
        clients_per_round=4,
        declared_f=1,
        steps=6,
        eval_every=3,
        batch_size=8,
    )
    problem = simulator.problem_for(config, data, TinyConv())
    init, chunk, evaluate, sim = simulator.compiled_run(config, data, problem)
    if jax.default_backend() == "cpu":
        assert isinstance(chunk, simulator.StepLoop)

    scan_chunk = simulator.scan_chunk(sim.step, 3)
    loop_chunk = simulator.StepLoop(sim.step, 3)
    a = b = simulator.initial_states(config, data, init, np.arange(2))
    for _ in range(2):
        a, metrics_a = loop_chunk(a)
        b, metrics_b = scan_chunk(b)
        for x, y in zip(
            jax.tree_util.tree_leaves((a.params, metrics_a)),
            jax.tree_util.tree_leaves((b.params, metrics_b)),
            strict=True,
        ):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5, atol=1e-6)
    assert loop_chunk.lower(a) is not None
    assert jnp.all(jnp.isfinite(evaluate(a.params)["test_loss"]))
