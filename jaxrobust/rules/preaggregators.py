"""Pre-aggregation rules as optax transformations (the worker axis stays, or shrinks).

Put them before an aggregator in ``optax.chain``; the order used in the
papers is ``F o NNM o ARC``::

    optax.chain(jaxrobust.arc(f), jaxrobust.nnm(f), jaxrobust.trimmed_mean(f), optax.sgd(lr))
"""

from __future__ import annotations

from functools import partial
from typing import Annotated

import jax
import optax
from annotated_types import Ge, Gt

from jaxrobust import kernels
from jaxrobust.core import registry
from jaxrobust.rules import base, clipping, mixing
from jaxrobust.rules.base import randomised_rule, stateless_rule

__all__ = ["arc", "bucketing", "clip", "nnm"]

_PRE = registry("preaggregator")


@_PRE.register("arc")
def arc(f: int, *, n: int | None = None) -> optax.GradientTransformation:
    """Adaptive robust clipping (Allouah et al., 2024).

    With ``k = floor(2 f (n - f) / n)``, every vector is clipped to the norm
    of the ``(k+1)``-th largest, so only the ``k`` largest change; ``f = 0``
    is the identity. If ``F`` is ``(f, kappa)``-robust, ``F o ARC`` is
    ``(f, 3 kappa)``-robust, and the aggregate's norm is bounded by the
    largest honest norm. Needs ``n > 2f``. Vectors with NaN or inf entries
    become zero vectors. See :func:`jaxrobust.functional.arc`.

    Parameters
    ----------
    f : int
        Declared number of Byzantine workers, ``f >= 0``.
    n : int or None
        Number of workers; when given, ``n > 2f`` is checked now and
        ``update`` refuses other worker counts.

    Returns
    -------
    optax.GradientTransformation
        Empty state; ``update`` keeps the shapes ``(n, ...)`` and dtypes.

    Raises
    ------
    TypeError
        If ``f`` is not an integer.
    ValueError
        If ``f < 0``; ``"arc needs n > 2f, got n=.., f=.."`` (at construction
        when ``n`` is given, else in ``update``); in ``update``,
        ``"arc was built for n=.. workers, got updates with n=.."``.

    References
    ----------
    Y. Allouah, R. Guerraoui, N. Gupta, A. Jellouli, G. Rizk, J. Stephan,
    "Boosting robustness by clipping gradients in distributed learning",
    2024 (ICLR 2025 as "Adaptive gradient clipping for robust federated
    learning").

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> tx = arc(f=1, n=4)
    >>> x = jnp.array([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0], [0.0, 0.5]])
    >>> out, _ = tx.update(x, tx.init(x[0]))
    >>> np.round(np.asarray(out), 4)
    array([[3. , 4. ],
           [0. , 1. ],
           [3. , 4. ],
           [0. , 0.5]], dtype=float32)
    """
    f = kernels.check_f("arc", f)
    return stateless_rule("arc", partial(clipping.arc, f=f), partial(clipping.check_arc, f=f), n)


def clip(max_norm: Annotated[float, Gt(0)] | None = None) -> optax.GradientTransformation:
    """Clipping of every worker vector: ``x_i <- x_i min(1, C / ||x_i||)``, ``C = max_norm``.

    The norm is global over all leaves of a worker's vector. Vectors with
    NaN or inf entries become zero vectors.

    Parameters
    ----------
    max_norm : float or None
        ``C >= 0``, an absolute (static) norm; or ``None`` (default) for the
        median norm of the finite received vectors, which is scale-aware
        (``rule(s X) = s rule(X)``) and, with an honest majority, at most
        the norm of an honest vector, so no vector weighs more than a
        typical honest one.

    Returns
    -------
    optax.GradientTransformation
        Empty state; ``update`` keeps the shapes ``(n, ...)`` and dtypes.

    Raises
    ------
    ValueError
        ``"clip needs max_norm >= 0 or None, got max_norm=.."`` (also for NaN).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> tx = clip(2.0)
    >>> x = jnp.array([[3.0, 4.0], [0.0, 1.0]])
    >>> out, _ = tx.update(x, tx.init(x[0]))
    >>> np.round(np.asarray(out), 4)
    array([[1.2, 1.6],
           [0. , 1. ]], dtype=float32)
    """
    if max_norm is not None and not max_norm >= 0:
        raise ValueError(f"clip needs max_norm >= 0 or None, got max_norm={max_norm}")
    return stateless_rule("clip", partial(clipping.clip, max_norm=max_norm), lambda n: None, None)


