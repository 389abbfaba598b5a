"""Clipping pre-aggregation: static clipping and ARC (adaptive robust clipping).

They keep the worker axis and rescale whole vectors (norms global over all
leaves, in at least float32). The optax transformations in
:mod:`jaxrobust.rules.preaggregators` wrap them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrobust import kernels
from jaxrobust.kernels import PyTree
from jaxrobust.rules.base import finite_median, require

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
        ``C >= 0`` (not checked here; :func:`jaxrobust.rules.preaggregators.clip`
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
