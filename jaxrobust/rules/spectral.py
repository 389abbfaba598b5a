"""Spectral rules: CAF (covariance-bound agnostic filter) and DnC (divide and conquer).

Both filter workers along the top singular direction of the centred updates.
The optax transformations in :mod:`jaxrobust.rules.aggregators` wrap them.
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
