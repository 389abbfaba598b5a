"""Robust aggregators as pure functions on worker-stacked pytrees.

Each function takes ``updates``, a pytree whose every leaf is a floating
array of shape ``(n, ...)`` (a leading worker axis of size ``n``; worker
``i``'s vector ``x_i`` is the concatenation of its rows over all leaves), and
returns one pytree without that axis, with the leaves' shapes ``(...)`` and
dtypes. Sums run in at least float32. ``f`` is the declared number of
Byzantine workers. Bounds on ``n`` and ``f`` are checked with a
``ValueError`` when the shapes are known (at trace time under ``jit``). The
optax transformations in :mod:`jaxrobust.aggregators` wrap these functions.

A vector with a NaN or infinite entry is *bad*: its norm and its distances
are ``inf`` (see :mod:`jaxrobust.kernels`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxrobust import kernels
from jaxrobust.kernels import PyTree

Array = jax.Array

# Largest number of candidate subsets MDA enumerates by default.
MDA_MAX_SUBSETS = 200_000

# Scale-aware default smoothing of the geometric median: this fraction of the
# spread median_i median_j ||x_i - x_j|| (see weiszfeld_weights).
GM_NU_RELATIVE = 1e-3


def finite_median(values: Array, finite: Array) -> Array:
    """Median of ``values`` over the entries where ``finite`` is true; 0 when there is none.

    The mean of the two middle entries for an even count, as ``numpy.median``.

    Parameters
    ----------
    values : Array
        Shape ``(n,)``.
    finite : Array
        Bool, shape ``(n,)``.

    Returns
    -------
    Array
        Scalar, the dtype of ``values``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> finite_median(jnp.array([3.0, jnp.inf, 1.0, 2.0]), jnp.array([True, False, True, True]))
    Array(2., dtype=float32)
    """
    ordered = jnp.sort(jnp.where(finite, values, jnp.inf))
    k = jnp.sum(finite)
    lo = ordered[jnp.maximum((k - 1) // 2, 0)]
    hi = ordered[jnp.minimum(k // 2, values.shape[0] - 1)]
    middle = jnp.where(k % 2 == 1, lo, 0.5 * (lo + hi))
    return jnp.where(k > 0, middle, jnp.zeros((), values.dtype))


# --------------------------------------------------------------------------
# Bounds
# --------------------------------------------------------------------------


def require(name: str, condition: bool, bound: str, **values: int) -> None:
    """Raise ``ValueError('<name> needs <bound>, got n=.., f=..')`` unless ``condition``.

    Parameters
    ----------
    name : str
        The rule's name, first word of the message.
    condition : bool
        The bound, already evaluated.
    bound : str
        The bound as text, e.g. ``"n > 2f"``.
    **values : int
        The quantities the bound is about, listed in the message.

    Raises
    ------
    ValueError
        ``"<name> needs <bound>, got k1=v1, k2=v2"`` when ``condition`` is false.

    Examples
    --------
    >>> require("krum", 4 > 2 * 1 + 2, "n > 2f + 2", n=4, f=1)
    Traceback (most recent call last):
    ...
    ValueError: krum needs n > 2f + 2, got n=4, f=1
    """
    if not condition:
        got = ", ".join(f"{k}={v}" for k, v in values.items())
        raise ValueError(f"{name} needs {bound}, got {got}")


def check_trimmed_mean(n: int, f: int) -> None:
    """Check the bound of :func:`trimmed_mean`: ``n > 2f``.

    Parameters
    ----------
    n, f : int
        Number of workers and of Byzantine workers.

    Raises
    ------
    ValueError
        ``"trimmed_mean needs n > 2f, got n=.., f=.."`` when ``n <= 2f``.

    Examples
    --------
    >>> check_trimmed_mean(5, 2)
    >>> check_trimmed_mean(4, 2)
    Traceback (most recent call last):
    ...
    ValueError: trimmed_mean needs n > 2f, got n=4, f=2
    """
    require("trimmed_mean", n > 2 * f, "n > 2f", n=n, f=f)


def check_median(n: int, f: int) -> None:
    """Check the bound of :func:`median` for a declared ``f``: ``n > 2f``.

    Parameters
    ----------
    n, f : int
        Number of workers and of Byzantine workers.

    Raises
    ------
    ValueError
        ``"median needs n > 2f, got n=.., f=.."`` when ``n <= 2f``.

    Examples
    --------
    >>> check_median(3, 1)
    >>> check_median(2, 1)
    Traceback (most recent call last):
    ...
    ValueError: median needs n > 2f, got n=2, f=1
    """
    require("median", n > 2 * f, "n > 2f", n=n, f=f)


def check_meamed(n: int, f: int) -> None:
    """Check the bound of :func:`meamed`: ``n > 2f``.

    Parameters
    ----------
    n, f : int
        Number of workers and of Byzantine workers.

    Raises
    ------
    ValueError
        ``"meamed needs n > 2f, got n=.., f=.."`` when ``n <= 2f``.

    Examples
    --------
    >>> check_meamed(2, 1)
    Traceback (most recent call last):
    ...
    ValueError: meamed needs n > 2f, got n=2, f=1
    """
    require("meamed", n > 2 * f, "n > 2f", n=n, f=f)


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


def check_dnc(n: int, f: int, filter_fraction: float) -> None:
    """Check the bounds of :func:`dnc`: ``n > 2f`` and ``ceil(filter_fraction * f) < n``.

    Parameters
    ----------
    n, f : int
        Number of workers and of Byzantine workers.
    filter_fraction : float
        Multiplier of ``f`` giving the number of workers removed per round.

    Raises
    ------
    ValueError
        ``"dnc needs n > 2f, got n=.., f=.."`` when ``n <= 2f``;
        ``"dnc needs ceil(filter_fraction * f) < n, got n=.., removed=.."``
        otherwise when every worker would be removed.

    Examples
    --------
    >>> check_dnc(5, 2, filter_fraction=1.0)
    >>> check_dnc(5, 2, filter_fraction=2.5)
    Traceback (most recent call last):
    ...
    ValueError: dnc needs ceil(filter_fraction * f) < n, got n=5, removed=5
    """
    require("dnc", n > 2 * f, "n > 2f", n=n, f=f)
    removed = int(np.ceil(filter_fraction * f))
    require("dnc", removed < n, "ceil(filter_fraction * f) < n", n=n, removed=removed)


def check_caf(n: int, f: int) -> None:
    """Check the bound of :func:`caf`: ``n > 2f``.

    Parameters
    ----------
    n, f : int
        Number of workers and of Byzantine workers.

    Raises
    ------
    ValueError
        ``"caf needs n > 2f, got n=.., f=.."`` when ``n <= 2f``.

    Examples
    --------
    >>> check_caf(4, 2)
    Traceback (most recent call last):
    ...
    ValueError: caf needs n > 2f, got n=4, f=2
    """
    require("caf", n > 2 * f, "n > 2f", n=n, f=f)


# --------------------------------------------------------------------------
# Coordinate-wise rules
# --------------------------------------------------------------------------


def mean(updates: PyTree) -> PyTree:
    """Plain average over workers (not robust: one bad vector spoils it).

    ``(1/n) sum_i x_i``, the baseline every robust rule is compared with.

    Parameters
    ----------
    updates : pytree
        Every leaf a floating array of shape ``(n, ...)``.

    Returns
    -------
    pytree
        Leaves of shape ``(...)``, in the input dtype.

    Raises
    ------
    ValueError
        If ``updates`` has no leaf, a scalar leaf, or leaves with different
        worker-axis sizes.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> x = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]])
    >>> np.round(np.asarray(mean(x)), 4)
    array([3., 5.], dtype=float32)
    """
    n = kernels.num_workers(updates, "mean")
    return kernels.weighted_sum(jnp.full((n,), 1.0 / n), updates, skip_zero=False)


def _coordinatewise(updates: PyTree, rule) -> PyTree:
    def one(leaf):
        acc = kernels.accumulation_dtype(leaf.dtype)
        rows = kernels.sorted_workers(leaf)
        return rule([r.astype(acc) for r in rows]).astype(leaf.dtype)

    return jax.tree_util.tree_map(one, updates)


def median(updates: PyTree) -> PyTree:
    """Coordinate-wise median (CWMed); for even ``n`` the mean of the two middle values.

    Per coordinate ``k``, the median of ``x_1[k], ..., x_n[k]``. NaN sorts as
    ``+inf``. This function takes no ``f``: the rule tolerates up to ``f``
    bad vectors when ``n > 2f`` (:func:`check_median` checks a declared ``f``).

    Parameters
    ----------
    updates : pytree
        Every leaf a floating array of shape ``(n, ...)``.

    Returns
    -------
    pytree
        Leaves of shape ``(...)``, in the input dtype.

    Raises
    ------
    ValueError
        If ``updates`` has no leaf, a scalar leaf, or leaves with different
        worker-axis sizes.

    References
    ----------
    D. Yin, Y. Chen, K. Ramchandran, P. Bartlett, "Byzantine-robust
    distributed learning: towards optimal statistical rates", ICML 2018.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> x = jnp.array([[1.0, 0.0], [2.0, 1.0], [3.0, 2.0], [100.0, -100.0]])
    >>> np.asarray(median(x))
    array([2.5, 0.5], dtype=float32)
    """
    kernels.num_workers(updates, "median")
    return jax.tree_util.tree_map(kernels.coordinate_median, updates)


def trimmed_mean(updates: PyTree, f: int) -> PyTree:
    """Coordinate-wise trimmed mean (CWTM): drop the ``f`` largest and ``f`` smallest.

    Per coordinate, sort the ``n`` values and average the ``n - 2f`` middle
    ones. ``f = 0`` is the mean. Up to ``f`` bad vectors are trimmed away
    (NaN sorts as ``+inf``).

    Parameters
    ----------
    updates : pytree
        Every leaf a floating array of shape ``(n, ...)``.
    f : int
        Number of values dropped at each end, ``0 <= 2f < n``.

    Returns
    -------
    pytree
        Leaves of shape ``(...)``, in the input dtype.

    Raises
    ------
    ValueError
        ``"trimmed_mean needs n > 2f, got n=.., f=.."`` when ``n <= 2f``, or
        for malformed ``updates`` (no leaf, a scalar leaf, unequal worker axes).

    References
    ----------
    D. Yin, Y. Chen, K. Ramchandran, P. Bartlett, "Byzantine-robust
    distributed learning: towards optimal statistical rates", ICML 2018.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> x = jnp.array([[1.0, 0.0], [2.0, 1.0], [3.0, 2.0], [100.0, -100.0]])
    >>> np.asarray(trimmed_mean(x, f=1))
    array([2.5, 0.5], dtype=float32)
    >>> trimmed_mean(x, f=2)
    Traceback (most recent call last):
    ...
    ValueError: trimmed_mean needs n > 2f, got n=4, f=2
    """
    n = kernels.num_workers(updates, "trimmed_mean")
    check_trimmed_mean(n, f)
    return jax.tree_util.tree_map(lambda leaf: kernels.coordinate_trimmed_mean(leaf, f), updates)


def meamed(updates: PyTree, f: int) -> PyTree:
    """Mean around the median: per coordinate, the mean of the ``n - f`` values nearest the median.

    The ``n - f`` closest values form a window of consecutive order
    statistics ``s_j .. s_{j+n-f-1}`` for some ``j`` in ``0..f``; the chosen
    window minimises its largest distance to the median (ties: lowest ``j``).
    The median is that of :func:`median` (mean of the two middle values for
    even ``n``).

    Parameters
    ----------
    updates : pytree
        Every leaf a floating array of shape ``(n, ...)``.
    f : int
        Number of values left out per coordinate, ``0 <= 2f < n``.

    Returns
    -------
    pytree
        Leaves of shape ``(...)``, in the input dtype.

    Raises
    ------
    ValueError
        ``"meamed needs n > 2f, got n=.., f=.."`` when ``n <= 2f``, or for
        malformed ``updates``.

    References
    ----------
    C. Xie, O. Koyejo, I. Gupta, "Generalized Byzantine-tolerant SGD",
    arXiv:1802.10116, 2018.

    Examples
    --------
    Coordinate 0 has median 2.5 and keeps ``{1, 2, 3}``; coordinate 1 has
    median 0.5 and keeps ``{0, 1, 2}``:

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> x = jnp.array([[1.0, 0.0], [2.0, 1.0], [3.0, 2.0], [100.0, -100.0]])
    >>> np.asarray(meamed(x, f=1))
    array([2., 1.], dtype=float32)
    """
    n = kernels.num_workers(updates, "meamed")
    check_meamed(n, f)
    keep = n - f

    def rule(s):
        med = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
        best_cost = None
        start = jnp.zeros(med.shape, jnp.int32)
        for j in range(f + 1):
            cost = jnp.maximum(med - s[j], s[j + keep - 1] - med)
            if best_cost is None:
                best_cost = cost
            else:
                better = cost < best_cost
                start = jnp.where(better, j, start)
                best_cost = jnp.where(better, cost, best_cost)
        total = None
        for i in range(n):
            # order statistic i lies in the window iff start <= i < start + keep
            lo, hi = max(0, i - keep + 1), min(i, f)
            if lo > hi:
                continue
            inside = (start >= lo) & (start <= hi)
            term = jnp.where(inside, s[i], 0.0)
            total = term if total is None else total + term
        return total / keep

    return _coordinatewise(updates, rule)


# --------------------------------------------------------------------------
# Distance-based rules (one Gram matrix, then work in n x n space)
# --------------------------------------------------------------------------


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


def centered_gram(gram: Array, weights: Array) -> Array:
    """Gram matrix of ``x_i - mu`` with ``mu = sum_i weights_i x_i`` (weights summing to 1).

    ``(I - 1 w') G (I - 1 w')'``, computed in ``(n, n)`` space.

    Parameters
    ----------
    gram : Array
        ``G[i, j] = <x_i, x_j>``, shape ``(n, n)``, finite.
    weights : Array
        Shape ``(n,)``, summing to 1.

    Returns
    -------
    Array
        ``<x_i - mu, x_j - mu>``, shape ``(n, n)``, the dtype of ``gram``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from jaxrobust import kernels
    >>> x = jnp.array([[0.0], [2.0]])
    >>> np.round(np.asarray(centered_gram(kernels.gram_matrix(x), jnp.array([0.5, 0.5]))), 4)
    array([[ 1., -1.],
           [-1.,  1.]], dtype=float32)
    """
    n = gram.shape[0]
    p = jnp.eye(n, dtype=gram.dtype) - weights[None, :]
    highest = lax.Precision.HIGHEST
    return jnp.matmul(jnp.matmul(p, gram, precision=highest), p.T, precision=highest)


def caf_gram(updates: PyTree) -> Array:
    """Gram matrix of the finite worker vectors centred on their mean; bad rows marked ``inf``.

    ``G[i, j] = <x_i - m, x_j - m>`` with ``m`` the mean of the finite
    vectors, each product at ``Precision.HIGHEST`` in at least float32. CAF
    only uses ``G`` through centred Gram matrices, which do not depend on the
    centre, so the result is the same in exact arithmetic as with ``m = 0``;
    centring first keeps it exact to float rounding when the vectors share an
    offset much larger than their spread. A bad vector (a NaN or infinite
    entry) is left out of ``m`` and its row and column are ``inf``.

    Parameters
    ----------
    updates : pytree
        Every leaf of shape ``(n, ...)``.

    Returns
    -------
    Array
        Shape ``(n, n)``, at least float32.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[4096.0], [4097.0], [jnp.nan]])
    >>> caf_gram(x).tolist()
    [[0.25, -0.25, inf], [-0.25, 0.25, inf], [inf, inf, inf]]
    """
    finite = jnp.isfinite(kernels.worker_squared_norms(updates))
    weights = finite / jnp.maximum(jnp.sum(finite), 1)
    centre = kernels.weighted_sum(weights, updates)
    both = finite[:, None] & finite[None, :]
    return jnp.where(both, kernels.gram_matrix(updates, centre), jnp.inf)


def caf_weights(gram: Array, f: int) -> Array:
    """Coefficients of the CAF output ``sum_i a_i x_i``, computed on the Gram matrix.

    See :func:`caf` for the algorithm. The top eigenpair of the weighted
    covariance is that of ``C^1/2 G_c C^1/2 / sum(c)`` (``G_c`` the centred
    Gram matrix, ``C = diag(c)``), so every round is ``O(n^3)``. Bad vectors
    (non-finite diagonal) start with weight 0.

    Parameters
    ----------
    gram : Array
        ``G[i, j] = <x_i, x_j>``, shape ``(n, n)``, float32 or wider.
    f : int
        Number of Byzantine workers, ``n > 2f``.

    Returns
    -------
    Array
        Shape ``(n,)``, non-negative, summing to 1, the dtype of ``gram``.

    References
    ----------
    Y. Allouah, R. Guerraoui, J. Stephan, "Towards trustworthy federated
    learning with untrusted participants", ICML 2025.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from jaxrobust import kernels
    >>> x = jnp.array([[0.0], [1.0], [2.0], [10.0]])
    >>> np.round(np.asarray(caf_weights(kernels.gram_matrix(x), f=1)), 4)
    array([0.2929, 0.3389, 0.3682, 0.    ], dtype=float32)
    """
    n = gram.shape[0]
    finite = kernels.finite_from_gram(gram)
    g = jnp.where(finite[:, None] & finite[None, :], gram, 0.0)
    c0 = finite.astype(g.dtype)

    def running(carry):
        rounds, c, _, _ = carry
        return (rounds < n) & (jnp.sum(c) > n - 2 * f)

    def body(carry):
        rounds, c, best_a, best_lambda = carry
        active = jnp.sum(c) > n - 2 * f
        a = c / jnp.sum(c)
        gc = centered_gram(g, a)
        root = jnp.sqrt(c)
        # Nonzero spectrum of the weighted covariance = that of C^1/2 Gc C^1/2 / sum(c).
        evals, evecs = jnp.linalg.eigh(root[:, None] * gc * root[None, :] / jnp.sum(c))
        top_value, top_vector = evals[-1], evecs[:, -1]
        # Projection of x_i - mu on the top direction, squared.
        proj = jnp.matmul(gc, root * top_vector, precision=lax.Precision.HIGHEST)
        tau = jnp.where(c > 0, proj * proj, 0.0)
        tau_max = jnp.max(tau)
        improved = active & (top_value < best_lambda)
        best_a = jnp.where(improved, a, best_a)
        best_lambda = jnp.where(improved, top_value, best_lambda)
        # The algorithm removes every worker with tau_i = tau_max exactly:
        # decided by the comparison, since under jit tau * (1 / tau_max)
        # may leave a few ulps at the argmax and keep it active.
        at_max = tau >= tau_max
        shrink = 1.0 - tau / jnp.where(tau_max > 0, tau_max, 1.0)
        shrink = jnp.where(at_max, 0.0, jnp.clip(shrink, 0.0, 1.0))
        c = jnp.where(active & (tau_max > 0), c * shrink, c)
        # A round that removes nothing (all tau = 0) ends the loop.
        rounds = jnp.where(tau_max > 0, rounds + 1, n)
        return rounds, c, best_a, best_lambda

    start = (jnp.int32(0), c0, c0 / jnp.sum(c0), jnp.asarray(jnp.inf, g.dtype))
    _, _, best_a, _ = lax.while_loop(running, body, start)
    return best_a


def caf(updates: PyTree, f: int) -> PyTree:
    """CAF, the covariance-bound agnostic filter (Allouah et al., 2025).

    Weights ``c_i = 1``; while ``sum_i c_i > n - 2f``: ``mu_c`` the
    ``c``-weighted mean, ``(lambda, v)`` the top eigenpair of the weighted
    covariance ``sum_i c_i (x_i - mu_c)(x_i - mu_c)' / sum_i c_i``,
    ``tau_i = <x_i - mu_c, v>^2``, ``c_i <- c_i (1 - tau_i / max_j tau_j)``.
    Returns the ``mu_c`` of least ``lambda`` seen. Runs on the Gram matrix
    (at most ``n`` rounds, each ``O(n^3)``, stopping as soon as
    ``sum_i c_i <= n - 2f``); the data is read twice. The top eigenpair is
    exact (``eigh``), where ByzFL runs one power-method step.

    Parameters
    ----------
    updates : pytree
        Every leaf a floating array of shape ``(n, ...)``.
    f : int
        Number of Byzantine workers, ``0 <= 2f < n``.

    Returns
    -------
    pytree
        Leaves of shape ``(...)``, in the input dtype.

    Raises
    ------
    ValueError
        ``"caf needs n > 2f, got n=.., f=.."`` when ``n <= 2f``, or for
        malformed ``updates``.

    References
    ----------
    Y. Allouah, R. Guerraoui, J. Stephan, "Towards trustworthy federated
    learning with untrusted participants", ICML 2025.

    Examples
    --------
    The outlier gets weight 0 (see :func:`caf_weights`):

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> x = jnp.array([[0.0], [1.0], [2.0], [10.0]])
    >>> np.round(np.asarray(caf(x, f=1)), 4)
    array([1.0753], dtype=float32)
    """
    n = kernels.num_workers(updates, "caf")
    check_caf(n, f)
    return kernels.weighted_sum(caf_weights(caf_gram(updates), f), updates)


def _flat_columns(updates: PyTree, columns: Array) -> Array:
    """The given global coordinates of every worker vector, shape ``(n, len(columns))``."""
    leaves = jax.tree_util.tree_leaves(updates)
    flat = jnp.concatenate(
        [
            kernels.worker_rows(leaf).astype(kernels.accumulation_dtype(leaf.dtype))
            for leaf in leaves
        ],
        axis=1,
    )
    return jnp.take(flat, columns, axis=1)


def dnc(
    updates: PyTree,
    f: int,
    key: Array,
    *,
    iterations: int = 1,
    subsample: int = 10_000,
    filter_fraction: float = 1.0,
) -> PyTree:
    """Divide and conquer (Shejwalkar and Houmansadr, 2021).

    Each of ``iterations`` rounds draws ``subsample`` coordinates without
    replacement (all of them when ``subsample >= d``), centres the
    sub-vectors, scores every worker by its squared projection on the top
    right singular vector of the centred ``(n, subsample)`` matrix and
    removes the ``ceil(filter_fraction * f)`` highest scores. The output is
    the mean of the workers never removed. Bad vectors score ``inf``.

    Parameters
    ----------
    updates : pytree
        Every leaf a floating array of shape ``(n, ...)``; ``d`` is the total
        number of coordinates.
    f : int
        Number of Byzantine workers, ``0 <= 2f < n``.
    key : Array
        A PRNG key (for the coordinate draws).
    iterations : int
        Number of filtering rounds.
    subsample : int
        Coordinates drawn per round (capped at ``d``).
    filter_fraction : float
        Workers removed per round: ``ceil(filter_fraction * f)``, fewer than ``n``.

    Returns
    -------
    pytree
        Leaves of shape ``(...)``, in the input dtype.

    Raises
    ------
    ValueError
        ``"dnc needs n > 2f, got n=.., f=.."`` when ``n <= 2f``;
        ``"dnc needs ceil(filter_fraction * f) < n, got n=.., removed=.."``;
        or for malformed ``updates``.

    References
    ----------
    V. Shejwalkar, A. Houmansadr, "Manipulating the Byzantine: optimizing
    model poisoning attacks and defenses for federated learning", NDSS 2021.

    Examples
    --------
    With ``subsample >= d`` every coordinate is used, so the key does not
    matter; the outlier is removed and the other four are averaged:

    >>> import jax, jax.numpy as jnp
    >>> import numpy as np
    >>> x = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [10.0, 10.0]])
    >>> np.asarray(dnc(x, f=1, key=jax.random.key(0)))
    array([0.375, 0.375], dtype=float32)
    """
    n = kernels.num_workers(updates, "dnc")
    check_dnc(n, f, filter_fraction)
    removed = int(np.ceil(filter_fraction * f))
    dim = sum(int(np.prod(leaf.shape[1:])) for leaf in jax.tree_util.tree_leaves(updates))
    size = min(subsample, dim)
    finite = jnp.isfinite(kernels.worker_squared_norms(updates))
    keep = jnp.ones((n,), bool)
    for k in jax.random.split(key, iterations):
        cols = kernels.sample_without_replacement(k, dim, size)
        sub = jnp.where(finite[:, None], _flat_columns(updates, cols), 0.0)
        centre = jnp.sum(sub, axis=0) / jnp.maximum(jnp.sum(finite), 1)
        centred = jnp.where(finite[:, None], sub - centre, 0.0)
        evals, evecs = jnp.linalg.eigh(jnp.dot(centred, centred.T, precision=lax.Precision.HIGHEST))
        scores = jnp.where(finite, evals[-1] * evecs[:, -1] ** 2, jnp.inf)
        keep = keep & kernels.smallest_mask(scores, n - removed)
    return kernels.weighted_sum(jnp.where(keep, 1.0 / jnp.sum(keep), 0.0), updates)
