"""Robust aggregators as optax transformations (the worker axis goes away).

Each returns an ``optax.GradientTransformation`` whose ``update`` takes
updates with a leading worker axis of size ``n`` on every leaf and returns
one aggregated update, so rules compose with ``optax.chain``::

    tx = optax.chain(jaxrobust.nnm(f=3), jaxrobust.trimmed_mean(f=3), optax.sgd(0.1))

``f`` is the declared number of Byzantine workers. When ``n`` is passed, the
bounds on ``n`` and ``f`` are checked at construction; otherwise when the
update is first traced. The math, and the papers, live in
:mod:`jaxrobust.functional`.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, NamedTuple

import jax
import jax.numpy as jnp
import optax
from annotated_types import Ge, Gt

from jaxrobust import kernels
from jaxrobust.core import registry
from jaxrobust.rules import coordinatewise, distance, geometric, spectral
from jaxrobust.rules.base import check_workers, randomised_rule, stateless_rule

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
    """Average over workers: ``(1/n) sum_i x_i``. Not robust; the baseline.

    Parameters
    ----------
    n : int or None
        Number of workers; when given, ``update`` refuses other worker counts.

    Returns
    -------
    optax.GradientTransformation
        Empty state; ``update(updates, state)`` maps leaves of shape
        ``(n, ...)`` to leaves of shape ``(...)`` in the input dtype.

    Raises
    ------
    ValueError
        In ``update``: ``"mean was built for n=.. workers, got updates with n=.."``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> tx = mean(n=3)
    >>> x = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]])
    >>> out, _ = tx.update(x, tx.init(x[0]))
    >>> np.round(np.asarray(out), 4)
    array([3., 5.], dtype=float32)
    """
    return stateless_rule("mean", coordinatewise.mean, _no_bound, n)


@_AGGREGATORS.register("median")
def median(f: int = 0, *, n: int | None = None) -> optax.GradientTransformation:
    """Coordinate-wise median (CWMed); for even ``n`` the mean of the two middle values.

    Tolerates up to ``f`` bad vectors when ``n > 2f`` (checked for the given ``f``).
    See :func:`jaxrobust.functional.median`.

    Parameters
    ----------
    f : int
        Declared number of Byzantine workers, ``f >= 0`` (default 0: only the bound ``n > 0``).
    n : int or None
        Number of workers; when given, the bound ``n > 2f`` is checked now and
        ``update`` refuses other worker counts, otherwise the bound is
        checked when ``update`` is traced.

    Returns
    -------
    optax.GradientTransformation
        Empty state; ``update(updates, state)`` maps leaves of shape
        ``(n, ...)`` to leaves of shape ``(...)`` in the input dtype.

    Raises
    ------
    TypeError
        If ``f`` is not an integer.
    ValueError
        If ``f < 0``; ``"median needs n > 2f, got n=.., f=.."`` when the
        bound fails (at construction when ``n`` is given, else in ``update``);
        ``"median was built for n=.. workers, got updates with n=.."``.

    References
    ----------
    D. Yin, Y. Chen, K. Ramchandran, P. Bartlett, "Byzantine-robust
    distributed learning: towards optimal statistical rates", ICML 2018.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> tx = median(f=1, n=4)
    >>> x = jnp.array([[1.0, 0.0], [2.0, 1.0], [3.0, 2.0], [100.0, -100.0]])
    >>> out, _ = tx.update(x, tx.init(x[0]))
    >>> np.round(np.asarray(out), 4)
    array([2.5, 0.5], dtype=float32)
    """
    f = kernels.check_f("median", f)
    return stateless_rule(
        "median", coordinatewise.median, partial(coordinatewise.check_median, f=f), n
    )


@_AGGREGATORS.register("trimmed_mean")
def trimmed_mean(f: int, *, n: int | None = None) -> optax.GradientTransformation:
    """Coordinate-wise trimmed mean (CWTM).

    Per coordinate, drop the ``f`` largest and ``f`` smallest values and
    average the other ``n - 2f``. Needs ``n > 2f``. See
    :func:`jaxrobust.functional.trimmed_mean`.

    Parameters
    ----------
    f : int
        Declared number of Byzantine workers, ``f >= 0``.
    n : int or None
        Number of workers; when given, the bound ``n > 2f`` is checked now and
        ``update`` refuses other worker counts, otherwise the bound is
        checked when ``update`` is traced.

    Returns
    -------
    optax.GradientTransformation
        Empty state; ``update(updates, state)`` maps leaves of shape
        ``(n, ...)`` to leaves of shape ``(...)`` in the input dtype.

    Raises
    ------
    TypeError
        If ``f`` is not an integer.
    ValueError
        If ``f < 0``; ``"trimmed_mean needs n > 2f, got n=.., f=.."`` when the
        bound fails (at construction when ``n`` is given, else in ``update``);
        ``"trimmed_mean was built for n=.. workers, got updates with n=.."``.

    References
    ----------
    D. Yin, Y. Chen, K. Ramchandran, P. Bartlett, "Byzantine-robust
    distributed learning: towards optimal statistical rates", ICML 2018.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> tx = trimmed_mean(f=1, n=4)
    >>> x = jnp.array([[1.0, 0.0], [2.0, 1.0], [3.0, 2.0], [100.0, -100.0]])
    >>> out, _ = tx.update(x, tx.init(x[0]))
    >>> np.round(np.asarray(out), 4)
    array([2.5, 0.5], dtype=float32)
    """
    f = kernels.check_f("trimmed_mean", f)
    return stateless_rule(
        "trimmed_mean",
        partial(coordinatewise.trimmed_mean, f=f),
        partial(coordinatewise.check_trimmed_mean, f=f),
        n,
    )


@_AGGREGATORS.register("meamed")
def meamed(f: int, *, n: int | None = None) -> optax.GradientTransformation:
    """Mean around the median: per coordinate, the mean of the ``n - f`` values nearest the median.

    Needs ``n > 2f``. See :func:`jaxrobust.functional.meamed`.

    Parameters
    ----------
    f : int
        Declared number of Byzantine workers, ``f >= 0``.
    n : int or None
        Number of workers; when given, the bound ``n > 2f`` is checked now and
        ``update`` refuses other worker counts, otherwise the bound is
        checked when ``update`` is traced.

    Returns
    -------
    optax.GradientTransformation
        Empty state; ``update(updates, state)`` maps leaves of shape
        ``(n, ...)`` to leaves of shape ``(...)`` in the input dtype.

    Raises
    ------
    TypeError
        If ``f`` is not an integer.
    ValueError
        If ``f < 0``; ``"meamed needs n > 2f, got n=.., f=.."`` when the
        bound fails (at construction when ``n`` is given, else in ``update``);
        ``"meamed was built for n=.. workers, got updates with n=.."``.

    References
    ----------
    C. Xie, O. Koyejo, I. Gupta, "Generalized Byzantine-tolerant SGD",
    arXiv:1802.10116, 2018.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> tx = meamed(f=1, n=4)
    >>> x = jnp.array([[1.0, 0.0], [2.0, 1.0], [3.0, 2.0], [100.0, -100.0]])
    >>> out, _ = tx.update(x, tx.init(x[0]))
    >>> np.round(np.asarray(out), 4)
    array([2., 1.], dtype=float32)
    """
    f = kernels.check_f("meamed", f)
    return stateless_rule(
        "meamed", partial(coordinatewise.meamed, f=f), partial(coordinatewise.check_meamed, f=f), n
    )


@_AGGREGATORS.register("geometric_median")
def geometric_median(
    f: int = 0,
    *,
    nu: Annotated[float, Gt(0)] | None = None,
    iterations: Annotated[int, Ge(1)] = 8,
    n: int | None = None,
) -> optax.GradientTransformation:
    """Geometric median by smoothed Weiszfeld iterations.

    From the mean of the finite vectors, ``iterations`` times
    ``z <- sum_i w_i x_i / sum_i w_i`` with ``w_i = 1 / max(nu, ||z - x_i||)``
    (8 iterations by default). Needs ``n > 2f`` for the given ``f``. See
    :func:`jaxrobust.functional.geometric_median`.

    Parameters
    ----------
    f : int
        Declared number of Byzantine workers, ``f >= 0`` (default 0).
    nu : float or None
        Smoothing, an absolute length ``nu > 0`` (ByzFL's ``0.1``), or
        ``None`` (default) for ``1e-3`` times the spread
        ``median_i median_j ||x_i - x_j||`` of the finite vectors, which
        makes the rule scale-equivariant
        (``rule(s X) = s rule(X)``); an absolute ``nu`` above the spread
        turns the rule into the plain mean.
    iterations : int
        Number of Weiszfeld steps, ``>= 1``.
    n : int or None
        Number of workers; when given, the bound ``n > 2f`` is checked now and
        ``update`` refuses other worker counts, otherwise the bound is
        checked when ``update`` is traced.

    Returns
    -------
    optax.GradientTransformation
        Empty state; ``update(updates, state)`` maps leaves of shape
        ``(n, ...)`` to leaves of shape ``(...)`` in the input dtype.

    Raises
    ------
    TypeError
        If ``f`` is not an integer.
    ValueError
        If ``f < 0``; ``"geometric_median needs n > 2f, got n=.., f=.."`` when the
        bound fails (at construction when ``n`` is given, else in ``update``);
        ``"geometric_median was built for n=.. workers, got updates with n=.."``.
        ``"geometric_median needs nu > 0 or None, got nu=.."``;
        ``"geometric_median needs iterations >= 1, got iterations=.."``.

    References
    ----------
    K. Pillutla, S. M. Kakade, Z. Harchaoui, "Robust aggregation for
    federated learning", IEEE Transactions on Signal Processing, 2022 (RFA).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> tx = geometric_median(n=4)
    >>> x = jnp.array([[0.0], [1.0], [2.0], [10.0]])
    >>> out, _ = tx.update(x, tx.init(x[0]))
    >>> np.round(np.asarray(out), 2)
    array([1.94], dtype=float32)
    """
    f = kernels.check_f("geometric_median", f)
    kernels.check_f("geometric_median", iterations, minimum=1, label="iterations")
    if nu is not None and not nu > 0:
        raise ValueError(f"geometric_median needs nu > 0 or None, got nu={nu}")
    return stateless_rule(
        "geometric_median",
        partial(geometric.geometric_median, nu=nu, iterations=iterations),
        partial(geometric.check_geometric_median, f=f),
        n,
    )


@_AGGREGATORS.register("krum")
def krum(f: int, *, n: int | None = None) -> optax.GradientTransformation:
    """Krum: the vector whose ``n - f - 2`` nearest others are closest (sum of squared distances).

    **Convention**: the original definition (Blanchard et al., NeurIPS 2017),
    a *sum* over ``n - f - 2`` neighbours; ByzFL averages over ``n - f - 1``.
    Needs ``n > 2f + 2``. See :func:`jaxrobust.functional.krum`.

    Parameters
    ----------
    f : int
        Declared number of Byzantine workers, ``f >= 0``.
    n : int or None
        Number of workers; when given, the bound ``n > 2f + 2`` is checked now and
        ``update`` refuses other worker counts, otherwise the bound is
        checked when ``update`` is traced.

    Returns
    -------
    optax.GradientTransformation
        Empty state; ``update(updates, state)`` maps leaves of shape
        ``(n, ...)`` to leaves of shape ``(...)`` in the input dtype.

    Raises
    ------
    TypeError
        If ``f`` is not an integer.
    ValueError
        If ``f < 0``; ``"krum needs n > 2f + 2, got n=.., f=.."`` when the
        bound fails (at construction when ``n`` is given, else in ``update``);
        ``"krum was built for n=.. workers, got updates with n=.."``.

    References
    ----------
    P. Blanchard, E. M. El Mhamdi, R. Guerraoui, J. Stainer, "Machine
    learning with adversaries: Byzantine tolerant gradient descent",
    NeurIPS 2017.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> tx = krum(f=1, n=5)
    >>> x = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [10.0, 10.0]])
    >>> out, _ = tx.update(x, tx.init(x[0]))
    >>> np.round(np.asarray(out), 4)
    array([0.5, 0.5], dtype=float32)
    """
    f = kernels.check_f("krum", f)
    return stateless_rule("krum", partial(distance.krum, f=f), partial(distance.check_krum, f=f), n)


@_AGGREGATORS.register("multi_krum")
def multi_krum(
    f: int, m: Annotated[int, Ge(1)] | None = None, *, n: int | None = None
) -> optax.GradientTransformation:
    """Multi-Krum: the average of the ``m`` vectors of least Krum score (default ``m = n - f``).

    Needs ``n > 2f + 2`` and ``1 <= m <= n``. See
    :func:`jaxrobust.functional.multi_krum`.

    Parameters
    ----------
    f : int
        Declared number of Byzantine workers, ``f >= 0``.
    m : int or None
        Number of vectors averaged, ``1 <= m <= n``; ``None`` means ``n - f``.
    n : int or None
        Number of workers; when given, the bound ``n > 2f + 2`` is checked now and
        ``update`` refuses other worker counts, otherwise the bound is
        checked when ``update`` is traced.

    Returns
    -------
    optax.GradientTransformation
        Empty state; ``update(updates, state)`` maps leaves of shape
        ``(n, ...)`` to leaves of shape ``(...)`` in the input dtype.

    Raises
    ------
    TypeError
        If ``f`` is not an integer.
    ValueError
        If ``f < 0``; ``"multi_krum needs n > 2f + 2, got n=.., f=.."`` when the
        bound fails (at construction when ``n`` is given, else in ``update``);
        ``"multi_krum was built for n=.. workers, got updates with n=.."``.
        ``"multi_krum needs m >= 1, got m=.."``;
        ``"multi_krum needs 1 <= m <= n, got n=.., m=.."``. ``TypeError`` also
        for a non-integer ``m``.

    References
    ----------
    P. Blanchard, E. M. El Mhamdi, R. Guerraoui, J. Stainer, "Machine
    learning with adversaries: Byzantine tolerant gradient descent",
    NeurIPS 2017.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> tx = multi_krum(f=1, n=5)
    >>> x = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [10.0, 10.0]])
    >>> out, _ = tx.update(x, tx.init(x[0]))
    >>> np.round(np.asarray(out), 4)
    array([0.375, 0.375], dtype=float32)
    """
    f = kernels.check_f("multi_krum", f)
    if m is not None:
        kernels.check_f("multi_krum", m, minimum=1, label="m")
    return stateless_rule(
        "multi_krum",
        partial(distance.multi_krum, f=f, m=m),
        partial(distance.check_multi_krum, f=f, m=m),
        n,
    )


@_AGGREGATORS.register("mda")
def mda(
    f: int, *, max_subsets: Annotated[int, Ge(1)] = distance.MDA_MAX_SUBSETS, n: int | None = None
) -> optax.GradientTransformation:
    """Minimum diameter averaging: the average of the ``n - f`` vectors of least diameter.

    Exact by enumeration of the ``C(n, f)`` subsets; refuses (``ValueError``)
    when there are more than ``max_subsets``. Needs ``n > 2f``. See
    :func:`jaxrobust.functional.mda`.

    Parameters
    ----------
    f : int
        Declared number of Byzantine workers, ``f >= 0``.
    max_subsets : int
        Largest ``C(n, f)`` accepted.
    n : int or None
        Number of workers; when given, the bound ``n > 2f`` is checked now and
        ``update`` refuses other worker counts, otherwise the bound is
        checked when ``update`` is traced.

    Returns
    -------
    optax.GradientTransformation
        Empty state; ``update(updates, state)`` maps leaves of shape
        ``(n, ...)`` to leaves of shape ``(...)`` in the input dtype.

    Raises
    ------
    TypeError
        If ``f`` is not an integer.
    ValueError
        If ``f < 0``; ``"mda needs n > 2f, got n=.., f=.."`` when the
        bound fails (at construction when ``n`` is given, else in ``update``);
        ``"mda was built for n=.. workers, got updates with n=.."``.
        ``"mda needs at most max_subsets=.. subsets to enumerate, got C(n, f) = ..."``.

    References
    ----------
    E. M. El Mhamdi, R. Guerraoui, A. Guirguis, L. N. Hoang, S. Rouault,
    "Genuinely distributed Byzantine machine learning", PODC 2020.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> tx = mda(f=1, n=4)
    >>> x = jnp.array([[0.0], [1.0], [2.0], [10.0]])
    >>> out, _ = tx.update(x, tx.init(x[0]))
    >>> np.round(np.asarray(out), 4)
    array([1.], dtype=float32)
    """
    f = kernels.check_f("mda", f)
    return stateless_rule(
        "mda",
        partial(distance.mda, f=f, max_subsets=max_subsets),
        partial(distance.check_mda, f=f, max_subsets=max_subsets),
        n,
    )


@_AGGREGATORS.register("monna")
def monna(
    f: int, trusted: Annotated[int, Ge(0)] = 0, *, n: int | None = None
) -> optax.GradientTransformation:
    """MoNNA: the average of the ``n - f`` nearest neighbours of the trusted worker ``trusted``.

    Needs ``n > 2f``. See :func:`jaxrobust.functional.monna`.

    Parameters
    ----------
    f : int
        Declared number of Byzantine workers, ``f >= 0``.
    trusted : int
        Index of the trusted worker, ``0 <= trusted < n``.
    n : int or None
        Number of workers; when given, the bound ``n > 2f`` is checked now and
        ``update`` refuses other worker counts, otherwise the bound is
        checked when ``update`` is traced.

    Returns
    -------
    optax.GradientTransformation
        Empty state; ``update(updates, state)`` maps leaves of shape
        ``(n, ...)`` to leaves of shape ``(...)`` in the input dtype.

    Raises
    ------
    TypeError
        If ``f`` is not an integer.
    ValueError
        If ``f < 0``; ``"monna needs n > 2f, got n=.., f=.."`` when the
        bound fails (at construction when ``n`` is given, else in ``update``);
        ``"monna was built for n=.. workers, got updates with n=.."``.
        ``"monna needs trusted >= 0, got trusted=.."``;
        ``"monna needs 0 <= trusted < n, got n=.., trusted=.."``.

    References
    ----------
    S. Farhadkhani, R. Guerraoui, N. Gupta, L. N. Hoang, R. Pinot,
    J. Stephan, "Robust collaborative learning with linear gradient
    overhead", ICML 2023.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> tx = monna(f=1, trusted=3, n=4)
    >>> x = jnp.array([[0.0], [1.0], [2.0], [10.0]])
    >>> out, _ = tx.update(x, tx.init(x[0]))
    >>> np.round(np.asarray(out), 4)
    array([4.3333], dtype=float32)
    """
    f = kernels.check_f("monna", f)
    trusted = kernels.check_f("monna", trusted, label="trusted")
    return stateless_rule(
        "monna",
        partial(distance.monna, f=f, trusted=trusted),
        partial(distance.check_monna, f=f, trusted=trusted),
        n,
    )


@_AGGREGATORS.register("caf")
def caf(f: int, *, n: int | None = None) -> optax.GradientTransformation:
    """CAF, the covariance-bound agnostic filter (see :func:`jaxrobust.functional.caf`).

    Needs ``n > 2f``.

    Parameters
    ----------
    f : int
        Declared number of Byzantine workers, ``f >= 0``.
    n : int or None
        Number of workers; when given, the bound ``n > 2f`` is checked now and
        ``update`` refuses other worker counts, otherwise the bound is
        checked when ``update`` is traced.

    Returns
    -------
    optax.GradientTransformation
        Empty state; ``update(updates, state)`` maps leaves of shape
        ``(n, ...)`` to leaves of shape ``(...)`` in the input dtype.

    Raises
    ------
    TypeError
        If ``f`` is not an integer.
    ValueError
        If ``f < 0``; ``"caf needs n > 2f, got n=.., f=.."`` when the
        bound fails (at construction when ``n`` is given, else in ``update``);
        ``"caf was built for n=.. workers, got updates with n=.."``.

    References
    ----------
    Y. Allouah, R. Guerraoui, J. Stephan, "Towards trustworthy federated
    learning with untrusted participants", ICML 2025.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> tx = caf(f=1, n=4)
    >>> x = jnp.array([[0.0], [1.0], [2.0], [10.0]])
    >>> out, _ = tx.update(x, tx.init(x[0]))
    >>> np.round(np.asarray(out), 4)
    array([1.0753], dtype=float32)
    """
    f = kernels.check_f("caf", f)
    return stateless_rule("caf", partial(spectral.caf, f=f), partial(spectral.check_caf, f=f), n)


@_AGGREGATORS.register("dnc")
def dnc(
    f: int,
    *,
    iterations: Annotated[int, Ge(1)] = 1,
    subsample: Annotated[int, Ge(1)] = 10_000,
    filter_fraction: Annotated[float, Ge(0)] = 1.0,
    key: int | jax.Array = 0,
    n: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Divide and conquer (Shejwalkar and Houmansadr, NDSS 2021).

    Spectral filtering on ``subsample`` random coordinates, ``iterations``
    times, removing the ``ceil(filter_fraction * f)`` workers with the
    largest squared projection on the top singular direction; the mean of the
    rest. Randomness from ``key`` (kept in the state, split each step, or
    passed to ``update`` as ``key=``). See :func:`jaxrobust.functional.dnc`.

    Parameters
    ----------
    f : int
        Declared number of Byzantine workers, ``f >= 0``.
    iterations : int
        Filtering rounds, ``>= 1``.
    subsample : int
        Coordinates drawn per round, ``>= 1`` (capped at the dimension).
    filter_fraction : float
        Workers removed per round: ``ceil(filter_fraction * f)``, ``>= 0``.
    key : int or Array
        Seed or PRNG key of the first step.
    n : int or None
        Number of workers; when given, the bound ``n > 2f`` is checked now and
        ``update`` refuses other worker counts, otherwise the bound is
        checked when ``update`` is traced.

    Returns
    -------
    optax.GradientTransformationExtraArgs
        State :class:`jaxrobust.rules.base.KeyState`; ``update`` maps leaves
        of shape ``(n, ...)`` to leaves of shape ``(...)``.

    Raises
    ------
    TypeError
        If ``f`` is not an integer.
    ValueError
        If ``f < 0``; ``"dnc needs n > 2f, got n=.., f=.."`` when the
        bound fails (at construction when ``n`` is given, else in ``update``);
        ``"dnc was built for n=.. workers, got updates with n=.."``.
        ``"dnc needs iterations >= 1, got .."``, ``"dnc needs subsample >= 1, got .."``,
        ``"dnc needs filter_fraction >= 0, got .."``;
        ``"dnc needs ceil(filter_fraction * f) < n, got n=.., removed=.."``.

    References
    ----------
    V. Shejwalkar, A. Houmansadr, "Manipulating the Byzantine: optimizing
    model poisoning attacks and defenses for federated learning", NDSS 2021.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> tx = dnc(f=1, n=5)
    >>> x = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [10.0, 10.0]])
    >>> out, _ = tx.update(x, tx.init(x[0]))
    >>> np.round(np.asarray(out), 4)
    array([0.375, 0.375], dtype=float32)
    """
    f = kernels.check_f("dnc", f)
    kernels.check_f("dnc", iterations, minimum=1, label="iterations")
    kernels.check_f("dnc", subsample, minimum=1, label="subsample")
    if not filter_fraction >= 0:
        raise ValueError(f"dnc needs filter_fraction >= 0, got filter_fraction={filter_fraction}")
    rule = partial(
        spectral.dnc,
        f=f,
        iterations=iterations,
        subsample=subsample,
        filter_fraction=filter_fraction,
    )
    return randomised_rule(
        "dnc",
        lambda updates, k: rule(updates, key=k),
        partial(spectral.check_dnc, f=f, filter_fraction=filter_fraction),
        n,
        key,
    )


