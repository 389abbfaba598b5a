"""optax plumbing shared by every robust rule, and the ``per_worker`` combinator.

A robust rule is an ``optax.GradientTransformation`` whose ``update`` receives
updates with a leading worker axis of size ``n`` on every leaf. Aggregators
remove that axis, pre-aggregators keep it (or shrink it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxrobust import kernels
from jaxrobust.kernels import PyTree

Array = jax.Array


def check_workers(name: str, updates: PyTree, expected: int | None) -> int:
    """Worker count of ``updates``, checked against the ``n`` a rule was built for.

    Parameters
    ----------
    name : str
        The rule's name, for messages.
    updates : pytree
        Every leaf of shape ``(n, ...)``.
    expected : int or None
        The ``n`` the rule was built for; ``None`` accepts any.

    Returns
    -------
    int
        ``n``.

    Raises
    ------
    ValueError
        ``"<name> was built for n=.. workers, got updates with n=.."``; or
        for malformed ``updates`` (no leaf, a scalar leaf, unequal worker axes).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> check_workers("krum", {"w": jnp.zeros((5, 3))}, 5)
    5
    >>> check_workers("krum", {"w": jnp.zeros((4, 3))}, 5)
    Traceback (most recent call last):
    ...
    ValueError: krum was built for n=5 workers, got updates with n=4
    """
    n = kernels.num_workers(updates, name)
    if expected is not None and n != expected:
        raise ValueError(f"{name} was built for n={expected} workers, got updates with n={n}")
    return n


def stateless_rule(
    name: str,
    rule: Callable[[PyTree], PyTree],
    check: Callable[[int], None],
    n: int | None,
) -> optax.GradientTransformation:
    """Wrap ``rule(updates)`` as a transformation with an empty state.

    ``check(n)`` validates the worker count: at construction when ``n`` is
    given, otherwise when the update is traced.

    Parameters
    ----------
    name : str
        The rule's name, for messages.
    rule : callable
        ``rule(updates) -> pytree``.
    check : callable
        ``check(n)`` raises ``ValueError`` when the bound fails.
    n : int or None
        The worker count the transformation is built for, or ``None``.

    Returns
    -------
    optax.GradientTransformation
        ``init`` returns ``optax.EmptyState()``; ``update(updates, state)``
        returns ``(rule(updates), state)``.

    Raises
    ------
    ValueError
        From ``check(n)`` at construction; in ``update``, from ``check`` or
        :func:`check_workers`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> tx = stateless_rule("sum", lambda u: u.sum(axis=0), lambda n: None, None)
    >>> x = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    >>> tx.update(x, tx.init(x[0]))[0].tolist()
    [4.0, 6.0]
    """
    if n is not None:
        check(n)

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        check(check_workers(name, updates, n))
        return rule(updates), state

    return optax.GradientTransformation(init_fn, update_fn)


class KeyState(NamedTuple):
    """State of a randomised rule: the PRNG key of its next draw."""

    key: jax.Array


def as_key(seed_or_key: int | jax.Array) -> jax.Array:
    """A typed PRNG key from an int seed or an existing key.

    Parameters
    ----------
    seed_or_key : int or Array
        An int seed, a typed key (returned as is) or raw ``uint32`` key data
        such as ``jax.random.PRNGKey(0)`` (wrapped).

    Returns
    -------
    Array
        A scalar typed key (``jax.dtypes.prng_key`` dtype).

    Examples
    --------
    >>> import jax
    >>> k = as_key(0)
    >>> jax.numpy.issubdtype(k.dtype, jax.dtypes.prng_key), k.shape
    (True, ())
    >>> bool((jax.random.key_data(as_key(jax.random.PRNGKey(3))) == jax.random.PRNGKey(3)).all())
    True
    """
    if isinstance(seed_or_key, int):
        return jax.random.key(seed_or_key)
    if jnp.issubdtype(jnp.asarray(seed_or_key).dtype, jax.dtypes.prng_key):
        return seed_or_key
    return jax.random.wrap_key_data(seed_or_key)


def randomised_rule(
    name: str,
    rule: Callable[[PyTree, jax.Array], PyTree],
    check: Callable[[int], None],
    n: int | None,
    key: int | jax.Array,
) -> optax.GradientTransformationExtraArgs:
    """Wrap ``rule(updates, key)``: the key lives in the state and is split every step.

    ``update`` also accepts ``key=...`` as an extra argument, which then
    replaces the state's key for that step (the state's key is then kept).

    Parameters
    ----------
    name : str
        The rule's name, for messages.
    rule : callable
        ``rule(updates, key) -> pytree``.
    check : callable
        ``check(n)`` raises ``ValueError`` when the bound fails.
    n : int or None
        The worker count the transformation is built for, or ``None``.
    key : int or Array
        Seed or key of the first step (see :func:`as_key`).

    Returns
    -------
    optax.GradientTransformationExtraArgs
        State :class:`KeyState`.

    Raises
    ------
    ValueError
        From ``check(n)`` at construction; in ``update``, from ``check`` or
        :func:`check_workers`.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> tx = randomised_rule("first", lambda u, k: u[0], lambda n: None, None, key=0)
    >>> x = jnp.array([[1.0], [2.0]])
    >>> out, state = tx.update(x, tx.init(x[0]))
    >>> out.tolist(), state.key.shape
    ([1.0], ())
    """
    if n is not None:
        check(n)

    def init_fn(params):
        del params
        return KeyState(key=as_key(key))

    def update_fn(updates, state, params=None, **extra_args):
        del params
        check(check_workers(name, updates, n))
        step_key = extra_args.get("key")
        if step_key is None:
            next_key, step_key = jax.random.split(state.key)
        else:
            next_key = state.key
        return rule(updates, as_key(step_key)), KeyState(key=next_key)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class PerWorkerState(NamedTuple):
    """The inner transformation's state with a leading worker axis."""

    inner: optax.OptState


