"""Robust aggregators as optax transformations (the worker axis goes away).

Each returns an ``optax.GradientTransformation`` whose ``update`` takes
updates with a leading worker axis of size ``n`` on every leaf and returns
one aggregated update, so rules compose with ``optax.chain``::

    tx = optax.chain(jaxrobust.nnm(f=3), jaxrobust.trimmed_mean(f=3), optax.sgd(0.1))

``f`` is the declared number of Byzantine workers. When ``n`` is passed, the
bounds on ``n`` and ``f`` are checked at construction; otherwise when the
update is first traced. The math lives in :mod:`jaxrobust.functional`.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxrobust import kernels
from jaxrobust.core import registry
from jaxrobust.functional import aggregators as F
from jaxrobust.transforms import check_workers, randomised_rule, stateless_rule

__all__ = [
    "caf",
    "centered_clipping",
    "dnc",
    "geometric_median",
    "krum",
    "mda",
    "meamed",
    "mean",
    "median",
    "monna",
    "multi_krum",
    "trimmed_mean",
]


_AGGREGATORS = registry("aggregator")


def _no_bound(n: int) -> None:
    del n


def mean(*, n: int | None = None) -> optax.GradientTransformation:
    """Average over workers: ``(1/n) sum_i x_i``. Not robust; the baseline."""
    return stateless_rule("mean", F.mean, _no_bound, n)


@_AGGREGATORS.register("median")
def median(f: int = 0, *, n: int | None = None) -> optax.GradientTransformation:
    """Coordinate-wise median (CWMed); for even ``n`` the mean of the two middle values.

    Tolerates up to ``f`` bad vectors when ``n > 2f`` (checked for the given ``f``).
    Reference: Yin et al., ICML 2018.
    """
    f = kernels.check_f("median", f)
    return stateless_rule("median", F.median, partial(F.check_median, f=f), n)


@_AGGREGATORS.register("trimmed_mean")
def trimmed_mean(f: int, *, n: int | None = None) -> optax.GradientTransformation:
    """Coordinate-wise trimmed mean (CWTM).

    Per coordinate, drop the ``f`` largest and ``f`` smallest values and
    average the other ``n - 2f``. Needs ``n > 2f``. Reference: Yin et al., ICML 2018.
    """
    f = kernels.check_f("trimmed_mean", f)
    return stateless_rule(
        "trimmed_mean", partial(F.trimmed_mean, f=f), partial(F.check_trimmed_mean, f=f), n
    )


@_AGGREGATORS.register("meamed")
def meamed(f: int, *, n: int | None = None) -> optax.GradientTransformation:
    """Mean around the median: per coordinate, the mean of the ``n - f`` values nearest the median.

    Needs ``n > 2f``. Reference: Xie et al., 2018 (generalized Byzantine-tolerant SGD).
    """
    f = kernels.check_f("meamed", f)
    return stateless_rule("meamed", partial(F.meamed, f=f), partial(F.check_meamed, f=f), n)


@_AGGREGATORS.register("geometric_median")
def geometric_median(
    f: int = 0, *, nu: float = 0.1, iterations: int = 8, n: int | None = None
) -> optax.GradientTransformation:
    """Geometric median by smoothed Weiszfeld iterations.

    From the mean of the finite vectors, ``iterations`` times
    ``z <- sum_i w_i x_i / sum_i w_i`` with ``w_i = 1 / max(nu, ||z - x_i||)``
    (defaults ``nu = 0.1``, 8 iterations). Needs ``n > 2f`` for the given
    ``f``. Reference: Pillutla, Kakade and Harchaoui, 2022 (RFA).
    """
    f = kernels.check_f("geometric_median", f)
    kernels.check_f("geometric_median", iterations, minimum=1, label="iterations")
    if not nu > 0:
        raise ValueError(f"geometric_median needs nu > 0, got nu={nu}")
    return stateless_rule(
        "geometric_median",
        partial(F.geometric_median, nu=nu, iterations=iterations),
        partial(F.check_geometric_median, f=f),
        n,
    )


@_AGGREGATORS.register("krum")
def krum(f: int, *, n: int | None = None) -> optax.GradientTransformation:
    """Krum: the vector whose ``n - f - 2`` nearest others are closest (sum of squared distances).

    **Convention**: the original definition (Blanchard et al., NeurIPS 2017),
    a *sum* over ``n - f - 2`` neighbours; ByzFL averages over ``n - f - 1``.
    Needs ``n > 2f + 2``.
    """
    f = kernels.check_f("krum", f)
    return stateless_rule("krum", partial(F.krum, f=f), partial(F.check_krum, f=f), n)


@_AGGREGATORS.register("multi_krum")
def multi_krum(
    f: int, m: int | None = None, *, n: int | None = None
) -> optax.GradientTransformation:
    """Multi-Krum: the average of the ``m`` vectors of least Krum score (default ``m = n - f``).

    Needs ``n > 2f + 2`` and ``1 <= m <= n``. Reference: Blanchard et al., 2017.
    """
    f = kernels.check_f("multi_krum", f)
    if m is not None:
        kernels.check_f("multi_krum", m, minimum=1, label="m")
    return stateless_rule(
        "multi_krum", partial(F.multi_krum, f=f, m=m), partial(F.check_multi_krum, f=f, m=m), n
    )


@_AGGREGATORS.register("mda")
def mda(
    f: int, *, max_subsets: int = F.MDA_MAX_SUBSETS, n: int | None = None
) -> optax.GradientTransformation:
    """Minimum diameter averaging: the average of the ``n - f`` vectors of least diameter.

    Exact by enumeration of the ``C(n, f)`` subsets; refuses (``ValueError``)
    when there are more than ``max_subsets``. Needs ``n > 2f``.
    Reference: El Mhamdi, Guerraoui and Rouault, ICML 2018.
    """
    f = kernels.check_f("mda", f)
    return stateless_rule(
        "mda",
        partial(F.mda, f=f, max_subsets=max_subsets),
        partial(F.check_mda, f=f, max_subsets=max_subsets),
        n,
    )


@_AGGREGATORS.register("monna")
def monna(f: int, trusted: int = 0, *, n: int | None = None) -> optax.GradientTransformation:
    """MoNNA: the average of the ``n - f`` nearest neighbours of the trusted worker ``trusted``.

    Needs ``n > 2f``. Reference: Farhadkhani et al., 2023.
    """
    f = kernels.check_f("monna", f)
    trusted = kernels.check_f("monna", trusted, label="trusted")
    return stateless_rule(
        "monna",
        partial(F.monna, f=f, trusted=trusted),
        partial(F.check_monna, f=f, trusted=trusted),
        n,
    )


@_AGGREGATORS.register("caf")
def caf(f: int, *, n: int | None = None) -> optax.GradientTransformation:
    """CAF, the covariance-bound agnostic filter (see :func:`jaxrobust.functional.caf`).

    Needs ``n > 2f``.
    """
    f = kernels.check_f("caf", f)
    return stateless_rule("caf", partial(F.caf, f=f), partial(F.check_caf, f=f), n)


@_AGGREGATORS.register("dnc")
def dnc(
    f: int,
    *,
    iterations: int = 1,
    subsample: int = 10_000,
    filter_fraction: float = 1.0,
    key: int | jax.Array = 0,
    n: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Divide and conquer (Shejwalkar and Houmansadr, NDSS 2021).

    Spectral filtering on ``subsample`` random coordinates, ``iterations``
    times, removing the ``ceil(filter_fraction * f)`` workers with the
    largest squared projection on the top singular direction; the mean of the
    rest. Randomness from ``key`` (kept in the state, split each step).
    """
    f = kernels.check_f("dnc", f)
    kernels.check_f("dnc", iterations, minimum=1, label="iterations")
    kernels.check_f("dnc", subsample, minimum=1, label="subsample")
    if not filter_fraction >= 0:
        raise ValueError(f"dnc needs filter_fraction >= 0, got filter_fraction={filter_fraction}")
    rule = partial(
        F.dnc, f=f, iterations=iterations, subsample=subsample, filter_fraction=filter_fraction
    )
    return randomised_rule(
        "dnc",
        lambda updates, k: rule(updates, key=k),
        partial(F.check_dnc, f=f, filter_fraction=filter_fraction),
        n,
        key,
    )


