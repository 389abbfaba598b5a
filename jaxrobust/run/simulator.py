"""The run: any registered algorithm, one jitted step per round, a scanned chunk, vmapped seeds.

The algorithm (``config.algorithm``, from the ``"algorithm"`` registry) gives
pure ``init`` and ``step`` functions (:class:`jaxrobust.algorithms.Algorithm`);
this module never names one. A run is a ``lax.scan`` over chunks of rounds;
the host only sees chunk boundaries, where it evaluates. Many seeds of one
configuration run as one ``vmap``-ed program.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust.algorithms.base import (
    Algorithm,
    RoundMetrics,
    Setup,
    check_setting,
    metric_fields,
)
from jaxrobust.algorithms.dsgd import DSGDState as RunState  # noqa: F401  (compatibility)
from jaxrobust.algorithms.dsgd import ServerMemory  # noqa: F401  (compatibility)
from jaxrobust.config import Config
from jaxrobust.core import registry
from jaxrobust.core.types import METRIC_COLUMNS, Problem
from jaxrobust.data import datasets
from jaxrobust.data.partition import check_batch_size, partition, stack_partition
from jaxrobust.models import problem_for
from jaxrobust.rules.defence import make_defence  # noqa: F401  (re-exported)
from jaxrobust.server import SCHEDULES as LR_SCHEDULES  # noqa: F401  (re-exported)
from jaxrobust.server import (  # noqa: F401  (re-exported)
    Hyper,
    hyper_of,
    lr_factor,
    make_server_optimiser,
)

PyTree = Any
Simulation = Algorithm  # the former name of the protocol
StepMetrics = RoundMetrics


def build(config: Config, dataset: datasets.Dataset, problem: Problem | None = None) -> Algorithm:
    """Build the registered algorithm ``config.algorithm`` for a data set and a problem.

    ``problem`` defaults to the config's model (:func:`jaxrobust.models.problem_for`).

    Returns
    -------
    Algorithm
        The algorithm's pure ``init``, ``step``, ``evaluate`` and ``params``.

    Raises
    ------
    ValueError
        An unknown algorithm, or whatever its factory raises for the
        configuration.

    Examples
    --------
    >>> from jaxrobust.data import load_dataset
    >>> sim = build(Config(model="logistic_regression"), load_dataset("digits", max_train=200))
    >>> type(sim).__name__
    'Algorithm'
    """
    problem = problem_for(config, dataset) if problem is None else problem
    factory = registry("algorithm").entry(config.algorithm).factory
    return factory(Setup(config, dataset, problem))


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------


# Cumulative metrics (a running total after each round, e.g. epochs): a chunk
# reports the value after its last round. Every other metric is a per-round
# quantity, reported as its mean over the chunk's rounds.
LAST_VALUE_METRICS = frozenset({"epochs"})


def reduce_chunk(metrics):
    """One value per metric from a chunk's per-round metrics (leading axis: rounds).

    ``metrics`` is a NamedTuple (or a dict) of per-round arrays, as stacked by
    ``lax.scan`` over a step's metrics. Fields named in
    :data:`LAST_VALUE_METRICS` (cumulative counters) become their value after
    the last round, every other field its mean over the rounds. Used by
    :func:`compiled_run` for every algorithm, so an algorithm's ``step``
    reports cumulative metrics as plain running totals.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> reduce_chunk({"train_loss": jnp.array([1.0, 3.0]), "epochs": jnp.array([0.5, 1.0])})
    {'train_loss': Array(2., dtype=float32), 'epochs': Array(1., dtype=float32)}
    """

    def reduce(name, values):
        if name in LAST_VALUE_METRICS:
            return jax.tree_util.tree_map(lambda v: v[-1], values)
        return jax.tree_util.tree_map(jnp.mean, values)

    if isinstance(metrics, dict):
        return {name: reduce(name, values) for name, values in metrics.items()}
    if hasattr(metrics, "_fields"):
        return type(metrics)(*(reduce(name, getattr(metrics, name)) for name in metrics._fields))
    return jax.tree_util.tree_map(jnp.mean, metrics)


@dataclasses.dataclass
class RunResult:
    """What :func:`simulate` returns.

    Attributes
    ----------
    config : Config
        The configuration run.
    rows : list of dict
        One per seed and evaluation: ``seed``, ``step`` and the metrics.
    params : pytree
        The final parameters, leaves with a leading seed axis.
    seconds : float
        Wall-clock time of the run.

    Examples
    --------
    :func:`simulate` returns one; built by hand:

    >>> rows = [
    ...     {"seed": 0, "step": 10, "test_accuracy": 0.5},
    ...     {"seed": 1, "step": 10, "test_accuracy": 0.25},
    ...     {"seed": 0, "step": 20, "test_accuracy": 0.75},
    ...     {"seed": 1, "step": 20, "test_accuracy": 0.5},
    ... ]
    >>> result = RunResult(Config(seeds=2), rows, params=None, seconds=1.0)
    >>> result.final().tolist()
    [0.75, 0.5]
    """

    config: Config
    rows: list[dict]  # one per seed and evaluation, keys METRIC_COLUMNS
    params: PyTree  # final parameters, leading axis = seeds
    seconds: float

    def final(self, column: str = "test_accuracy") -> np.ndarray:
        """The last evaluation's ``column`` for every seed.

        Returns
        -------
        np.ndarray
            One value per seed, in seed order (see :func:`simulate`).

        Examples
        --------
        >>> rows = [{"seed": s, "step": t, "test_loss": t / 10 + s} for t in (1, 2) for s in (0, 1)]
        >>> RunResult(Config(seeds=2), rows, params=None, seconds=0.0).final("test_loss").tolist()
        [0.2, 1.2]
        """
        last = max(r["step"] for r in self.rows)
        return np.array([r[column] for r in self.rows if r["step"] == last])


def compiled_run(config: Config, dataset: datasets.Dataset, problem: Problem | None = None):
    """The jitted chunk and evaluation functions, vmapped over seeds.

    Returns ``(init, chunk, evaluate, simulation)``: ``chunk(states)`` runs
    ``config.eval_every`` rounds of every seed as one ``lax.scan`` and
    returns the new states and the chunk's metrics (:func:`reduce_chunk`:
    per-round means, cumulative metrics at the chunk's last round).

    On CPU, a model with convolutions gets a :class:`StepLoop` chunk instead
    (the same rounds as separate calls of one jitted step): XLA:CPU runs
    convolutions inside a loop body many times slower than outside one
    (jax-ml/jax#12868; measured 2.6 s against 0.2 s per round for the CIFAR
    CNN with 16 workers).

    Parameters
    ----------
    config : Config
        The configuration. Its ``seed`` and ``seeds`` are not read: the
        programs run any number of runs, given by their start states.
    dataset : Dataset
        The data set, with its validation split already held out if the
        configuration asks for one (:func:`with_validation_split`).
    problem : Problem, optional
        Default: :func:`jaxrobust.models.problem_for` ``(config, dataset)``.

    Returns
    -------
    init : callable
        ``init(keys, indices, sizes, hyper) -> states``, vmapped over runs;
        :func:`initial_states` builds its arguments.
    chunk : callable
        ``chunk(states) -> (states, metrics)``: ``config.eval_every`` rounds
        of every run.
    evaluate : callable
        ``evaluate(params) -> dict`` of per-run arrays (``test_accuracy``,
        ``test_loss``, and the validation metrics with a validation split).
    simulation : Algorithm
        The algorithm (:func:`build`); :func:`params_of` reads the
        parameters out of its states.

    Raises
    ------
    ValueError
        As :func:`build`.

    Examples
    --------
    The pieces of :func:`simulate` (:func:`iterate` runs them): two seeds'
    start states, one chunk, an evaluation. Here ``jax.eval_shape`` traces
    them without compiling, to show what each returns; call them directly
    to run.

    >>> import jax
    >>> from jaxrobust.data import load_dataset
    >>> config = Config(model="logistic_regression", num_honest=4, num_byzantine=1, eval_every=2)
    >>> dataset = load_dataset("digits", max_train=200)
    >>> init, chunk, evaluate, sim = compiled_run(config, dataset)
    >>> states = jax.eval_shape(lambda: initial_states(config, dataset, init, seeds=[0, 1]))
    >>> _, metrics = jax.eval_shape(chunk, states)
    >>> metrics.train_loss  # the chunk's mean loss, one per run
    ShapeDtypeStruct(shape=(2,), dtype=float32)
    >>> jax.eval_shape(lambda s: evaluate(params_of(sim, s)), states)["test_accuracy"]
    ShapeDtypeStruct(shape=(2,), dtype=float32)
    """
    problem = problem_for(config, dataset) if problem is None else problem
    sim = build(config, dataset, problem)
    init = jax.jit(jax.vmap(sim.init))
    evaluate = jax.jit(jax.vmap(sim.evaluate))
    if jax.default_backend() == "cpu" and has_convolution(problem, dataset):
        return init, StepLoop(sim.step, config.eval_every), evaluate, sim
    return init, scan_chunk(sim.step, config.eval_every), evaluate, sim


def scan_chunk(step: Callable, length: int) -> Callable:
    """``length`` rounds of ``step`` as one jitted ``lax.scan``, vmapped over runs.

    Returns ``chunk(states) -> (states, metrics)`` with the metrics reduced
    by :func:`reduce_chunk`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> chunk = scan_chunk(lambda s: (s + 1.0, {"train_loss": s}), 3)
    >>> states, metrics = chunk(jnp.array([0.0, 10.0]))  # two runs
    >>> states.tolist(), metrics["train_loss"].tolist()
    ([3.0, 13.0], [1.0, 11.0])
    """

    def chunk(state):
        state, metrics = jax.lax.scan(lambda s, _: step(s), state, None, length=length)
        return state, reduce_chunk(metrics)

    return jax.jit(jax.vmap(chunk))


def has_convolution(problem: Problem, dataset: datasets.Dataset) -> bool:
    """Whether the gradient of ``problem.loss`` contains a convolution (traced abstractly).

    Examples
    --------
    >>> from jaxrobust.data import load_dataset
    >>> from jaxrobust.models import problem_for
    >>> ds = load_dataset("digits", max_train=200)
    >>> has_convolution(problem_for(Config(model="mlp"), ds), ds)
    False
    """
    params = jax.eval_shape(problem.init, jax.random.key(0))
    batch = (dataset.x_train[:2], dataset.y_train[:2])
    jaxpr = jax.make_jaxpr(jax.grad(problem.loss))(params, batch)
    return "conv_general_dilated" in str(jaxpr)


class StepLoop:
    """A chunk of ``length`` rounds run as ``length`` calls of one jitted step, run by run.

    Same results as :func:`scan_chunk` (to float rounding); the host only
    dispatches (nothing is copied back between rounds). The runs of a batch
    go one after another: vmapped, a convolutional model's per-run parameters
    turn its convolutions into grouped ones, which XLA:CPU runs slower than
    the runs one by one (CIFAR CNN: 0.57 s per round for 2 runs vmapped, 0.20 s
    for one). ``lower`` gives one run's step lowering, for memory estimates.

    Parameters
    ----------
    step : callable
        One run's round, ``step(state) -> (state, metrics)``; jitted here.
    length : int
        Rounds per chunk.

    Examples
    --------
    The same chunk as in :func:`scan_chunk`'s example, round by round:

    >>> import jax.numpy as jnp
    >>> loop = StepLoop(lambda s: (s + 1.0, {"train_loss": s}), 3)
    >>> states, metrics = loop(jnp.array([0.0, 10.0]))  # two runs, one after the other
    >>> states.tolist(), metrics["train_loss"].tolist()
    ([3.0, 13.0], [1.0, 11.0])
    >>> loop.lower(states).compile().memory_analysis() is not None
    True
    """

    def __init__(self, step: Callable, length: int):
        self.length = length
        self.step = jax.jit(step)
        self.take = jax.jit(lambda states, r: jax.tree_util.tree_map(lambda x: x[r], states))

        def stack(*trees):
            return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)

        self.gather = jax.jit(
            lambda finals, metrics: (
                stack(*finals),
                stack(*(reduce_chunk(stack(*rounds)) for rounds in metrics)),
            )
        )

    def __call__(self, states: RunState) -> tuple[RunState, StepMetrics]:
        finals, metrics = [], []
        for r in range(jax.tree_util.tree_leaves(states)[0].shape[0]):
            state, rounds = self.take(states, r), []
            for _ in range(self.length):
                state, m = self.step(state)
                rounds.append(m)
            finals.append(state)
            metrics.append(rounds)
        return self.gather(finals, metrics)

    def lower(self, states: RunState):
        """The lowering of ``step`` on the first run of ``states`` (``jax.stages.Lowered``).

        Examples
        --------
        >>> import jax.numpy as jnp
        >>> loop = StepLoop(lambda s: (s * 2.0, {"train_loss": s}), 2)
        >>> loop.lower(jnp.ones((3, 4))).out_info[0].shape  # one run's state
        (4,)
        """
        return self.step.lower(self.take(states, 0))


def worker_tables(config: Config, labels: np.ndarray, seeds) -> tuple[np.ndarray, np.ndarray]:
    """Each seed's partition of the honest workers' data, padded to one shape.

    Returns ``indices`` ``(seeds, h, max_size)`` (rows padded by repeating the
    worker's own examples) and ``sizes`` ``(seeds, h)``, both ``int32``.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.repeat(np.arange(2), 10)
    >>> indices, sizes = worker_tables(Config(num_honest=4), labels, [0, 1])
    >>> indices.shape, sizes.tolist()
    ((2, 4, 5), [[5, 5, 5, 5], [5, 5, 5, 5]])
    """
    return run_tables([(config, int(seed)) for seed in seeds], labels)


def partition_of(config: Config, labels: np.ndarray, seed: int) -> list[np.ndarray]:
    """The honest workers' parts of the training set under the config's heterogeneity.

    Parameters
    ----------
    config : Config
        Gives ``num_honest``, ``heterogeneity`` and the scheme's parameters
        (``alpha``, ``gamma``, ``shards_per_worker``, ``heterogeneity_options``).
    labels : np.ndarray
        The training labels ``(m,)``, integers.
    seed : int
        The partition's seed (a run's seed).

    Returns
    -------
    list of np.ndarray
        One array of training-set indices per honest worker.

    Raises
    ------
    ValueError
        Whatever the scheme raises (e.g. fewer examples than workers).

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.repeat(np.arange(4), 5)  # 20 examples, 4 classes
    >>> parts = partition_of(Config(num_honest=4, heterogeneity="extreme"), labels, seed=0)
    >>> [sorted(set(labels[part].tolist())) for part in parts]  # one class per worker
    [[0], [1], [2], [3]]
    >>> [len(part) for part in partition_of(Config(num_honest=3), labels, seed=0)]
    [7, 7, 6]
    """
    return partition(
        labels,
        config.num_honest,
        config.heterogeneity,
        alpha=config.alpha,
        gamma=config.gamma,
        shards_per_worker=config.shards_per_worker,
        seed=seed,
        **config.heterogeneity_options,
    )


def run_tables(runs, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Partition tables of several ``(config, seed)`` runs, padded to one shape.

    Each run uses its own heterogeneity settings and seed; see :func:`worker_tables`.

    Parameters
    ----------
    runs : iterable of (Config, int)
        Each run's configuration and seed.
    labels : np.ndarray
        The training labels ``(m,)``.

    Returns
    -------
    (np.ndarray, np.ndarray)
        ``indices`` ``(runs, h, width)`` with ``width`` the largest part, and
        ``sizes`` ``(runs, h)``, both ``int32``.

    Examples
    --------
    Two runs of one sweep: an iid split and a skewed Dirichlet split, padded
    to the larger part.

    >>> import numpy as np
    >>> labels = np.repeat(np.arange(2), 10)
    >>> runs = [
    ...     (Config(num_honest=4), 0),
    ...     (Config(num_honest=4, heterogeneity="dirichlet", alpha=0.1), 0),
    ... ]
    >>> indices, sizes = run_tables(runs, labels)
    >>> indices.shape == (2, 4, sizes.max()), sizes.sum(axis=1).tolist()
    (True, [20, 20])
    >>> sizes[0].tolist()
    [5, 5, 5, 5]
    """
    tables = [stack_partition(partition_of(config, labels, int(seed))) for config, seed in runs]
    width = max(t[0].shape[1] for t in tables)
    indices = np.stack(
        [np.take_along_axis(idx, np.arange(width)[None] % size[:, None], 1) for idx, size in tables]
    )
    return indices.astype(np.int32), np.stack([t[1] for t in tables]).astype(np.int32)


