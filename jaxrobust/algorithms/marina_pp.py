"""Byz-VR-MARINA-PP: Byzantine robustness under partial participation by clipped differences.

Malinovsky, Richtarik, Horvath, Gorbunov, "Byzantine robustness and partial
participation can be achieved at once: just clip gradient differences",
NeurIPS 2024. Registered as ``"marina_pp"``; one jitted step per round,
vmappable over seeds.

Round ``k`` (the server holds ``x_k`` and ``g_k`` and broadcasts ``g_k``):

1. Flip ``c_k ~ Bernoulli(p)`` and sample ``S_k`` uniformly without
   replacement among the ``n`` clients, of size ``C_hat`` if ``c_k = 1`` else
   ``C``.
2. Every sampled client computes ``x_{k+1} = x_k - gamma g_k``
   (``gamma = state.hyper.lr``, from ``config.lr``).
3. ``c_k = 1``: a good client sends its full local gradient
   ``grad f_i(x_{k+1})``; the server sets ``g_{k+1} = ARAgg(received)``.
   ``c_k = 0``: a good client draws one minibatch ``B`` of
   ``config.batch_size`` local examples and sends
   ``Q(grad f_i(x_{k+1}; B) - grad f_i(x_k; B))`` (the **same** batch at both
   points; ``Q = config.compressor``, independent keys); the server sets
   ``g_{k+1} = g_k + ARAgg({clip_lambda(v_j)})`` with
   ``lambda_{k+1} = alpha ||x_{k+1} - x_k||`` and
   ``clip_lambda(v) = v min(1, lambda / ||v||)`` (a vector with a NaN or
   infinite entry is clipped to zero).
4. The next round starts from ``x_{k+1}``: ``state.params`` holds it.

``ARAgg`` is the config's defence (:func:`jaxrobust.rules.defence.make_defence`), built twice:
for ``C`` and for ``C_hat`` inputs. Its ``f`` is the largest value
``<= config.defence_f`` for which the rules accept that many inputs (e.g.
``f = 0`` for ``[bucketing, median]`` on ``C = 4``: after Bucketing(2) only
two vectors are left). With ``C = 4`` and Bucketing(2), CWMed of the two
buckets is their mean, i.e. the mean of the four received vectors.

Options (``config.algorithm_options``)
--------------------------------------
``p``
    Probability of a full-gradient round; default ``min(C/n, b/m, K/d)`` with
    ``b = config.batch_size``, ``m`` a good client's number of examples and
    ``K/d`` the compressor's kept fraction (``rand_k`` / ``top_k``;
    ``1/(1 + omega)`` for other compressors; 1 for ``identity``).
``clients_full``
    ``C_hat``, clients sampled in full rounds (default ``n``).
    ``C = config.clients_per_round`` (``None``: full participation, ``C = n``).
``clip_alpha``
    ``alpha`` (default 1.0); ``None`` disables clipping (the "without
    clipping" baseline). Honest differences are not clipped when ``alpha`` is
    at least the per-batch smoothness constant times the compressor's norm
    inflation; a smaller ``alpha`` clips honest messages too (a bias).
``plus``
    PP+: the plain mean of the (clipped) messages in the ``c_k = 0`` rounds.
``shared_data``
    Every good client holds the **whole** training set (the paper's a9a
    experiment) instead of its part of the ``config.heterogeneity`` split.
``binary``
    With ``config.model == "logistic_regression"`` on two-class data, use the
    one-logit model (sigmoid loss, ``l2`` over all parameters: the usual
    binary objective of the papers' ``f(x) - f*`` plots) instead of the
    two-logit softmax the problem would otherwise be.
``f_star``
    ``"auto"`` (default): when ``config.model == "logistic_regression"`` and
    ``config.l2 > 0`` (strongly convex), compute ``(x*, f*)`` once at build time with
    :func:`jaxrobust.optimum.reference_optimum` (float64 Newton; about 3 s
    on two CPU cores for a9a's 124 parameters); ``True``: compute it for any
    model (the loss must be strongly convex); a number: use it as ``f*``;
    ``None`` / ``False``: no suboptimality (NaN).
``init``
    ``"gradient"`` (default): ``g_0`` is the mean of the good clients' full
    gradients at ``x_0`` (counted as one epoch, not in ``bits_sent``);
    ``"zeros"``: ``g_0 = 0``.
``sampler``
    Testing hook: ``sampler(key, n, size) -> int32 indices`` replacing the
    uniform sampler (e.g. to force an all-Byzantine round).

Clients and attacks
-------------------
Clients ``0 .. h-1`` are good, ``h .. n-1`` Byzantine. A Byzantine client
that "behaves honestly" computes what a good client would, on the whole data
set (``shared_data``) or on good client ``(j - h) mod h``'s part.

``config.attack == "shift_back"`` (implemented here, options
``{"threshold": 0.5}``): when the sampled Byzantine clients are a strict
majority (``count > threshold * |S_k|``) they all send the vector that makes
the next iterate ``x_{k+2} = x_{k+1} - gamma g_{k+1}`` equal to ``x_0``,
assuming the aggregate equals their common vector:
``(x_{k+1} - x_0) / gamma`` in a full round (``g_{k+1} = ARAgg``), and
``(x_{k+1} - x_0) / gamma - g_k`` in a difference round
(``g_{k+1} = g_k + ARAgg``); before clipping. Otherwise they send what a good
client would.

Any other attack of :func:`jaxrobust.attacks.make_attack`: it sees the
sampled good clients' vectors of the round (full gradients, or compressed
differences before clipping), padded cyclically to ``|S_k|`` rows; in a round
without any good client, the Byzantine clients' own honest computations. It
is asked for ``b_att = max(1, round(|S_k| f / n))`` vectors (so ALIE's
default ``z`` is that of ``n = |S_k| + b_att``, ``f = b_att``), given to the
sampled Byzantine clients cyclically. Aggregator-aware attacks search against
the defence actually applied (clipping included) on the actual sampled
slots. Label flipping gets the flipped-label vectors of the same sampled
clients and batches.

Metrics
-------
``train_loss`` (good and Byzantine-honest sampled clients' loss at
``x_{k+1}``: full local loss or batch loss), ``aggregate_norm``,
``distance_to_honest_mean`` (aggregate minus the mean of the sampled good
clients' (clipped) messages), ``mean_honest_norm`` (both 0 in a round
without a good client, so that the chunk means stay finite), ``bits_sent``
(per round: the compressor's bits of the sampled good clients in difference
rounds, ``32 d`` per sampled good client in full rounds; Byzantine bits not
counted; the chunk's mean is the mean per round), ``epochs`` (good clients'
example-gradient evaluations, ``m_i`` for a full local gradient and ``2 b``
for a difference, divided by the good clients' total number of examples: the
average number of passes of a good client over its data; ``h m`` with
``shared_data``; the initial gradient counts as one). ``epochs`` is
cumulative: each round reports the running total (``state.epochs``), and the
simulator writes its value after the chunk's last round
(:data:`jaxrobust.run.simulator.LAST_VALUE_METRICS`), the exact value at the evaluation step.

``evaluate(params)`` adds ``suboptimality = f(x) - f*`` on the full training
set. With ``x*`` known it is the mean over examples of
``loss_e(x) - loss_e(x*)`` (float32 rounding of ``f(x) - f*`` alone is about
2e-8 on a9a; this is about 1e-9), and below ``1e-3`` it is recomputed as
``int_0^1 <grad f(x* + t (x - x*)), x - x*> dt`` by 8-point Gauss-Legendre
quadrature, whose error shrinks with ``||x - x*||`` (about 1 % at 1e-12 on
a9a, checked against float64). With only ``f*`` given: ``f(x) - f*``.

Cost
----
Both kinds of round are one ``lax.cond``; under the simulator's ``vmap`` over
seeds it becomes a select, so *every* round computes the full-gradient branch
too (one full pass over the data with ``shared_data``; ``C_hat`` padded local
data sets otherwise, through a per-example ``vmap`` so that padded rows get
weight 0: cheap for logistic regression, memory-heavy for large models). On
a9a (124 parameters) a round of 3 seeds takes about 25 ms on two CPU cores.

Not used: ``config.momentum`` (ignored), ``weight_decay`` and
``lr_schedule`` (must be 0 and ``"constant"``: put the regulariser in
``config.l2``).

References
----------
Malinovsky, Richtarik, Horvath, Gorbunov, "Byzantine robustness and partial
participation can be achieved at once: just clip gradient differences",
NeurIPS 2024 (Byz-VR-MARINA-PP).

Gorbunov, Horvath, Richtarik, Gidel, "Variance reduction is an antidote to
Byzantines: better rates, weaker assumptions and communication compression as
a cherry on the top", ICLR 2023 (Byz-VR-MARINA, without partial
participation).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Annotated, Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from annotated_types import Ge, Gt, Le

from jaxrobust import attacks, compression, functional, kernels, models
from jaxrobust.algorithms.base import Algorithm, Setup, robust_round
from jaxrobust.config import Config
from jaxrobust.core import registry, tree
from jaxrobust.core.types import Problem
from jaxrobust.data.partition import sample_batches
from jaxrobust.evaluation import evaluator
from jaxrobust.rules import aggregators
from jaxrobust.rules.defence import make_defence
from jaxrobust.server import Hyper
from jaxrobust.workers import flip_labels

PyTree = Any

OPTIONS = (
    "p",
    "clients_full",
    "clip_alpha",
    "plus",
    "shared_data",
    "binary",
    "f_star",
    "init",
    "sampler",
)
INITS = ("gradient", "zeros")
# suboptimality below this (per-example differences) is recomputed by quadrature
QUADRATURE_BELOW = 1e-3
_nodes, _weights = np.polynomial.legendre.leggauss(8)
GL_NODES = tuple(float(v) for v in (_nodes + 1.0) / 2.0)  # on [0, 1]
GL_WEIGHTS = tuple(float(v) for v in _weights / 2.0)
SHIFT_BACK = "shift_back"


class MarinaPPState(NamedTuple):
    """One run's state of Byz-VR-MARINA-PP, a pytree (vmapped over runs by the simulator).

    Attributes
    ----------
    hyper : Hyper
        Per-run learning rate ``gamma`` (momentum and weight decay unused).
    indices, sizes : int32 arrays ``(h, max_size)`` and ``(h,)``
        The good clients' example tables.
    params : pytree
        ``x_k``, the iterate the next round starts from.
    g : pytree
        ``g_k``, broadcast by the server.
    x0 : pytree
        The starting point (the shift-back attack's target).
    defence_sampled, defence_full : optax states
        ``ARAgg`` for ``C`` and for ``C_hat`` inputs.
    attack : any
        The attack's state.
    rounds : int32 scalar
        Rounds done.
    epochs : float32 scalar
        Cumulative epochs (see the module docstring).
    key : PRNG key
        The run's key.

    Examples
    --------
    >>> MarinaPPState._fields[:4], MarinaPPState._fields[-3:]
    (('hyper', 'indices', 'sizes', 'params'), ('rounds', 'epochs', 'key'))
    """

    hyper: Hyper
    indices: jax.Array  # (h, max_size) int32
    sizes: jax.Array  # (h,) int32
    params: PyTree  # x_k (the iterate the next round starts from)
    g: PyTree  # g_k, broadcast by the server
    x0: PyTree  # the starting point (the shift-back attack's target)
    defence_sampled: optax.OptState  # ARAgg for C inputs
    defence_full: optax.OptState  # ARAgg for C_hat inputs
    attack: Any
    rounds: jax.Array  # int32, rounds done
    epochs: jax.Array  # float32, cumulative epochs
    key: jax.Array


class MarinaPPMetrics(NamedTuple):
    """Per-round metrics of Byz-VR-MARINA-PP (float32 scalars; see the module docstring).

    The fields of :class:`~jaxrobust.algorithms.base.RoundMetrics`, then
    ``bits_sent``, ``epochs`` (cumulative), ``full_round`` (``c_k``; its mean
    over a chunk is the fraction of full-gradient rounds) and ``attacked``
    (1 when shift-back fired, or any other attack had a sampled Byzantine
    client).

    Examples
    --------
    >>> MarinaPPMetrics._fields[4:]
    ('bits_sent', 'epochs', 'full_round', 'attacked')
    """

    train_loss: jax.Array
    aggregate_norm: jax.Array
    distance_to_honest_mean: jax.Array
    mean_honest_norm: jax.Array
    bits_sent: jax.Array
    epochs: jax.Array
    full_round: jax.Array  # c_k (chunk mean: the fraction of full rounds)
    attacked: jax.Array  # shift-back fired (or any attack with a sampled Byzantine client)


# --------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------


tree_norm = optax.tree_utils.tree_norm


def masked_mean(mask: jax.Array, stacked: PyTree) -> PyTree:
    """Mean of the rows where ``mask``; NaN where no row is selected.

    Parameters
    ----------
    mask : bool array ``(n,)``
        The rows to average.
    stacked : pytree
        Leaves ``(n, ...)``.

    Returns
    -------
    pytree
        Leaves ``(...)``: the mean of the selected rows, all NaN if none is.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[1.0], [2.0], [6.0]])
    >>> masked_mean(jnp.array([True, False, True]), x).tolist()
    [3.5]
    >>> masked_mean(jnp.zeros(3, bool), x).tolist()
    [nan]
    """
    count = jnp.sum(mask)
    weights = jnp.where(mask, 1.0 / jnp.maximum(count, 1), 0.0)
    out = kernels.weighted_sum(weights, stacked, skip_zero=False)
    return jax.tree_util.tree_map(lambda v: jnp.where(count > 0, v, jnp.nan), out)


def cyclic_honest_view(is_byzantine: jax.Array) -> jax.Array:
    """Row indices giving the good slots first, repeated cyclically to every slot.

    All-Byzantine: each slot's own index (their own honest computations).

    Parameters
    ----------
    is_byzantine : bool array ``(S,)``
        Which sampled slots are Byzantine.

    Returns
    -------
    int32 array ``(S,)``
        The good slots in order, repeated cyclically to length ``S``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> cyclic_honest_view(jnp.array([False, True, False, True, True])).tolist()
    [0, 2, 0, 2, 0]
    >>> cyclic_honest_view(jnp.array([True, True])).tolist()
    [0, 1]
    """
    size = is_byzantine.shape[0]
    order = jnp.argsort(is_byzantine, stable=True)
    good = size - jnp.sum(is_byzantine)
    pos = jnp.arange(size) % jnp.maximum(good, 1)
    return jnp.where(good > 0, order[pos], jnp.arange(size)).astype(jnp.int32)


def shift_back_vector(
    x_next: PyTree, x0: PyTree, g: PyTree, gamma: jax.Array, difference_round: bool
) -> PyTree:
    """What makes ``x_{k+2} = x_{k+1} - gamma g_{k+1}`` equal ``x_0`` if it is the aggregate.

    Full round: ``g_{k+1} = agg``, so ``agg = (x_{k+1} - x_0) / gamma``.
    Difference round: ``g_{k+1} = g_k + agg``, so ``agg = (x_{k+1} - x_0) / gamma - g_k``.

    Parameters
    ----------
    x_next, x0, g : pytree
        ``x_{k+1}``, ``x_0`` and ``g_k`` (same structure).
    gamma : float32 scalar
        The step size.
    difference_round : bool
        Whether the round is a difference round (``c_k = 0``).

    Returns
    -------
    pytree
        The vector, like ``x_next``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x1, x0, g = jnp.array([3.0]), jnp.array([1.0]), jnp.array([0.5])
    >>> shift_back_vector(x1, x0, g, jnp.float32(0.5), False).tolist()
    [4.0]
    >>> shift_back_vector(x1, x0, g, jnp.float32(0.5), True).tolist()
    [3.5]
    """
    target = attacks.shift_back_target(x_next, x0, gamma)
    return tree.sub(target, g) if difference_round else target


def default_p(config: Config, local_size: float, d: int, compressor) -> float:
    """``min(C/n, b/m, K/d)`` (see the module docstring for ``K/d`` of each compressor).

    Parameters
    ----------
    config : Config
        Gives ``n = num_workers``, ``C = received_count`` and
        ``b = batch_size``.
    local_size : float
        ``m``, a good client's number of examples.
    d : int
        Number of parameters.
    compressor : Compressor
        ``top_k`` keeps ``1 - omega(d)``; others ``1 / (1 + omega(d))``.

    Returns
    -------
    float
        ``p`` in ``(0, 1]``.

    Examples
    --------
    >>> from jaxrobust import compression
    >>> from jaxrobust.config import Config
    >>> config = Config(algorithm="marina_pp", clients_per_round=5, batch_size=10)
    >>> default_p(config, 100.0, 650, compression.make_compressor("identity"))
    0.1
    >>> default_p(config, 20.0, 650, compression.make_compressor("identity"))
    0.38461538461538464
    """
    n = config.num_workers
    c = config.received_count
    if compressor.name == "top_k":  # omega = 1 - K/d
        kept = 1.0 - compressor.omega(d)
    else:  # rand_k: 1 / (1 + omega) = K/d; identity: 1
        kept = 1.0 / (1.0 + compressor.omega(d))
    return float(min(c / n, config.batch_size / local_size, kept, 1.0))


def defence_for(config: Config, size: int) -> tuple[optax.GradientTransformation, int]:
    """The config's defence chain for ``size`` inputs, with the largest valid ``f``.

    ``f`` is the largest value ``<= min(config.defence_f, size)`` whose chain
    :func:`jaxrobust.rules.defence.make_defence` accepts for ``(size, f)``: the
    rules' bounds (``n > 2f``, ``n > 2f + 2``, Bucketing's reduction of
    ``n``, MDA's subset limit, ...) are checked where they are defined.

    Parameters
    ----------
    config : Config
        Gives the defence chain, its options and ``defence_f``.
    size : int
        Number of inputs of the chain.

    Returns
    -------
    (optax.GradientTransformation, int)
        The chain and its ``f``.

    Raises
    ------
    ValueError
        ``defence [...] cannot take <size> inputs: <the last rule's error>``
        when no ``f >= 0`` works.

    Examples
    --------
    >>> from jaxrobust.config import Config
    >>> config = Config(defence=("trimmed_mean",), num_byzantine=3)
    >>> defence_for(config, 5)[1]  # trimmed_mean needs n > 2f
    2
    """
    last = None
    for f in range(min(config.defence_f, size), -1, -1):
        try:
            return make_defence(config, size, f=f), f
        except ValueError as err:
            last = err
    raise ValueError(f"defence {list(config.defence)} cannot take {size} inputs: {last}")


def _binary_problem(dataset, l2: float) -> Problem:
    module = models.LogisticRegression(num_classes=1)
    return Problem(
        init=lambda key: models.init_params(module, key, dataset.input_shape),
        loss=models.cross_entropy_loss(module, l2),
        accuracy=models.accuracy(module),
    )


def _padded_chunks(x: np.ndarray, y: np.ndarray, chunk: int):
    """``(x, y, w)`` reshaped to ``(chunks, chunk, ...)``, padded with weight-0 rows."""
    m = len(y)
    chunk = min(chunk, m)
    total = -(-m // chunk) * chunk
    pad = total - m
    xp = np.concatenate([x, np.repeat(x[:1], pad, 0)]) if pad else x
    yp = np.concatenate([y, np.repeat(y[:1], pad, 0)]) if pad else y
    w = np.concatenate([np.full(m, 1.0 / m), np.zeros(pad)]).astype(np.float32)
    shape = (total // chunk, chunk)
    return (
        jnp.asarray(xp.reshape(shape + xp.shape[1:])),
        jnp.asarray(yp.reshape(shape + yp.shape[1:])),
        jnp.asarray(w.reshape(shape)),
    )


def f_star_of(options: dict, config: Config):
    """The ``f_star`` option resolved: ``"reference"``, a number, or ``None`` (no metric).

    ``"auto"`` (the default) is ``"reference"`` for a strongly convex problem
    (``logistic_regression`` with ``l2 > 0``), else ``None``; ``True`` is
    ``"reference"`` for any model.

    Parameters
    ----------
    options : dict
        The algorithm's options (``algorithm_options``); reads ``f_star``.
    config : Config
        Gives ``model`` and ``l2``.

    Returns
    -------
    str, float or None
        ``"reference"``, the number given, or ``None``.

    Raises
    ------
    ValueError
        Any other ``f_star``.

    Examples
    --------
    >>> f_star_of({}, Config(model="logistic_regression", l2=0.01))
    'reference'
    >>> f_star_of({}, Config(model="mlp")) is None
    True
    >>> f_star_of({"f_star": True}, Config(model="mlp")), f_star_of({"f_star": 0.25}, Config())
    ('reference', 0.25)
    >>> f_star_of({"f_star": "best"}, Config())
    Traceback (most recent call last):
    ...
    ValueError: f_star must be 'auto', True, False, None or a number, got 'best'
    """
    option = options.get("f_star", "auto")
    if isinstance(option, (int, float)) and not isinstance(option, bool):
        return float(option)
    if option is True or (
        option == "auto" and config.model == "logistic_regression" and config.l2 > 0
    ):
        return "reference"
    if option not in ("auto", None, False):
        raise ValueError(f"f_star must be 'auto', True, False, None or a number, got {option!r}")
    return None


def suboptimality_of(loss_fn, init, x_train: np.ndarray, y_train: np.ndarray, f_star):
    """``suboptimality(params) = f(params) - f*`` on the whole training set (NaN if ``f_star``
    is None).

    ``f_star="reference"`` computes ``(x*, f*)`` once, here, with
    :func:`jaxrobust.optimum.reference_optimum`; near the optimum (below
    :data:`QUADRATURE_BELOW`) the difference is computed as
    ``int_0^1 <grad f(x* + t (x - x*)), x - x*> dt`` by Gauss-Legendre
    quadrature, which does not cancel. A number is used as ``f*`` directly.

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn(params, (x, y))``, the mean loss of a batch.
    init : callable
        ``init(key) -> params``; the reference optimum starts from
        ``init(jax.random.key(0))``.
    x_train : np.ndarray
        The training inputs ``(m, ...)``.
    y_train : np.ndarray
        The training labels ``(m,)``.
    f_star : str, float or None
        As resolved by :func:`f_star_of`.

    Returns
    -------
    callable
        ``suboptimality(params) -> float32 scalar``, traceable (it runs in
        the jitted step).

    Warns
    -----
    UserWarning
        The reference optimum's solver did not converge.

    Examples
    --------
    Least squares of ``w * x`` against 2 on ``x = 1, 2, 3``: ``f(1) = 2/3``,
    and the optimum ``w* = 6/7`` has ``f* = 4/7``.

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> x, y = np.array([[1.0], [2.0], [3.0]], np.float32), np.zeros(3, np.int32)
    >>> def loss(params, batch):
    ...     return jnp.mean((params["w"] * batch[0][:, 0] - 2.0) ** 2)
    >>> def init(key):
    ...     return {"w": jnp.zeros(())}
    >>> suboptimality = suboptimality_of(loss, init, x, y, "reference")
    >>> round(float(suboptimality({"w": jnp.float32(1.0)})), 4)  # 2/3 - 4/7
    0.0952
    >>> round(float(suboptimality_of(loss, init, x, y, 0.5)({"w": jnp.float32(1.0)})), 4)
    0.1667
    >>> float(suboptimality_of(loss, init, x, y, None)({"w": jnp.float32(1.0)}))
    nan
    """
    if f_star is None:
        return lambda params: jnp.float32(jnp.nan)
    params_shape = jax.eval_shape(init, jax.random.key(0))
    params_star = None
    if f_star == "reference":
        from jaxrobust import optimum

        params_star, f_star, info = optimum.reference_optimum(
            loss_fn, init(jax.random.key(0)), x_train, y_train, return_info=True
        )
        if not info.converged:
            warnings.warn(
                f"reference optimum not reached ({info.method}, {info.iterations} iterations, "
                f"||grad f|| = {info.grad_norm:.2e}): suboptimality is relative to its last "
                "iterate",
                stacklevel=3,
            )
        params_star = jax.tree_util.tree_map(
            lambda a, s: jnp.asarray(a, s.dtype), params_star, params_shape
        )
    chunks = _padded_chunks(x_train, y_train, 4096)

    def one_loss(params, xe, ye):
        return loss_fn(params, (xe[None], ye[None]))

    def full_mean(per_example):
        """``sum_e w_e per_example(x_e, y_e)`` over the training set, in chunks."""

        def per_chunk(args):
            xc, yc, wc = args
            return jnp.sum(wc * jax.vmap(per_example)(xc, yc))

        return jnp.sum(jax.lax.map(per_chunk, chunks))

    def full_grad(params):
        def per_chunk(args):
            xc, yc, wc = args
            return jax.grad(
                lambda p: jnp.sum(wc * jax.vmap(one_loss, in_axes=(None, 0, 0))(p, xc, yc))
            )(params)

        grads = jax.lax.map(per_chunk, chunks)
        return jax.tree_util.tree_map(lambda g: jnp.sum(g, axis=0), grads)

    def segment_integral(params):
        """``f(x) - f(x*) = int_0^1 <grad f(x* + t delta), delta> dt``, Gauss-Legendre."""
        delta = tree.sub(params, params_star)
        total = 0.0
        for node, weight in zip(GL_NODES, GL_WEIGHTS, strict=True):
            point = jax.tree_util.tree_map(lambda s, dl, t=node: s + t * dl, params_star, delta)
            grad = full_grad(point)
            inner = sum(
                jnp.vdot(a, b)
                for a, b in zip(
                    jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(delta), strict=True
                )
            )
            total = total + weight * inner
        return total

    def suboptimality(params):
        if params_star is None:
            return full_mean(lambda xe, ye: one_loss(params, xe, ye)) - f_star
        direct = full_mean(lambda xe, ye: one_loss(params, xe, ye) - one_loss(params_star, xe, ye))
        return jnp.where(direct < QUADRATURE_BELOW, segment_integral(params), direct)

    return suboptimality


# --------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------


class _Settings(NamedTuple):
    """The validated options of one MARINA-PP run: static Python values and objects."""

    h: int  # honest clients
    nb: int  # Byzantine clients
    n: int
    C: int  # clients sampled in a difference round
    C_hat: int  # clients sampled in a full round
    alpha: float | None  # clipping multiplier (None: no clipping)
    plus: bool
    shared: bool
    sampler: Callable
    b: int
    p: float
    init_mode: str
    problem: Problem
    compressor: Any
    full_bits: float
    attack: Any
    shift_back: bool
    threshold: float
    flipped_needed: bool


def _settings(setup: Setup) -> _Settings:
    """Check ``setup``'s options (see :func:`build`, Raises) and resolve their defaults."""
    config, dataset, problem = setup.config, setup.dataset, setup.problem
    options = dict(config.algorithm_options)
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown algorithm_options {unknown} for 'marina_pp'; valid: {', '.join(OPTIONS)}"
        )
    if config.weight_decay != 0:
        raise ValueError("marina_pp has no weight decay: put the regulariser in config.l2")
    if config.lr_schedule != "constant":
        raise ValueError("marina_pp runs with a constant step size gamma = config.lr")
    init_mode = options.get("init", "gradient")
    if init_mode not in INITS:
        raise ValueError(f"unknown init {init_mode!r}; choose one of: {', '.join(INITS)}")
    h, nb = config.num_honest, config.num_byzantine
    n = h + nb
    C = config.received_count
    C_hat = int(options.get("clients_full", n))
    if not 1 <= C_hat <= n:
        raise ValueError(f"clients_full needs 1 <= clients_full <= n={n}, got {C_hat}")
    if not 1 <= C <= n:
        raise ValueError(f"clients_per_round needs 1 <= C <= n={n}, got {C}")
    alpha = options.get("clip_alpha", 1.0)
    shared = bool(options.get("shared_data", False))
    if options.get("binary", False):
        if config.model != "logistic_regression" or dataset.num_classes != 2:
            raise ValueError("binary needs model logistic_regression on two-class data")
        problem = _binary_problem(dataset, config.l2)

    params_shape = jax.eval_shape(problem.init, jax.random.key(0))
    leaves = jax.tree_util.tree_leaves(params_shape)
    d = sum(int(np.prod(leaf.shape)) for leaf in leaves)
    compressor = compression.make_compressor(config.compressor, **config.compressor_options)
    m = len(dataset.y_train)
    p = options.get("p")
    p = default_p(config, m if shared else m / h, d, compressor) if p is None else float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p needs 0 <= p <= 1, got {p}")

    shift_back = config.attack == SHIFT_BACK
    threshold = 0.0
    if shift_back:
        sb_options = attacks.options_for(config.attack, config.attack_options)
        threshold = float(sb_options.pop("threshold", 0.5))
        if sb_options:
            raise ValueError(f"unknown shift_back options {sorted(sb_options)}; valid: threshold")
        attack = attacks.make_attack("none")
    else:
        attack = attacks.attack_of(config)
    return _Settings(
        h=h,
        nb=nb,
        n=n,
        C=C,
        C_hat=C_hat,
        alpha=None if alpha is None else float(alpha),
        plus=bool(options.get("plus", False)),
        shared=shared,
        sampler=options.get("sampler", kernels.sample_without_replacement),
        b=config.batch_size,
        p=p,
        init_mode=init_mode,
        problem=problem,
        compressor=compressor,
        full_bits=float(sum(int(np.prod(x.shape)) * 32 for x in leaves)),
        attack=attack,
        shift_back=shift_back,
        threshold=threshold,
        flipped_needed=nb > 0 and not shift_back and attack.needs_flipped_labels,
    )


