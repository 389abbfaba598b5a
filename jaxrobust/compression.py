"""Compressors of one worker's vector, with bit counts.

A compressor ``C`` maps one worker's vector ``x`` in ``R^d`` to a vector the
worker can send cheaply. The vector is a pytree *without* a worker axis, and
``x`` is the concatenation of its leaves (in ``jax.tree_util.tree_leaves``
order), so ``top_k`` and ``rand_k`` select ``K`` coordinates over the whole
pytree, not per leaf. Every compressor returns a pytree of the input's
structure, shapes and dtypes, together with the number of bits the worker
sends as a float32 scalar array (so it can be summed inside ``jit``).
:func:`compress_workers` applies a compressor to every row of a
worker-stacked pytree with independent keys.

Variance constant
-----------------
``omega(d)`` is the constant with ``E||C(x) - x||^2 <= omega(d) ||x||^2`` for
every ``x`` in ``R^d``. For an unbiased compressor (``E[C(x)] = x``) this is
the usual variance bound. For the biased ``top_k`` it is the deterministic
contraction ``||C(x) - x||^2 <= (1 - alpha) ||x||^2`` with ``alpha = K/d``,
that is ``omega = 1 - alpha``. :func:`contractive` turns an unbiased
compressor into a contraction in expectation, ``C / (1 + omega)`` with
``alpha = 1 / (1 + omega)`` (for EF21-type methods).

Bit counts
----------
Fixed-length codes, counted per call for one worker. ``b`` is the bit width
of a value: that of the vector's floating dtype (all leaves promoted
together), 32 for float32; ``ceil(log2 d)`` bits name one of ``d``
coordinates.

============================  ==============================================
``identity``                  ``sum over leaves of size * bits(dtype)`` (``32 d``)
``rand_k``, ``top_k``         ``K (b + ceil(log2 d))``: a value and an index
``random_dithering(s)``       ``b + d (1 + ceil(log2(s + 1)))``: the norm, then
                              a sign and a level in ``{0, ..., s}`` per coordinate
``natural_compression``       ``sum over leaves of size * (1 + exponent bits)``:
                              a sign and an exponent (``9 d`` for float32)
============================  ==============================================

``rand_k`` counts its indices although a server sharing the worker's seed
could regenerate them (``32 K`` bits would then do). Random dithering uses
the fixed-length code, not the Elias code of the QSGD paper, which is
data-dependent and shorter for small ``s`` (``O(sqrt(d) log d)`` expected
bits for ``s = 1``, at most ``2.8 d + 32`` for ``s = sqrt(d)``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Annotated, Any

import jax
import jax.numpy as jnp
import numpy as np
from annotated_types import Ge, Gt, Le
from jax import lax

from jaxrobust import kernels
from jaxrobust.core import registry
from jaxrobust.kernels import PyTree
from jaxrobust.rules.base import as_key

Array = jax.Array

__all__ = [
    "COMPRESSORS",
    "Compressor",
    "compress_workers",
    "contractive",
    "identity",
    "make_compressor",
    "natural_compression",
    "rand_k",
    "random_dithering",
    "top_k",
]


@dataclasses.dataclass(frozen=True)
class Compressor:
    """A named compressor of one worker's vector.

    Attributes
    ----------
    name:
        Registry name (a key of :data:`COMPRESSORS`).
    compress:
        ``compress(key, vector) -> (compressed, bits)``. ``vector`` is one
        worker's pytree (no worker axis); ``compressed`` has its structure,
        shapes and dtypes; ``bits`` is a float32 scalar array, the number of
        bits the worker sends (see the module docstring). Deterministic
        compressors ignore ``key``. Pure and traceable: jit- and vmap-safe.
    unbiased:
        Whether ``E[C(x)] = x`` for every ``x``.
    omega:
        ``omega(d)``: the constant with ``E||C(x) - x||^2 <= omega ||x||^2``
        on ``R^d`` (for ``top_k``, ``1 - K/d``).
    params:
        The construction arguments, for logging.
    """

    name: str
    compress: Callable[[Array, PyTree], tuple[PyTree, Array]]
    unbiased: bool
    omega: Callable[[int], float]
    params: tuple[tuple[str, Any], ...] = ()


# --------------------------------------------------------------------------
# Helpers: the flattened view of one vector
# --------------------------------------------------------------------------


def _flatten(name: str, vector: PyTree) -> tuple[list[Array], Any, int]:
    """Leaves, tree structure and dimension ``d`` of one worker's vector."""
    leaves, treedef = jax.tree_util.tree_flatten(vector)
    if not leaves:
        raise ValueError(f"{name} got an empty pytree")
    leaves = [jnp.asarray(leaf) for leaf in leaves]
    for leaf in leaves:
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise TypeError(
                f"{name} compresses floating-point vectors, got a leaf of dtype {leaf.dtype}"
            )
    d = sum(leaf.size for leaf in leaves)
    if d == 0:
        raise ValueError(f"{name} got a vector with d=0 coordinates")
    return leaves, treedef, d