def initial_states(config: Config, dataset: datasets.Dataset, init, seeds) -> RunState:
    """The stacked start states of the given seeds, from ``compiled_run``'s ``init``.

    Each seed gets its own data partition (:func:`worker_tables`), its key
    ``jax.random.key(seed)`` and the configuration's :class:`Hyper`.

    Parameters
    ----------
    config : Config
        The configuration.
    dataset : Dataset
        The data set; its ``y_train`` is partitioned.
    init : callable
        ``init(keys, indices, sizes, hyper)``, the first of
        :func:`compiled_run`'s results.
    seeds : sequence of int
        One run per seed.

    Returns
    -------
    pytree
        ``init``'s result: the states, leaves with a leading axis of
        ``len(seeds)``.

    Examples
    --------
    With the real ``init`` of :func:`compiled_run` (see its example), the
    result is the algorithm's stacked state. Any function of the same
    arguments shows what ``init`` is given:

    >>> from jaxrobust.data import load_dataset
    >>> def show(keys, indices, sizes, hyper):
    ...     return keys.shape, indices.shape, sizes.tolist(), hyper.lr.tolist()
    >>> dataset = load_dataset("digits", max_train=200)
    >>> initial_states(Config(num_honest=4, lr=0.5), dataset, show, seeds=[0, 1])
    ((2,), (2, 4, 50), [[50, 50, 50, 50], [50, 50, 50, 50]], [0.5, 0.5])
    """
    seeds = np.asarray(seeds)
    indices, sizes = worker_tables(config, dataset.y_train, seeds)
    hyper = jax.tree_util.tree_map(lambda v: jnp.full(len(seeds), v), hyper_of(config))
    return init(jax.vmap(jax.random.key)(jnp.asarray(seeds)), indices, sizes, hyper)


