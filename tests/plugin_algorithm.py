"""A user's algorithm in one file: robust SGD without momentum, one extra metric.

Registered at import, as a plugin module (``--plugin plugin_algorithm``) is.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import jaxrobust as jr
from jaxrobust.algorithms import Algorithm, RoundMetrics, Setup, robust_round, round_metrics
from jaxrobust.attacks import attack_of
from jaxrobust.data import sample_batches
from jaxrobust.defence import make_defence
from jaxrobust.workers import per_worker_gradients


class PlainState(NamedTuple):
    hyper: Any
    indices: jax.Array
    sizes: jax.Array
    params: Any
    defence: Any
    attack: Any
    key: jax.Array


class PlainMetrics(NamedTuple):
    train_loss: jax.Array
    aggregate_norm: jax.Array
    distance_to_honest_mean: jax.Array
    mean_honest_norm: jax.Array
    extra_metric: jax.Array


@jr.register("algorithm", "test_plain_sgd", replace=True)
def plain_sgd(setup: Setup) -> Algorithm:
    """Robust SGD on the workers' minibatch gradients (no momentum)."""
    config, problem = setup.config, setup.problem
    defence, attack = make_defence(config), attack_of(config)
    gradients = per_worker_gradients(problem.loss)
    x, y = setup.x_train, setup.y_train

    def init(key, indices, sizes, hyper):
        key, init_key = jax.random.split(key)
        params = problem.init(init_key)
        return PlainState(
            hyper, indices, sizes, params, defence.init(params), attack.init(params), key
        )

    def step(state):
        key, batch_key, attack_key = jax.random.split(state.key, 3)
        idx = sample_batches(batch_key, state.indices, state.sizes, config.batch_size)
        losses, grads = gradients(state.params, (x[idx], y[idx]))
        aggregate, defence_state, attack_state, _ = robust_round(
            grads,
            attack=attack,
            attack_state=state.attack,
            num_byzantine=config.num_byzantine,
            key=attack_key,
            aggregate=lambda received: defence.update(received, state.defence, state.params),
        )
        params = jax.tree_util.tree_map(
            lambda p, g: p - state.hyper.lr * g, state.params, aggregate
        )
        metrics = PlainMetrics(*round_metrics(aggregate, grads, losses), jnp.float32(1.0))
        return state._replace(
            params=params, defence=defence_state, attack=attack_state, key=key
        ), metrics

    return Algorithm(init, step, setup.evaluate())


plain_sgd.metrics = PlainMetrics
plain_sgd.options = {}  # no algorithm_options
assert issubclass(PlainMetrics, tuple) and RoundMetrics._fields == PlainMetrics._fields[:4]