def _common_dtype(leaves: list[Array]) -> jnp.dtype:
    return jnp.result_type(*(leaf.dtype for leaf in leaves))


def _value_bits(leaves: list[Array]) -> int:
    """Bit width of one value of the vector (its promoted floating dtype)."""
    return int(jnp.finfo(_common_dtype(leaves)).bits)


def _index_bits(d: int) -> int:
    """``ceil(log2 d)``: bits to name one of ``d`` coordinates."""
    return (d - 1).bit_length()


def _bits(count: int | float) -> Array:
    return jnp.asarray(count, jnp.float32)


def _masked(mask: Array, leaves: list[Array], treedef: Any, scale: float = 1.0) -> PyTree:
    """The vector with the coordinates outside the flat ``mask`` zeroed, the others scaled."""
    out, start = [], 0
    for leaf in leaves:
        keep = mask[start : start + leaf.size].reshape(leaf.shape)
        start += leaf.size
        values = leaf
        if scale != 1.0:
            acc = kernels.accumulation_dtype(leaf.dtype)
            values = (leaf.astype(acc) * scale).astype(leaf.dtype)
        out.append(jnp.where(keep, values, jnp.zeros((), leaf.dtype)))
    return jax.tree_util.tree_unflatten(treedef, out)


def _uniform_per_leaf(key: Array, leaves: list[Array], dtype: jnp.dtype) -> list[Array]:
    """Independent uniforms on ``[0, 1)`` shaped like every leaf, from one draw of ``d``."""
    u = jax.random.uniform(key, (sum(leaf.size for leaf in leaves),), dtype)
    out, start = [], 0
    for leaf in leaves:
        out.append(u[start : start + leaf.size].reshape(leaf.shape))
        start += leaf.size
    return out


def _check_d(name: str, d: int) -> int:
    return kernels.check_f(name, d, minimum=1, label="d")


