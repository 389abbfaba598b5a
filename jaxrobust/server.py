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
    """A constant rate.

    Examples
    --------
    >>> float(constant(100)(99))
    1.0
    """
    del steps
    return optax.constant_schedule(1.0)


@SCHEDULES.register("cosine")
def cosine(steps: int) -> optax.Schedule:
    """Cosine decay from the base rate to zero over the run.

    Examples
    --------
    >>> [round(float(cosine(100)(t)), 6) for t in (0, 50, 100)]
    [1.0, 0.5, 0.0]
    """
    return optax.cosine_decay_schedule(1.0, steps)


@SCHEDULES.register("step")
def step(steps: int) -> optax.Schedule:
    """x0.1 at half and again at three quarters of the run.

    Examples
    --------
    >>> [round(float(step(100)(t)), 6) for t in (49, 50, 75)]
    [1.0, 0.1, 0.01]
    """
    return optax.piecewise_constant_schedule(1.0, {int(steps * 0.5): 0.1, int(steps * 0.75): 0.1})


def lr_factor(config) -> optax.Schedule:
    """The learning-rate schedule of ``config`` as a factor of the base rate: 1 at step 0.

    Parameters
    ----------
    config : Config
        Gives ``lr_schedule`` (a registered name) and ``steps``.

    Returns
    -------
    optax.Schedule
        ``schedule(count) -> factor``.

    Raises
    ------
    ValueError
        An unknown schedule name (the message lists the registered ones).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> schedule = lr_factor(SimpleNamespace(lr_schedule="cosine", steps=10))
    >>> round(float(schedule(5)), 6)
    0.5
    """
    return SCHEDULES.build(config.lr_schedule, config.steps)


class Hyper(NamedTuple):
    """Per-run numbers that may differ between runs of one vmapped program.

    Attributes
    ----------
    lr : float32 array
        The base learning rate (times the schedule's factor at each step).
    momentum : float32 array
        The worker momentum ``beta``.
    weight_decay : float32 array
        The server's weight decay.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> hyper = Hyper(lr=jnp.float32(0.5), momentum=jnp.float32(0.9), weight_decay=jnp.float32(0))
    >>> hyper._fields, float(hyper.lr)
    (('lr', 'momentum', 'weight_decay'), 0.5)
    """

    lr: jax.Array
    momentum: jax.Array
    weight_decay: jax.Array


def hyper_of(config) -> Hyper:
    """The :class:`Hyper` of a configuration, as float32 scalars.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> h = hyper_of(SimpleNamespace(lr=0.5, momentum=0.9, weight_decay=0.0))
    >>> float(h.lr), h.momentum.dtype
    (0.5, dtype('float32'))
    """
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
    before every update. The update is
    ``params <- params - lr * (aggregate + weight_decay * params)``.

    Parameters
    ----------
    config : Config
        Gives ``lr``, ``weight_decay``, ``lr_schedule`` and ``steps``.

    Returns
    -------
    optax.GradientTransformation

    Raises
    ------
    ValueError
        An unknown ``lr_schedule``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from types import SimpleNamespace
    >>> config = SimpleNamespace(
    ...     lr=0.5, momentum=0.0, weight_decay=0.1, lr_schedule="constant", steps=10
    ... )
    >>> server = make_server_optimiser(config)
    >>> params = jnp.array([2.0])
    >>> state = server_init(server, params, hyper_of(config))
    >>> new, _ = server_update(server, state, jnp.array([1.0]), params, jnp.float32(0.5))
    >>> new.tolist()  # 2 - 0.5 * (1 + 0.1 * 2)
    [1.399999976158142]
    """
    lr_factor(config)  # validates the schedule's name
    return optax.inject_hyperparams(_sgd_with_weight_decay)(
        learning_rate=config.lr, weight_decay=config.weight_decay
    )


def server_init(server: optax.GradientTransformation, params: Any, hyper: Hyper):
    """The server optimiser's state with the run's own weight decay.

    Parameters
    ----------
    server : optax.GradientTransformation
        From :func:`make_server_optimiser`.
    params : pytree
        The initial parameters.
    hyper : Hyper
        Its ``weight_decay`` replaces the configuration's.

    Returns
    -------
    optax.OptState
        An ``InjectHyperparamsState`` whose ``hyperparams`` hold the learning
        rate and the weight decay.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from types import SimpleNamespace
    >>> config = SimpleNamespace(
    ...     lr=0.1, momentum=0.9, weight_decay=0.0, lr_schedule="constant", steps=10
    ... )
    >>> server = make_server_optimiser(config)
    >>> hyper = hyper_of(config)._replace(weight_decay=jnp.float32(0.5))  # this run's own
    >>> state = server_init(server, {"w": jnp.zeros(3)}, hyper)
    >>> rates = state.hyperparams
    >>> float(rates["weight_decay"]), round(float(rates["learning_rate"]), 6)
    (0.5, 0.1)
    """
    state = server.init(params)
    return state._replace(hyperparams={**state.hyperparams, "weight_decay": hyper.weight_decay})


def server_update(server: optax.GradientTransformation, state, aggregate, params, lr):
    """One server step: ``(new_params, new_state)`` from the aggregate at learning rate ``lr``.

    Parameters
    ----------
    server : optax.GradientTransformation
        From :func:`make_server_optimiser`.
    state : optax.OptState
        Its state (:func:`server_init`).
    aggregate : pytree
        The defence's output, shaped like ``params``.
    params : pytree
        The current parameters.
    lr : float32 scalar
        This step's learning rate (base rate times the schedule's factor).

    Returns
    -------
    (pytree, optax.OptState)
        The new parameters and the new state.

    Examples
    --------
    The learning rate of step ``t`` is the base rate times the schedule's
    factor (:func:`lr_factor`):

    >>> import jax.numpy as jnp
    >>> from types import SimpleNamespace
    >>> config = SimpleNamespace(
    ...     lr=1.0, momentum=0.0, weight_decay=0.0, lr_schedule="step", steps=4
    ... )
    >>> server = make_server_optimiser(config)
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> state = server_init(server, params, hyper_of(config))
    >>> aggregate = {"w": jnp.array([1.0, 1.0])}
    >>> for t in range(4):
    ...     lr = config.lr * lr_factor(config)(t)  # 1, 1, 0.1, 0.01
    ...     params, state = server_update(server, state, aggregate, params, lr)
    >>> [round(v, 4) for v in params["w"].tolist()]  # each minus 1 + 1 + 0.1 + 0.01
    [-1.11, -4.11]
    """
    state = state._replace(hyperparams={**state.hyperparams, "learning_rate": lr})
    updates, state = server.update(aggregate, state, params)
    return optax.apply_updates(params, updates), state