def iterate(
    config: Config,
    dataset: datasets.Dataset | None = None,
    problem: Problem | None = None,
) -> Iterator[tuple[int, list[dict], Any]]:
    """Run a configuration, yielding ``(step, rows, states)`` at every evaluation.

    The same run as :func:`simulate`, one evaluation at a time: ``rows`` is
    one dict per seed, ``states`` the stacked states after ``step`` rounds.

    Parameters
    ----------
    config : Config
        The configuration; seeds ``seed, ..., seed + seeds - 1``.
    dataset : Dataset, optional
        Default: :func:`load_for` ``(config)``.
    problem : Problem, optional
        Default: :func:`jaxrobust.models.problem_for` ``(config, dataset)``.

    Yields
    ------
    step : int
        Rounds done: ``eval_every``, ``2 * eval_every``, ..., ``steps``.
    rows : list of dict
        One per seed: ``seed``, ``step`` and the metrics (as :func:`simulate`).
    states : pytree
        The algorithm's states, leaves with a leading seed axis.

    Raises
    ------
    ValueError
        An invalid configuration (``config.validate()``) or one the algorithm
        refuses, at the first ``next``.

    Examples
    --------
    >>> config = Config(
    ...     model="logistic_regression", num_honest=4, num_byzantine=1,
    ...     seeds=2, steps=4, eval_every=2, max_train=200,
    ... )
    >>> for step, rows, states in iterate(config):
    ...     print(step, [row["seed"] for row in rows], 0 <= rows[0]["test_accuracy"] <= 1)
    2 [0, 1] True
    4 [0, 1] True
    >>> next(iterate(Config(steps=3, eval_every=2)))
    Traceback (most recent call last):
    ...
    jaxrobust.config.ConfigError: steps needs to be a multiple of eval_every, got steps=3, ...
    """
    for done, rows, states, _ in _iterate(config, dataset, problem):
        yield done, rows, states