def _check_k(name: str, k: int | float) -> int | float:
    """Validate ``K`` at construction: an int ``>= 1`` or a fraction in ``(0, 1]``."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer, float, np.floating)):
        raise TypeError(f"{name} needs K as an int or a fraction of d in (0, 1], got K={k!r}")
    if isinstance(k, (int, np.integer)):
        if k < 1:
            raise ValueError(f"{name} needs K >= 1, got K={k}")
        return int(k)
    if not 0.0 < k <= 1.0:
        raise ValueError(f"{name} needs a fraction K of d in (0, 1], got K={k}")
    return float(k)


def _resolve_k(name: str, k: int | float, d: int) -> int:
    """The integer ``K`` for dimension ``d``: a fraction rounds to nearest (halves up), ``>= 1``."""
    if isinstance(k, float):
        return max(1, min(d, math.floor(k * d + 0.5)))
    if k > d:
        raise ValueError(f"{name} needs K <= d, got K={k} for a vector of d={d} coordinates")
    return k


# --------------------------------------------------------------------------
# Uniform random subsets (vmap-friendly)
# --------------------------------------------------------------------------


# Slack of the candidate threshold, in standard deviations of the count of
# keys below it, plus a floor; module constants so tests can shrink them.
def _random_subset(key: Array, d: int, k: int) -> Array:
    """Boolean mask of shape ``(d,)`` with exactly ``k`` True, a uniformly random subset.

    For ``k > d/2`` the ``d - k`` coordinates to drop are drawn instead.
    """
    if 2 * k > d:
        return ~_random_subset(key, d, d - k)
    if k == 0:
        return jnp.zeros((d,), bool)
    return jnp.zeros((d,), bool).at[kernels.sample_without_replacement(key, d, k)].set(True)


# --------------------------------------------------------------------------
# Compressors
# --------------------------------------------------------------------------


def identity() -> Compressor:
    """No compression: ``C(x) = x``; unbiased, ``omega = 0``, ``32 d`` bits for float32.

    Returns
    -------
    Compressor
        ``compress(key, vector) -> (compressed, bits)``: ``compressed`` has
        ``vector``'s structure, shapes and dtypes, ``bits`` is a float32
        scalar array.

    Raises
    ------
    ValueError, TypeError
        In ``compress``: an empty pytree, ``d = 0``, or a non-floating leaf.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> out, bits = identity().compress(jax.random.key(0), jnp.array([3.0, -1.0, 0.5, 2.0]))
    >>> out.tolist(), float(bits)
    ([3.0, -1.0, 0.5, 2.0], 128.0)
    """

    def compress(key: Array, vector: PyTree) -> tuple[PyTree, Array]:
        del key
        leaves, _, _ = _flatten("identity", vector)
        bits = sum(leaf.size * jnp.finfo(leaf.dtype).bits for leaf in leaves)
        return vector, _bits(bits)

    def omega(d: int) -> float:
        _check_d("identity", d)
        return 0.0

    return Compressor("identity", compress, unbiased=True, omega=omega)


#: K of RandK and TopK: an int >= 1, or a fraction of d in (0, 1].
K = Annotated[int, Ge(1)] | Annotated[float, Gt(0), Le(1)]


def rand_k(k: K) -> Compressor:
    """RandK sparsification: keep ``K`` uniformly random coordinates, scaled by ``d/K``.

    ``C(x) = (d/K) sum_{i in S} x_i e_i`` with ``S`` a uniformly random
    ``K``-subset of the ``d`` coordinates of the whole pytree. Unbiased, with
    ``E||C(x) - x||^2 = (d/K - 1) ||x||^2``, so ``omega = d/K - 1``. Sends
    ``K (b + ceil(log2 d))`` bits (``b = 32`` for float32).

    Parameters
    ----------
    k:
        ``K`` as an int ``>= 1``, or as a fraction of ``d`` in ``(0, 1]``
        (rounded to nearest, at least 1: ``rand_k(0.1)`` keeps 10 %). An int
        ``K > d`` raises a ValueError when the vector is first seen.

    Returns
    -------
    Compressor
        ``compress(key, vector) -> (compressed, bits)``: ``compressed`` has
        ``vector``'s structure, shapes and dtypes, ``bits`` is a float32
        scalar array.

    Raises
    ------
    TypeError
        ``"rand_k needs K as an int or a fraction of d in (0, 1], got K=.."``.
    ValueError
        ``"rand_k needs K >= 1, got K=.."``; ``"rand_k needs a fraction K of d
        in (0, 1], got K=.."``; in ``compress`` or ``omega``,
        ``"rand_k needs K <= d, got K=.. for a vector of d=.. coordinates"``.

    References
    ----------
    Stich, Cordonnier, Jaggi, "Sparsified SGD with memory", NeurIPS 2018;
    Beznosikov, Horvath, Richtarik, Safaryan, "On biased compression for
    distributed learning", JMLR 2023.

    Examples
    --------
    Two of the four coordinates are kept, each scaled by ``d/K = 2``:

    >>> import jax, jax.numpy as jnp
    >>> import numpy as np
    >>> x = jnp.array([3.0, -1.0, 0.5, 2.0])
    >>> out, bits = rand_k(2).compress(jax.random.key(0), x)
    >>> kept = np.asarray(out) != 0
    >>> int(kept.sum()), bool(np.all(np.asarray(out)[kept] == 2 * np.asarray(x)[kept]))
    (2, True)
    >>> float(bits), rand_k(2).omega(4)  # 2 * (32 + 2) bits
    (68.0, 1.0)
    """
    k = _check_k("rand_k", k)

    def compress(key: Array, vector: PyTree) -> tuple[PyTree, Array]:
        leaves, treedef, d = _flatten("rand_k", vector)
        kk = _resolve_k("rand_k", k, d)
        out = _masked(_random_subset(key, d, kk), leaves, treedef, scale=d / kk)
        return out, _bits(kk * (_value_bits(leaves) + _index_bits(d)))

    def omega(d: int) -> float:
        d = _check_d("rand_k", d)
        return d / _resolve_k("rand_k", k, d) - 1.0

    return Compressor("rand_k", compress, unbiased=True, omega=omega, params=(("k", k),))


def top_k(k: K) -> Compressor:
    """TopK sparsification: keep the ``K`` coordinates of largest magnitude, unscaled.

    Over the whole pytree (ties go to the lower flat index, as in
    ``lax.top_k``). Biased and deterministic (the key is ignored), a
    contraction: ``||C(x) - x||^2 <= (1 - alpha) ||x||^2`` with
    ``alpha = K/d``, so ``omega = 1 - K/d``. Selection is ``lax.top_k`` on
    ``|x|`` (on the ``d - K`` smallest when ``K > d/2``), not a full sort of
    ``d``. Sends ``K (b + ceil(log2 d))`` bits (``b = 32`` for float32).

    Parameters
    ----------
    k:
        ``K`` as an int ``>= 1``, or as a fraction of ``d`` in ``(0, 1]``
        (rounded to nearest, at least 1: ``top_k(0.1)`` keeps 10 %). An int
        ``K > d`` raises a ValueError when the vector is first seen.

    Returns
    -------
    Compressor
        ``compress(key, vector) -> (compressed, bits)``: ``compressed`` has
        ``vector``'s structure, shapes and dtypes, ``bits`` is a float32
        scalar array.

    Raises
    ------
    TypeError
        ``"top_k needs K as an int or a fraction of d in (0, 1], got K=.."``.
    ValueError
        ``"top_k needs K >= 1, got K=.."``; ``"top_k needs a fraction K of d
        in (0, 1], got K=.."``; in ``compress`` or ``omega``,
        ``"top_k needs K <= d, got K=.. for a vector of d=.. coordinates"``.

    References
    ----------
    Alistarh et al., "The convergence of sparsified gradient methods",
    NeurIPS 2018; Stich, Cordonnier, Jaggi, NeurIPS 2018.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> out, bits = top_k(2).compress(None, jnp.array([3.0, -1.0, 0.5, 2.0]))
    >>> out.tolist(), float(bits), top_k(2).omega(4)
    ([3.0, 0.0, 0.0, 2.0], 68.0, 0.5)
    >>> top_k(0)
    Traceback (most recent call last):
    ...
    ValueError: top_k needs K >= 1, got K=0
    """
    k = _check_k("top_k", k)

    def compress(key: Array, vector: PyTree) -> tuple[PyTree, Array]:
        del key
        leaves, treedef, d = _flatten("top_k", vector)
        kk = _resolve_k("top_k", k, d)
        bits = _bits(kk * (_value_bits(leaves) + _index_bits(d)))
        if kk == d:
            return vector, bits
        acc = kernels.accumulation_dtype(_common_dtype(leaves))
        magnitudes = jnp.concatenate([jnp.abs(leaf).reshape(-1).astype(acc) for leaf in leaves])
        if 2 * kk <= d:
            _, keep = lax.top_k(magnitudes, kk)
            mask = jnp.zeros((d,), bool).at[keep].set(True)
        else:
            # Cheaper to find the d - K smallest; reversed so that ties still keep lower indices.
            _, drop = lax.top_k(-magnitudes[::-1], d - kk)
            mask = jnp.ones((d,), bool).at[d - 1 - drop].set(False)
        return _masked(mask, leaves, treedef), bits

    def omega(d: int) -> float:
        d = _check_d("top_k", d)
        return 1.0 - _resolve_k("top_k", k, d) / d

    return Compressor("top_k", compress, unbiased=False, omega=omega, params=(("k", k),))


def random_dithering(levels: Annotated[int, Ge(1)]) -> Compressor:
    """Random dithering (l2 quantisation, QSGD) with ``s = levels`` levels.

    ``C(x)_i = ||x||_2 sign(x_i) xi_i / s`` where, with
    ``l = floor(s |x_i| / ||x||_2)``, ``xi_i = l + 1`` with probability
    ``s |x_i| / ||x||_2 - l`` and ``l`` otherwise (independently per
    coordinate); the norm is over the whole pytree, and ``C(0) = 0``.
    Unbiased, with ``omega = min(d / s^2, sqrt(d) / s)``. Sends
    ``b + d (1 + ceil(log2(s + 1)))`` bits (fixed-length code; ``b = 32``
    for float32). A non-finite vector gives a non-finite output.

    Parameters
    ----------
    levels:
        ``s >= 1``, the number of nonzero quantisation levels.

    Returns
    -------
    Compressor
        ``compress(key, vector) -> (compressed, bits)``: ``compressed`` has
        ``vector``'s structure, shapes and dtypes, ``bits`` is a float32
        scalar array.

    Raises
    ------
    TypeError
        If ``levels`` is not an integer.
    ValueError
        ``"random_dithering needs levels >= 1, got levels=.."``.

    References
    ----------
    Alistarh, Grubic, Li, Tomioka, Vojnovic, "QSGD: communication-efficient
    SGD via gradient quantization and encoding", NeurIPS 2017 (Lemma 3.1).

    Examples
    --------
    Every output coordinate is a multiple of ``||x|| / s`` (here ``||x|| = 1``):

    >>> import jax, jax.numpy as jnp
    >>> import numpy as np
    >>> x = jnp.array([0.6, -0.8, 0.0, 0.0])
    >>> out, bits = random_dithering(4).compress(jax.random.key(0), x)
    >>> levels = np.asarray(out) * 4
    >>> bool(np.allclose(levels, np.round(levels), atol=1e-5)), float(bits)  # 32 + 4 * (1 + 3)
    (True, 48.0)
    >>> random_dithering(4).omega(4)
    0.25
    """
    s = kernels.check_f("random_dithering", levels, minimum=1, label="levels")

    def compress(key: Array, vector: PyTree) -> tuple[PyTree, Array]:
        leaves, treedef, d = _flatten("random_dithering", vector)
        acc = kernels.accumulation_dtype(_common_dtype(leaves))
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(leaf.astype(acc))) for leaf in leaves))
        safe = jnp.where(norm > 0, norm, 1.0)
        step = norm / s
        out = []
        for leaf, u in zip(leaves, _uniform_per_leaf(key, leaves, acc), strict=True):
            x = leaf.astype(acc)
            level = jnp.minimum(jnp.floor(jnp.abs(x) / safe * s + u), s)
            out.append((jnp.sign(x) * level * step).astype(leaf.dtype))
        bits = _value_bits(leaves) + d * (1 + s.bit_length())
        return jax.tree_util.tree_unflatten(treedef, out), _bits(bits)

    def omega(d: int) -> float:
        d = _check_d("random_dithering", d)
        return min(d / s**2, math.sqrt(d) / s)

    return Compressor(
        "random_dithering", compress, unbiased=True, omega=omega, params=(("levels", s),)
    )


def _natural_leaf(leaf: Array, u: Array) -> Array:
    acc = kernels.accumulation_dtype(leaf.dtype)
    info = jnp.finfo(acc)
    uint = jnp.dtype(f"uint{info.bits}")
    x = leaf.astype(acc)
    magnitude = jnp.abs(x)
    # 2^a <= |x| < 2^(a+1): clearing the mantissa bits gives 2^a (0 for subnormals).
    clear = np.array(~((1 << int(info.nmant)) - 1) & ((1 << info.bits) - 1), uint)
    low = lax.bitcast_convert_type(lax.bitcast_convert_type(magnitude, uint) & clear, acc)
    # Round up to 2^(a+1) with probability |x| / 2^a - 1 (exact: a division by a power of two).
    up = u.astype(acc) < magnitude / low - 1.0
    rounded = jnp.sign(x) * jnp.where(up, 2.0 * low, low)
    return jnp.where((x == 0) | ~jnp.isfinite(x), x, rounded).astype(leaf.dtype)


def natural_compression() -> Compressor:
    """Natural compression: round every coordinate to a neighbouring power of two at random.

    For ``2^a <= |x_i| < 2^(a+1)``, ``C(x)_i = sign(x_i) 2^(a+1)`` with
    probability ``|x_i| / 2^a - 1`` and ``sign(x_i) 2^a`` otherwise; zeros
    and non-finite entries are kept. Unbiased, with ``omega = 1/8``
    (attained at ``|x_i| = (4/3) 2^a``). Sends a sign and an exponent per
    coordinate: ``sum over leaves of size * (1 + exponent bits)``, ``9 d``
    for float32 and bfloat16. Works on the bit pattern (computed in at least
    float32): subnormal inputs round to zero, and rounding up above the
    largest power of two of the dtype gives ``inf``.

    References
    ----------
    Horvath, Ho, Horvath, Sahu, Canini, Richtarik, "Natural compression for
    distributed deep learning", MSML 2022 (arXiv:1905.10988).

    Returns
    -------
    Compressor
        ``compress(key, vector) -> (compressed, bits)``: ``compressed`` has
        ``vector``'s structure, shapes and dtypes, ``bits`` is a float32
        scalar array.

    Raises
    ------
    ValueError, TypeError
        In ``compress``: an empty pytree, ``d = 0``, or a non-floating leaf.

    Examples
    --------
    Powers of two (and zero) are kept exactly; ``3`` becomes ``2`` or ``4``:

    >>> import jax, jax.numpy as jnp
    >>> out, bits = natural_compression().compress(jax.random.key(0), jnp.array([1.0, -4.0, 0.0]))
    >>> out.tolist(), float(bits)  # 9 bits per float32 coordinate
    ([1.0, -4.0, 0.0], 27.0)
    >>> out, _ = natural_compression().compress(jax.random.key(1), jnp.array([3.0]))
    >>> float(out[0]) in (2.0, 4.0)
    True
    """

    def compress(key: Array, vector: PyTree) -> tuple[PyTree, Array]:
        leaves, treedef, _ = _flatten("natural_compression", vector)
        acc = kernels.accumulation_dtype(_common_dtype(leaves))
        uniforms = _uniform_per_leaf(key, leaves, acc)
        out = [_natural_leaf(leaf, u) for leaf, u in zip(leaves, uniforms, strict=True)]
        bits = sum(leaf.size * (1 + jnp.finfo(leaf.dtype).nexp) for leaf in leaves)
        return jax.tree_util.tree_unflatten(treedef, out), _bits(bits)

    def omega(d: int) -> float:
        _check_d("natural_compression", d)
        return 0.125

    return Compressor("natural_compression", compress, unbiased=True, omega=omega)


def contractive(compressor: Compressor) -> Compressor:
    """An unbiased compressor scaled into a contractive one: ``C / (1 + omega)``.

    EF21-type methods need a *contractive* compressor ``C'``,
    ``E||C'(x) - x||^2 <= (1 - alpha) ||x||^2`` with ``alpha in (0, 1]``.
    An unbiased ``C`` with variance constant ``omega``
    (``E[C(x)] = x``, ``E||C(x) - x||^2 <= omega ||x||^2``) need not be one
    (not when ``omega >= 1``), but ``C'(x) = C(x) / (1 + omega)`` is, with
    ``alpha = 1 / (1 + omega)``:

    ``E||C'(x) - x||^2 = ||x||^2 - 2 <E C(x), x> / (1 + omega)
    + E||C(x)||^2 / (1 + omega)^2
    <= (1 - 2 / (1 + omega) + 1 / (1 + omega)) ||x||^2
    = (omega / (1 + omega)) ||x||^2``,

    using ``E C(x) = x`` and ``E||C(x)||^2 = E||C(x) - x||^2 + ||x||^2 <=
    (1 + omega) ||x||^2``. The bound is attained when ``C``'s is (RandK:
    ``C'`` is *unscaled* RandK, keep ``K`` random coordinates as they are,
    with ``E||C'(x) - x||^2 = (1 - K/d) ||x||^2`` exactly). ``omega = 0``
    (``identity``) leaves the compressor unchanged.

    Parameters
    ----------
    compressor:
        An unbiased compressor (``compressor.unbiased``).

    Returns
    -------
    Compressor
        The same ``name``, bits and keys, ``unbiased=False``, ``omega(d) =
        1 - alpha = omega(d) / (1 + omega(d))`` (the contraction constant in
        this module's convention), ``params`` extended with
        ``("contractive", True)``.

    Raises
    ------
    ValueError
        For a biased compressor (``top_k`` is contractive already, and the
        bound above needs ``E C(x) = x``).

    References
    ----------
    Richtarik, Sokolov, Fatkhullin, "EF21: a new, simpler, theoretically
    better, and practically faster error feedback", NeurIPS 2021;
    Beznosikov, Horvath, Richtarik, Safaryan, "On biased compression for
    distributed learning", JMLR 2023 (the scaling of unbiased compressors).

    Examples
    --------
    Contractive RandK keeps ``K`` coordinates unscaled (``d/K = 2`` times
    ``1 / (1 + omega) = 1/2``):

    >>> import jax, jax.numpy as jnp
    >>> import numpy as np
    >>> c = contractive(rand_k(2))
    >>> x = jnp.array([3.0, -1.0, 0.5, 2.0])
    >>> out, _ = c.compress(jax.random.key(0), x)
    >>> kept = np.asarray(out) != 0
    >>> int(kept.sum()), bool(np.all(np.asarray(out)[kept] == np.asarray(x)[kept]))
    (2, True)
    >>> c.omega(4), c.unbiased
    (0.5, False)
    >>> contractive(top_k(2))
    Traceback (most recent call last):
    ...
    ValueError: contractive needs an unbiased compressor, got 'top_k' ...
    """
    if not compressor.unbiased:
        raise ValueError(
            f"contractive needs an unbiased compressor, got {compressor.name!r} "
            "(biased compressors such as top_k are used as they are)"
        )

    def compress(key: Array, vector: PyTree) -> tuple[PyTree, Array]:
        d = sum(leaf.size for leaf in jax.tree_util.tree_leaves(vector))
        scale = 1.0 / (1.0 + compressor.omega(d))
        out, bits = compressor.compress(key, vector)
        if scale == 1.0:
            return out, bits
        return jax.tree_util.tree_map(lambda v: (v * scale).astype(v.dtype), out), bits

    def omega(d: int) -> float:
        return 1.0 - 1.0 / (1.0 + compressor.omega(d))

    return Compressor(
        compressor.name,
        compress,
        unbiased=False,
        omega=omega,
        params=(*compressor.params, ("contractive", True)),
    )


# --------------------------------------------------------------------------
# Many workers, registry
# --------------------------------------------------------------------------


def compress_workers(
    compressor: Compressor, key: int | Array, stacked: PyTree
) -> tuple[PyTree, Array]:
    """Compress every worker's row of a worker-stacked pytree with independent keys.

    Row ``i`` is compressed with the ``i``-th key of ``jax.random.split(key, n)``.
    Returns the compressed rows (same structure, shapes and dtypes) and the
    bits each worker sends, a float32 array of shape ``(n,)``. Pure and
    traceable (pass ``compressor`` as a static argument or close over it
    under ``jit``); ``key`` may be an int seed or a PRNG key.

    Parameters
    ----------
    compressor : Compressor
        The compressor of one row.
    key : int or Array
        Seed or PRNG key.
    stacked : pytree
        Every leaf a floating array of shape ``(n, ...)``.

    Returns
    -------
    compressed : pytree
        ``stacked``'s structure, shapes and dtypes.
    bits : Array
        float32, shape ``(n,)``.

    Raises
    ------
    ValueError
        For malformed ``stacked`` (no leaf, a scalar leaf, unequal worker
        axes), or the compressor's own errors.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> out, bits = compress_workers(top_k(1), 0, jnp.array([[1.0, -5.0], [2.0, 1.0]]))
    >>> out.tolist(), bits.tolist()  # 32 + 1 bits each
    ([[0.0, -5.0], [2.0, 0.0]], [33.0, 33.0])
    """
    n = kernels.num_workers(stacked, compressor.name)
    keys = jax.random.split(as_key(key), n)
    return jax.vmap(compressor.compress)(keys, stacked)


COMPRESSORS = registry("compressor")
for _name, _factory in (
    ("identity", identity),
    ("rand_k", rand_k),
    ("top_k", top_k),
    ("random_dithering", random_dithering),
    ("natural_compression", natural_compression),
):
    COMPRESSORS.register(_name, _factory)


def make_compressor(name: str, **kwargs: Any) -> Compressor:
    """Build a compressor by name, e.g. ``make_compressor("top_k", k=0.1)``.

    Parameters
    ----------
    name : str
        ``"identity"``, ``"rand_k"``, ``"top_k"``, ``"random_dithering"``,
        ``"natural_compression"`` or a user-registered name.
    **kwargs
        The factory's arguments.

    Returns
    -------
    Compressor

    Raises
    ------
    ValueError
        For an unknown name; the message lists the valid names.

    Examples
    --------
    >>> make_compressor("top_k", k=0.5).params
    (('k', 0.5),)
    """
    return COMPRESSORS.build(name, **kwargs)
