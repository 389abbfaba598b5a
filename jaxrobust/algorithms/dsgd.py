"""Robust D-SGD with worker momentum, optionally with client sampling and local steps.

Per round, inside one XLA program: every honest worker (or every sampled
client) samples a minibatch of its own data, computes its gradient
(``vmap``) and updates its momentum ``m_i <- beta m_i + (1 - beta) g_i``; the
attack builds the Byzantine vectors from the honest ones; the defence
(pre-aggregation then aggregation) combines the received vectors; the server
optimiser updates the parameters. With ``local_steps = K > 1`` each client
that trains this round runs ``K`` local SGD steps instead (FedAvg-style) and
sends its model change divided by the local rate.

References
----------
Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by mixing: a
recipe for optimal Byzantine ML under heterogeneity", AISTATS 2023 (Robust
D-SGD with worker momentum). Malinovsky, Richtarik, Horvath, Gorbunov,
"Byzantine robustness and partial participation can be achieved at once: just
clip gradient differences", NeurIPS 2024 (the clipping heuristic under client
sampling, ``clipping_heuristic``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxrobust import attacks, functional
from jaxrobust.algorithms.base import Algorithm, Setup, robust_round, round_metrics
from jaxrobust.core import registry
from jaxrobust.core.types import PyTree
from jaxrobust.data.partition import sample_batches
from jaxrobust.rules.defence import make_defence
from jaxrobust.server import Hyper, lr_factor, make_server_optimiser, server_init, server_update
from jaxrobust.workers import flip_labels, local_vectors, momentum_update, per_worker_gradients

__all__ = ["DSGDState", "ServerMemory", "dsgd"]


class ServerMemory(NamedTuple):
    """What the server remembers between rounds (partial participation, shift-back).

    Attributes
    ----------
    aggregate : pytree
        ``g_{k-1}``, the previous round's aggregate (the centre of the
        clipping heuristic).
    params : pytree
        ``x_{k-1}``, the previous parameters.
    start : pytree
        ``x_0``, the starting parameters (the shift-back attack's target).
    """

    aggregate: PyTree  # g_{k-1}, the previous aggregate
    params: PyTree  # x_{k-1}
    start: PyTree  # x_0


class DSGDState(NamedTuple):
    """One run's state of :func:`dsgd`, a pytree (vmapped over runs by the simulator).

    Attributes
    ----------
    hyper : Hyper
        Per-run learning rate, momentum and weight decay (float32 scalars).
    indices : int32 array ``(h, max_size)``
        Each honest worker's example indices, padded by repeating its own.
    sizes : int32 array ``(h,)``
        How many entries of each row of ``indices`` are real.
    params : pytree
        The current parameters ``x_k``.
    momentum : pytree
        The honest workers' momentum, leaves ``(h, ...)``.
    defence, server : optax states
        The defence chain's and the server optimiser's states.
    attack : any
        The attack's state.
    memory : ServerMemory
        What the server keeps from the previous round.
    key : PRNG key
        The run's key, split every round.
    """

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


@registry("algorithm").register("dsgd")
def dsgd(setup: Setup) -> Algorithm:
    """Robust D-SGD with worker momentum (optionally local steps and client sampling).

    Per round: every honest worker (every sampled client with
    ``clients_per_round``) computes a minibatch gradient ``g_i`` of
    ``config.batch_size`` examples at ``x_k`` and updates its momentum
    ``m_i <- beta m_i + (1 - beta) g_i``; the attack builds
    ``config.num_byzantine`` vectors; the defence ``R`` (``config.defence``)
    aggregates the received ones; the server steps
    ``x_{k+1} = x_k - gamma_k (R(m_1, ..., m_n) + weight_decay x_k)``.
    With ``local_steps = K > 1`` each worker runs ``K`` local SGD steps at
    rate ``local_lr`` (default: the server's rate) and its vector is the model
    change divided by that rate. With ``clipping_heuristic = lambda`` the
    defence is applied to the received vectors minus the previous aggregate,
    each clipped to ``lambda ||x_k - x_{k-1}||`` (no clipping in the first
    round), and the previous aggregate is added back.

    Parameters
    ----------
    setup : Setup
        The configuration, data set and problem. Fields read from the
        configuration: ``num_honest``, ``num_byzantine``,
        ``clients_per_round``, ``local_steps``, ``local_lr``,
        ``clipping_heuristic``, ``batch_size``, ``attack`` and its options, the
        defence fields, ``lr``, ``lr_schedule``, ``momentum`` and
        ``weight_decay``. ``algorithm_options`` takes nothing.

    Returns
    -------
    Algorithm
        ``init(key, indices, sizes, hyper) -> DSGDState`` and
        ``step(state) -> (state, RoundMetrics)``.

    Raises
    ------
    ValueError
        A defence that cannot take the ``n`` received vectors (all workers, or
        ``clients_per_round``) with the configured ``f`` (the message names the
        rule's bound), or an unknown rule, attack, option or schedule name.

    References
    ----------
    Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by mixing:
    a recipe for optimal Byzantine ML under heterogeneity", AISTATS 2023.

    Malinovsky, Richtarik, Horvath, Gorbunov, "Byzantine robustness and
    partial participation can be achieved at once: just clip gradient
    differences", NeurIPS 2024 (the clipping heuristic).

    Examples
    --------
    Two rounds on 300 digits without Byzantine workers, the plain mean as the
    defence: the aggregate is exactly the honest workers' mean momentum.

    >>> from jaxrobust.config import Config
    >>> from jaxrobust.run.simulator import simulate
    >>> config = Config(
    ...     model="logistic_regression", num_byzantine=0, defence=("mean",),
    ...     steps=2, eval_every=1, max_train=300,
    ... )
    >>> result = simulate(config)
    >>> [row["step"] for row in result.rows], result.rows[-1]["distance_to_honest_mean"] < 1e-6
    ([1, 2], True)
    >>> result.params["params"]["dense"]["kernel"].shape  # (seeds, features, classes)
    (1, 64, 10)
    """
    config, problem = setup.config, setup.problem
    h, b, n = config.num_honest, config.num_byzantine, config.num_workers
    sampled_count = config.clients_per_round
    defence = make_defence(config)
    server = make_server_optimiser(config)
    attack = attacks.attack_of(config)
    heuristic = config.clipping_heuristic
    x_train, y_train = setup.x_train, setup.y_train
    schedule = lr_factor(config)
    num_classes = setup.num_classes
    gradients = per_worker_gradients(problem.loss)
    local = local_vectors(problem.loss)

    def init(key, indices, sizes, hyper: Hyper) -> DSGDState:
        key, init_key = jax.random.split(key)
        params = problem.init(init_key)
        momentum = jax.tree_util.tree_map(lambda p: jnp.zeros((h, *p.shape), p.dtype), params)
        return DSGDState(
            hyper,
            indices,
            sizes,
            params,
            momentum,
            defence.init(params),
            server_init(server, params, hyper),
            attack.init(params),
            ServerMemory(jax.tree_util.tree_map(jnp.zeros_like, params), params, params),
            key,
        )

    def participants(state: DSGDState, sample_key):
        """``(sampled, workers, rows, indices, sizes)`` of this round's clients.

        Honest clients are 0..h-1. A Byzantine slot trains on a random honest
        worker's data (only label flipping uses its result); its row ``h`` is
        dropped when momentum is written back.
        """
        if sampled_count is None:
            workers = jnp.arange(h)
            return jnp.arange(n), workers, workers, state.indices, state.sizes
        sampled = jax.random.permutation(sample_key, n)[:sampled_count]
        workers = jnp.where(sampled < h, sampled, sampled % h)
        rows = jnp.where(sampled < h, sampled, h)
        return sampled, workers, rows, state.indices[workers], state.sizes[workers]

    def vectors_of(params, batch_key, indices, sizes, lr):
        """``(losses, vectors, flipped())``: what each training client computes."""
        if config.local_steps == 1:
            idx = sample_batches(batch_key, indices, sizes, config.batch_size)
            xb, yb = x_train[idx], y_train[idx]
            losses, vectors = gradients(params, (xb, yb))
            return losses, vectors, lambda: gradients(params, (xb, flip_labels(yb, num_classes)))[1]
        keys = jax.random.split(batch_key, config.local_steps)
        idx = jax.vmap(lambda k: sample_batches(k, indices, sizes, config.batch_size))(keys)
        xb, yb = x_train[jnp.swapaxes(idx, 0, 1)], y_train[jnp.swapaxes(idx, 0, 1)]
        local_lr = lr if config.local_lr is None else config.local_lr
        losses, vectors = local(params, (xb, yb), local_lr)
        return (
            losses,
            vectors,
            lambda: local(params, (xb, flip_labels(yb, num_classes)), local_lr)[1],
        )

    def honest_loss(losses, sampled):
        """The mean training loss of this round's honest clients (all clients if none)."""
        if sampled_count is None:
            return losses
        honest_slot = sampled < h
        total = jnp.sum(jnp.where(honest_slot, losses, 0.0))
        return jnp.where(
            honest_slot.any(), total / jnp.maximum(honest_slot.sum(), 1), jnp.mean(losses)
        )

    def step(state: DSGDState):
        key, batch_key, attack_key, defence_key, sample_key = jax.random.split(state.key, 5)
        memory = state.memory
        lr = state.hyper.lr * schedule(state.server.count)
        sampled, workers, rows, indices, sizes = participants(state, sample_key)
        losses, vectors, flipped_vectors = vectors_of(state.params, batch_key, indices, sizes, lr)
        if sampled_count is None:
            momentum = momentum_update(state.hyper.momentum, state.momentum, vectors)
        else:
            momentum = momentum_update(state.hyper.momentum, state.momentum, vectors, rows, workers)
        losses = honest_loss(losses, sampled)

        if heuristic is not None:  # lambda_k = lambda ||x_k - x_{k-1}||, no clipping at k = 0
            moved = optax.tree_utils.tree_norm(
                jax.tree_util.tree_map(jnp.subtract, state.params, memory.params)
            )
            threshold = jnp.where(state.server.count > 0, heuristic * moved, jnp.inf)

        def aggregate(all_vectors):
            """Aggregate of the sampled clients' vectors (rows 0..n-1 of ``all_vectors``)."""
            received = all_vectors
            if sampled_count is not None:
                received = jax.tree_util.tree_map(lambda v: v[sampled], all_vectors)
            if heuristic is None:
                return defence.update(received, state.defence, state.params, key=defence_key)
            diffs = jax.tree_util.tree_map(lambda v, g: v - g[None], received, memory.aggregate)
            clipped = functional.clip_to(diffs, threshold)
            out, defence_state = defence.update(
                clipped, state.defence, state.params, key=defence_key
            )
            return jax.tree_util.tree_map(jnp.add, memory.aggregate, out), defence_state

        flipped = shift = majority = None
        if b > 0 and attack.needs_flipped_labels:
            flipped = flipped_vectors()
        if b > 0 and attack.needs_shift_back:  # the aggregate that sends the next step to x_0
            shift = attacks.shift_back_target(
                state.params, memory.start, lr, state.hyper.weight_decay
            )
            majority = 2 * jnp.sum(sampled >= h) > sampled.shape[0]
        aggregated, defence_state, attack_state, _ = robust_round(
            momentum,
            attack=attack,
            attack_state=state.attack,
            num_byzantine=b,
            key=attack_key,
            aggregate=aggregate,
            flipped=flipped,
            shift_back=shift,
            byzantine_majority=majority,
        )
        params, server_state = server_update(server, state.server, aggregated, state.params, lr)
        new_state = DSGDState(
            state.hyper,
            state.indices,
            state.sizes,
            params,
            momentum,
            defence_state,
            server_state,
            attack_state,
            ServerMemory(aggregated, state.params, memory.start),
            key,
        )
        return new_state, round_metrics(aggregated, momentum, losses)

    return Algorithm(init, step, setup.evaluate())


dsgd.local_steps = True  # runs FedAvg-style local steps (config.local_steps > 1)
dsgd.options = {}  # D-SGD's settings are config fields (momentum, local_steps, ...)