class _Clients:
    """The honest clients' side: full local gradients, minibatches, gradient differences.

    Slot ``j`` of a round holds client ``workers[j]``; a Byzantine slot
    (``workers[j] >= h``) borrows a good client's data for the gradient the
    attack may see. With ``shared`` data every client holds the whole set.
    """

    def __init__(self, s: _Settings, dataset):
        self.s = s
        self.x = jnp.asarray(np.asarray(dataset.x_train))
        self.y = jnp.asarray(np.asarray(dataset.y_train))
        self.m = len(dataset.y_train)
        self.num_classes = dataset.num_classes

    def _labels(self, y, flip: bool):
        return flip_labels(y, self.num_classes) if flip else y

    def _weighted_grad(self, params, xs, ys, ws):
        """Value and gradient of ``sum_e w_e loss_e`` (the exact mean of a padded row)."""
        loss = self.s.problem.loss

        def total(p):
            one = jax.vmap(lambda xe, ye: loss(p, (xe[None], ye[None])))
            return jnp.sum(ws * one(xs, ys))

        return jax.value_and_grad(total)(params)

    def _data_row(self, workers):
        """Good client whose data slot ``j`` uses (Byzantine ones borrow one)."""
        h = self.s.h
        return jnp.where(workers < h, workers, (workers - h) % h)

    def full_gradients(self, params, workers, indices, sizes, flip):
        """Each slot's full local gradient at ``params``: ``(losses, grads)``, ``S`` rows."""
        size = workers.shape[0]
        if self.s.shared:
            y = self._labels(self.y, flip)
            value, grad = jax.value_and_grad(self.s.problem.loss)(params, (self.x, y))
            return jnp.broadcast_to(value, (size,)), tree.broadcast(grad, size)
        rows = self._data_row(workers)
        idx = indices[rows]  # (S, width)
        width = idx.shape[1]
        ws = (jnp.arange(width)[None] < sizes[rows][:, None]) / sizes[rows][:, None]
        return jax.vmap(self._weighted_grad, in_axes=(None, 0, 0, 0))(
            params, self.x[idx], self._labels(self.y[idx], flip), ws.astype(jnp.float32)
        )

    def batches(self, key, workers, indices, sizes):
        """Each slot's minibatch of ``b`` example indices."""
        if self.s.shared:
            return jax.random.randint(key, (workers.shape[0], self.s.b), 0, self.m)
        rows = self._data_row(workers)
        return sample_batches(key, indices[rows], sizes[rows], self.s.b)

    def differences(self, x_new, x_old, idx, flip):
        """``grad f(x_new; B_j) - grad f(x_old; B_j)``, the same batch ``B_j`` at both points."""
        loss = self.s.problem.loss

        def one(xb, yb):
            value, g_new = jax.value_and_grad(loss)(x_new, (xb, yb))
            g_old = jax.grad(loss)(x_old, (xb, yb))
            return value, tree.sub(g_new, g_old)

        return jax.vmap(one)(self.x[idx], self._labels(self.y[idx], flip))

    def honest_sizes(self, workers, sizes):
        """Examples held by each slot's client (``m`` with shared data)."""
        if self.s.shared:
            return jnp.full(workers.shape, float(self.m))
        return sizes[self._data_row(workers)].astype(jnp.float32)

    def total_examples(self, sizes):
        """Examples held by all honest clients together."""
        if self.s.shared:
            return jnp.float32(self.s.h * self.m)
        return jnp.sum(sizes).astype(jnp.float32)


