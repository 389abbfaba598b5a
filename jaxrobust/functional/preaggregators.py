"""Pre-aggregation rules as pure functions on worker-stacked pytrees.

They take ``updates``, a pytree whose every leaf is a floating array of
shape ``(n, ...)`` (a leading worker axis), and keep the worker axis (ARC,
clipping, NNM) or shrink it (bucketing); leaves keep their dtypes. Norms are
global over all leaves of a worker's vector and computed in at least
float32. The optax transformations in :mod:`jaxrobust.preaggregators` wrap
them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxrobust import kernels
from jaxrobust.functional.aggregators import finite_median, require
from jaxrobust.kernels import PyTree

Array = jax.Array


def arc_clipped_count(n: int, f: int) -> int:
    """How many vectors ARC clips: ``floor(2 f (n - f) / n)``, in integer arithmetic.

    Parameters
    ----------
    n, f : int
        Number of workers and of Byzantine workers.

    Returns
    -------
    int
        ``k = floor(2 f (n - f) / n)``; ``k >= f`` when ``n > 2f``.

    References
    ----------
    Y. Allouah, R. Guerraoui, N. Gupta, A. Jellouli, G. Rizk, J. Stephan,
    "Boosting robustness by clipping gradients in distributed learning",
    2024 (published as "Adaptive gradient clipping for robust federated
    learning", ICLR 2025).

    Examples
    --------
    >>> arc_clipped_count(4, 1), arc_clipped_count(10, 3), arc_clipped_count(10, 0)
    (1, 4, 0)
    """
    return (2 * f * (n - f)) // n


def check_arc(n: int, f: int) -> None:
    """Check the bound of :func:`arc`: ``n > 2f``.

    Parameters
    ----------
    n, f : int
        Number of workers and of Byzantine workers.

    Raises
    ------
    ValueError
        ``"arc needs n > 2f, got n=.., f=.."`` when ``n <= 2f``.

    Examples
    --------
    >>> check_arc(4, 2)
    Traceback (most recent call last):
    ...
    ValueError: arc needs n > 2f, got n=4, f=2
    """
    require("arc", n > 2 * f, "n > 2f", n=n, f=f)


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


def clip_to(updates: PyTree, threshold: Array) -> PyTree:
    """Clip every worker vector to norm at most ``threshold`` (a scalar or one per worker).

    ``x_i <- x_i * min(1, threshold / ||x_i||)``. A bad vector (infinite
    norm) becomes the zero vector, never NaN; so does every vector whose
    threshold is 0.

    Parameters
    ----------
    updates : pytree
        Every leaf a floating array of shape ``(n, ...)``.
    threshold : Array
        Non-negative, shape ``()`` or ``(n,)``.

    Returns
    -------
    pytree
        ``updates``' structure, shapes and dtypes.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> x = jnp.array([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0], [0.0, 0.5]])
    >>> np.round(np.asarray(clip_to(x, jnp.array([1.0, 1.0, 20.0, 0.0]))), 4)
    array([[0.6, 0.8],
           [0. , 1. ],
           [6. , 8. ],
           [0. , 0. ]], dtype=float32)
    """
    norms = kernels.worker_norms(updates)
    scales = jnp.where(norms > threshold, threshold / norms, 1.0)
    return kernels.scale_rows(scales, updates)


def clip(updates: PyTree, max_norm: float | None = None) -> PyTree:
    """Clipping: ``x_i <- x_i * min(1, C / ||x_i||)`` with ``C = max_norm``.

    Bad vectors become zero vectors. A static ``C`` is an absolute length;
    the default ``None`` takes ``C`` as the median norm of the finite
    vectors, so that ``clip(s X) = s clip(X)``: with an honest majority the
    median norm is at most the norm of an honest vector, so no vector weighs
    more than a typical honest one.

    Parameters
    ----------
    updates : pytree
        Every leaf a floating array of shape ``(n, ...)``.
    max_norm : float or None
        ``C >= 0`` (not checked here; :func:`jaxrobust.preaggregators.clip`
        checks it), or ``None`` for the median norm of the finite vectors.

    Returns
    -------
    pytree
        ``updates``' structure, shapes and dtypes.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> x = jnp.array([[3.0, 4.0], [0.0, 1.0]])
    >>> np.round(np.asarray(clip(x, 2.0)), 4)
    array([[1.2, 1.6],
           [0. , 1. ]], dtype=float32)
    """
    if max_norm is None:
        norms = kernels.worker_norms(updates)
        return clip_to(updates, finite_median(norms, jnp.isfinite(norms)))
    return clip_to(updates, jnp.asarray(max_norm, jnp.float32))


def arc_threshold(norms: Array, f: int) -> Array:
    """ARC's threshold: the norm of the ``(k+1)``-th largest vector, ``k = floor(2f(n-f)/n)``.

    Parameters
    ----------
    norms : Array
        The ``n`` worker norms, shape ``(n,)`` (``inf`` for bad vectors).
    f : int
        Number of Byzantine workers, with ``k = floor(2f(n-f)/n) < n``.

    Returns
    -------
    Array
        Scalar, the dtype of ``norms``.

    References
    ----------
    Y. Allouah, R. Guerraoui, N. Gupta, A. Jellouli, G. Rizk, J. Stephan,
    "Boosting robustness by clipping gradients in distributed learning",
    2024 (ICLR 2025 as "Adaptive gradient clipping for robust federated
    learning").

    Examples
    --------
    ``n = 4``, ``f = 1``: ``k = 1``, so the second largest norm:

    >>> import jax.numpy as jnp
    >>> float(arc_threshold(jnp.array([5.0, 1.0, 10.0, 0.5]), f=1))
    5.0
    """
    n = norms.shape[0]
    k = arc_clipped_count(n, f)
    return jnp.sort(norms)[n - 1 - k]


def arc(updates: PyTree, f: int) -> PyTree:
    """Adaptive robust clipping (Allouah et al., 2024).

    With ``k = floor(2 f (n - f) / n)``, clip every vector to the norm of the
    ``(k+1)``-th largest one: only the ``k`` largest change. ``f = 0`` is the
    identity. If ``F`` is ``(f, kappa)``-robust then ``F o ARC`` is
    ``(f, 3 kappa)``-robust. Needs ``n > 2f``; up to ``f`` bad vectors (at
    least ``k >= f`` are clipped) become zero vectors.

    Parameters
    ----------
    updates : pytree
        Every leaf a floating array of shape ``(n, ...)``.
    f : int
        Number of Byzantine workers, ``0 <= 2f < n``.

    Returns
    -------
    pytree
        ``updates``' structure, shapes and dtypes.

    Raises
    ------
    ValueError
        ``"arc needs n > 2f, got n=.., f=.."`` when ``n <= 2f``, or for
        malformed ``updates``.

    References
    ----------
    Y. Allouah, R. Guerraoui, N. Gupta, A. Jellouli, G. Rizk, J. Stephan,
    "Boosting robustness by clipping gradients in distributed learning",
    2024 (ICLR 2025 as "Adaptive gradient clipping for robust federated
    learning").

    Examples
    --------
    ``n = 4``, ``f = 1``: the largest vector is clipped to the second
    largest norm, 5:

    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> x = jnp.array([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0], [0.0, 0.5]])
    >>> np.round(np.asarray(arc(x, f=1)), 4)
    array([[3. , 4. ],
           [0. , 1. ],
           [3. , 4. ],
           [0. , 0.5]], dtype=float32)
    """
    n = kernels.num_workers(updates, "arc")
    check_arc(n, f)
    if arc_clipped_count(n, f) == 0:
        return updates
    norms = kernels.worker_norms(updates)
    threshold = arc_threshold(norms, f)
    scales = jnp.where(norms > threshold, threshold / norms, 1.0)
    return kernels.scale_rows(scales, updates)


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