def _iterate(config: Config, dataset: datasets.Dataset | None, problem: Problem | None):
    config.validate()
    check_setting(config)
    dataset = load_for(config) if dataset is None else with_validation_split(config, dataset)
    init, chunk, evaluate, sim = compiled_run(config, dataset, problem)
    seeds = config.seed + np.arange(config.seeds)
    states = initial_states(config, dataset, init, seeds)
    for done in range(config.eval_every, config.steps + 1, config.eval_every):
        states, metrics = chunk(states)
        measured = measurements(metrics, evaluate(params_of(sim, states)))
        rows = [
            {"seed": int(seed), "step": done, **m} for seed, m in zip(seeds, measured, strict=True)
        ]
        yield done, rows, states, sim


def params_of(sim: Algorithm, states) -> PyTree:
    """The evaluated parameters of every run of a batch of states (leading axis: runs).

    ``jax.vmap(sim.params)(states)``.

    Parameters
    ----------
    sim : Algorithm
        The algorithm the states belong to (:func:`compiled_run`'s last
        result).
    states : pytree
        Its states, leaves with a leading run axis.

    Returns
    -------
    pytree
        The parameters, leaves with a leading run axis.

    Examples
    --------
    :func:`compiled_run`'s example uses it on a real algorithm. Any object
    with a ``params(state)`` method works:

    >>> import jax.numpy as jnp
    >>> from types import SimpleNamespace
    >>> sim = SimpleNamespace(params=lambda state: state["params"])
    >>> states = {"params": jnp.ones((2, 3)), "round": jnp.zeros(2)}  # two runs
    >>> params_of(sim, states).shape
    (2, 3)
    """
    return jax.vmap(sim.params)(states)