def _attacked_round(s: _Settings, would_send, flipped, is_byz, key, attack_state, aggregate, shift):
    """Byzantine slots replaced, then the defence.

    Returns ``(aggregate, defence_state, received, attack_state, fired)``;
    ``aggregate(received) -> (aggregate, defence_state)`` is the round's defence.
    """
    size = is_byz.shape[0]
    if s.nb == 0 or s.shift_back:
        fired = jnp.zeros((), bool)
        received = would_send
        if s.nb > 0:  # shift-back: every sampled Byzantine client sends the same vector
            fired = jnp.sum(is_byz) > s.threshold * size
            received = tree.select_rows(is_byz & fired, tree.broadcast(shift, size), would_send)
        return (*aggregate(received), received, attack_state, fired)
    view = cyclic_honest_view(is_byz)
    flipped_view = None if flipped is None else tree.rows(flipped, view)
    count = max(1, min(size, round(size * s.nb / s.n)))
    # The k-th sampled Byzantine slot takes attack vector k mod count.
    rank = (jnp.cumsum(is_byz) - 1) % count

    def assemble(byz_rows):
        return tree.select_rows(is_byz, tree.rows(byz_rows, rank), would_send)

    aggregated, defence_state, attack_state, received = robust_round(
        tree.rows(would_send, view),
        attack=s.attack,
        attack_state=attack_state,
        num_byzantine=count,
        key=key,
        aggregate=aggregate,
        assemble=assemble,
        flipped=flipped_view,
    )
    return aggregated, defence_state, received, attack_state, jnp.any(is_byz)


