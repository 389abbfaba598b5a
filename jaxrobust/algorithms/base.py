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

The other pieces a step needs, each shared by the built-in algorithms:
:func:`jaxrobust.data.sample_batches` (each worker's minibatch indices from
the ``indices`` / ``sizes`` tables), :func:`jaxrobust.workers.per_worker_gradients`
(every worker's loss and gradient, vmapped), :func:`jaxrobust.workers.momentum_update`,
:func:`jaxrobust.rules.defence.make_defence` and :func:`jaxrobust.attacks.attack_of`
(the configuration's defence chain and attack), and :class:`Setup`'s
``x_train`` / ``y_train`` / ``evaluate()``. Declare ``factory.metrics`` (the
NamedTuple type the step reports, when it adds fields to
:class:`RoundMetrics`), ``factory.options`` (the ``algorithm_options`` it
takes, with defaults) and, if needed, ``factory.check(config)`` (refuses a
setting before anything runs). A complete example of 70 lines, robust SGD
without momentum, is ``tests/plugin_algorithm.py`` in the repository.
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
from jaxrobust.evaluation import evaluator
from jaxrobust.rules.defence import make_defence

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
    """What every algorithm reports each round (an algorithm may report more fields).

    Attributes
    ----------
    train_loss : float32 scalar
        Mean training loss of the honest workers' minibatches this round.
    aggregate_norm : float32 scalar
        Euclidean norm of the defence's output (over all leaves).
    distance_to_honest_mean : float32 scalar
        Norm of the aggregate minus the mean of the honest vectors.
    mean_honest_norm : float32 scalar
        Mean norm of the honest vectors.

    Examples
    --------
    >>> RoundMetrics._fields
    ('train_loss', 'aggregate_norm', 'distance_to_honest_mean', 'mean_honest_norm')
    """

    train_loss: jax.Array
    aggregate_norm: jax.Array
    distance_to_honest_mean: jax.Array
    mean_honest_norm: jax.Array


@dataclasses.dataclass(frozen=True)
class Setup:
    """What an algorithm is built from: the configuration, the data set and the problem.

    ``x_train`` / ``y_train`` are the training arrays on the device;
    ``evaluate`` is the shared evaluation on the test (and validation) splits.

    Attributes
    ----------
    config : Config
        The run's :class:`jaxrobust.config.Config`.
    dataset : Dataset
        The loaded :class:`jaxrobust.data.Dataset` (host numpy arrays).
    problem : Problem
        What is trained (:class:`jaxrobust.core.types.Problem`).

    Examples
    --------
    >>> from jaxrobust.config import Config
    >>> from jaxrobust.data import load_dataset
    >>> from jaxrobust.models import problem_for
    >>> config = Config(model="logistic_regression", max_train=200)
    >>> dataset = load_dataset("digits", max_train=200)
    >>> setup = Setup(config, dataset, problem_for(config, dataset))
    >>> setup.x_train.shape, setup.y_train.dtype, setup.num_classes
    ((200, 8, 8, 1), dtype('int32'), 10)
    """

    config: Any
    dataset: Any
    problem: Problem

    @property
    def x_train(self) -> jax.Array:
        """The training inputs as a device array, ``float32`` ``(m, ...)``."""
        return jnp.asarray(self.dataset.x_train)

    @property
    def y_train(self) -> jax.Array:
        """The training labels as a device array, ``int32`` ``(m,)``."""
        return jnp.asarray(self.dataset.y_train)

    @property
    def num_classes(self) -> int:
        """The data set's number of classes."""
        return self.dataset.num_classes

    def evaluate(self) -> Callable[[PyTree], dict]:
        """The shared evaluation (:func:`jaxrobust.evaluation.evaluator`)."""
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

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from collections import namedtuple
    >>> State = namedtuple("State", "params")
    >>> algorithm = Algorithm(
    ...     init=lambda key, indices, sizes, hyper: State(jnp.zeros(2)),
    ...     step=lambda state: (State(state.params + 1.0), ()),
    ...     evaluate=lambda params: {"norm": jnp.linalg.norm(params)},
    ... )
    >>> state, _ = algorithm.step(algorithm.init(None, None, None, None))
    >>> algorithm.params(state).tolist()
    [1.0, 1.0]
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

    Parameters
    ----------
    factory : callable
        A registered algorithm factory.

    Returns
    -------
    tuple of str
        The metric type's fields (:class:`RoundMetrics` when none is declared).

    Examples
    --------
    >>> from jaxrobust.core import registry
    >>> metric_fields(registry("algorithm")["byz_ef21_sgdm"])[-2:]
    ('bits_sent', 'epochs')
    >>> metric_fields(registry("algorithm")["dsgd"]) == RoundMetrics._fields
    True
    """
    metrics = getattr(factory, "metrics", RoundMetrics)
    return tuple(metrics._fields)


def check_setting(config) -> None:
    """Refuse, before anything runs, a configuration the algorithm cannot run.

    Builds the configuration's attack and compressor (whose factories check
    their options), then calls ``factory.check(config)`` of the
    configuration's algorithm when it declares one, else builds the
    configuration's defence (which raises a ``ValueError`` naming a rule's
    bound). Cheap: nothing is traced.

    Parameters
    ----------
    config : Config
        The configuration (its ``algorithm`` must be registered).

    Raises
    ------
    ValueError
        Unknown algorithm name, or whatever the algorithm's check or the
        defence builder (:func:`jaxrobust.rules.defence.make_defence`) raises.

    Examples
    --------
    >>> from jaxrobust.config import Config
    >>> check_setting(Config(defence=("nnm", "trimmed_mean")))  # 13 workers, f = 3: fine
    """
    attacks.attack_of(config)
    registry("compressor").build(config.compressor, **config.compressor_options)
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
    aggregate : pytree
        The defence's output (no worker axis).
    defence_state : any
        The defence's new state.
    attack_state : any
        The attack's new state (unchanged when ``num_byzantine == 0``).
    received : pytree
        What the server received, leaves ``(h + num_byzantine, ...)`` (as
        placed by ``assemble``), or ``honest`` when ``num_byzantine == 0``.

    Examples
    --------
    Sign flipping against the plain mean: two Byzantine copies of minus the
    honest mean, after the three honest vectors.

    >>> import jax, jax.numpy as jnp
    >>> from jaxrobust import attacks
    >>> honest = jnp.array([[1.0], [2.0], [3.0]])
    >>> agg, _, _, received = robust_round(
    ...     honest,
    ...     attack=attacks.make_attack("sign_flip"),
    ...     attack_state=None,
    ...     num_byzantine=2,
    ...     key=jax.random.key(0),
    ...     aggregate=lambda v: (jnp.mean(v, axis=0), None),
    ... )
    >>> received[:, 0].tolist(), agg.tolist()
    ([1.0, 2.0, 3.0, -2.0, -2.0], [0.4000000059604645])
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
    """The round's :class:`RoundMetrics` from its aggregate, honest vectors and losses.

    Parameters
    ----------
    aggregate : pytree
        The defence's output, leaves ``(...)``.
    honest : pytree
        The honest vectors, leaves ``(h, ...)``.
    losses : array
        The honest workers' losses (any shape; their mean is reported).

    Returns
    -------
    RoundMetrics
        float32 scalars.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> honest = jnp.array([[3.0, 0.0], [0.0, 4.0]])
    >>> m = round_metrics(jnp.array([1.5, 2.0]), honest, jnp.array([1.0, 2.0]))
    >>> [round(float(v), 6) for v in m]
    [1.5, 2.5, 0.0, 3.5]
    """
    diff = jax.tree_util.tree_map(jnp.subtract, aggregate, attacks.honest_mean(honest))
    return RoundMetrics(
        train_loss=jnp.mean(losses),
        aggregate_norm=optax.tree_utils.tree_norm(aggregate),
        distance_to_honest_mean=optax.tree_utils.tree_norm(diff),
        mean_honest_norm=jnp.mean(kernels.worker_norms(honest)),
    )
