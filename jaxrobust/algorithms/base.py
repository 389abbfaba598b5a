"""The algorithm protocol and the robust round every algorithm shares.

An algorithm is a registered factory ``factory(setup) -> Algorithm``: from the
run's :class:`Setup` (configuration, data set, problem) it builds pure
functions ``init(key, indices, sizes, hyper) -> state`` and
``step(state) -> (state, metrics)``, the evaluation of its parameters, and
``params(state)``, the parameters that evaluation reads. The run (scan or step
loop, seeds, sweeps, devices) only ever calls these, so it never names an
algorithm. Register a new one from your own module::

    import jaxrobust as jr
    from jaxrobust.algorithms import Algorithm, Setup

    @jr.register("algorithm", "my_sgd")
    def my_sgd(setup: Setup) -> Algorithm:
        ...

The round's shared path, attack -> pre-aggregation -> aggregation, is
:func:`robust_round`: given the honest vectors, it lets the attack build the
Byzantine vectors (an omniscient attacker: it sees the honest vectors and, if
it asks, the defence in use), assembles what the server receives and applies
the defence. :func:`jaxrobust.server.server_update` then applies the server
optimiser, and :func:`round_metrics` reports the round.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxrobust import attacks, kernels
from jaxrobust.core import registry, tree
from jaxrobust.core.types import Problem, PyTree
from jaxrobust.defence import make_defence
from jaxrobust.evaluation import evaluator

__all__ = [
    "Algorithm",
    "RoundMetrics",
    "Setup",
    "check_setting",
    "metric_fields",
    "robust_round",
    "round_metrics",
]


class RoundMetrics(NamedTuple):
    """What every algorithm reports each round (an algorithm may report more fields)."""

    train_loss: jax.Array
    aggregate_norm: jax.Array
    distance_to_honest_mean: jax.Array
    mean_honest_norm: jax.Array


@dataclasses.dataclass(frozen=True)
class Setup:
    """What an algorithm is built from: the configuration, the data set and the problem.

    ``x_train`` / ``y_train`` are the training arrays on the device;
    ``evaluate`` is the shared evaluation on the test (and validation) splits.
    """

    config: Any
    dataset: Any
    problem: Problem

    @property
    def x_train(self) -> jax.Array:
        return jnp.asarray(self.dataset.x_train)

    @property
    def y_train(self) -> jax.Array:
        return jnp.asarray(self.dataset.y_train)

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    def evaluate(self) -> Callable[[PyTree], dict]:
        return evaluator(self.problem, self.dataset)


def _state_params(state) -> PyTree:
    return state.params


class Algorithm(NamedTuple):
    """One algorithm's pure pieces.

    Attributes
    ----------
    init : callable
        ``init(key, indices, sizes, hyper) -> state``: ``indices`` ``(h, width)``
        and ``sizes`` ``(h,)`` are the honest workers' example tables,
        ``hyper`` the per-run :class:`jaxrobust.server.Hyper`.
    step : callable
        ``step(state) -> (state, metrics)``, one round; ``metrics`` a NamedTuple
        of scalars whose every field reaches ``metrics.csv`` / ``runs.csv``.
    evaluate : callable
        ``evaluate(params) -> dict`` of scalars (test accuracy and loss, ...).
    params : callable
        ``params(state)``: the parameters ``evaluate`` reads (default ``state.params``).
    """

    init: Callable[..., Any]
    step: Callable[[Any], tuple[Any, Any]]
    evaluate: Callable[[PyTree], dict]
    params: Callable[[Any], PyTree] = _state_params


def metric_fields(factory: Callable) -> tuple[str, ...]:
    """The per-round metric names an algorithm factory declares (``factory.metrics``).

    An algorithm whose step reports more than :class:`RoundMetrics` sets
    ``factory.metrics`` to its NamedTuple type, so that result files get a
    column for each field before the first round runs.
    """
    metrics = getattr(factory, "metrics", RoundMetrics)
    return tuple(metrics._fields)


def check_setting(config) -> None:
    """Refuse, before anything runs, a configuration the algorithm cannot run.

    Calls ``factory.check(config)`` of the configuration's algorithm when it
    declares one, else builds the configuration's defence (which raises a
    ``ValueError`` naming a rule's bound, e.g. ``krum needs n > 2f + 2``).
    """
    factory = registry("algorithm").entry(config.algorithm).factory
    check = getattr(factory, "check", None)
    if check is None:
        make_defence(config)
    else:
        check(config)


def robust_round(
    honest: PyTree,
    *,
    attack: attacks.Attack,
    attack_state: Any,
    num_byzantine: int,
    key: jax.Array,
    aggregate: Callable[[PyTree], tuple[PyTree, Any]],
    assemble: Callable[[PyTree], PyTree] | None = None,
    flipped: PyTree | None = None,
    shift_back: PyTree | None = None,
    byzantine_majority: jax.Array | None = None,
) -> tuple[PyTree, Any, Any, PyTree]:
    """Attack, then defence: the shared path of every algorithm's round.

    Parameters
    ----------
    honest : pytree
        The honest vectors the attacker sees, leaves ``(h, ...)``.
    attack, attack_state :
        The attack in use and its state.
    num_byzantine : int
        How many Byzantine vectors the attack builds (0: no attack this round).
    key : PRNG key
        The attack's randomness.
    aggregate : callable
        ``received -> (aggregate, defence_state)``: the defence in use
        (pre-aggregation then aggregation, and whatever the algorithm wraps
        around it). Aggregator-aware attacks evaluate it on candidate vectors.
    assemble : callable, optional
        ``byzantine -> received``: where the Byzantine vectors go among the
        received ones. Default: after the honest ones.
    flipped, shift_back, byzantine_majority : optional
        What label flipping and shift-back see (see
        :class:`jaxrobust.attacks.AttackInput`).

    Returns
    -------
    aggregate, defence_state, attack_state, received
    """
    if num_byzantine == 0:  # every received vector is honest
        aggregated, defence_state = aggregate(honest)
        return aggregated, defence_state, attack_state, honest
    h = kernels.num_workers(honest, "robust_round")
    if assemble is None:  # the Byzantine vectors after the honest ones

        def assemble(byzantine):
            return tree.concat(honest, byzantine)

        def defence(vectors):  # the attack hands all vectors, honest first
            return aggregate(vectors)[0]

    else:

        def defence(vectors):
            return aggregate(assemble(jax.tree_util.tree_map(lambda v: v[h:], vectors)))[0]

    inputs = attacks.AttackInput(
        honest,
        num_byzantine,
        key,
        flipped,
        defence if attack.needs_defence else None,
        shift_back,
        byzantine_majority,
    )
    byzantine, attack_state = attack.apply(inputs, attack_state)
    received = assemble(byzantine)
    aggregated, defence_state = aggregate(received)
    return aggregated, defence_state, attack_state, received


def round_metrics(aggregate: PyTree, honest: PyTree, losses: jax.Array) -> RoundMetrics:
    """The round's :class:`RoundMetrics` from its aggregate, honest vectors and losses."""
    diff = jax.tree_util.tree_map(jnp.subtract, aggregate, attacks.honest_mean(honest))
    return RoundMetrics(
        train_loss=jnp.mean(losses),
        aggregate_norm=optax.tree_utils.tree_norm(aggregate),
        distance_to_honest_mean=optax.tree_utils.tree_norm(diff),
        mean_honest_norm=jnp.mean(kernels.worker_norms(honest)),
    )