def _round_metrics(aggregate, received, good, losses):
    """``(train_loss, distance_to_honest_mean, mean_honest_norm, aggregate_norm)``."""
    honest_mean = masked_mean(good, received)
    norms = kernels.worker_norms(received)
    count = jnp.sum(good)
    mean_norm = jnp.sum(jnp.where(good, norms, 0.0)) / jnp.maximum(count, 1)
    # 0 (not NaN) in a round without a good client: the simulator averages rounds.
    distance = jnp.where(count > 0, tree_norm(tree.sub(aggregate, honest_mean)), 0.0)
    return (
        jnp.mean(losses).astype(jnp.float32),
        distance.astype(jnp.float32),
        jnp.where(count > 0, mean_norm, 0.0).astype(jnp.float32),
        tree_norm(aggregate).astype(jnp.float32),
    )


class _RoundKeys(NamedTuple):
    sample: jax.Array
    batch: jax.Array
    compress: jax.Array
    attack: jax.Array
    defence: jax.Array


def _full_round(s: _Settings, clients: _Clients, defence_hat, state, x_new, keys: _RoundKeys):
    """A full round: ``C_hat`` sampled clients send their full local gradients at ``x_new``."""
    workers = s.sampler(keys.sample, s.n, s.C_hat).astype(jnp.int32)
    is_byz = workers >= s.h
    losses, would_send = clients.full_gradients(x_new, workers, state.indices, state.sizes, False)
    flipped = None
    if s.flipped_needed:
        _, flipped = clients.full_gradients(x_new, workers, state.indices, state.sizes, True)

    def aggregate_of(received):
        return defence_hat.update(received, state.defence_full, x_new, key=keys.defence)

    gamma = state.hyper.lr
    shift = shift_back_vector(x_new, state.x0, state.g, gamma, False) if s.shift_back else None
    aggregate, defence_full, received, attack_state, fired = _attacked_round(
        s, would_send, flipped, is_byz, keys.attack, state.attack, aggregate_of, shift
    )
    good = ~is_byz
    epochs = jnp.sum(jnp.where(good, clients.honest_sizes(workers, state.sizes), 0.0))
    bits = jnp.sum(good).astype(jnp.float32) * s.full_bits
    return (
        aggregate,
        defence_full,
        state.defence_sampled,
        attack_state,
        _round_metrics(aggregate, received, good, losses),
        epochs / clients.total_examples(state.sizes),
        bits,
        fired,
    )