def metric_columns(algorithm_names=()) -> tuple[str, ...]:
    """The columns of ``metrics.csv``: :data:`METRIC_COLUMNS`, then every further field
    that the named algorithms declare (``factory.metrics``), in order.

    Examples
    --------
    >>> metric_columns(["marina_pp"])[-2:]
    ('full_round', 'attacked')
    >>> metric_columns() == METRIC_COLUMNS
    True
    """
    extra = []
    for name in algorithm_names:
        for field in metric_fields(registry("algorithm").entry(name).factory):
            if field not in METRIC_COLUMNS and field not in extra:
                extra.append(field)
    return (*METRIC_COLUMNS, *extra)


def measurements(metrics, evaluation: dict) -> list[dict[str, float]]:
    """One dict of metric values per run, from a chunk's metrics and an evaluation.

    Every field of ``metrics`` (a NamedTuple of per-run arrays) and of
    ``evaluation`` is kept; the columns of :data:`METRIC_COLUMNS` without a
    measurement (no validation split) hold NaN.

    Examples
    --------
    >>> import numpy as np
    >>> from typing import NamedTuple
    >>> class M(NamedTuple):
    ...     train_loss: np.ndarray
    >>> rows = measurements(M(np.array([0.5])), {"test_accuracy": np.array([0.25])})
    >>> rows[0]["train_loss"], rows[0]["test_accuracy"], rows[0]["epochs"]
    (0.5, 0.25, nan)
    """
    metrics, evaluation = jax.device_get((metrics, evaluation))
    values = {**metrics._asdict(), **evaluation}
    runs = len(next(iter(values.values())))
    names = [*METRIC_COLUMNS[2:], *(k for k in values if k not in METRIC_COLUMNS)]
    return [
        {name: float(values[name][r]) if name in values else float("nan") for name in names}
        for r in range(runs)
    ]