@_PRE.register("nnm")
def nnm(f: int, *, n: int | None = None) -> optax.GradientTransformation:
    """Nearest neighbour mixing (Allouah et al., AISTATS 2023).

    Each ``x_i`` becomes the average of its ``n - f`` nearest vectors (itself
    included). Needs ``n > f``. If ``F`` is ``(f, kappa)``-robust, ``F o NNM``
    is ``(f, O(kappa f/n))``-robust. See :func:`jaxrobust.functional.nnm`.

    Parameters
    ----------
    f : int
        Declared number of Byzantine workers, ``f >= 0``.
    n : int or None
        Number of workers; when given, ``n > f`` is checked now and
        ``update`` refuses other worker counts.

    Returns
    -------
    optax.GradientTransformation
        Empty state; ``update`` keeps the shapes ``(n, ...)`` and dtypes.

    Raises
    ------
    TypeError
        If ``f`` is not an integer.
    ValueError
        If ``f < 0``; ``"nnm needs n > f, got n=.., f=.."`` (at construction
        when ``n`` is given, else in ``update``); in ``update``,
        ``"nnm was built for n=.. workers, got updates with n=.."``.

    References
    ----------
    Y. Allouah, S. Farhadkhani, R. Guerraoui, N. Gupta, R. Pinot, J. Stephan,
    "Fixing by mixing: a recipe for optimal Byzantine ML under
    heterogeneity", AISTATS 2023.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> tx = nnm(f=1, n=4)
    >>> x = jnp.array([[0.0], [1.0], [2.0], [10.0]])
    >>> out, _ = tx.update(x, tx.init(x[0]))
    >>> np.round(np.asarray(out), 4).ravel()
    array([1.    , 1.    , 1.    , 4.3333], dtype=float32)
    """
    f = kernels.check_f("nnm", f)
    return stateless_rule("nnm", partial(mixing.nnm, f=f), partial(mixing.check_nnm, f=f), n)


def bucketing(
    bucket_size: Annotated[int, Ge(1)], *, key: int | jax.Array = 0, n: int | None = None
) -> optax.GradientTransformationExtraArgs:
    """Bucketing (Karimireddy, He and Jaggi, ICLR 2022).

    Shuffle the ``n`` vectors with a fresh key each step (from ``key``, kept
    in the state, or ``key=`` passed to ``update``), then average consecutive
    buckets of ``bucket_size``: ``ceil(n / bucket_size)`` vectors come out.
    See :func:`jaxrobust.functional.bucketing`.

    Parameters
    ----------
    bucket_size : int
        ``s``, with ``1 <= s <= n``.
    key : int or Array
        Seed or PRNG key of the first step.
    n : int or None
        Number of workers; when given, ``bucket_size <= n`` is checked now
        and ``update`` refuses other worker counts.

    Returns
    -------
    optax.GradientTransformationExtraArgs
        State :class:`jaxrobust.rules.base.KeyState`; ``update`` maps leaves
        of shape ``(n, ...)`` to ``(ceil(n / s), ...)``.

    Raises
    ------
    TypeError
        If ``bucket_size`` is not an integer.
    ValueError
        ``"bucketing needs bucket_size >= 1, got bucket_size=.."``;
        ``"bucketing needs bucket_size <= n, got n=.., bucket_size=.."``;
        in ``update``, ``"bucketing was built for n=.. workers, got updates with n=.."``.

    References
    ----------
    S. P. Karimireddy, L. He, M. Jaggi, "Byzantine-robust learning on
    heterogeneous datasets via bucketing", ICLR 2022.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> x = jnp.array([[0.0], [1.0], [2.0], [3.0], [4.0]])
    >>> tx = bucketing(2, key=0, n=5)
    >>> out, state = tx.update(x, tx.init(x[0]))
    >>> out.shape  # buckets of 2, 2 and 1
    (3, 1)
    >>> tx = bucketing(5, key=0, n=5)
    >>> np.asarray(tx.update(x, tx.init(x[0]))[0])
    array([[2.]], dtype=float32)
    >>> bucketing(6, n=5)
    Traceback (most recent call last):
    ...
    ValueError: bucketing needs bucket_size <= n, got n=5, bucket_size=6
    """
    bucket_size = kernels.check_f("bucketing", bucket_size, minimum=1, label="bucket_size")

    def check(n: int) -> None:
        base.require(
            "bucketing", bucket_size <= n, "bucket_size <= n", n=n, bucket_size=bucket_size
        )

    return randomised_rule(
        "bucketing",
        lambda updates, k: mixing.bucketing(updates, bucket_size, k),
        check,
        n,
        key,
    )


# Registered in the one form every rule factory takes, ``factory(f, *, n, **options)``.


@_PRE.register("clip")
def _clip_rule(
    f: int = 0, *, n: int | None = None, max_norm: Annotated[float, Gt(0)] | None = None
):
    """Clipping of every worker vector to norm ``max_norm`` (``None``: the median norm)."""
    del f, n
    return clip(max_norm)


@_PRE.register("bucketing")
def _bucketing_rule(
    f: int = 0,
    *,
    n: int | None = None,
    bucket_size: Annotated[int, Ge(1)] = 2,
    key: int | jax.Array = 0,
):
    """Bucketing: shuffle, then average buckets of ``bucket_size`` (Karimireddy et al., 2022)."""
    del f
    return bucketing(bucket_size, key=key, n=n)