def _difference_round(s: _Settings, clients: _Clients, defence_c, state, x_new, keys: _RoundKeys):
    """A difference round: ``C`` sampled clients send compressed, clipped gradient differences."""
    x_old = state.params
    workers = s.sampler(keys.sample, s.n, s.C).astype(jnp.int32)
    is_byz = workers >= s.h
    idx = clients.batches(keys.batch, workers, state.indices, state.sizes)
    losses, deltas = clients.differences(x_new, x_old, idx, False)
    would_send, bits = compression.compress_workers(s.compressor, keys.compress, deltas)
    flipped = None
    if s.flipped_needed:
        _, flipped_deltas = clients.differences(x_new, x_old, idx, True)
        flipped, _ = compression.compress_workers(s.compressor, keys.compress, flipped_deltas)
    if s.alpha is None:

        def clip(v):
            return v

    else:
        lam = s.alpha * tree_norm(tree.sub(x_new, x_old))

        def clip(v):
            return functional.clip_to(v, lam)

    def aggregate_of(received):
        clipped = clip(received)
        if s.plus:
            mean = aggregators.mean(n=s.C)
            return mean.update(clipped, optax.EmptyState())[0], state.defence_sampled
        return defence_c.update(clipped, state.defence_sampled, x_new, key=keys.defence)

    gamma = state.hyper.lr
    shift = shift_back_vector(x_new, state.x0, state.g, gamma, True) if s.shift_back else None
    aggregate, defence_sampled, received, attack_state, fired = _attacked_round(
        s, would_send, flipped, is_byz, keys.attack, state.attack, aggregate_of, shift
    )
    good = ~is_byz
    epochs = jnp.sum(good).astype(jnp.float32) * 2.0 * s.b
    return (
        tree.add(state.g, aggregate),
        state.defence_full,
        defence_sampled,
        attack_state,
        _round_metrics(aggregate, clip(received), good, losses),
        epochs / clients.total_examples(state.sizes),
        jnp.sum(jnp.where(good, bits, 0.0)),
        fired,
    )


