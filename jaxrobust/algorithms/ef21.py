"""Byz-EF21-SGDM and its baselines: robust aggregation of compressed messages.

Three algorithms, each one jitted step per round and vmappable over seeds,
with ``config.compressor`` as the compressor ``C``: Byz-EF21-SGDM (Liu, Li,
Yi, Johansson, 2024) and the baselines of its paper, Byz-EF21 (Rammal et al.,
AISTATS 2024) and BR-CSGD (see References):

``"byz_ef21_sgdm"`` (Byz-EF21-SGDM)
    Every honest worker ``i`` keeps Polyak momentum
    ``v_i <- beta v_i + (1 - beta) grad_i`` (``beta = state.hyper.momentum``,
    from ``config.momentum``) and an EF21 state ``g_i``; it sends
    ``c_i = C(v_i - g_i)`` and sets ``g_i <- g_i + c_i``. The server keeps its
    own copy of every worker's ``g_i`` (all ``n``), reconstructs
    ``g_i <- g_i + c_i`` from the received messages, aggregates the ``n``
    reconstructed states with the config's defence (:func:`jaxrobust.rules.defence.make_defence`,
    e.g. ``[nnm, median]``), and steps ``x <- x - gamma g``.
``"byz_ef21"``
    The same with ``beta = 0``: ``v_i = grad_i`` (whatever ``config.momentum``).
``"br_csgd"`` (Byzantine-robust compressed SGD)
    Every honest worker sends ``C(grad_i)``; the server applies the defence to
    the ``n`` received compressed vectors directly and steps. No worker state,
    no momentum (``config.momentum`` is ignored).

The server step is the simulator's server optimiser (SGD with
``config.weight_decay`` and ``config.lr_schedule``): with the defaults (no
weight decay, constant rate) it is exactly ``x <- x - gamma g``,
``gamma = state.hyper.lr``.

**Convention (attacks in compressed space).** The attack sees what the
server is about to aggregate from the honest workers, i.e. the honest
*reconstructed states* ``g_i + c_i`` (EF21 variants) or the honest compressed
vectors ``C(grad_i)`` (BR-CSGD), and returns a *target* vector for every
Byzantine worker (SF: ``-mean``, IPM, ALIE, ..., aggregator-aware attacks
search against the defence in use on these vectors). For the EF21 variants a
Byzantine worker ``j`` then sends ``c_j = target_j - g_j`` (the server's copy
of its state), so the server's reconstructed Byzantine state equals the
target: the strongest choice, as the Byzantine message is not restricted to
the compressor's format (a dense ``c_j``; the server decodes whatever
arrives). Byzantine bits are not counted.

**Convention (label flipping).** A label-flipping Byzantine worker runs the
honest protocol on flipped labels (``y -> C - 1 - y``; ``1 - y`` for binary
data, whether the model has one logit or two). Following ByzFL, the simulator
computes, for every honest worker's batch, the flipped-label gradient; for
BR-CSGD the attack's ``flipped`` vectors are the compressed flipped-label
gradients; for the EF21 variants every honest worker gets a *shadow* EF21
worker on flipped labels (its own momentum and ``g``, the same compressor with
independent keys), whose reconstructed states are ``flipped``. The Byzantine
target is then their mean (``attacks.label_flip``). The shadow state exists
only when the attack needs it; its gradients are not counted in ``epochs``.

**Convention (unbiased compressors in EF21).** EF21 needs a contractive
compressor (``E||C(x) - x||^2 <= (1 - alpha) ||x||^2``, ``alpha > 0``), such as
TopK. An unbiased compressor of variance ``omega`` (RandK scaled by ``d/K``:
``omega = d/K - 1``) is not one, and EF21 with it diverges (measured on a9a
with Rand-1: training losses of 1e18). So the EF21 variants use
``C / (1 + omega)`` for unbiased compressors
(:func:`jaxrobust.compression.contractive`, the standard reduction; for RandK
it is unscaled RandK), unless ``algorithm_options: {rescale_unbiased: false}``.
BR-CSGD uses the compressor as is (it wants an unbiased one).

**Initialisation** (``algorithm_options: {init: ...}``, EF21 variants):
``"gradient"`` (default, as in EF21-SGDM's algorithm): ``v_i = g_i`` = the
worker's minibatch gradient at ``x_0`` (one batch of ``config.batch_size``),
and the server starts with the same copies (a one-off uncompressed upload
before round 1, not counted in ``bits_sent``); ``"zeros"``: everything starts
at zero. The server's copies of the Byzantine states start at zero; they are
overwritten every round.

Metrics (:data:`jaxrobust.core.types.METRIC_COLUMNS`): ``train_loss`` (mean honest minibatch
loss at the round's parameters; with ``algorithm_options: {train_loss: full}``
the evaluation adds the loss on the whole training set at the evaluated
parameters, which replaces the chunk's minibatch mean in the rows: the
quantity the papers plot), ``aggregate_norm``,
``distance_to_honest_mean`` (aggregate minus the mean of the honest vectors
that were aggregated), ``mean_honest_norm``, ``bits_sent`` (the compressor's
bits summed over the honest workers, per round) and ``epochs`` (honest
gradient computations so far divided by the number of examples the honest
workers hold: ``t * batch_size * h / sum(sizes)`` after ``t`` rounds, the
initial gradient not counted; :func:`jaxrobust.evaluation.epochs_at`). The simulator reports the
mean of every metric over the ``eval_every`` rounds of a chunk, except the
cumulative ones (``epochs``, :data:`jaxrobust.run.simulator.LAST_VALUE_METRICS`),
which are their value after the chunk's last round: the exact value at the
evaluation step.

References
----------
Liu, Li, Yi, Johansson, "Byzantine-robust and communication-efficient
distributed learning via compressed momentum filtering", arXiv:2409.08640,
2024 (Byz-EF21-SGDM; BR-CSGD and Byz-EF21 as its baselines).

Rammal, Gruntkowska, Fedin, Gorbunov, Richtarik, "Communication compression
for Byzantine robust learning: new efficient algorithms and improved rates",
AISTATS 2024 (Byz-EF21).

Richtarik, Sokolov, Fatkhullin, "EF21: a new, simpler, theoretically better,
and practically faster error feedback", NeurIPS 2021 (EF21).

Fatkhullin, Tyurin, Richtarik, "Momentum provably improves error feedback!",
NeurIPS 2023 (EF21-SGDM).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxrobust import attacks, compression
from jaxrobust.algorithms.base import Algorithm, Setup, robust_round, round_metrics
from jaxrobust.compression import contractive
from jaxrobust.core import registry, tree
from jaxrobust.data.partition import sample_batches
from jaxrobust.evaluation import epochs_at, full_loss
from jaxrobust.rules.defence import make_defence
from jaxrobust.server import Hyper, lr_factor, make_server_optimiser, server_init, server_update
from jaxrobust.workers import flip_labels, momentum_update, per_worker_gradients

PyTree = Any

INITS = ("gradient", "zeros")
TRAIN_LOSSES = ("minibatch", "full")


class EF21State(NamedTuple):
    """One run's state. Worker-stacked leaves have ``h`` (workers) or ``n`` (server) rows.

    Attributes
    ----------
    hyper : Hyper
        Per-run learning rate, momentum ``beta`` and weight decay.
    indices, sizes : int32 arrays ``(h, max_size)`` and ``(h,)``
        The honest workers' example tables.
    params : pytree
        The current parameters.
    momentum : pytree ``(h, ...)``
        Honest ``v_i`` (zeros and unused for BR-CSGD).
    worker_g : pytree ``(h, ...)``
        The honest workers' own EF21 states ``g_i``.
    server_g : pytree ``(n, ...)``
        The server's copies of every worker's ``g_i`` (Byzantine rows last).
    flipped_momentum, flipped_g : pytree ``(h, ...)`` or ``()``
        The label-flipping shadow workers' ``v`` and ``g`` (``()`` unless the
        attack needs flipped labels).
    defence, server : optax states
        The defence chain's and the server optimiser's states.
    attack : any
        The attack's state.
    rounds : int32 scalar
        Rounds done.
    key : PRNG key
        The run's key.
    """

    hyper: Hyper
    indices: jax.Array  # (h, max_size) int32
    sizes: jax.Array  # (h,) int32
    params: PyTree
    momentum: PyTree  # (h, ...) honest v_i (zeros and unused for br_csgd)
    worker_g: PyTree  # (h, ...) honest workers' own EF21 states g_i
    server_g: PyTree  # (n, ...) the server's copies of every worker's g_i
    flipped_momentum: PyTree  # (h, ...) label-flip shadow workers' v, or () if unused
    flipped_g: PyTree  # (h, ...) label-flip shadow workers' g, or () if unused
    defence: optax.OptState
    server: optax.OptState
    attack: Any
    rounds: jax.Array  # int32, rounds done
    key: jax.Array


class EF21Metrics(NamedTuple):
    """:class:`~jaxrobust.algorithms.base.RoundMetrics`, the bits sent and the epochs done.

    Attributes
    ----------
    train_loss, aggregate_norm, distance_to_honest_mean, mean_honest_norm : float32
        As in :class:`~jaxrobust.algorithms.base.RoundMetrics` (the honest
        vectors being the reconstructed states, or the compressed gradients).
    bits_sent : float32
        The compressor's bits summed over the honest workers this round.
    epochs : float32
        ``rounds * batch_size * h / sum(sizes)`` (cumulative).
    """

    train_loss: jax.Array
    aggregate_norm: jax.Array
    distance_to_honest_mean: jax.Array
    mean_honest_norm: jax.Array
    bits_sent: jax.Array
    epochs: jax.Array


def _build(setup: Setup, *, kind: str) -> Algorithm:
    """``kind``: ``"ef21_sgdm"``, ``"ef21"`` (beta = 0) or ``"csgd"``."""
    config, problem = setup.config, setup.problem
    h, b = config.num_honest, config.num_byzantine
    options = dict(config.algorithm_options)
    init_mode = options.pop("init", "gradient")
    train_loss_mode = options.pop("train_loss", "minibatch")
    rescale = bool(options.pop("rescale_unbiased", True))
    if options:
        raise ValueError(
            f"unknown algorithm_options {sorted(options)} for {config.algorithm!r}; "
            "valid: init, train_loss, rescale_unbiased"
        )
    if init_mode not in INITS:
        raise ValueError(f"unknown init {init_mode!r}; choose one of: {', '.join(INITS)}")
    if train_loss_mode not in TRAIN_LOSSES:
        raise ValueError(
            f"unknown train_loss {train_loss_mode!r}; choose one of: {', '.join(TRAIN_LOSSES)}"
        )
    if config.clients_per_round not in (None, config.num_workers):
        raise ValueError(
            f"{config.algorithm} runs with full participation; got "
            f"clients_per_round={config.clients_per_round} for n={config.num_workers}"
        )
    if config.clipping_heuristic is not None:
        raise ValueError(f"clipping_heuristic is a dsgd option, not one of {config.algorithm}")
    ef21 = kind != "csgd"
    compressor = compression.make_compressor(config.compressor, **config.compressor_options)
    if ef21 and rescale and compressor.unbiased:
        compressor = contractive(compressor)
    defence = make_defence(config)
    server = make_server_optimiser(config)
    schedule = lr_factor(config)
    attack = attacks.attack_of(config)
    shadow = b > 0 and attack.needs_flipped_labels
    x_train, y_train = setup.x_train, setup.y_train
    num_classes = setup.num_classes
    evaluate_splits = setup.evaluate()

    def evaluate(params):
        out = evaluate_splits(params)
        if train_loss_mode == "full":
            out["train_loss"] = full_loss(problem.loss, params, x_train, y_train)
        return out

    per_worker_grad = per_worker_gradients(problem.loss)

    def batch(key, indices, sizes):
        idx = sample_batches(key, indices, sizes, config.batch_size)
        return x_train[idx], y_train[idx]

    def init(key, indices, sizes, hyper: Hyper) -> EF21State:
        key, init_key, grad_key = jax.random.split(key, 3)
        params = problem.init(init_key)
        momentum = tree.zeros(params, h)
        flipped_momentum = flipped_g = ()
        if shadow and ef21:
            flipped_momentum = tree.zeros(params, h)
        if ef21 and init_mode == "gradient":
            xb, yb = batch(grad_key, indices, sizes)
            _, momentum = per_worker_grad(params, (xb, yb))
            if shadow:
                _, flipped_momentum = per_worker_grad(params, (xb, flip_labels(yb, num_classes)))
        worker_g = momentum
        server_g = tree.concat(momentum, tree.zeros(params, b))
        if shadow and ef21:
            flipped_g = flipped_momentum
        server_state = server_init(server, params, hyper)
        return EF21State(
            hyper,
            indices,
            sizes,
            params,
            momentum,
            worker_g,
            server_g,
            flipped_momentum,
            flipped_g,
            defence.init(params),
            server_state,
            attack.init(params),
            jnp.zeros((), jnp.int32),
            key,
        )

    def step(state: EF21State):
        key, batch_key, compress_key, flip_key, attack_key, defence_key = jax.random.split(
            state.key, 6
        )
        xb, yb = batch(batch_key, state.indices, state.sizes)
        losses, grads = per_worker_grad(state.params, (xb, yb))
        flipped_grads = None
        if shadow:
            _, flipped_grads = per_worker_grad(state.params, (xb, flip_labels(yb, num_classes)))
        momentum, worker_g, server_g = state.momentum, state.worker_g, state.server_g
        flipped_momentum, flipped_g = state.flipped_momentum, state.flipped_g
        flipped = None
        if ef21:
            beta = state.hyper.momentum if kind == "ef21_sgdm" else jnp.zeros((), jnp.float32)
            momentum = momentum_update(beta, momentum, grads)
            messages, bits = compression.compress_workers(
                compressor, compress_key, tree.sub(momentum, worker_g)
            )
            worker_g = tree.add(worker_g, messages)  # the workers' update ...
            honest = tree.add(
                jax.tree_util.tree_map(lambda s: s[:h], server_g), messages
            )  # server's
            if shadow:
                flipped_momentum = momentum_update(beta, flipped_momentum, flipped_grads)
                flipped_messages, _ = compression.compress_workers(
                    compressor, flip_key, tree.sub(flipped_momentum, flipped_g)
                )
                flipped_g = tree.add(flipped_g, flipped_messages)
                flipped = flipped_g
        else:
            honest, bits = compression.compress_workers(compressor, compress_key, grads)
            if shadow:
                flipped, _ = compression.compress_workers(compressor, flip_key, flipped_grads)

        def aggregate(received):
            return defence.update(received, state.defence, state.params, key=defence_key)

        # EF21: the Byzantine message is c_j = target_j - g_j (server's copy), so the
        # reconstructed state g_j + c_j is the target (up to float rounding: set exactly).
        aggregated, defence_state, attack_state, received = robust_round(
            honest,
            attack=attack,
            attack_state=state.attack,
            num_byzantine=b,
            key=attack_key,
            aggregate=aggregate,
            flipped=flipped,
        )
        if ef21:
            server_g = received
        lr = state.hyper.lr * schedule(state.server.count)
        params, server_state = server_update(server, state.server, aggregated, state.params, lr)
        rounds = state.rounds + 1
        metrics = EF21Metrics(
            *round_metrics(aggregated, honest, losses),
            bits_sent=jnp.sum(bits),
            epochs=epochs_at(rounds, config.batch_size, state.sizes),
        )
        new_state = EF21State(
            state.hyper,
            state.indices,
            state.sizes,
            params,
            momentum,
            worker_g,
            server_g,
            flipped_momentum,
            flipped_g,
            defence_state,
            server_state,
            attack_state,
            rounds,
            key,
        )
        return new_state, metrics

    return Algorithm(init, step, evaluate)


@registry("algorithm").register("byz_ef21_sgdm")
def byz_ef21_sgdm(setup: Setup) -> Algorithm:
    """Byz-EF21-SGDM: EF21 on worker momentum, robust aggregation of the states.

    Parameters
    ----------
    setup : Setup
        The configuration, data set and problem. ``config.compressor`` (and
        ``compressor_options``) is ``C``; ``config.algorithm_options`` may set
        ``init`` (``"gradient"`` or ``"zeros"``), ``train_loss``
        (``"minibatch"`` or ``"full"``) and ``rescale_unbiased`` (default
        True); see the module docstring.

    Returns
    -------
    Algorithm
        ``init(key, indices, sizes, hyper) -> EF21State`` and
        ``step(state) -> (state, EF21Metrics)``.

    Raises
    ------
    ValueError
        An unknown ``algorithm_options`` key (``valid: init, train_loss,
        rescale_unbiased``), ``init`` or ``train_loss`` value;
        ``clients_per_round`` other than None or ``num_workers`` (full
        participation only); a ``clipping_heuristic`` (a dsgd option); or a
        defence that cannot take ``(n, f)``.

    References
    ----------
    Liu, Li, Yi, Johansson, "Byzantine-robust and communication-efficient
    distributed learning via compressed momentum filtering", arXiv:2409.08640,
    2024.

    Examples
    --------
    Two rounds on 200 digits with Top-10 compression: each round the ten
    honest workers send 420 bits each, and 2 rounds of batch 25 over 200
    examples are 2.5 epochs.

    >>> from jaxrobust.config import Config
    >>> from jaxrobust.run.simulator import simulate
    >>> config = Config(
    ...     algorithm="byz_ef21_sgdm", model="logistic_regression",
    ...     compressor="top_k", compressor_options={"k": 10}, defence=("nnm", "median"),
    ...     steps=2, eval_every=1, max_train=250,
    ... )
    >>> row = simulate(config).rows[-1]
    >>> row["step"], row["bits_sent"], row["epochs"]
    (2, 4200.0, 2.0)
    """
    return _build(setup, kind="ef21_sgdm")


@registry("algorithm").register("byz_ef21")
def byz_ef21(setup: Setup) -> Algorithm:
    """Byz-EF21: EF21 on the stochastic gradients (Byz-EF21-SGDM with ``beta = 0``).

    Parameters
    ----------
    setup : Setup
        The configuration, data set and problem. ``config.compressor`` (and
        ``compressor_options``) is ``C``; ``config.algorithm_options`` may set
        ``init`` (``"gradient"`` or ``"zeros"``), ``train_loss``
        (``"minibatch"`` or ``"full"``) and ``rescale_unbiased`` (default
        True); see the module docstring.

    Returns
    -------
    Algorithm
        ``init(key, indices, sizes, hyper) -> EF21State`` and
        ``step(state) -> (state, EF21Metrics)``.

    Raises
    ------
    ValueError
        An unknown ``algorithm_options`` key (``valid: init, train_loss,
        rescale_unbiased``), ``init`` or ``train_loss`` value;
        ``clients_per_round`` other than None or ``num_workers`` (full
        participation only); a ``clipping_heuristic`` (a dsgd option); or a
        defence that cannot take ``(n, f)``.

    References
    ----------
    Rammal, Gruntkowska, Fedin, Gorbunov, Richtarik, "Communication compression
    for Byzantine robust learning: new efficient algorithms and improved
    rates", AISTATS 2024.

    Examples
    --------
    >>> from jaxrobust.config import Config
    >>> from jaxrobust.run.simulator import build
    >>> from jaxrobust.data import load_dataset
    >>> config = Config(algorithm="byz_ef21", clipping_heuristic=1.0, max_train=200)
    >>> build(config, load_dataset("digits", max_train=200))
    Traceback (most recent call last):
    ...
    ValueError: clipping_heuristic is a dsgd option, not one of byz_ef21
    """
    return _build(setup, kind="ef21")


@registry("algorithm").register("br_csgd")
def br_csgd(setup: Setup) -> Algorithm:
    """BR-CSGD: robust aggregation of the compressed stochastic gradients ``C(grad_i)``.

    No worker state and no momentum; the compressor is used as is (an
    unbiased one is intended), and ``init`` and ``rescale_unbiased`` have no
    effect. A baseline in Liu et al. (2024).

    Parameters
    ----------
    setup : Setup
        The configuration, data set and problem. ``config.compressor`` (and
        ``compressor_options``) is ``C``; ``config.algorithm_options`` may set
        ``init`` (``"gradient"`` or ``"zeros"``), ``train_loss``
        (``"minibatch"`` or ``"full"``) and ``rescale_unbiased`` (default
        True); see the module docstring.

    Returns
    -------
    Algorithm
        ``init(key, indices, sizes, hyper) -> EF21State`` and
        ``step(state) -> (state, EF21Metrics)``.

    Raises
    ------
    ValueError
        An unknown ``algorithm_options`` key (``valid: init, train_loss,
        rescale_unbiased``), ``init`` or ``train_loss`` value;
        ``clients_per_round`` other than None or ``num_workers`` (full
        participation only); a ``clipping_heuristic`` (a dsgd option); or a
        defence that cannot take ``(n, f)``.

    References
    ----------
    Liu, Li, Yi, Johansson, "Byzantine-robust and communication-efficient
    distributed learning via compressed momentum filtering", arXiv:2409.08640,
    2024.

    Examples
    --------
    >>> from jaxrobust.config import Config
    >>> from jaxrobust.run.simulator import build
    >>> from jaxrobust.data import load_dataset
    >>> config = Config(algorithm="br_csgd", algorithm_options={"beta": 0.5}, max_train=200)
    >>> build(config, load_dataset("digits", max_train=200))
    Traceback (most recent call last):
    ...
    ValueError: unknown algorithm_options ['beta'] for 'br_csgd'; valid: init, ...
    """
    return _build(setup, kind="csgd")


for _factory in (byz_ef21_sgdm, byz_ef21, br_csgd):
    _factory.metrics = EF21Metrics
    # config.algorithm_options, with their defaults
    _factory.options = {"init": "gradient", "train_loss": "minibatch", "rescale_unbiased": True}
    # their valid values (checked with the config, see jaxrobust.core.Entry.ranges)
    _factory.option_types = {
        "init": Literal["gradient", "zeros"],
        "train_loss": Literal["minibatch", "full"],
        "rescale_unbiased": bool,
    }
