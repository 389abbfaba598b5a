"""Weiszfeld-type rules: the smoothed geometric median and centered clipping.

Both iterate in the Gram space of the workers' vectors (centred, precision
pinned; see :mod:`jaxrobust.kernels`), with scale-aware defaults for their
absolute lengths. The optax transformations in
:mod:`jaxrobust.rules.aggregators` wrap them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxrobust import kernels
from jaxrobust.kernels import PyTree
from jaxrobust.rules.base import finite_median, require

Array = jax.Array

# Scale-aware default smoothing of the geometric median: this fraction of the
# spread median_i median_j ||x_i - x_j|| (see weiszfeld_weights).
GM_NU_RELATIVE = 1e-3


def check_geometric_median(n: int, f: int) -> None:
    """Check the bound of :func:`geometric_median` for a declared ``f``: ``n > 2f``.

    Parameters
    ----------
    n, f : int
        Number of workers and of Byzantine workers.

    Raises
    ------
    ValueError
        ``"geometric_median needs n > 2f, got n=.., f=.."`` when ``n <= 2f``.

    Examples
    --------
    >>> check_geometric_median(4, 2)
    Traceback (most recent call last):
    ...
    ValueError: geometric_median needs n > 2f, got n=4, f=2
    """
    require("geometric_median", n > 2 * f, "n > 2f", n=n, f=f)


def weiszfeld_weights(
    gram: Array, *, nu: float | None = None, iterations: int = 8, start: Array | None = None
) -> Array:
    """Coefficients ``a`` with ``GM = sum_i a_i x_i`` after smoothed Weiszfeld steps.

    Runs entirely on the ``(n, n)`` Gram matrix: for ``z = sum_i a_i x_i``,
    ``||z - x_j||^2 = a'Ga - 2 (Ga)_j + G_jj``. Since ``sum_i a_i = 1`` this
    holds for the Gram matrix of the vectors minus any common point, and only
    the Gram matrix of centred vectors (:func:`jaxrobust.kernels.centred_gram_matrix`)
    keeps it exact to rounding under a large common offset. Each step sets
    ``a_j proportional to 1 / max(nu, ||z - x_j||)``, normalised to sum 1.
    Bad vectors (non-finite diagonal) get weight 0.

    Parameters
    ----------
    gram : Array
        ``G[i, j] = <x_i, x_j>``, shape ``(n, n)``, float32 or wider.
    nu : float or None
        Smoothing: distances below ``nu`` count as ``nu`` (``nu > 0``), an
        absolute length (Pillutla et al.; ByzFL uses ``0.1``). ``None``:
        ``GM_NU_RELATIVE = 1e-3`` times ``median_i median_j ||x_i - x_j||``
        over the finite vectors, so that the rule is scale-equivariant. With
        an honest majority this spread is at most the honest diameter, however
        far the other vectors are (the distances to the mean would be
        dominated by them). The smoothing only keeps the weights finite near a
        data point, and moves the result by a small fraction of the spread.
        When the spread is 0 (a majority coincides) the smallest positive
        distance is used instead, and 1 when all finite vectors coincide.
    iterations : int
        Number of Weiszfeld steps.
    start : Array or None
        Starting weights, shape ``(n,)``, normalised here; ``None`` means
        uniform over the finite vectors (their mean).

    Returns
    -------
    Array
        Shape ``(n,)``, non-negative, summing to 1, the dtype of ``gram``.

    References
    ----------
    K. Pillutla, S. M. Kakade, Z. Harchaoui, "Robust aggregation for
    federated learning", IEEE Transactions on Signal Processing, 2022.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from jaxrobust import kernels
    >>> x = jnp.array([[0.0], [1.0], [2.0], [10.0]])
    >>> a = weiszfeld_weights(kernels.gram_matrix(x))
    >>> float(np.round(a.sum(), 4)), int(np.argmax(a))
    (1.0, 2)
    """
    finite = kernels.finite_from_gram(gram)
    both = finite[:, None] & finite[None, :]
    g = jnp.where(both, gram, 0.0)
    diag = jnp.diagonal(g)
    if start is None:
        start = finite.astype(g.dtype)
    a = start / jnp.sum(start)
    if nu is None:
        nu = _relative_nu(g, diag, finite)

    def step(_, a):
        ga = jnp.dot(g, a, precision=lax.Precision.HIGHEST)
        sq = jnp.maximum(jnp.dot(a, ga, precision=lax.Precision.HIGHEST) - 2.0 * ga + diag, 0.0)
        w = jnp.where(finite, 1.0 / jnp.maximum(nu, jnp.sqrt(sq)), 0.0)
        return w / jnp.sum(w)

    return lax.fori_loop(0, iterations, step, a)


def _relative_nu(g: Array, diag: Array, finite: Array) -> Array:
    """``GM_NU_RELATIVE`` times the robust spread of :func:`weiszfeld_weights`."""
    both = finite[:, None] & finite[None, :]
    dist = jnp.sqrt(jnp.maximum(diag[:, None] + diag[None, :] - 2.0 * g, 0.0))
    dist = jnp.where(both, dist, jnp.inf)
    rows = jax.vmap(finite_median)(dist, both)
    typical = finite_median(rows, finite)
    positive = both & (dist > 0)
    smallest = jnp.min(jnp.where(positive, dist, jnp.inf))
    typical = jnp.where(typical > 0, typical, jnp.where(jnp.any(positive), smallest, 0.0))
    return jnp.where(typical > 0, GM_NU_RELATIVE * typical, jnp.ones((), g.dtype))


def geometric_median(updates: PyTree, *, nu: float | None = None, iterations: int = 8) -> PyTree:
    """Geometric median by smoothed Weiszfeld (Pillutla et al., 2022).

    An approximation of ``argmin_z sum_i ||z - x_i||``: starting from the
    mean of the finite vectors, repeat ``iterations`` times
    ``z <- sum_i w_i x_i / sum_i w_i`` with ``w_i = 1 / max(nu, ||z - x_i||)``.
    Defaults: ``nu`` relative to the spread of the vectors (see
    :func:`weiszfeld_weights`; ``geometric_median(s * X) = s *
    geometric_median(X)``), ``iterations = 8``. All iterations run on the Gram
    matrix of the vectors centred on a robust coordinate-wise reference
    (exact to rounding under a common offset); the data is read three times
    (reference, Gram, then the final combination). Bad
    vectors get weight 0.

    Parameters
    ----------
    updates : pytree
        Every leaf a floating array of shape ``(n, ...)``.
    nu : float or None
        Smoothing parameter, an absolute length ``nu > 0`` (ByzFL's
        ``0.1``), or ``None`` for ``1e-3`` times the spread
        ``median_i median_j ||x_i - x_j||`` (see :func:`weiszfeld_weights`).
    iterations : int
        Number of Weiszfeld steps, ``>= 0``.

    Returns
    -------
    pytree
        Leaves of shape ``(...)``, in the input dtype.

    Raises
    ------
    ValueError
        For malformed ``updates``. (The bound ``n > 2f`` of a declared ``f``
        is checked by :func:`check_geometric_median`.)

    References
    ----------
    K. Pillutla, S. M. Kakade, Z. Harchaoui, "Robust aggregation for
    federated learning", IEEE Transactions on Signal Processing, 2022.

    Examples
    --------
    In one dimension the outlier 10 barely moves the result, which stays in
    the median interval ``[1, 2]``:

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> x = jnp.array([[0.0], [1.0], [2.0], [10.0]])
    >>> np.round(np.asarray(geometric_median(x)), 2)
    array([1.94], dtype=float32)

    An absolute ``nu`` larger than the spread gives the plain mean:

    >>> np.round(np.asarray(geometric_median(0.01 * x, nu=0.1)), 4)
    array([0.0325], dtype=float32)
    >>> np.round(np.asarray(geometric_median(0.01 * x)), 4)
    array([0.0194], dtype=float32)
    """
    kernels.num_workers(updates, "geometric_median")
    gram = kernels.centred_gram_matrix(updates)
    a = weiszfeld_weights(gram, nu=nu, iterations=iterations)
    return kernels.weighted_sum(a, updates)


def centered_clipping(
    updates: PyTree, center: PyTree, *, tau: float | None = None, iterations: int = 3
) -> PyTree:
    """Centered clipping (Karimireddy et al., 2021) from ``center``.

    Starting at ``v = center``, repeat ``iterations`` times
    ``v <- v + (1/n) sum_i clip_tau(x_i - v)`` with
    ``clip_tau(u) = u * min(1, tau / ||u||)``. A bad vector contributes
    nothing (its clipped difference is the zero vector).

    The paper's radius is an absolute length (``tau = 10`` in its
    experiments). The default ``tau = None`` is the median distance of the
    finite vectors to ``center`` (computed once, before the first step): with
    an honest majority it is at most the distance of an honest vector, so a
    far vector moves ``v`` no more than a typical honest one, whatever the
    scale of the vectors; ``centered_clipping(s X, s c) = s
    centered_clipping(X, c)``.

    Parameters
    ----------
    updates : pytree
        Every leaf a floating array of shape ``(n, ...)``.
    center : pytree
        The starting point ``v``: ``updates``' structure, leaves of shape
        ``(...)`` (no worker axis); the output takes its dtypes.
    tau : float or None
        Clipping radius, an absolute length ``tau > 0``, or ``None`` for the
        median distance of the finite vectors to ``center``.
    iterations : int
        Number of clipping steps.

    Returns
    -------
    pytree
        Leaves of shape ``(...)``, in ``center``'s dtypes.

    Raises
    ------
    ValueError
        For malformed ``updates``.

    References
    ----------
    S. P. Karimireddy, L. He, M. Jaggi, "Learning from history for
    Byzantine robust optimization", ICML 2021.

    Examples
    --------
    ``(3, 4)`` is clipped to ``(0.6, 0.8)``, the other two are within
    ``tau``, so ``v = ((0.6, 0.8) + 2 (0, 0.5)) / 3``:

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> x = jnp.array([[3.0, 4.0], [0.0, 0.5], [0.0, 0.5]])
    >>> v = centered_clipping(x, jnp.zeros(2), tau=1.0, iterations=1)
    >>> np.round(np.asarray(v), 4)
    array([0.2, 0.6], dtype=float32)
    """
    n = kernels.num_workers(updates, "centered_clipping")
    if tau is None:
        start = jnp.sqrt(kernels.squared_distances_to(updates, center))
        tau = finite_median(start, jnp.isfinite(start))

    def step(_, v):
        dist = jnp.sqrt(kernels.squared_distances_to(updates, v))
        scale = jnp.where(dist > tau, tau / dist, 1.0) / n

        def one(leaf, c):
            acc = kernels.accumulation_dtype(leaf.dtype)
            total = c.astype(acc)
            for i in range(n):
                term = scale[i] * (leaf[i].astype(acc) - c.astype(acc))
                total = total + jnp.where(scale[i] > 0, term, 0.0)
            return total.astype(c.dtype)

        return jax.tree_util.tree_map(one, updates, v)

    return lax.fori_loop(0, iterations, step, center)