@registry("algorithm").register("marina_pp")
def build(setup: Setup) -> Algorithm:
    """Byz-VR-MARINA-PP (and PP+): clipped gradient differences under partial participation.

    The round, the options and the metrics are described in the module
    docstring.

    Parameters
    ----------
    setup : Setup
        The configuration, data set and problem. ``config.algorithm_options``
        takes ``p``, ``clients_full``, ``clip_alpha``, ``plus``,
        ``shared_data``, ``binary``, ``f_star``, ``init`` and ``sampler``.

    Returns
    -------
    Algorithm
        ``init(key, indices, sizes, hyper) -> MarinaPPState``,
        ``step(state) -> (state, MarinaPPMetrics)`` and an ``evaluate`` that
        adds ``suboptimality``.

    Raises
    ------
    ValueError
        An unknown ``algorithm_options`` key; ``weight_decay != 0``;
        ``lr_schedule != "constant"``; an unknown ``init``; ``clients_full``
        outside ``[1, n]``; ``clients_per_round`` outside ``[1, n]``;
        ``binary`` without ``logistic_regression`` on two-class data; ``p``
        outside ``[0, 1]``; unknown ``shift_back`` options (only
        ``threshold``); ``f_star`` not ``"auto"``, a bool, None or a number;
        or a defence that cannot take ``C`` or ``C_hat`` inputs for any
        ``f >= 0`` (:func:`defence_for`).

    References
    ----------
    Malinovsky, Richtarik, Horvath, Gorbunov, "Byzantine robustness and
    partial participation can be achieved at once: just clip gradient
    differences", NeurIPS 2024.

    Examples
    --------
    >>> from jaxrobust.config import Config
    >>> from jaxrobust.run.simulator import build
    >>> from jaxrobust.data import load_dataset
    >>> config = Config(algorithm="marina_pp", algorithm_options={"p": 2.0}, max_train=200)
    >>> build(config, load_dataset("digits", max_train=200))
    Traceback (most recent call last):
    ...
    ValueError: p needs 0 <= p <= 1, got 2.0
    """
    config = setup.config
    s = _settings(setup)
    clients = _Clients(s, setup.dataset)
    defence_c, _ = defence_for(config, s.C)
    defence_hat, _ = defence_for(config, s.C_hat)
    suboptimality = suboptimality_of(
        s.problem.loss,
        s.problem.init,
        np.asarray(setup.dataset.x_train),
        np.asarray(setup.dataset.y_train),
        f_star_of(dict(config.algorithm_options), config),
    )
    evaluate_splits = evaluator(s.problem, setup.dataset)

    def evaluate(params):
        out = evaluate_splits(params)
        out["suboptimality"] = suboptimality(params)
        return out

    def init(key, indices, sizes, hyper: Hyper) -> MarinaPPState:
        key, init_key = jax.random.split(key)
        params = s.problem.init(init_key)
        if s.init_mode == "gradient":
            workers = jnp.arange(s.h)
            _, grads = clients.full_gradients(
                params, workers[:1] if s.shared else workers, indices, sizes, False
            )
            g0 = jax.tree_util.tree_map(lambda v: jnp.mean(v, axis=0), grads)
            epochs0 = jnp.float32(1.0)
        else:
            g0 = jax.tree_util.tree_map(jnp.zeros_like, params)
            epochs0 = jnp.float32(0.0)
        return MarinaPPState(
            hyper,
            indices,
            sizes,
            params,
            g0,
            params,
            defence_c.init(params),
            defence_hat.init(params),
            s.attack.init(params),
            jnp.zeros((), jnp.int32),
            epochs0,
            key,
        )

    def step(state: MarinaPPState):
        key, coin_key, sample_key, batch_key, comp_key, att_key, def_key = jax.random.split(
            state.key, 7
        )
        keys = _RoundKeys(sample_key, batch_key, comp_key, att_key, def_key)
        gamma = state.hyper.lr
        x_new = tree.sub(state.params, jax.tree_util.tree_map(lambda g: gamma * g, state.g))
        full = jax.random.bernoulli(coin_key, s.p)
        (
            g_new,
            defence_full,
            defence_sampled,
            attack_state,
            (train_loss, distance, mean_honest_norm, aggregate_norm),
            epochs_inc,
            bits,
            fired,
        ) = _cond(
            full,
            lambda _: _full_round(s, clients, defence_hat, state, x_new, keys),
            lambda _: _difference_round(s, clients, defence_c, state, x_new, keys),
        )
        epochs = state.epochs + epochs_inc
        metrics = MarinaPPMetrics(
            train_loss=train_loss,
            aggregate_norm=aggregate_norm,
            distance_to_honest_mean=distance,
            mean_honest_norm=mean_honest_norm,
            bits_sent=bits,
            epochs=epochs,
            full_round=full.astype(jnp.float32),
            attacked=fired.astype(jnp.float32),
        )
        new_state = MarinaPPState(
            state.hyper,
            state.indices,
            state.sizes,
            x_new,
            g_new,
            state.x0,
            defence_sampled,
            defence_full,
            attack_state,
            state.rounds + 1,
            epochs,
            key,
        )
        return new_state, metrics

    return Algorithm(init, step, evaluate)