def load_for(config: Config) -> datasets.Dataset:
    """The configuration's data set, with its validation split held out if asked.

    ``batch_size`` is checked against the honest workers' parts of it
    (:func:`jaxrobust.data.partition.check_batch_size`), before anything runs.

    Examples
    --------
    >>> load_for(Config(max_train=100, validation=0.2, batch_size=8))
    Dataset(name='digits', train=80, test=179, input_shape=(8, 8, 1), num_classes=10)
    >>> load_for(Config(batch_size=100000))
    Traceback (most recent call last):
        ...
    ValueError: batch_size needs 1 <= batch_size <= 162 ...
    """
    dataset = datasets.load_dataset(
        config.dataset,
        config.data_dir,
        seed=config.data_seed,
        max_train=config.max_train,
        max_test=config.max_test,
    )
    dataset = with_validation_split(config, dataset)
    check_batch_size(config.batch_size, partition_of(config, dataset.y_train, config.seed))
    return dataset


def with_validation_split(config: Config, dataset: datasets.Dataset) -> datasets.Dataset:
    """``dataset`` with ``config.validation`` of its training set held out, unless it has one.

    Seeded by ``config.data_seed`` (:func:`jaxrobust.data.datasets.with_validation`).

    Parameters
    ----------
    config : Config
        Gives ``validation`` (the fraction held out) and ``data_seed``.
    dataset : Dataset
        The data set.

    Returns
    -------
    Dataset
        ``dataset`` itself if ``config.validation`` is 0 or it already has a
        validation split.

    Examples
    --------
    >>> from jaxrobust.data import load_dataset
    >>> dataset = load_dataset("digits", max_train=200)
    >>> split = with_validation_split(Config(validation=0.25), dataset)
    >>> len(split.x_train), len(split.x_validation)
    (150, 50)
    >>> with_validation_split(Config(validation=0.25), split) is split
    True
    >>> with_validation_split(Config(), dataset) is dataset
    True
    """
    if config.validation > 0 and dataset.x_validation is None:
        return datasets.with_validation(dataset, config.validation, config.data_seed)
    return dataset