class CenteredClippingState(NamedTuple):
    """The previous aggregate, where the next round's clipping is centred."""

    center: optax.Updates


def centered_clipping(
    tau: Annotated[float, Gt(0)] | None = None,
    iterations: Annotated[int, Ge(1)] = 3,
    *,
    n: int | None = None,
) -> optax.GradientTransformation:
    """Centered clipping (Karimireddy, He and Jaggi, ICML 2021).

    From the previous output ``v`` (kept in the state, zero at the start),
    ``iterations`` times ``v <- v + (1/n) sum_i (x_i - v) min(1, tau / ||x_i - v||)``.
    3 iterations by default. A bad vector contributes nothing. No bound on
    ``f``: the rule does not take it.

    Parameters
    ----------
    tau : float or None
        Clipping radius: an absolute length ``tau > 0`` (the paper's
        experiments use ``10``), or ``None`` (default) for the median
        distance of the finite vectors to ``v`` at each update, which keeps
        a far vector's pull at that of a typical one whatever the scale of
        the vectors (``rule(s X) = s rule(X)`` from a zero state).
    iterations : int
        Clipping steps per update, ``>= 1``.
    n : int or None
        Number of workers; when given, ``update`` refuses other worker counts.

    Returns
    -------
    optax.GradientTransformation
        State :class:`CenteredClippingState` (the last output, zeros from
        ``init(params)``); ``update`` maps leaves of shape ``(n, ...)`` to
        leaves of shape ``(...)``.

    Raises
    ------
    ValueError
        ``"centered_clipping needs tau > 0 or None, got tau=.."``;
        ``"centered_clipping needs iterations >= 1, got iterations=.."``
        (``TypeError`` if not an integer); in ``update``,
        ``"centered_clipping was built for n=.. workers, got updates with n=.."``.

    References
    ----------
    S. P. Karimireddy, L. He, M. Jaggi, "Learning from history for
    Byzantine robust optimization", ICML 2021.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> tx = centered_clipping(tau=1.0, iterations=1, n=3)
    >>> x = jnp.array([[3.0, 4.0], [0.0, 0.5], [0.0, 0.5]])
    >>> out, _ = tx.update(x, tx.init(x[0]))
    >>> np.round(np.asarray(out), 4)
    array([0.2, 0.6], dtype=float32)
    """
    if tau is not None and not tau > 0:
        raise ValueError(f"centered_clipping needs tau > 0 or None, got tau={tau}")
    kernels.check_f("centered_clipping", iterations, minimum=1, label="iterations")

    def init_fn(params):
        return CenteredClippingState(center=jax.tree_util.tree_map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None):
        del params
        check_workers("centered_clipping", updates, n)
        center = jax.tree_util.tree_map(lambda c, u: c.astype(u.dtype), state.center, updates)
        out = geometric.centered_clipping(updates, center, tau=tau, iterations=iterations)
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
    f: int = 0,
    *,
    n: int | None = None,
    tau: Annotated[float, Gt(0)] | None = None,
    iterations: Annotated[int, Ge(1)] = 3,
) -> optax.GradientTransformation:
    """Centered clipping around the previous aggregate (Karimireddy, He and Jaggi, 2021)."""
    del f
    return centered_clipping(tau, iterations, n=n)