def _cond(pred: jax.Array, true_fn: Callable, false_fn: Callable):
    """``lax.cond`` whose branches may return Python/NumPy scalars of differing weak types."""

    def wrap(fn):
        def inner(operand):
            out = fn(operand)
            return jax.tree_util.tree_map(jnp.asarray, out)

        return inner

    return jax.lax.cond(pred, wrap(true_fn), wrap(false_fn), None)


build.metrics = MarinaPPMetrics
build.check = lambda config: defence_for(config, config.received_count)
build.options = {  # config.algorithm_options, with their defaults (see the module docstring)
    "p": None,
    "clients_full": None,
    "clip_alpha": 1.0,
    "plus": False,
    "shared_data": False,
    "binary": False,
    "f_star": "auto",
    "init": "gradient",
    "sampler": None,
}
assert set(build.options) == set(OPTIONS)
# the options' valid values (checked with the config, see jaxrobust.core.Entry.ranges)
build.option_types = {
    "p": Annotated[float, Ge(0), Le(1)] | None,
    "clients_full": Annotated[int, Ge(1)] | None,
    "clip_alpha": Annotated[float, Gt(0)] | None,
    "plus": bool,
    "shared_data": bool,
    "binary": bool,
    "f_star": Literal["auto", True, False] | float | None,
    "init": Literal["gradient", "zeros"],
}
