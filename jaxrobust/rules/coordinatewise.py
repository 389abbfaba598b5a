"""Coordinate-wise rules: mean, median, trimmed mean, mean around the median.

Pure functions on worker-stacked pytrees (a leading worker axis of size ``n``
on every leaf) that return one pytree without that axis; sums run in at least
float32; ``f`` is the declared number of Byzantine workers. The optax
transformations in :mod:`jaxrobust.rules.aggregators` wrap them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrobust import kernels
from jaxrobust.kernels import PyTree
from jaxrobust.rules.base import require

Array = jax.Array


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
    window minimises its largest distance to the median and, among those,
    keeps every value nearer than that distance, taking values at exactly
    that distance from below the median first (lowest ``j``). The median is
    that of :func:`median` (mean of the two middle values for even ``n``).
    Up to ``kernels.SORT_NETWORK_MAX_N`` workers the window is found on the
    sorted values (a sorting network); above, by two selections
    (:func:`jaxrobust.kernels.closest_sum`) instead of sorting the worker
    axis (n = 1,024, d = 65,536: 26 s -> 1.2 s on the 2-core CPU). Both
    give the same values, ties included, to float rounding.

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
    if n > kernels.SORT_NETWORK_MAX_N:  # two selections instead of a sort of the worker axis

        def one(leaf):
            centre = kernels.coordinate_median(leaf)
            return (kernels.closest_sum(leaf, centre, keep) / keep).astype(leaf.dtype)

        return jax.tree_util.tree_map(one, updates)

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
        # of the windows of least cost, the lowest that keeps every value nearer than that
        # cost (the closest n - f values, boundary ties from below), as closest_sum does
        below_far_side = sum((s[i] - med < best_cost).astype(jnp.int32) for i in range(n))
        start = jnp.clip(jnp.maximum(start, below_far_side - keep), 0, f)
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
