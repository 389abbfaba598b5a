"""Attacks: what the Byzantine workers send.

An attack sees every honest vector of the step (an omniscient adversary) and
returns the ``b`` Byzantine vectors, stacked like the honest ones: the
honest vectors are a pytree whose every leaf has shape ``(h, ...)``, the
Byzantine ones have leaves of shape ``(b, ...)`` in the same dtypes. All
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
from typing import Annotated, Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from annotated_types import Ge, Gt

from jaxrobust import kernels
from jaxrobust.core import registry
from jaxrobust.kernels import PyTree

Array = jax.Array
Defence = Callable[[PyTree], PyTree]


# --------------------------------------------------------------------------
# Bounds of the defaults derived from (n, f)
# --------------------------------------------------------------------------


def check_alie(n: int, f: int) -> None:
    """Check the bound of ALIE's default factor :func:`alie_z`: ``1 <= s < n``.

    ``s = floor(n/2 + 1) - f`` is the number of honest workers the ``f``
    attackers need on their side to form a majority (Baruch et al., 2019);
    ``z = Phi^-1((n - s) / n)`` exists only for ``0 < s < n``. ``s <= 0``
    (``f > floor(n/2)``: the attackers are a majority on their own) has no
    factor in the paper, so it is refused rather than replaced: pass ``z``
    to :func:`alie` explicitly for such a setting. ``s >= n`` happens only
    with ``f = 0`` and ``n <= 2``.

    Parameters
    ----------
    n, f : int
        Number of workers (honest and Byzantine) and of Byzantine workers.

    Raises
    ------
    ValueError
        ``"alie needs 1 <= s = floor(n/2 + 1) - f < n for its default z
        (..), got n=.., f=.., s=.."``.

    References
    ----------
    G. Baruch, M. Baruch, Y. Goldberg, "A little is enough: circumventing
    defenses for distributed learning", NeurIPS 2019.

    Examples
    --------
    >>> check_alie(5, 2)
    >>> check_alie(5, 3)
    Traceback (most recent call last):
    ...
    ValueError: alie needs 1 <= s = floor(n/2 + 1) - f < n for its default z ..., got n=5, f=3, s=0
    """
    s = int(np.floor(n / 2 + 1)) - f
    if not 1 <= s < n:
        raise ValueError(
            "alie needs 1 <= s = floor(n/2 + 1) - f < n for its default z (f <= floor(n/2); "
            f"otherwise pass z explicitly), got n={n}, f={f}, s={s}"
        )


def _alie_bounds(n: int, f: int, options: dict) -> None:
    if options.get("z") is None:
        check_alie(n, f)


# Per attack, a check of its defaults against (n, f) (n all workers, f the Byzantine ones).
ATTACK_BOUNDS: dict[str, Callable[[int, int, dict], None]] = {"alie": _alie_bounds}


def check_bounds(name: str, options: dict, n: int, f: int) -> None:
    """Refuse an attack whose defaults derived from ``(n, f)`` do not exist.

    Parameters
    ----------
    name : str
        The attack.
    options : dict
        Its keyword arguments.
    n, f : int
        Number of workers (honest and Byzantine) and of Byzantine workers;
        nothing is checked when ``f = 0`` (the attack sends no vector).

    Raises
    ------
    ValueError
        Naming the attack and its bound (see :func:`check_alie`).

    Examples
    --------
    >>> check_bounds("alie", {"z": 1.0}, 5, 3)
    >>> check_bounds("alie", {}, 5, 3)
    Traceback (most recent call last):
    ...
    ValueError: alie needs 1 <= s = floor(n/2 + 1) - f < n for its default z ...
    """
    check = ATTACK_BOUNDS.get(name)
    if check is not None and f > 0:
        check(n, f, options)


def check_config_bounds(config) -> None:
    """:func:`check_bounds` of a configuration's attack: n all workers, f the Byzantine ones.

    Called by :meth:`jaxrobust.config.Config.validate`, so that a setting
    the attack's defaults cannot take is refused before anything runs.

    Raises
    ------
    ValueError
        As :func:`check_bounds` and :func:`options_for`.
    """
    options = options_for(config.attack, dict(config.attack_options))
    check_bounds(config.attack, options, config.num_workers, config.num_byzantine)


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
    """Coordinate-wise mean ``mu`` of the honest vectors.

    Parameters
    ----------
    honest : pytree
        Every leaf of shape ``(h, ...)``.

    Returns
    -------
    pytree
        Leaves of shape ``(...)``, in the input dtype.

    Raises
    ------
    ValueError
        For malformed ``honest`` (no leaf, a scalar leaf, unequal worker axes).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> honest_mean(jnp.array([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])).tolist()
    [2.0, 3.0]
    """
    h = kernels.num_workers(honest, "attack")
    return kernels.weighted_sum(jnp.full((h,), 1.0 / h), honest, skip_zero=False)


def honest_std(honest: PyTree, mu: PyTree | None = None) -> PyTree:
    """Coordinate-wise standard deviation with the ``h - 1`` denominator (0 for one worker).

    Parameters
    ----------
    honest : pytree
        Every leaf of shape ``(h, ...)``.
    mu : pytree or None
        Their mean (:func:`honest_mean`), computed when ``None``.

    Returns
    -------
    pytree
        ``sigma``: leaves of shape ``(...)``, in the input dtype.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> sigma = honest_std(jnp.array([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]]))
    >>> np.round(np.asarray(sigma), 4)  # sqrt(1), sqrt(3)
    array([1.    , 1.7321], dtype=float32)
    """
    h = kernels.num_workers(honest, "attack")
    mu = honest_mean(honest) if mu is None else mu

    def one(leaf, m):
        acc = kernels.accumulation_dtype(leaf.dtype)
        total = sum((leaf[i].astype(acc) - m.astype(acc)) ** 2 for i in range(h))
        return jnp.sqrt(total / max(h - 1, 1)).astype(leaf.dtype)

    return jax.tree_util.tree_map(one, honest, mu)


def repeat(vector: PyTree, b: int) -> PyTree:
    """``b`` copies of one vector, stacked.

    Parameters
    ----------
    vector : pytree
        Leaves of shape ``(...)``.
    b : int
        Number of copies.

    Returns
    -------
    pytree
        Leaves of shape ``(b, ...)`` (broadcast views), same dtypes.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> repeat(jnp.array([1.0, 2.0]), 2).tolist()
    [[1.0, 2.0], [1.0, 2.0]]
    """
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
    """SF: every Byzantine worker sends ``-mu``.

    Sign flipping, as used in Allouah et al., "Fixing by mixing: a recipe
    for optimal Byzantine ML under heterogeneity", AISTATS 2023.

    Returns
    -------
    Attack
        ``apply(inputs, state)`` returns ``b = inputs.num_byzantine`` copies of
        one vector, every leaf of shape ``(b, ...)`` in the honest dtype.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import numpy as np
    >>> h = jnp.array([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])
    >>> inp = AttackInput(honest=h, num_byzantine=2, key=jax.random.key(0))
    >>> sign_flip().apply(inp, ())[0].tolist()
    [[-2.0, -3.0], [-2.0, -3.0]]
    """
    return Attack(
        "sign_flip",
        _stateless(
            lambda a: repeat(
                jax.tree_util.tree_map(jnp.negative, honest_mean(a.honest)), a.num_byzantine
            )
        ),
    )


def ipm(epsilon: Annotated[float, Gt(0)] = 0.1) -> Attack:
    """IPM, inner product manipulation (Xie et al., 2020): ``-epsilon * mu``.

    Parameters
    ----------
    epsilon : float
        The factor; small values keep the Byzantine vector close to the
        honest mean while making its inner product with ``mu`` negative.

    Returns
    -------
    Attack
        ``apply(inputs, state)`` returns ``b = inputs.num_byzantine`` copies of
        one vector, every leaf of shape ``(b, ...)`` in the honest dtype.

    References
    ----------
    C. Xie, O. Koyejo, I. Gupta, "Fall of empires: breaking
    Byzantine-tolerant SGD by inner product manipulation", UAI 2019
    (PMLR 115, 2020).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import numpy as np
    >>> h = jnp.array([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])
    >>> inp = AttackInput(honest=h, num_byzantine=2, key=jax.random.key(0))
    >>> np.round(np.asarray(ipm(0.1).apply(inp, ())[0]), 4)
    array([[-0.2, -0.3],
           [-0.2, -0.3]], dtype=float32)
    """
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


def foe(tau: Annotated[float, Ge(0)] = 1.1) -> Attack:
    """FOE, fall of empires: ``(1 - tau) * mu`` (IPM with ``epsilon = tau - 1``).

    Parameters
    ----------
    tau : float
        The factor; ``tau = 1.1`` sends ``-0.1 mu``.

    Returns
    -------
    Attack
        ``apply(inputs, state)`` returns ``b = inputs.num_byzantine`` copies of
        one vector, every leaf of shape ``(b, ...)`` in the honest dtype.

    References
    ----------
    C. Xie, O. Koyejo, I. Gupta, "Fall of empires: breaking
    Byzantine-tolerant SGD by inner product manipulation", UAI 2019
    (PMLR 115, 2020).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import numpy as np
    >>> h = jnp.array([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])
    >>> inp = AttackInput(honest=h, num_byzantine=2, key=jax.random.key(0))
    >>> np.round(np.asarray(foe(1.1).apply(inp, ())[0]), 4)
    array([[-0.2, -0.3],
           [-0.2, -0.3]], dtype=float32)
    """
    return dataclasses.replace(ipm(tau - 1.0), name="foe")


def alie_z(n: int, f: int) -> float:
    """Default ALIE factor (Baruch et al., 2019).

    ``s = floor(n/2 + 1) - f`` and ``z = Phi^-1((n - s) / n)``, with
    ``Phi`` the standard normal CDF.

    Parameters
    ----------
    n, f : int
        Number of workers (honest and Byzantine) and of Byzantine workers,
        with ``1 <= s < n`` (:func:`check_alie`).

    Returns
    -------
    float
        ``z``.

    Raises
    ------
    ValueError
        When ``s <= 0`` (``f > floor(n/2)``) or ``s >= n``; see
        :func:`check_alie`.

    References
    ----------
    G. Baruch, M. Baruch, Y. Goldberg, "A little is enough: circumventing
    defenses for distributed learning", NeurIPS 2019.

    Examples
    --------
    ``n = 5``, ``f = 2``: ``s = 1`` and ``z = Phi^-1(0.8)``:

    >>> round(alie_z(5, 2), 4)
    0.8416
    """
    check_alie(n, f)
    s = int(np.floor(n / 2 + 1)) - f
    return NormalDist().inv_cdf((n - s) / n)


def alie(z: Annotated[float, Ge(0)] | None = None) -> Attack:
    """ALIE, a little is enough: ``mu - z * sigma``; default ``z`` from ``n`` and ``f``.

    ``sigma`` is :func:`honest_std`; the default ``z`` is :func:`alie_z` of
    ``n = h + b`` and ``f = b``.

    Parameters
    ----------
    z : float or None
        The factor; ``None`` for :func:`alie_z`, which needs
        ``f <= floor(n/2)`` (:func:`check_alie`; a ``ValueError`` at trace
        time otherwise, and :meth:`jaxrobust.config.Config.validate` refuses
        such a setting before anything runs). An explicit ``z`` takes any
        ``(n, f)``.

    Returns
    -------
    Attack
        ``apply(inputs, state)`` returns ``b = inputs.num_byzantine`` copies of
        one vector, every leaf of shape ``(b, ...)`` in the honest dtype.

    References
    ----------
    G. Baruch, M. Baruch, Y. Goldberg, "A little is enough: circumventing
    defenses for distributed learning", NeurIPS 2019.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import numpy as np
    >>> h = jnp.array([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])
    >>> inp = AttackInput(honest=h, num_byzantine=2, key=jax.random.key(0))
    >>> np.round(np.asarray(alie(z=1.0).apply(inp, ())[0]), 4)
    array([[1.    , 1.2679],
           [1.    , 1.2679]], dtype=float32)
    >>> np.round(np.asarray(alie().apply(inp, ())[0][0]), 4)  # z = alie_z(5, 2)
    array([1.1584, 1.5423], dtype=float32)
    """

    def fn(a: AttackInput):
        h = kernels.num_workers(a.honest, "alie")
        if z is not None:
            factor = z
        elif a.num_byzantine == 0:  # no vector to send; no factor needed
            factor = 0.0
        else:
            factor = alie_z(h + a.num_byzantine, a.num_byzantine)
        mu = honest_mean(a.honest)
        return repeat(_axpy(-factor, honest_std(a.honest, mu), mu), a.num_byzantine)

    return Attack("alie", _stateless(fn))


def gaussian(sigma: Annotated[float, Ge(0)] = 200.0) -> Attack:
    """Every Byzantine worker sends its own draw of ``N(0, sigma^2 I)``.

    The draws come from ``inputs.key``, one key per leaf.

    Parameters
    ----------
    sigma : float
        Standard deviation of every coordinate.

    Returns
    -------
    Attack
        ``apply`` returns ``b`` independent draws, leaves of shape ``(b, ...)``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import numpy as np
    >>> h = jnp.array([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])
    >>> inp = AttackInput(honest=h, num_byzantine=2, key=jax.random.key(0))
    >>> out, _ = gaussian(1.0).apply(inp, ())
    >>> out.shape, bool(jnp.all(out[0] != out[1]))
    ((2, 2), True)
    """

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
    """Vectors of ``+inf``.

    Returns
    -------
    Attack
        ``apply(inputs, state)`` returns ``b = inputs.num_byzantine`` copies of
        one vector, every leaf of shape ``(b, ...)`` in the honest dtype.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import numpy as np
    >>> h = jnp.array([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])
    >>> inp = AttackInput(honest=h, num_byzantine=2, key=jax.random.key(0))
    >>> inf().apply(inp, ())[0].tolist()
    [[inf, inf], [inf, inf]]
    """
    return _constant("inf", float("inf"))


def nan() -> Attack:
    """Vectors of NaN.

    Returns
    -------
    Attack
        ``apply(inputs, state)`` returns ``b = inputs.num_byzantine`` copies of
        one vector, every leaf of shape ``(b, ...)`` in the honest dtype.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import numpy as np
    >>> h = jnp.array([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])
    >>> inp = AttackInput(honest=h, num_byzantine=2, key=jax.random.key(0))
    >>> bool(jnp.isnan(nan().apply(inp, ())[0]).all())
    True
    """
    return _constant("nan", float("nan"))


def label_flip() -> Attack:
    """LF: the mean of the honest workers' gradients on their own batches with labels ``C - 1 - y``.

    **Convention** (ByzFL's): the simulator computes the flipped-label
    gradients and passes them as ``flipped`` (leaves of shape ``(h, ...)``).
    ``C`` is the number of classes.

    Returns
    -------
    Attack
        With ``needs_flipped_labels=True``; ``apply`` returns ``b`` copies of
        the mean of ``inputs.flipped``.

    Raises
    ------
    ValueError
        In ``apply``: ``"label_flip needs the honest gradients on flipped labels"``
        when ``inputs.flipped`` is ``None``.

    References
    ----------
    Y. Allouah, S. Farhadkhani, R. Guerraoui, N. Gupta, R. Pinot, J. Stephan,
    "Fixing by mixing: a recipe for optimal Byzantine ML under
    heterogeneity", AISTATS 2023 (among the attacks evaluated there).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import numpy as np
    >>> h = jnp.array([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])
    >>> inp = AttackInput(honest=h, num_byzantine=2, key=jax.random.key(0))
    >>> label_flip().apply(inp._replace(flipped=-h), ())[0].tolist()
    [[-2.0, -3.0], [-2.0, -3.0]]
    """

    def fn(a: AttackInput):
        if a.flipped is None:
            raise ValueError("label_flip needs the honest gradients on flipped labels")
        return repeat(honest_mean(a.flipped), a.num_byzantine)

    return Attack("label_flip", _stateless(fn), needs_flipped_labels=True)


def _inner(x: PyTree, y: PyTree) -> Array:
    return sum(
        jnp.vdot(u.astype(jnp.float32), v.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
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
        # exact to rounding under a common offset (honest updates share one)
        dist = kernels.pairwise_squared_distances(honest)
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


def min_max(direction: Literal["std", "unit", "sign"] = "std") -> Attack:
    """MinMax: the largest ``gamma`` keeping the max distance to honest vectors within theirs.

    Sends ``mu + gamma p`` with the largest ``gamma >= 0`` such that
    ``max_i ||mu + gamma p - x_i|| <= max_{i, j} ||x_i - x_j||``, solved
    exactly (the paper searches ``gamma`` by halving).

    Parameters
    ----------
    direction : str
        The perturbation ``p``: ``"std"`` (``-sigma``), ``"unit"``
        (``-mu / ||mu||``) or ``"sign"`` (``-sign(mu)``).

    Returns
    -------
    Attack
        ``apply(inputs, state)`` returns ``b = inputs.num_byzantine`` copies of
        one vector, every leaf of shape ``(b, ...)`` in the honest dtype.

    Raises
    ------
    ValueError
        ``"unknown direction '..'; choose one of: std, unit, sign"``.

    References
    ----------
    V. Shejwalkar, A. Houmansadr, "Manipulating the Byzantine: optimizing
    model poisoning attacks and defenses for federated learning", NDSS 2021.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import numpy as np
    >>> h = jnp.array([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])
    >>> inp = AttackInput(honest=h, num_byzantine=2, key=jax.random.key(0))
    >>> np.round(np.asarray(min_max().apply(inp, ())[0][0]), 4)
    array([1.366 , 1.9019], dtype=float32)
    """
    return _min_max_sum("min_max", _check_direction(direction))


def min_sum(direction: Literal["std", "unit", "sign"] = "std") -> Attack:
    """MinSum: the largest ``gamma`` keeping summed squared distances within the honest maximum.

    Sends ``mu + gamma p`` with the largest ``gamma >= 0`` such that
    ``sum_i ||mu + gamma p - x_i||^2 <= max_j sum_i ||x_j - x_i||^2``,
    solved exactly.

    Parameters
    ----------
    direction : str
        The perturbation ``p``: ``"std"`` (``-sigma``), ``"unit"``
        (``-mu / ||mu||``) or ``"sign"`` (``-sign(mu)``).

    Returns
    -------
    Attack
        ``apply(inputs, state)`` returns ``b = inputs.num_byzantine`` copies of
        one vector, every leaf of shape ``(b, ...)`` in the honest dtype.

    Raises
    ------
    ValueError
        ``"unknown direction '..'; choose one of: std, unit, sign"``.

    References
    ----------
    V. Shejwalkar, A. Houmansadr, "Manipulating the Byzantine: optimizing
    model poisoning attacks and defenses for federated learning", NDSS 2021.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import numpy as np
    >>> h = jnp.array([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])
    >>> inp = AttackInput(honest=h, num_byzantine=2, key=jax.random.key(0))
    >>> np.round(np.asarray(min_sum().apply(inp, ())[0][0]), 4)
    array([1.    , 1.2679], dtype=float32)
    """
    return _min_max_sum("min_sum", _check_direction(direction))


class MimicState(NamedTuple):
    """Online estimate of the honest vectors' top-variance direction (Karimireddy et al., 2022)."""

    step: Array
    mean: PyTree
    direction: PyTree
    target: Array


def mimic(warmup: Annotated[int, Ge(0)] = 100) -> Attack:
    """Mimic: every Byzantine worker copies one honest worker's vector.

    During ``warmup`` steps the direction ``z`` of largest variance of the
    honest vectors is estimated online (a running mean and one power-method
    step per round on the centred vectors), and the copied worker is the one
    of largest ``|<x_i - mean, z>|``; after the warm-up that worker is kept.
    The direction starts at the all-ones vector.

    Parameters
    ----------
    warmup : int
        Number of steps during which the direction and the copied worker
        are updated.

    Returns
    -------
    Attack
        State :class:`MimicState` (``init(params)``); ``apply`` returns
        ``b`` copies of one honest vector.

    References
    ----------
    S. P. Karimireddy, L. He, M. Jaggi, "Byzantine-robust learning on
    heterogeneous datasets via bucketing", ICLR 2022.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import numpy as np
    >>> h = jnp.array([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])
    >>> inp = AttackInput(honest=h, num_byzantine=2, key=jax.random.key(0))
    >>> atk = mimic()
    >>> out, state = atk.apply(inp, atk.init(h[0]))
    >>> out.tolist(), int(state.target)
    ([[1.0, 2.0], [1.0, 2.0]], 0)
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


def _one_after_another(defence: Defence, inp: AttackInput) -> Defence:
    """``defence`` evaluated one input after another when vmapped (``sequential_vmap``).

    Everything the defence closes over (the round's state, the sampled
    clients, ...) becomes an explicit argument first: a ``sequential_vmap``
    closing over values that an outer ``vmap`` (the runs of a sweep) batches
    fails to trace (it did inside MARINA-PP's ``lax.cond``).
    """
    example = jax.tree_util.tree_map(
        lambda h: jnp.concatenate([h, jnp.repeat(h[:1], inp.num_byzantine, axis=0)]), inp.honest
    )
    closed, shapes = jax.make_jaxpr(defence, return_shape=True)(example)
    out_tree = jax.tree_util.tree_structure(shapes)

    def explicit(vectors, consts):
        flat = jax.tree_util.tree_leaves(vectors)
        out = jax.core.eval_jaxpr(closed.jaxpr, consts, *flat)
        return jax.tree_util.tree_unflatten(out_tree, out)

    sequential = jax.custom_batching.sequential_vmap(explicit)
    return lambda vectors: sequential(vectors, list(closed.consts))


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
            inp = inp._replace(defence=_one_after_another(inp.defence, inp))
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


def alie_aware(max_z: Annotated[float, Gt(0)] = 10.0, points: Annotated[int, Ge(1)] = 16) -> Attack:
    """Aggregator-aware ALIE: ``mu - z sigma``, ``z`` in ``[0, max_z]`` maximising the damage.

    The damage of ``z`` is ``||F(pre(honest + b copies)) - mu||`` for the
    defence ``F o pre`` in ``inputs.defence``; ``points`` values of ``z``
    are tried on a grid, then ``points`` on a finer grid around the best.

    Parameters
    ----------
    max_z : float
        Upper end of the grid.
    points : int
        Grid size (each of the two passes).

    Returns
    -------
    Attack
        With ``needs_defence=True``; ``apply`` returns ``b`` copies.

    Raises
    ------
    ValueError
        In ``apply``: ``"alie_aware needs the defence in use"`` when
        ``inputs.defence`` is ``None``.

    References
    ----------
    Y. Allouah, S. Farhadkhani, R. Guerraoui, N. Gupta, R. Pinot, J. Stephan,
    "Fixing by mixing: a recipe for optimal Byzantine ML under
    heterogeneity", AISTATS 2023 (the optimised ALIE and FOE attacks);
    G. Baruch, M. Baruch, Y. Goldberg, NeurIPS 2019 (ALIE).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import numpy as np
    >>> h = jnp.array([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])
    >>> inp = AttackInput(honest=h, num_byzantine=2, key=jax.random.key(0))
    >>> from jaxrobust.functional import trimmed_mean
    >>> inp = inp._replace(defence=lambda v: trimmed_mean(v, 1))
    >>> np.round(np.asarray(alie_aware(points=8).apply(inp, ())[0][0]), 4)
    array([ -8.    , -14.3205], dtype=float32)
    """
    return _aggregator_aware(
        "alie_aware", lambda mu, sigma, z: _axpy(-z, sigma, mu), jnp.linspace(0.0, max_z, points)
    )


def ipm_aware(
    max_epsilon: Annotated[float, Gt(0)] = 10.0, points: Annotated[int, Ge(1)] = 16
) -> Attack:
    """Aggregator-aware IPM / FOE: ``-epsilon mu`` with ``epsilon`` in ``[0, max_epsilon]``.

    ``epsilon`` maximises the damage as in :func:`alie_aware`.

    Parameters
    ----------
    max_epsilon : float
        Upper end of the grid.
    points : int
        Grid size (each of the two passes).

    Returns
    -------
    Attack
        With ``needs_defence=True``; ``apply`` returns ``b`` copies.

    Raises
    ------
    ValueError
        In ``apply``: ``"ipm_aware needs the defence in use"`` when
        ``inputs.defence`` is ``None``.

    References
    ----------
    Y. Allouah, S. Farhadkhani, R. Guerraoui, N. Gupta, R. Pinot, J. Stephan,
    "Fixing by mixing: a recipe for optimal Byzantine ML under
    heterogeneity", AISTATS 2023 (the optimised ALIE and FOE attacks);
    C. Xie, O. Koyejo, I. Gupta, UAI 2019 (IPM).

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import numpy as np
    >>> h = jnp.array([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])
    >>> inp = AttackInput(honest=h, num_byzantine=2, key=jax.random.key(0))
    >>> from jaxrobust.functional import trimmed_mean
    >>> inp = inp._replace(defence=lambda v: trimmed_mean(v, 1))
    >>> np.round(np.asarray(ipm_aware(points=8).apply(inp, ())[0][0]), 4)
    array([-20., -30.], dtype=float32)
    """
    return _aggregator_aware(
        "ipm_aware",
        lambda mu, _, eps: jax.tree_util.tree_map(lambda m: (-eps * m).astype(m.dtype), mu),
        jnp.linspace(0.0, max_epsilon, points),
    )


def no_attack() -> Attack:
    """Byzantine workers behave honestly: they send copies of honest vectors (cyclically).

    Byzantine worker ``j`` sends honest vector ``j mod h``.

    Returns
    -------
    Attack
        ``apply`` returns leaves of shape ``(b, ...)``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import numpy as np
    >>> h = jnp.array([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])
    >>> inp = AttackInput(honest=h, num_byzantine=2, key=jax.random.key(0))
    >>> no_attack().apply(inp, ())[0].tolist()
    [[1.0, 2.0], [3.0, 2.0]]
    """

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
    ``x_0``; otherwise they behave honestly (copies of honest vectors, as
    :func:`no_attack`).

    Returns
    -------
    Attack
        With ``needs_shift_back=True``; ``apply`` returns leaves of shape
        ``(b, ...)``.

    Raises
    ------
    ValueError
        In ``apply``: ``"shift_back needs the shift-back vector and the sampled majority"``
        when ``inputs.shift_back`` or ``inputs.byzantine_majority`` is ``None``.

    References
    ----------
    G. Malinovsky, P. Richtarik, S. Horvath, E. Gorbunov, "Byzantine
    robustness and partial participation can be achieved at once: just clip
    gradient differences", NeurIPS 2024.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import numpy as np
    >>> h = jnp.array([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])
    >>> inp = AttackInput(honest=h, num_byzantine=2, key=jax.random.key(0))
    >>> inp = inp._replace(shift_back=jnp.array([9.0, 9.0]), byzantine_majority=jnp.array(True))
    >>> shift_back().apply(inp, ())[0].tolist()
    [[9.0, 9.0], [9.0, 9.0]]
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
    """Build an attack by name; unknown names list the valid choices.

    Parameters
    ----------
    name : str
        A registered attack name (``"none"``, ``"sign_flip"``, ``"ipm"``,
        ``"foe"``, ``"alie"``, ``"mimic"``, ``"label_flip"``, ``"gaussian"``,
        ``"inf"``, ``"nan"``, ``"min_max"``, ``"min_sum"``, ``"alie_aware"``,
        ``"ipm_aware"``, ``"shift_back"``, or one a user registered).
    **kwargs
        The factory's arguments.

    Returns
    -------
    Attack

    Raises
    ------
    ValueError
        For an unknown name or an unknown option (the message lists the
        valid ones).

    Examples
    --------
    >>> make_attack("ipm", epsilon=0.5).name
    'ipm'
    """
    return ATTACKS.build(name, **kwargs)


def options_for(name: str, options: dict) -> dict:
    """The keyword arguments of attack ``name`` in a config's ``attack_options``.

    ``attack_options`` is either the arguments of the one attack
    (``{points: 8}``) or, for sweeps over several attacks, a mapping from
    attack names to their arguments (``{alie_aware: {points: 8}, ipm_aware:
    {points: 8}}``); attacks not named there get their defaults.

    Parameters
    ----------
    name : str
        The attack.
    options : dict
        A config's ``attack_options``.

    Returns
    -------
    dict
        A new dict of keyword arguments.

    Raises
    ------
    ValueError
        ``"attack_options mixes per-attack entries (..) with plain arguments (..); use one form"``.

    Examples
    --------
    >>> options_for("alie", {"alie": {"z": 1.0}, "ipm": {"epsilon": 0.5}})
    {'z': 1.0}
    >>> options_for("sign_flip", {"alie": {"z": 1.0}})
    {}
    >>> options_for("alie", {"z": 1.0})
    {'z': 1.0}
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
    """The attack of a :class:`~jaxrobust.config.Config` (``attack`` and ``attack_options``).

    Parameters
    ----------
    config : Config
        Any object with ``attack`` (a name) and ``attack_options`` (a dict).

    Returns
    -------
    Attack

    Raises
    ------
    ValueError
        As :func:`make_attack` and :func:`options_for`.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> attack_of(SimpleNamespace(attack="alie", attack_options={"z": 1.5})).name
    'alie'
    """
    return make_attack(config.attack, **options_for(config.attack, config.attack_options))
