"""Pre-aggregation rules as optax transformations (the worker axis stays, or shrinks).

Put them before an aggregator in ``optax.chain``; the order used in the
papers is ``F o NNM o ARC``::

    optax.chain(jaxrobust.arc(f), jaxrobust.nnm(f), jaxrobust.trimmed_mean(f), optax.sgd(lr))
"""

from __future__ import annotations

from functools import partial

import jax
import optax

from jaxrobust import kernels
from jaxrobust.core import registry
from jaxrobust.functional import preaggregators as P
from jaxrobust.transforms import randomised_rule, stateless_rule

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
    become zero vectors.
    """
    f = kernels.check_f("arc", f)
    return stateless_rule("arc", partial(P.arc, f=f), partial(P.check_arc, f=f), n)


def clip(max_norm: float) -> optax.GradientTransformation:
    """Static clipping of every worker vector: ``x_i <- x_i min(1, C / ||x_i||)``, ``C = max_norm``.

    The norm is global over all leaves of a worker's vector. Vectors with
    NaN or inf entries become zero vectors.
    """
    if not max_norm >= 0:
        raise ValueError(f"clip needs max_norm >= 0, got max_norm={max_norm}")
    return stateless_rule("clip", partial(P.clip, max_norm=max_norm), lambda n: None, None)


@_PRE.register("nnm")
def nnm(f: int, *, n: int | None = None) -> optax.GradientTransformation:
    """Nearest neighbour mixing (Allouah et al., AISTATS 2023).

    Each ``x_i`` becomes the average of its ``n - f`` nearest vectors (itself
    included). Needs ``n > f``. If ``F`` is ``(f, kappa)``-robust, ``F o NNM``
    is ``(f, O(kappa f/n))``-robust.
    """
    f = kernels.check_f("nnm", f)
    return stateless_rule("nnm", partial(P.nnm, f=f), partial(P.check_nnm, f=f), n)


def bucketing(
    bucket_size: int, *, key: int | jax.Array = 0, n: int | None = None
) -> optax.GradientTransformationExtraArgs:
    """Bucketing (Karimireddy, He and Jaggi, ICLR 2022).

    Shuffle the ``n`` vectors with a fresh key each step (from ``key``, kept
    in the state, or ``key=`` passed to ``update``), then average consecutive
    buckets of ``bucket_size``: ``ceil(n / bucket_size)`` vectors come out.
    """
    bucket_size = kernels.check_f("bucketing", bucket_size, minimum=1, label="bucket_size")

    def check(n: int) -> None:
        P.require("bucketing", bucket_size <= n, "bucket_size <= n", n=n, bucket_size=bucket_size)

    return randomised_rule(
        "bucketing",
        lambda updates, k: P.bucketing(updates, bucket_size, k),
        check,
        n,
        key,
    )


# Registered in the one form every rule factory takes, ``factory(f, *, n, **options)``.


@_PRE.register("clip")
def _clip_rule(f: int = 0, *, n: int | None = None, max_norm: float = 2.0):
    """Static clipping of every worker vector to norm ``max_norm``."""
    del f, n
    return clip(max_norm)


@_PRE.register("bucketing")
def _bucketing_rule(
    f: int = 0, *, n: int | None = None, bucket_size: int = 2, key: int | jax.Array = 0
):
    """Bucketing: shuffle, then average buckets of ``bucket_size`` (Karimireddy et al., 2022)."""
    del f
    return bucketing(bucket_size, key=key, n=n)