def per_worker(tx: optax.GradientTransformation, n: int) -> optax.GradientTransformation:
    """Apply ``tx`` independently to each worker's row of the updates.

    The inner state is stacked over ``n`` workers (so ``n`` is needed when
    the state is built). Worker momentum in the EMA convention
    ``m_i <- beta m_i + (1 - beta) g_i`` (as in Allouah et al., "Fixing by
    mixing", AISTATS 2023) is ``per_worker(optax.ema(beta, debias=False), n)``.

    Parameters
    ----------
    tx : optax.GradientTransformation
        The transformation of one worker's update (no worker axis).
    n : int
        Number of workers, ``>= 1``.

    Returns
    -------
    optax.GradientTransformationExtraArgs
        State :class:`PerWorkerState` (``tx``'s state stacked over ``n``);
        ``update`` maps leaves of shape ``(n, ...)`` to ``(n, ...)``, and
        passes ``params`` and extra arguments to every worker's ``tx``.

    Raises
    ------
    TypeError
        If ``n`` is not an integer.
    ValueError
        ``"per_worker needs n >= 1, got n=.."``; in ``update``,
        ``"per_worker was built for n=.. workers, got updates with n=.."``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import optax
    >>> tx = per_worker(optax.ema(0.9, debias=False), 2)
    >>> g = jnp.array([[1.0, 2.0], [10.0, 0.0]])
    >>> state = tx.init(jnp.zeros(2))
    >>> m, state = tx.update(g, state)
    >>> m, state = tx.update(g, state)
    >>> np.round(np.asarray(m), 4)
    array([[0.19, 0.38],
           [1.9 , 0.  ]], dtype=float32)
    """
    n = kernels.check_f("per_worker", n, minimum=1, label="n")
    tx = optax.with_extra_args_support(tx)

    def init_fn(params):
        inner = jax.vmap(lambda _: tx.init(params))(jnp.arange(n))
        return PerWorkerState(inner=inner)

    def update_fn(updates, state, params=None, **extra_args):
        check_workers("per_worker", updates, n)

        def one(u, s):
            return tx.update(u, s, params, **extra_args)

        new_updates, inner = jax.vmap(one)(updates, state.inner)
        return new_updates, PerWorkerState(inner=inner)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


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
