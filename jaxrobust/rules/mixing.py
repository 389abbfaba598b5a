"""Mixing pre-aggregation: nearest-neighbour mixing (NNM) and bucketing.

NNM keeps the worker axis (each vector replaced by the mean of its ``n - f``
nearest neighbours); bucketing shrinks it to the bucket means. The optax
transformations in :mod:`jaxrobust.rules.preaggregators` wrap them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxrobust import kernels
from jaxrobust.kernels import PyTree
from jaxrobust.rules.base import require

Array = jax.Array


def check_nnm(n: int, f: int) -> None:
    """Check the bound of :func:`nnm`: ``n > f``.

    Parameters
    ----------
    n, f : int
        Number of workers and of Byzantine workers.

    Raises
    ------
    ValueError
        ``"nnm needs n > f, got n=.., f=.."`` when ``n <= f``.

    Examples
    --------
    >>> check_nnm(3, 2)
    >>> check_nnm(2, 2)
    Traceback (most recent call last):
    ...
    ValueError: nnm needs n > f, got n=2, f=2
    """
    require("nnm", n > f, "n > f", n=n, f=f)


def nnm_weights(distances: Array, f: int) -> tuple[Array, Array]:
    """Mixing matrix of NNM and the finite-vector mask.

    Row ``i`` averages the ``n - f`` vectors nearest to ``x_i`` (itself
    included; ties go to the lower index). A bad vector's row averages
    ``n - f`` finite vectors (lowest indices first).

    Parameters
    ----------
    distances : Array
        Squared distances, shape ``(n, n)`` (``inf`` on the rows and columns
        of bad vectors, as from :func:`jaxrobust.kernels.pairwise_squared_distances`).
    f : int
        Number of Byzantine workers, ``0 <= f < n``.

    Returns
    -------
    weights : Array
        Shape ``(n, n)``, each row ``n - f`` entries of ``1 / (n - f)``.
    finite : Array
        Bool, shape ``(n,)``: which vectors are finite.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from jaxrobust import kernels
    >>> x = jnp.array([[0.0], [1.0], [2.0], [10.0]])
    >>> w, finite = nnm_weights(kernels.pairwise_squared_distances(x), f=1)
    >>> np.round(np.asarray(w) * 3, 4)
    array([[1., 1., 1., 0.],
           [1., 1., 1., 0.],
           [1., 1., 1., 0.],
           [0., 1., 1., 1.]], dtype=float32)
    """
    n = distances.shape[0]
    finite = jnp.isfinite(jnp.diagonal(distances))
    big = jnp.finfo(distances.dtype).max
    d = jnp.where(finite[None, :], jnp.where(finite[:, None], distances, big), jnp.inf)
    chosen = kernels.smallest_mask(d, n - f)
    return jnp.where(chosen, 1.0 / (n - f), 0.0), finite


def nnm(updates: PyTree, f: int) -> PyTree:
    """Nearest neighbour mixing (Allouah et al., 2023).

    Replace each ``x_i`` by the average of its ``n - f`` nearest vectors,
    itself included (ties go to the lower index). Costs one Gram matrix and
    one mixing product. Bad vectors are replaced by an average of finite
    ones, so the output is finite. If ``F`` is ``(f, kappa)``-robust,
    ``F o NNM`` is ``(f, O(kappa f / n))``-robust.

    Parameters
    ----------
    updates : pytree
        Every leaf a floating array of shape ``(n, ...)``.
    f : int
        Number of Byzantine workers, ``0 <= f < n``.

    Returns
    -------
    pytree
        ``updates``' structure, shapes and dtypes.

    Raises
    ------
    ValueError
        ``"nnm needs n > f, got n=.., f=.."`` when ``n <= f``, or for
        malformed ``updates``.

    References
    ----------
    Y. Allouah, S. Farhadkhani, R. Guerraoui, N. Gupta, R. Pinot, J. Stephan,
    "Fixing by mixing: a recipe for optimal Byzantine ML under
    heterogeneity", AISTATS 2023.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> x = jnp.array([[0.0], [1.0], [2.0], [10.0]])
    >>> np.round(np.asarray(nnm(x, f=1)), 4)
    array([[1.    ],
           [1.    ],
           [1.    ],
           [4.3333]], dtype=float32)
    """
    n = kernels.num_workers(updates, "nnm")
    check_nnm(n, f)
    weights, finite = nnm_weights(kernels.pairwise_squared_distances(updates), f)
    return kernels.mix_rows(weights, updates, finite)


def bucketing(updates: PyTree, bucket_size: int, key: Array) -> PyTree:
    """Bucketing (Karimireddy et al., 2022): shuffle, then average consecutive buckets.

    Output: ``ceil(n / bucket_size)`` vectors; the last bucket holds the
    remainder when ``bucket_size`` does not divide ``n``. A bad vector only
    spoils its own bucket.

    Parameters
    ----------
    updates : pytree
        Every leaf a floating array of shape ``(n, ...)``.
    bucket_size : int
        ``s``, with ``1 <= s <= n``.
    key : Array
        A PRNG key for the shuffle.

    Returns
    -------
    pytree
        Leaves of shape ``(ceil(n / s), ...)``, in the input dtypes.

    Raises
    ------
    ValueError
        ``"bucketing needs 1 <= bucket_size <= n, got n=.., bucket_size=.."``,
        or for malformed ``updates``.

    References
    ----------
    S. P. Karimireddy, L. He, M. Jaggi, "Byzantine-robust learning on
    heterogeneous datasets via bucketing", ICLR 2022.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import numpy as np
    >>> x = jnp.array([[0.0], [1.0], [2.0], [3.0], [4.0]])
    >>> key = jax.random.key(0)
    >>> bucketing(x, 2, key).shape
    (3, 1)
    >>> np.asarray(bucketing(x, 5, key))
    array([[2.]], dtype=float32)
    >>> np.sort(np.asarray(bucketing(x, 1, key)).ravel())
    array([0., 1., 2., 3., 4.], dtype=float32)
    """
    n = kernels.num_workers(updates, "bucketing")
    require(
        "bucketing", 1 <= bucket_size <= n, "1 <= bucket_size <= n", n=n, bucket_size=bucket_size
    )
    order = jax.random.permutation(key, n)
    buckets = math.ceil(n / bucket_size)

    def one(leaf):
        acc = kernels.accumulation_dtype(leaf.dtype)
        out = []
        for b in range(buckets):
            members = range(b * bucket_size, min(n, (b + 1) * bucket_size))
            total = sum(jnp.take(leaf, order[i], axis=0).astype(acc) for i in members)
            out.append(total / len(members))
        return jnp.stack(out).astype(leaf.dtype)

    return jax.tree_util.tree_map(one, updates)