class CenteredClippingState(NamedTuple):
    """The previous aggregate, where the next round's clipping is centred."""

    center: optax.Updates


def centered_clipping(
    tau: float = 10.0, iterations: int = 3, *, n: int | None = None
) -> optax.GradientTransformation:
    """Centered clipping (Karimireddy, He and Jaggi, ICML 2021).

    From the previous output ``v`` (kept in the state, zero at the start),
    ``iterations`` times ``v <- v + (1/n) sum_i (x_i - v) min(1, tau / ||x_i - v||)``.
    Defaults ``tau = 10``, 3 iterations. A bad vector contributes nothing.
    """
    if not tau > 0:
        raise ValueError(f"centered_clipping needs tau > 0, got tau={tau}")
    kernels.check_f("centered_clipping", iterations, minimum=1, label="iterations")

    def init_fn(params):
        return CenteredClippingState(center=jax.tree_util.tree_map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None):
        del params
        check_workers("centered_clipping", updates, n)
        center = jax.tree_util.tree_map(lambda c, u: c.astype(u.dtype), state.center, updates)
        out = F.centered_clipping(updates, center, tau=tau, iterations=iterations)
        return out, CenteredClippingState(center=out)

    return optax.GradientTransformation(init_fn, update_fn)


# Registered in the one form every rule factory takes, ``factory(f, *, n, **options)``.


@_AGGREGATORS.register("mean")
def _mean_rule(f: int = 0, *, n: int | None = None) -> optax.GradientTransformation:
    """Average over workers (not robust; ``f`` is ignored): the baseline."""
    del f
    return mean(n=n)


@_AGGREGATORS.register("centered_clipping")
def _centered_clipping_rule(
    f: int = 0, *, n: int | None = None, tau: float = 10.0, iterations: int = 3
) -> optax.GradientTransformation:
    """Centered clipping around the previous aggregate (Karimireddy, He and Jaggi, 2021)."""
    del f
    return centered_clipping(tau, iterations, n=n)
