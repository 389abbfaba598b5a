"""Attacks: what the Byzantine workers send (ALGORITHMS.md section 4).

An attack sees every honest vector of the step (an omniscient adversary) and
returns the ``b`` Byzantine vectors, stacked like the honest ones. All
Byzantine workers send the same vector unless the attack says otherwise.
``mu`` and ``sigma`` are the coordinate-wise mean and standard deviation of
the honest vectors (``sigma`` with the unbiased ``h - 1`` denominator, as
``torch.std`` in ByzFL).

Every attack is an :class:`Attack` with a pure ``apply`` that runs inside the
jitted step; the aggregator-aware ones receive the defence actually in use
and search their factor there, as a vmapped grid followed by a finer grid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from statistics import NormalDist
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust import kernels
from jaxrobust.core import registry
from jaxrobust.kernels import PyTree

Array = jax.Array
Defence = Callable[[PyTree], PyTree]


class AttackInput(NamedTuple):
    """What an attack may look at in one step.

    Attributes
    ----------
    honest:
        Honest vectors, every leaf with a leading axis of size ``h``.
    num_byzantine:
        How many Byzantine vectors to return (a Python int).
    key:
        A PRNG key for randomised attacks.
    flipped:
        Honest gradients computed on flipped labels (label flipping only).
    defence:
        Maps all ``h + b`` vectors (honest first) to the aggregate: the
        pre-aggregation and aggregation actually in use (aggregator-aware
        attacks only).
    shift_back:
        The aggregate that would move the model back to its starting point
        ``x_0`` (shift-back only).
    byzantine_majority:
        Whether the Byzantine workers are a strict majority of this round's
        sampled clients (shift-back only).
    """

    honest: PyTree
    num_byzantine: int
    key: Array
    flipped: PyTree | None = None
    defence: Defence | None = None
    shift_back: PyTree | None = None
    byzantine_majority: Array | None = None


@dataclasses.dataclass(frozen=True)
class Attack:
    """A named attack: ``apply(inputs, state) -> (byzantine_vectors, state)``."""

    name: str
    apply: Callable[[AttackInput, Any], tuple[PyTree, Any]]
    init: Callable[[PyTree], Any] = lambda params: ()
    needs_flipped_labels: bool = False
    needs_defence: bool = False
    needs_shift_back: bool = False


# --------------------------------------------------------------------------
# Statistics of the honest vectors
# --------------------------------------------------------------------------


def honest_mean(honest: PyTree) -> PyTree:
    h = kernels.num_workers(honest, "attack")
    return kernels.weighted_sum(jnp.full((h,), 1.0 / h), honest, skip_zero=False)


def honest_std(honest: PyTree, mu: PyTree | None = None) -> PyTree:
    """Coordinate-wise standard deviation with the ``h - 1`` denominator (0 for one worker)."""
    h = kernels.num_workers(honest, "attack")
    mu = honest_mean(honest) if mu is None else mu

    def one(leaf, m):
        acc = kernels.accumulation_dtype(leaf.dtype)
        total = sum((leaf[i].astype(acc) - m.astype(acc)) ** 2 for i in range(h))
        return jnp.sqrt(total / max(h - 1, 1)).astype(leaf.dtype)

    return jax.tree_util.tree_map(one, honest, mu)


def repeat(vector: PyTree, b: int) -> PyTree:
    """``b`` copies of one vector, stacked."""
    return jax.tree_util.tree_map(lambda v: jnp.broadcast_to(v, (b, *v.shape)), vector)


def _axpy(a, x: PyTree, y: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda u, v: (a * u + v).astype(v.dtype), x, y)


def _stateless(fn: Callable[[AttackInput], PyTree]):
    def apply(inputs: AttackInput, state):
        return fn(inputs), state

    return apply


# --------------------------------------------------------------------------
# Attacks
# --------------------------------------------------------------------------


def sign_flip() -> Attack:
    """SF: every Byzantine worker sends ``-mu``."""
    return Attack(
        "sign_flip",
        _stateless(
            lambda a: repeat(
                jax.tree_util.tree_map(jnp.negative, honest_mean(a.honest)), a.num_byzantine
            )
        ),
    )


def ipm(epsilon: float = 0.1) -> Attack:
    """IPM, inner product manipulation (Xie et al., 2020): ``-epsilon * mu``."""
    return Attack(
        "ipm",
        _stateless(
            lambda a: repeat(
                jax.tree_util.tree_map(
                    lambda m: (-epsilon * m).astype(m.dtype), honest_mean(a.honest)
                ),
                a.num_byzantine,
            )
        ),
    )


def foe(tau: float = 1.1) -> Attack:
    """FOE, fall of empires: ``(1 - tau) * mu`` (IPM with ``epsilon = tau - 1``)."""
    return dataclasses.replace(ipm(tau - 1.0), name="foe")


def alie_z(n: int, f: int) -> float:
    """Default ALIE factor (Baruch et al., 2019).

    ``s = floor(n/2 + 1) - f`` and ``z = Phi^-1((n - s) / n)``.
    """
    s = int(np.floor(n / 2 + 1)) - f
    return NormalDist().inv_cdf((n - s) / n)


def alie(z: float | None = None) -> Attack:
    """ALIE, a little is enough: ``mu - z * sigma``; default ``z`` from ``n`` and ``f``."""

    def fn(a: AttackInput):
        h = kernels.num_workers(a.honest, "alie")
        factor = alie_z(h + a.num_byzantine, a.num_byzantine) if z is None else z
        mu = honest_mean(a.honest)
        return repeat(_axpy(-factor, honest_std(a.honest, mu), mu), a.num_byzantine)

    return Attack("alie", _stateless(fn))


def gaussian(sigma: float = 200.0) -> Attack:
    """Every Byzantine worker sends its own draw of ``N(0, sigma^2 I)``."""

    def fn(a: AttackInput):
        leaves, treedef = jax.tree_util.tree_flatten(a.honest)
        keys = jax.random.split(a.key, len(leaves))
        out = [
            (sigma * jax.random.normal(k, (a.num_byzantine, *leaf.shape[1:]))).astype(leaf.dtype)
            for k, leaf in zip(keys, leaves, strict=True)
        ]
        return jax.tree_util.tree_unflatten(treedef, out)

    return Attack("gaussian", _stateless(fn))


def _constant(name: str, value: float) -> Attack:
    def fn(a: AttackInput):
        return jax.tree_util.tree_map(
            lambda leaf: jnp.full((a.num_byzantine, *leaf.shape[1:]), value, leaf.dtype), a.honest
        )

    return Attack(name, _stateless(fn))


def inf() -> Attack:
    """Vectors of ``+inf``."""
    return _constant("inf", float("inf"))


def nan() -> Attack:
    """Vectors of NaN."""
    return _constant("nan", float("nan"))


def label_flip() -> Attack:
    """LF: the mean of the honest workers' gradients on their own batches with labels ``C - 1 - y``.

    **Convention** (ByzFL's): the simulator computes the flipped-label
    gradients and passes them as ``flipped``.
    """

    def fn(a: AttackInput):
        if a.flipped is None:
            raise ValueError("label_flip needs the honest gradients on flipped labels")
        return repeat(honest_mean(a.flipped), a.num_byzantine)

    return Attack("label_flip", _stateless(fn), needs_flipped_labels=True)


def _inner(x: PyTree, y: PyTree) -> Array:
    return sum(
        jnp.vdot(u.astype(jnp.float32), v.astype(jnp.float32))
        for u, v in zip(jax.tree_util.tree_leaves(x), jax.tree_util.tree_leaves(y), strict=True)
    )


DIRECTIONS = ("std", "unit", "sign")


def _check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; choose one of: {', '.join(DIRECTIONS)}")
    return direction


def _min_max_direction(honest: PyTree, mu: PyTree, direction: str) -> PyTree:
    if direction == "std":
        return jax.tree_util.tree_map(jnp.negative, honest_std(honest, mu))
    if direction == "unit":
        norm = jnp.sqrt(_inner(mu, mu))
        return jax.tree_util.tree_map(lambda m: -m / jnp.where(norm > 0, norm, 1.0), mu)
    if direction == "sign":
        return jax.tree_util.tree_map(lambda m: -jnp.sign(m), mu)
    raise AssertionError(direction)


def _largest_gamma(a: Array, b: Array, c: Array, bound: Array) -> Array:
    """Largest ``g >= 0`` with ``a g^2 + 2 b g + c <= bound`` (``a > 0``, ``c <= bound``)."""
    disc = jnp.maximum(b * b - a * (c - bound), 0.0)
    return jnp.maximum((-b + jnp.sqrt(disc)) / jnp.where(a > 0, a, 1.0), 0.0)


def _min_max_sum(kind: str, direction: str) -> Attack:
    """MinMax / MinSum (Shejwalkar and Houmansadr, 2021): ``mu + gamma p``, largest ``gamma``.

    Every distance is a quadratic in ``gamma`` computed from inner products,
    so the largest ``gamma`` is solved exactly in closed form (the paper
    searches it by halving).
    """

    def fn(inp: AttackInput):
        honest = inp.honest
        mu = honest_mean(honest)
        p = _min_max_direction(honest, mu, direction)
        gram = kernels.gram_matrix(honest)
        dist = kernels.distances_from_gram(gram)
        # ||mu + g p - x_i||^2 = ||p||^2 g^2 + 2 <mu - x_i, p> g + ||mu - x_i||^2
        diff = jax.tree_util.tree_map(lambda x, m: m[None] - x, honest, mu)
        lin = jax.vmap(_inner, in_axes=(0, None))(diff, p)
        const = jax.vmap(_inner)(diff, diff)
        quad = _inner(p, p)
        if kind == "min_max":
            gammas = _largest_gamma(quad, lin, const, jnp.max(dist))
            gamma = jnp.min(gammas)
        else:
            h = lin.shape[0]
            bound = jnp.max(jnp.sum(dist, axis=1))
            gamma = _largest_gamma(h * quad, jnp.sum(lin), jnp.sum(const), bound)
        return repeat(_axpy(gamma, p, mu), inp.num_byzantine)

    return Attack(kind, _stateless(fn))


def min_max(direction: str = "std") -> Attack:
    """MinMax: the largest ``gamma`` keeping the max distance to honest vectors within theirs."""
    return _min_max_sum("min_max", _check_direction(direction))


def min_sum(direction: str = "std") -> Attack:
    """MinSum: the largest ``gamma`` keeping summed squared distances within the honest maximum."""
    return _min_max_sum("min_sum", _check_direction(direction))


class MimicState(NamedTuple):
    """Online estimate of the honest vectors' top-variance direction (Karimireddy et al., 2022)."""

    step: Array
    mean: PyTree
    direction: PyTree
    target: Array


def mimic(warmup: int = 100) -> Attack:
    """Mimic: every Byzantine worker copies one honest worker's vector.

    During ``warmup`` steps the direction ``z`` of largest variance of the
    honest vectors is estimated online (a running mean and one power-method
    step per round on the centred vectors), and the copied worker is the one
    of largest ``|<x_i - mean, z>|``; after the warm-up that worker is kept.
    """

    def init(params):
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        ones = jax.tree_util.tree_map(jnp.ones_like, params)
        return MimicState(jnp.zeros((), jnp.int32), zeros, ones, jnp.zeros((), jnp.int32))

    def apply(inp: AttackInput, state: MimicState):
        honest = inp.honest
        warming = state.step < warmup
        t = state.step.astype(jnp.float32) + 1.0
        mu = honest_mean(honest)
        mean = jax.tree_util.tree_map(lambda m, u: m + (u - m) / t, state.mean, mu)
        centred = jax.tree_util.tree_map(lambda x, m: x - m[None], honest, mean)
        proj = jax.vmap(_inner, in_axes=(0, None))(centred, state.direction)
        new_dir = kernels.weighted_sum(proj, centred, skip_zero=False)
        new_dir = jax.tree_util.tree_map(lambda z, d: z + d / t, state.direction, new_dir)
        norm = jnp.sqrt(_inner(new_dir, new_dir))
        new_dir = jax.tree_util.tree_map(lambda d: d / jnp.where(norm > 0, norm, 1.0), new_dir)
        candidate = jnp.argmax(jnp.abs(proj)).astype(jnp.int32)
        target = jnp.where(warming, candidate, state.target)
        copied = jax.tree_util.tree_map(lambda x: x[target], honest)
        new_state = MimicState(
            state.step + 1,
            jax.tree_util.tree_map(lambda a, b: jnp.where(warming, a, b), mean, state.mean),
            jax.tree_util.tree_map(lambda a, b: jnp.where(warming, a, b), new_dir, state.direction),
            target,
        )
        return repeat(copied, inp.num_byzantine), new_state

    return Attack("mimic", apply, init=init)


def _aggregator_aware(name: str, vector: Callable[[PyTree, PyTree, Array], PyTree], grid: Array):
    """Pick the factor ``tau`` maximising ``||F(pre(honest + b copies of attack(tau))) - mu||``.

    ``F o pre`` is the defence in use. A grid of factors is evaluated at once
    with ``vmap``, then a finer grid around the best one.
    """

    def damage(inp: AttackInput, mu: PyTree, sigma_or_mu: PyTree, tau: Array) -> Array:
        byz = repeat(vector(mu, sigma_or_mu, tau), inp.num_byzantine)
        allv = jax.tree_util.tree_map(lambda h, b: jnp.concatenate([h, b]), inp.honest, byz)
        out = inp.defence(allv)
        diff = jax.tree_util.tree_map(lambda o, m: o.astype(jnp.float32) - m, out, mu)
        value = jnp.sqrt(_inner(diff, diff))
        return jnp.where(jnp.isfinite(value), value, -jnp.inf)

    def fn(inp: AttackInput):
        if inp.defence is None:
            raise ValueError(f"{name} needs the defence in use")
        if jax.default_backend() == "cpu":
            # XLA:CPU runs the defence's small batched dots several times slower
            # than one after another (measured: 2.4x for the whole attack over 8
            # runs of the ARC MNIST setting); accelerators keep the batch.
            inp = inp._replace(defence=jax.custom_batching.sequential_vmap(inp.defence))
        mu = honest_mean(inp.honest)
        aux = honest_std(inp.honest, mu) if name == "alie_aware" else mu
        coarse = jax.vmap(lambda t: damage(inp, mu, aux, t))(grid)
        best = jnp.argmax(coarse)
        lo = grid[jnp.maximum(best - 1, 0)]
        hi = grid[jnp.minimum(best + 1, grid.shape[0] - 1)]
        fine_grid = jnp.linspace(lo, hi, grid.shape[0])
        fine = jax.vmap(lambda t: damage(inp, mu, aux, t))(fine_grid)
        tau = fine_grid[jnp.argmax(fine)]
        return repeat(vector(mu, aux, tau), inp.num_byzantine)

    return Attack(name, _stateless(fn), needs_defence=True)


def alie_aware(max_z: float = 10.0, points: int = 16) -> Attack:
    """Aggregator-aware ALIE: ``mu - z sigma``, ``z`` in ``[0, max_z]`` maximising the damage."""
    return _aggregator_aware(
        "alie_aware", lambda mu, sigma, z: _axpy(-z, sigma, mu), jnp.linspace(0.0, max_z, points)
    )


def ipm_aware(max_epsilon: float = 10.0, points: int = 16) -> Attack:
    """Aggregator-aware IPM / FOE: ``-epsilon mu`` with ``epsilon`` in ``[0, max_epsilon]``."""
    return _aggregator_aware(
        "ipm_aware",
        lambda mu, _, eps: jax.tree_util.tree_map(lambda m: (-eps * m).astype(m.dtype), mu),
        jnp.linspace(0.0, max_epsilon, points),
    )


def no_attack() -> Attack:
    """Byzantine workers behave honestly: they send copies of honest vectors (cyclically)."""

    def fn(a: AttackInput):
        h = kernels.num_workers(a.honest, "none")
        rows = jnp.arange(a.num_byzantine) % h
        return jax.tree_util.tree_map(lambda x: x[rows], a.honest)

    return Attack("none", _stateless(fn))


def shift_back_target(params: PyTree, start: PyTree, lr, weight_decay=0.0) -> PyTree:
    """The aggregate that sends the next SGD step from ``params`` back to ``start``.

    ``(x - x_0) / lr - weight_decay * x``: with the server step
    ``x <- x - lr (g + weight_decay * x)``, the aggregate ``g`` equal to it
    lands on ``x_0`` (shift-back, Malinovsky et al., 2024). With ``lr = 0``
    no aggregate moves the model: the first term is then zero.
    """
    positive = lr > 0
    safe = jnp.where(positive, lr, 1.0)
    return jax.tree_util.tree_map(
        lambda x, x0: jnp.where(positive, (x - x0) / safe, 0.0) - weight_decay * x, params, start
    )


def shift_back() -> Attack:
    """Shift-back (Malinovsky et al., 2024): undo training when in the majority.

    When the Byzantine workers are a strict majority of the sampled clients,
    each sends ``shift_back``, the aggregate that moves the model back to
    ``x_0``; otherwise they behave honestly (copies of honest vectors).
    """
    honest_like = no_attack()

    def fn(a: AttackInput):
        if a.shift_back is None or a.byzantine_majority is None:
            raise ValueError("shift_back needs the shift-back vector and the sampled majority")
        copies = honest_like.apply(a, ())[0]
        target = repeat(a.shift_back, a.num_byzantine)
        return jax.tree_util.tree_map(
            lambda t, c: jnp.where(a.byzantine_majority, t.astype(c.dtype), c), target, copies
        )

    return Attack("shift_back", _stateless(fn), needs_shift_back=True)


ATTACKS = registry("attack")
for _name, _factory in (
    ("none", no_attack),
    ("sign_flip", sign_flip),
    ("ipm", ipm),
    ("foe", foe),
    ("alie", alie),
    ("mimic", mimic),
    ("label_flip", label_flip),
    ("gaussian", gaussian),
    ("inf", inf),
    ("nan", nan),
    ("min_max", min_max),
    ("min_sum", min_sum),
    ("alie_aware", alie_aware),
    ("ipm_aware", ipm_aware),
    ("shift_back", shift_back),
):
    ATTACKS.register(_name, _factory)


def make_attack(name: str, **kwargs) -> Attack:
    """Build an attack by name; unknown names list the valid choices."""
    return ATTACKS.build(name, **kwargs)


def options_for(name: str, options: dict) -> dict:
    """The keyword arguments of attack ``name`` in a config's ``attack_options``.

    ``attack_options`` is either the arguments of the one attack
    (``{points: 8}``) or, for sweeps over several attacks, a mapping from
    attack names to their arguments (``{alie_aware: {points: 8}, ipm_aware:
    {points: 8}}``); attacks not named there get their defaults.
    """
    per_attack = [k for k, v in options.items() if k in ATTACKS and isinstance(v, dict)]
    if not per_attack:
        return dict(options)
    if len(per_attack) != len(options):
        raise ValueError(
            "attack_options mixes per-attack entries "
            f"({', '.join(per_attack)}) with plain arguments "
            f"({', '.join(k for k in options if k not in per_attack)}); use one form"
        )
    return dict(options.get(name, {}))


def attack_of(config) -> Attack:
    """The attack of a :class:`~jaxrobust.config.Config` (``attack`` and ``attack_options``)."""
    return make_attack(config.attack, **options_for(config.attack, config.attack_options))
