"""Robust D-SGD with worker momentum, simulated as one jitted step per round.

Per round, inside one XLA program: every honest worker samples a minibatch of
its own data (from device-resident index tables), computes its gradient
(``vmap``), updates its momentum; the attack builds the Byzantine vectors
from the honest ones; the defence (pre-aggregation then aggregation, an
``optax.chain`` of jaxrobust rules) combines all ``n`` vectors; the server
optimiser (any optax transformation) updates the parameters. With
``local_steps > 1`` each client that trains this round runs that many local SGD
steps instead (FedAvg-style, vmapped over the clients) and sends its model
change divided by the local rate. A run is a
``lax.scan`` over chunks of rounds; the host only sees chunk boundaries, where
it evaluates. Many seeds of one configuration run as one ``vmap``-ed program.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrobust import attacks, functional, kernels, models
from jaxrobust.config import Config
from jaxrobust.core import registry
from jaxrobust.data import datasets
from jaxrobust.data.partition import partition, sample_batches, stack_partition

PyTree = Any


# The defence and the server optimiser live in their own modules; re-exported here.
from jaxrobust.defence import make_defence  # noqa: E402
from jaxrobust.server import (  # noqa: E402
    Hyper,
    hyper_of,
    lr_factor,
    make_server_optimiser,
)

# --------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------


class ServerMemory(NamedTuple):
    """What the server remembers between rounds (partial participation, shift-back)."""

    aggregate: PyTree  # g_{k-1}, the previous aggregate
    params: PyTree  # x_{k-1}
    start: PyTree  # x_0


class RunState(NamedTuple):
    hyper: Hyper
    indices: jax.Array  # (h, max_size) int32: each worker's examples, padded with its own
    sizes: jax.Array  # (h,) int32: how many of each row are real
    params: PyTree
    momentum: PyTree  # (h, ...) honest workers' momentum
    defence: optax.OptState
    server: optax.OptState
    attack: Any
    memory: ServerMemory
    key: jax.Array


class StepMetrics(NamedTuple):
    train_loss: jax.Array
    aggregate_norm: jax.Array
    distance_to_honest_mean: jax.Array
    mean_honest_norm: jax.Array


class Simulation(NamedTuple):
    """The pure pieces of a run: ``init(key) -> state`` and ``step(state) -> (state, metrics)``."""

    init: Callable[[jax.Array, jax.Array, jax.Array, Hyper], RunState]
    step: Callable[[RunState], tuple[RunState, StepMetrics]]
    evaluate: Callable[[PyTree], tuple[jax.Array, jax.Array]]


class Problem(NamedTuple):
    """What is trained: ``init(key) -> params``, ``loss(params, (x, y))``, ``accuracy``.

    Built from ``config.model`` by default; pass your own to :func:`simulate`
    to train any flax module or any pure ``loss(params, batch)``.
    """

    init: Callable[[jax.Array], PyTree]
    loss: Callable[[PyTree, tuple], jax.Array]
    accuracy: Callable[[PyTree, tuple], jax.Array] | None = None


def problem_for(config: Config, dataset: datasets.Dataset, model=None) -> Problem:
    """The :class:`Problem` of a flax module (``model``, else ``config.model`` by name)."""
    module = models.resolve_model(config.model if model is None else model, dataset.num_classes)
    return Problem(
        init=lambda key: models.init_params(module, key, dataset.input_shape),
        loss=models.cross_entropy_loss(module, config.l2),
        accuracy=models.accuracy(module),
    )


def build(config: Config, dataset: datasets.Dataset, problem: Problem | None = None) -> Simulation:
    """Build the pure ``init`` / ``step`` / ``evaluate`` functions of a configuration.

    ``config.algorithm`` names a registered algorithm (``"dsgd"``, or one of
    :mod:`jaxrobust.algorithms`).
    """
    problem = problem_for(config, dataset) if problem is None else problem
    return registry("algorithm").entry(config.algorithm).factory(config, dataset, problem)


@registry("algorithm").register("dsgd")
def build_dsgd(config: Config, dataset: datasets.Dataset, problem: Problem) -> Simulation:
    """Robust D-SGD with worker momentum (optionally local steps and client sampling)."""
    h, b = config.num_honest, config.num_byzantine
    loss_fn, accuracy_fn = problem.loss, problem.accuracy
    n = config.num_workers
    defence = make_defence(config)
    server = make_server_optimiser(config)
    attack = attacks.attack_of(config)
    heuristic = config.clipping_heuristic
    x_train, y_train = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
    splits = {"test": (jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test))}
    if dataset.x_validation is not None:
        splits["validation"] = (
            jnp.asarray(dataset.x_validation),
            jnp.asarray(dataset.y_validation),
        )
    schedule = lr_factor(config)
    num_classes = dataset.num_classes

    def init(key, indices, sizes, hyper: Hyper):
        key, init_key = jax.random.split(key)
        params = problem.init(init_key)
        momentum = jax.tree_util.tree_map(lambda p: jnp.zeros((h, *p.shape), p.dtype), params)
        server_state = server.init(params)
        server_state = server_state._replace(
            hyperparams={**server_state.hyperparams, "weight_decay": hyper.weight_decay}
        )
        return RunState(
            hyper,
            indices,
            sizes,
            params,
            momentum,
            defence.init(params),
            server_state,
            attack.init(params),
            ServerMemory(jax.tree_util.tree_map(jnp.zeros_like, params), params, params),
            key,
        )

    per_worker_grad = jax.vmap(jax.value_and_grad(loss_fn), in_axes=(None, 0))
    local_steps = config.local_steps

    def local_vector(params, batches, local_lr):
        """``(x - x_K) / local_lr`` after ``K`` local SGD steps from ``x``, and the mean loss.

        For ``K = 1`` this is the minibatch gradient, so ``lr`` keeps its meaning.
        """

        def one(p, batch):
            loss, grad = jax.value_and_grad(loss_fn)(p, batch)
            return jax.tree_util.tree_map(lambda w, g: w - local_lr * g, p, grad), loss

        final, losses = jax.lax.scan(one, params, batches)
        vector = jax.tree_util.tree_map(lambda a, z: (a - z) / local_lr, params, final)
        return jnp.mean(losses), vector

    per_worker_local = jax.vmap(local_vector, in_axes=(None, 0, None))

    def step(state: RunState):
        key, batch_key, attack_key, defence_key, sample_key = jax.random.split(state.key, 5)
        memory = state.memory
        lr = state.hyper.lr * schedule(state.server.count)
        beta = state.hyper.momentum
        # Partial participation: the clients of this round, honest ones first in
        # 0..h-1. The clients that train: every honest worker, or the sampled
        # clients (vmapped over those only). A Byzantine slot trains on a random
        # honest worker's data; only label flipping uses its result.
        if config.clients_per_round is None:
            sampled = jnp.arange(n)
            workers = rows = jnp.arange(h)
            indices, sizes = state.indices, state.sizes
        else:
            sampled = jax.random.permutation(sample_key, n)[: config.clients_per_round]
            workers = jnp.where(sampled < h, sampled, sampled % h)
            rows = jnp.where(sampled < h, sampled, h)  # h: dropped by the scatter
            indices, sizes = state.indices[workers], state.sizes[workers]
        if local_steps == 1:
            idx = sample_batches(batch_key, indices, sizes, config.batch_size)
            xb, yb = x_train[idx], y_train[idx]
            losses, vectors = per_worker_grad(state.params, (xb, yb))

            def flipped_vectors():
                return per_worker_grad(state.params, (xb, num_classes - 1 - yb))[1]

        else:  # FedAvg-style local steps
            keys = jax.random.split(batch_key, local_steps)
            idx = jax.vmap(lambda k: sample_batches(k, indices, sizes, config.batch_size))(keys)
            xb, yb = x_train[jnp.swapaxes(idx, 0, 1)], y_train[jnp.swapaxes(idx, 0, 1)]
            local_lr = lr if config.local_lr is None else config.local_lr
            losses, vectors = per_worker_local(state.params, (xb, yb), local_lr)

            def flipped_vectors():
                return per_worker_local(state.params, (xb, num_classes - 1 - yb), local_lr)[1]

        if config.clients_per_round is None:
            momentum = jax.tree_util.tree_map(
                lambda m, v: (beta * m + (1.0 - beta) * v).astype(m.dtype), state.momentum, vectors
            )
        else:  # only the sampled honest clients' rows move
            momentum = jax.tree_util.tree_map(
                lambda m, v: m.at[rows].set(
                    (beta * m[workers] + (1.0 - beta) * v).astype(m.dtype), mode="drop"
                ),
                state.momentum,
                vectors,
            )
            honest_slot = sampled < h  # the training loss of the honest clients
            honest_loss = jnp.sum(jnp.where(honest_slot, losses, 0.0))
            losses = jnp.where(
                honest_slot.any(), honest_loss / jnp.maximum(honest_slot.sum(), 1), jnp.mean(losses)
            )

        if heuristic is not None:  # lambda_k = lambda ||x_k - x_{k-1}||, no clipping at k = 0
            moved = optax.tree_utils.tree_norm(
                jax.tree_util.tree_map(jnp.subtract, state.params, memory.params)
            )
            threshold = jnp.where(state.server.count > 0, heuristic * moved, jnp.inf)

        def combine(all_vectors, defence_state):
            """Aggregate of the sampled clients' vectors (rows 0..n-1 of ``all_vectors``)."""
            received = all_vectors
            if config.clients_per_round is not None:
                received = jax.tree_util.tree_map(lambda v: v[sampled], all_vectors)
            if heuristic is None:
                return defence.update(received, defence_state, state.params, key=defence_key)
            diffs = jax.tree_util.tree_map(lambda v, g: v - g[None], received, memory.aggregate)
            clipped = functional.clip_to(diffs, threshold)
            step_, defence_state = defence.update(
                clipped, defence_state, state.params, key=defence_key
            )
            return jax.tree_util.tree_map(jnp.add, memory.aggregate, step_), defence_state

        attack_state = state.attack
        if b > 0:
            flipped = None
            if attack.needs_flipped_labels:
                flipped = flipped_vectors()
            shift, majority = None, None
            if attack.needs_shift_back:
                # The aggregate that makes the next SGD step land on x_0.
                shift = jax.tree_util.tree_map(
                    lambda x, x0: (x - x0) / lr - state.hyper.weight_decay * x,
                    state.params,
                    memory.start,
                )
                majority = 2 * jnp.sum(sampled >= h) > sampled.shape[0]

            def defence_fn(vectors):
                return combine(vectors, state.defence)[0]

            inputs = attacks.AttackInput(
                momentum,
                b,
                attack_key,
                flipped,
                defence_fn if attack.needs_defence else None,
                shift,
                majority,
            )
            byzantine, attack_state = attack.apply(inputs, attack_state)
            everyone = jax.tree_util.tree_map(
                lambda m, z: jnp.concatenate([m, z.astype(m.dtype)]), momentum, byzantine
            )
        else:
            everyone = momentum
        aggregate, defence_state = combine(everyone, state.defence)
        server_state = state.server._replace(
            hyperparams={**state.server.hyperparams, "learning_rate": lr}
        )
        updates, server_state = server.update(aggregate, server_state, state.params)
        params = optax.apply_updates(state.params, updates)
        honest_mean = attacks.honest_mean(momentum)
        diff = jax.tree_util.tree_map(jnp.subtract, aggregate, honest_mean)
        metrics = StepMetrics(
            train_loss=jnp.mean(losses),
            aggregate_norm=optax.tree_utils.tree_norm(aggregate),
            distance_to_honest_mean=optax.tree_utils.tree_norm(diff),
            mean_honest_norm=jnp.mean(kernels.worker_norms(momentum)),
        )
        new_state = RunState(
            state.hyper,
            state.indices,
            state.sizes,
            params,
            momentum,
            defence_state,
            server_state,
            attack_state,
            ServerMemory(aggregate, state.params, memory.start),
            key,
        )
        return new_state, metrics

    def evaluate_on(params, x, y):
        size = x.shape[0]
        chunk = min(size, 1000)
        total_loss, total_correct = 0.0, 0.0
        for start in range(0, size, chunk):
            batch = (x[start : start + chunk], y[start : start + chunk])
            m = batch[1].shape[0]
            total_loss += loss_fn(params, batch) * m
            if accuracy_fn is not None:
                total_correct += accuracy_fn(params, batch) * m
            else:
                total_correct = jnp.nan
        return total_correct / size, total_loss / size

    def evaluate(params):
        out = {}
        for name, (x, y) in splits.items():
            out[f"{name}_accuracy"], out[f"{name}_loss"] = evaluate_on(params, x, y)
        return out

    return Simulation(init, step, evaluate)


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------

