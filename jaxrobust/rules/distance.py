"""Distance-based rules: Krum, Multi-Krum, MDA, MoNNA.

Each selects or averages workers by their pairwise (or trusted-row) distances,
computed translation-safe by :mod:`jaxrobust.kernels`. Inputs are
worker-stacked pytrees; a vector with a NaN or infinite entry is *bad*: its
distances are ``inf``. The optax transformations in
:mod:`jaxrobust.rules.aggregators` wrap them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxrobust import kernels
from jaxrobust.kernels import PyTree
from jaxrobust.rules.base import require

Array = jax.Array

# Largest number of candidate subsets MDA enumerates by default.
MDA_MAX_SUBSETS = 200_000


def check_krum(n: int, f: int) -> None:
    """Check the bound of :func:`krum`: ``n > 2f + 2``.

    Parameters
    ----------
    n, f : int
        Number of workers and of Byzantine workers.

    Raises
    ------
    ValueError
        ``"krum needs n > 2f + 2, got n=.., f=.."`` when ``n <= 2f + 2``.

    Examples
    --------
    >>> check_krum(5, 1)
    >>> check_krum(4, 1)
    Traceback (most recent call last):
    ...
    ValueError: krum needs n > 2f + 2, got n=4, f=1
    """
    require("krum", n > 2 * f + 2, "n > 2f + 2", n=n, f=f)


def check_multi_krum(n: int, f: int, m: int | None) -> None:
    """Check the bounds of :func:`multi_krum`: ``n > 2f + 2`` and ``1 <= m <= n``.

    Parameters
    ----------
    n, f : int
        Number of workers and of Byzantine workers.
    m : int or None
        Number of vectors averaged; ``None`` (meaning ``n - f``) is not checked.

    Raises
    ------
    ValueError
        ``"multi_krum needs n > 2f + 2, got n=.., f=.."`` when ``n <= 2f + 2``;
        ``"multi_krum needs 1 <= m <= n, got n=.., m=.."`` otherwise when
        ``m`` is out of range.

    Examples
    --------
    >>> check_multi_krum(5, 1, None)
    >>> check_multi_krum(5, 1, 6)
    Traceback (most recent call last):
    ...
    ValueError: multi_krum needs 1 <= m <= n, got n=5, m=6
    """
    require("multi_krum", n > 2 * f + 2, "n > 2f + 2", n=n, f=f)
    if m is not None:
        require("multi_krum", 1 <= m <= n, "1 <= m <= n", n=n, m=m)


def check_mda(n: int, f: int, max_subsets: int) -> None:
    """Check the bounds of :func:`mda`: ``n > 2f`` and ``C(n, f) <= max_subsets``.

    Parameters
    ----------
    n, f : int
        Number of workers and of Byzantine workers.
    max_subsets : int
        Largest number of subsets of size ``n - f`` MDA may enumerate.

    Raises
    ------
    ValueError
        ``"mda needs n > 2f, got n=.., f=.."`` when ``n <= 2f``; otherwise
        ``"mda needs at most max_subsets=.. subsets to enumerate, got C(n, f) = ..."``
        when there are more than ``max_subsets`` subsets.

    Examples
    --------
    >>> check_mda(5, 2, max_subsets=10)
    >>> check_mda(5, 2, max_subsets=9)
    Traceback (most recent call last):
    ...
    ValueError: mda needs at most max_subsets=9 subsets to enumerate, got C(n, f) = ...10; ...
    """
    require("mda", n > 2 * f, "n > 2f", n=n, f=f)
    count = kernels.subsets_count(n, n - f)
    if count > max_subsets:
        raise ValueError(
            f"mda needs at most max_subsets={max_subsets} subsets to enumerate, "
            f"got C(n, f) = C({n}, {f}) = {count}; raise max_subsets or use another rule"
        )


def check_monna(n: int, f: int, trusted: int) -> None:
    """Check the bounds of :func:`monna`: ``n > 2f`` and ``0 <= trusted < n``.

    Parameters
    ----------
    n, f : int
        Number of workers and of Byzantine workers.
    trusted : int
        Index of the trusted worker.

    Raises
    ------
    ValueError
        ``"monna needs n > 2f, got n=.., f=.."`` when ``n <= 2f``;
        ``"monna needs 0 <= trusted < n, got n=.., trusted=.."`` otherwise
        when ``trusted`` is out of range.

    Examples
    --------
    >>> check_monna(3, 1, trusted=3)
    Traceback (most recent call last):
    ...
    ValueError: monna needs 0 <= trusted < n, got n=3, trusted=3
    """
    require("monna", n > 2 * f, "n > 2f", n=n, f=f)
    require("monna", 0 <= trusted < n, "0 <= trusted < n", n=n, trusted=trusted)


def krum_scores(distances: Array, f: int) -> Array:
    """Krum score of each worker: sum of squared distances to its ``n - f - 2`` nearest others.

    Parameters
    ----------
    distances : Array
        Squared distances, shape ``(n, n)``, float32 or wider (as from
        :func:`jaxrobust.kernels.pairwise_squared_distances`; ``inf`` for
        bad vectors).
    f : int
        Number of Byzantine workers; needs ``n - f - 2 >= 0``.

    Returns
    -------
    Array
        Shape ``(n,)``, the dtype of ``distances``.

    References
    ----------
    P. Blanchard, E. M. El Mhamdi, R. Guerraoui, J. Stainer, "Machine
    learning with adversaries: Byzantine tolerant gradient descent",
    NeurIPS 2017.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from jaxrobust import kernels
    >>> x = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [10.0, 10.0]])
    >>> np.round(np.asarray(krum_scores(kernels.pairwise_squared_distances(x), f=1)), 4)
    array([  1.5,   1.5,   1.5,   1. , 361.5], dtype=float32)
    """
    n = distances.shape[0]
    others = jnp.where(jnp.eye(n, dtype=bool), jnp.inf, distances)
    return kernels.smallest_sum(others, n - f - 2)


def krum(updates: PyTree, f: int) -> PyTree:
    """Krum (Blanchard et al., 2017): the vector of least score.

    The score of ``x_i`` is the **sum** of squared distances to its
    ``n - f - 2`` nearest other vectors (the original definition; ByzFL
    averages over ``n - f - 1`` neighbours instead). Needs ``n > 2f + 2``.
    Ties go to the lowest index; a bad vector has score ``inf``.

    Parameters
    ----------
    updates : pytree
        Every leaf a floating array of shape ``(n, ...)``.
    f : int
        Number of Byzantine workers, ``0 <= f`` and ``n > 2f + 2``.

    Returns
    -------
    pytree
        The selected worker's vector: leaves of shape ``(...)``, input dtype.

    Raises
    ------
    ValueError
        ``"krum needs n > 2f + 2, got n=.., f=.."`` when ``n <= 2f + 2``, or
        for malformed ``updates``.

    References
    ----------
    P. Blanchard, E. M. El Mhamdi, R. Guerraoui, J. Stainer, "Machine
    learning with adversaries: Byzantine tolerant gradient descent",
    NeurIPS 2017.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> x = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [10.0, 10.0]])
    >>> np.asarray(krum(x, f=1))
    array([0.5, 0.5], dtype=float32)
    >>> krum(x[:4], f=1)
    Traceback (most recent call last):
    ...
    ValueError: krum needs n > 2f + 2, got n=4, f=1
    """
    n = kernels.num_workers(updates, "krum")
    check_krum(n, f)
    scores = krum_scores(kernels.pairwise_squared_distances(updates), f)
    best = jnp.argmin(scores)
    return jax.tree_util.tree_map(
        lambda leaf: lax.dynamic_index_in_dim(leaf, best, 0, False), updates
    )


def multi_krum(updates: PyTree, f: int, m: int | None = None) -> PyTree:
    """Multi-Krum: the average of the ``m`` vectors of least Krum score (default ``m = n - f``).

    Scores as in :func:`krum`; ties go to the lower index. ``m = 1`` is Krum.

    Parameters
    ----------
    updates : pytree
        Every leaf a floating array of shape ``(n, ...)``.
    f : int
        Number of Byzantine workers, ``n > 2f + 2``.
    m : int or None
        Number of vectors averaged, ``1 <= m <= n``; ``None`` means ``n - f``.

    Returns
    -------
    pytree
        Leaves of shape ``(...)``, in the input dtype.

    Raises
    ------
    ValueError
        ``"multi_krum needs n > 2f + 2, got n=.., f=.."`` when ``n <= 2f + 2``;
        ``"multi_krum needs 1 <= m <= n, got n=.., m=.."`` for ``m`` out of
        range; or for malformed ``updates``.

    References
    ----------
    P. Blanchard, E. M. El Mhamdi, R. Guerraoui, J. Stainer, "Machine
    learning with adversaries: Byzantine tolerant gradient descent",
    NeurIPS 2017.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> x = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [10.0, 10.0]])
    >>> np.asarray(multi_krum(x, f=1))
    array([0.375, 0.375], dtype=float32)
    >>> np.asarray(multi_krum(x, f=1, m=1))
    array([0.5, 0.5], dtype=float32)
    """
    n = kernels.num_workers(updates, "multi_krum")
    check_multi_krum(n, f, m)
    m = n - f if m is None else m
    scores = krum_scores(kernels.pairwise_squared_distances(updates), f)
    chosen = kernels.smallest_mask(scores, m)
    return kernels.weighted_sum(jnp.where(chosen, 1.0 / m, 0.0), updates)


def _subset_masks(n: int, size: int) -> np.ndarray:
    from itertools import combinations

    masks = np.zeros((kernels.subsets_count(n, size), n), dtype=bool)
    for row, subset in enumerate(combinations(range(n), size)):
        masks[row, list(subset)] = True
    return masks


def mda(updates: PyTree, f: int, max_subsets: int = MDA_MAX_SUBSETS) -> PyTree:
    """Minimum diameter averaging: average of the ``n - f`` vectors of least diameter.

    ``S* = argmin_{|S| = n - f} max_{i, j in S} ||x_i - x_j||`` and the
    output is ``(1 / (n - f)) sum_{i in S*} x_i``. Exact: every subset of
    size ``n - f`` is enumerated at trace time (the first of equal diameters
    wins, in ``itertools.combinations`` order); refused when there are more
    than ``max_subsets`` of them.

    Parameters
    ----------
    updates : pytree
        Every leaf a floating array of shape ``(n, ...)``.
    f : int
        Number of Byzantine workers, ``0 <= 2f < n``.
    max_subsets : int
        Largest ``C(n, f)`` accepted (default ``MDA_MAX_SUBSETS = 200_000``).

    Returns
    -------
    pytree
        Leaves of shape ``(...)``, in the input dtype.

    Raises
    ------
    ValueError
        ``"mda needs n > 2f, got n=.., f=.."`` when ``n <= 2f``;
        ``"mda needs at most max_subsets=.. subsets to enumerate, got C(n, f) = ..."``
        when ``C(n, f) > max_subsets``; or for malformed ``updates``.

    References
    ----------
    E. M. El Mhamdi, R. Guerraoui, A. Guirguis, L. N. Hoang, S. Rouault,
    "Genuinely distributed Byzantine machine learning", PODC 2020.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> x = jnp.array([[0.0], [1.0], [2.0], [10.0]])
    >>> np.asarray(mda(x, f=1))
    array([1.], dtype=float32)
    """
    n = kernels.num_workers(updates, "mda")
    check_mda(n, f, max_subsets)
    masks = jnp.asarray(_subset_masks(n, n - f))
    distances = kernels.pairwise_squared_distances(updates)

    def diameter(mask):
        pair = mask[:, None] & mask[None, :]
        return jnp.max(jnp.where(pair, distances, -jnp.inf))

    diameters = lax.map(diameter, masks, batch_size=4096)
    chosen = masks[jnp.argmin(diameters)]
    return kernels.weighted_sum(jnp.where(chosen, 1.0 / (n - f), 0.0), updates)


def monna(updates: PyTree, f: int, trusted: int = 0) -> PyTree:
    """MoNNA: the mean of the ``n - f`` nearest neighbours of a trusted vector (itself included).

    Ties go to the lower index; bad vectors are taken last.

    Parameters
    ----------
    updates : pytree
        Every leaf a floating array of shape ``(n, ...)``.
    f : int
        Number of Byzantine workers, ``0 <= 2f < n``.
    trusted : int
        Index of the worker whose vector is trusted, ``0 <= trusted < n``.

    Returns
    -------
    pytree
        Leaves of shape ``(...)``, in the input dtype.

    Raises
    ------
    ValueError
        ``"monna needs n > 2f, got n=.., f=.."`` when ``n <= 2f``;
        ``"monna needs 0 <= trusted < n, got n=.., trusted=.."``; or for
        malformed ``updates``.

    References
    ----------
    S. Farhadkhani, R. Guerraoui, N. Gupta, L. N. Hoang, R. Pinot,
    J. Stephan, "Robust collaborative learning with linear gradient
    overhead", ICML 2023.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> x = jnp.array([[0.0], [1.0], [2.0], [10.0]])
    >>> np.asarray(monna(x, f=1))
    array([1.], dtype=float32)
    >>> np.round(np.asarray(monna(x, f=1, trusted=3)), 4)
    array([4.3333], dtype=float32)
    """
    n = kernels.num_workers(updates, "monna")
    check_monna(n, f, trusted)
    anchor = jax.tree_util.tree_map(lambda leaf: leaf[trusted], updates)
    distances = kernels.squared_distances_to(updates, anchor)
    chosen = kernels.smallest_mask(distances, n - f)
    return kernels.weighted_sum(jnp.where(chosen, 1.0 / (n - f), 0.0), updates)