def simulate(
    config: Config,
    dataset: datasets.Dataset | None = None,
    on_evaluation: Callable[[int, list[dict]], None] | None = None,
    *,
    problem: Problem | None = None,
) -> RunResult:
    """Run ``config.seeds`` seeds of a configuration as one vmapped program.

    ``problem`` replaces the model named in the config: ``problem_for(config,
    dataset, my_flax_module)`` for your own module, or ``Problem(init, loss)``
    for any pure ``loss(params, (x, y))`` (test accuracy is then NaN unless
    ``accuracy`` is given too).

    ``on_evaluation(step, rows)`` is called at every evaluation (to stream
    results to disk, print progress, ...).

    Parameters
    ----------
    config : Config
        The configuration; seeds ``seed, seed + 1, ..., seed + seeds - 1``.
    dataset : Dataset, optional
        Default: :func:`load_for` ``(config)``.
    on_evaluation : callable, optional
        ``on_evaluation(step, rows)``.
    problem : Problem, optional
        Default: :func:`jaxrobust.models.problem_for` ``(config, dataset)``.

    Returns
    -------
    RunResult

    Raises
    ------
    ValueError
        An invalid configuration, or one its algorithm refuses.

    Examples
    --------
    >>> result = simulate(
    ...     Config(model="logistic_regression", seeds=2, steps=2, eval_every=1, max_train=300)
    ... )
    >>> [(row["seed"], row["step"]) for row in result.rows]
    [(0, 1), (1, 1), (0, 2), (1, 2)]
    >>> result.final().shape
    (2,)
    """
    start = time.perf_counter()
    rows, params = [], None
    for step, new_rows, states, sim in _iterate(config, dataset, problem):
        params = params_of(sim, states)
        rows.extend(new_rows)
        if on_evaluation is not None:
            on_evaluation(step, new_rows)
    return RunResult(config, rows, params, time.perf_counter() - start)
