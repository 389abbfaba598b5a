"""The server side: the optimiser applied to the aggregate, and learning-rate schedules.

The server optimiser is SGD with weight decay, with both rates kept as arrays
in the optimiser state (``optax.inject_hyperparams``), so runs of one vmapped
program (a sweep) can each have their own. Schedules are registered factories
``schedule(steps) -> optax.Schedule`` giving a factor of the base rate (1 at
step 0).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxrobust.core import registry

__all__ = [
    "SCHEDULES",
    "Hyper",
    "hyper_of",
    "lr_factor",
    "make_server_optimiser",
    "server_init",
    "server_update",
]

SCHEDULES = registry("lr_schedule")


@SCHEDULES.register("constant")
def constant(steps: int) -> optax.Schedule:
    """A constant rate."""
    del steps
    return optax.constant_schedule(1.0)


@SCHEDULES.register("cosine")
def cosine(steps: int) -> optax.Schedule:
    """Cosine decay from the base rate to zero over the run."""
    return optax.cosine_decay_schedule(1.0, steps)


@SCHEDULES.register("step")
def step(steps: int) -> optax.Schedule:
    """x0.1 at half and again at three quarters of the run."""
    return optax.piecewise_constant_schedule(1.0, {int(steps * 0.5): 0.1, int(steps * 0.75): 0.1})


def lr_factor(config) -> optax.Schedule:
    """The learning-rate schedule of ``config`` as a factor of the base rate: 1 at step 0."""
    return SCHEDULES.build(config.lr_schedule, config.steps)


class Hyper(NamedTuple):
    """Per-run numbers that may differ between runs of one vmapped program."""

    lr: jax.Array
    momentum: jax.Array
    weight_decay: jax.Array


def hyper_of(config) -> Hyper:
    """The :class:`Hyper` of a configuration, as float32 scalars."""
    return Hyper(
        jnp.float32(config.lr), jnp.float32(config.momentum), jnp.float32(config.weight_decay)
    )


def _sgd_with_weight_decay(learning_rate, weight_decay) -> optax.GradientTransformation:
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate))


def make_server_optimiser(config) -> optax.GradientTransformation:
    """SGD with weight decay on the aggregate; both rates live in the state.

    ``optax.inject_hyperparams`` keeps the learning rate and the weight decay
    as arrays in the optimiser state, so runs of one vmapped program (a sweep)
    can each have their own; :func:`server_update` sets the learning rate
    before every update.
    """
    lr_factor(config)  # validates the schedule's name
    return optax.inject_hyperparams(_sgd_with_weight_decay)(
        learning_rate=config.lr, weight_decay=config.weight_decay
    )


def server_init(server: optax.GradientTransformation, params: Any, hyper: Hyper):
    """The server optimiser's state with the run's own weight decay."""
    state = server.init(params)
    return state._replace(hyperparams={**state.hyperparams, "weight_decay": hyper.weight_decay})


def server_update(server: optax.GradientTransformation, state, aggregate, params, lr):
    """One server step: ``(new_params, new_state)`` from the aggregate at learning rate ``lr``."""
    state = state._replace(hyperparams={**state.hyperparams, "learning_rate": lr})
    updates, state = server.update(aggregate, state, params)
    return optax.apply_updates(params, updates), state