METRIC_COLUMNS = (
    "seed",
    "step",
    "test_accuracy",
    "test_loss",
    "validation_accuracy",
    "validation_loss",
    "train_loss",
    "aggregate_norm",
    "distance_to_honest_mean",
    "mean_honest_norm",
    "bits_sent",
    "suboptimality",
    "epochs",
)

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
    config: Config
    rows: list[dict]  # one per seed and evaluation, keys METRIC_COLUMNS
    params: PyTree  # final parameters, leading axis = seeds
    seconds: float

    def final(self, column: str = "test_accuracy") -> np.ndarray:
        """The last evaluation's ``column`` for every seed."""
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
    """

    def chunk(state):
        state, metrics = jax.lax.scan(lambda s, _: step(s), state, None, length=length)
        return state, reduce_chunk(metrics)

    return jax.jit(jax.vmap(chunk))


def has_convolution(problem: Problem, dataset: datasets.Dataset) -> bool:
    """Whether the gradient of ``problem.loss`` contains a convolution (traced abstractly)."""
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
        return self.step.lower(self.take(states, 0))


def worker_tables(config: Config, labels: np.ndarray, seeds) -> tuple[np.ndarray, np.ndarray]:
    """Each seed's partition of the honest workers' data, padded to one shape.

    Returns ``indices`` ``(seeds, h, max_size)`` (rows padded by repeating the
    worker's own examples) and ``sizes`` ``(seeds, h)``.
    """
    return run_tables([(config, int(seed)) for seed in seeds], labels)


def run_tables(runs, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Partition tables of several ``(config, seed)`` runs, padded to one shape.

    Each run uses its own heterogeneity settings and seed; see :func:`worker_tables`.
    """
    tables = []
    for config, seed in runs:
        parts = partition(
            labels,
            config.num_honest,
            config.heterogeneity,
            alpha=config.alpha,
            gamma=config.gamma,
            shards_per_worker=config.shards_per_worker,
            seed=int(seed),
        )
        tables.append(stack_partition(parts))
    width = max(t[0].shape[1] for t in tables)
    indices = np.stack(
        [np.take_along_axis(idx, np.arange(width)[None] % size[:, None], 1) for idx, size in tables]
    )
    return indices.astype(np.int32), np.stack([t[1] for t in tables]).astype(np.int32)


def initial_states(config: Config, dataset: datasets.Dataset, init, seeds) -> RunState:
    """The stacked start states of the given seeds, from ``compiled_run``'s ``init``."""
    seeds = np.asarray(seeds)
    indices, sizes = worker_tables(config, dataset.y_train, seeds)
    hyper = jax.tree_util.tree_map(lambda v: jnp.full(len(seeds), v), hyper_of(config))
    return init(jax.vmap(jax.random.key)(jnp.asarray(seeds)), indices, sizes, hyper)


def iterate(
    config: Config,
    dataset: datasets.Dataset | None = None,
    problem: Problem | None = None,
) -> Iterator[tuple[int, list[dict], RunState]]:
    """Run a configuration, yielding ``(step, rows, states)`` at every evaluation."""
    config.validate()
    dataset = load_for(config) if dataset is None else with_validation_split(config, dataset)
    init, chunk, evaluate, _ = compiled_run(config, dataset, problem)
    seeds = config.seed + np.arange(config.seeds)
    states = initial_states(config, dataset, init, seeds)
    for done in range(config.eval_every, config.steps + 1, config.eval_every):
        states, metrics = chunk(states)
        measured = measurements(metrics, evaluate(states.params))
        rows = [
            {"seed": int(seed), "step": done, **m} for seed, m in zip(seeds, measured, strict=True)
        ]
        yield done, rows, states


def measurements(metrics: StepMetrics, evaluation: dict) -> list[dict[str, float]]:
    """One dict of metric values per run, from a chunk's metrics and an evaluation.

    Columns without a measurement (no validation split) hold NaN.
    """
    metrics, evaluation = jax.device_get((metrics, evaluation))
    runs = len(metrics.train_loss)
    values = {**metrics._asdict(), **evaluation}
    out = []
    for r in range(runs):
        out.append(
            {
                name: float(values[name][r]) if name in values else float("nan")
                for name in METRIC_COLUMNS[2:]
            }
        )
    return out


def load_for(config: Config) -> datasets.Dataset:
    """The configuration's data set, with its validation split held out if asked."""
    dataset = datasets.load_dataset(
        config.dataset,
        config.data_dir,
        seed=config.data_seed,
        max_train=config.max_train,
        max_test=config.max_test,
    )
    return with_validation_split(config, dataset)


def with_validation_split(config: Config, dataset: datasets.Dataset) -> datasets.Dataset:
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
    """
    start = time.perf_counter()
    rows, states = [], None
    for step, new_rows, final_states in iterate(config, dataset, problem):
        states = final_states
        rows.extend(new_rows)
        if on_evaluation is not None:
            on_evaluation(step, new_rows)
    return RunResult(config, rows, states.params, time.perf_counter() - start)
