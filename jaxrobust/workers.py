"""The worker side: per-worker gradients, FedAvg-style local steps, momentum.

Every function works on all (sampled) workers at once, vmapped over a leading
worker axis, inside the jitted step.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxrobust.core.types import PyTree

__all__ = ["flip_labels", "local_vectors", "momentum_update", "per_worker_gradients"]


def flip_labels(y: jax.Array, num_classes: int) -> jax.Array:
    """``C - 1 - y``; binary data (``C <= 2``, one logit or two) flips to ``1 - y``.

    Parameters
    ----------
    y : int array
        Labels in ``[0, C)``, any shape.
    num_classes : int
        ``C``.

    Returns
    -------
    int array
        Flipped labels, same shape and dtype.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> flip_labels(jnp.array([0, 3, 9]), 10).tolist(), flip_labels(jnp.array([0, 1]), 1).tolist()
    ([9, 6, 0], [1, 0])
    """
    return (max(num_classes, 2) - 1 - y).astype(y.dtype)


def per_worker_gradients(loss: Callable) -> Callable:
    """``(params, (x, y)) -> (losses, grads)`` with a leading worker axis on the batch and outputs.

    Every worker's loss and gradient at the same ``params`` on its own
    minibatch ``(x[i], y[i])``.

    Parameters
    ----------
    loss : callable
        ``loss(params, (x, y)) -> scalar`` on one batch.

    Returns
    -------
    callable
        ``(params, (x, y)) -> (losses, grads)``: ``x`` ``(W, B, ...)``,
        ``y`` ``(W, B)``; ``losses`` ``(W,)``, ``grads`` leaves ``(W, ...)``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> grads = per_worker_gradients(lambda w, b: jnp.mean((b[0] @ w - b[1]) ** 2))
    >>> x = jnp.ones((2, 1, 1))
    >>> y = jnp.array([[1.0], [3.0]])
    >>> losses, g = grads(jnp.zeros(1), (x, y))
    >>> losses.tolist(), g.tolist()
    ([1.0, 9.0], [[-2.0], [-6.0]])
    """
    return jax.vmap(jax.value_and_grad(loss), in_axes=(None, 0))


def local_vectors(loss: Callable) -> Callable:
    """``(params, batches, local_lr) -> (losses, vectors)`` after ``K`` local SGD steps.

    Each worker runs ``K`` SGD steps from ``params`` on its ``K`` minibatches
    (``batches`` leaves ``(workers, K, B, ...)``) at rate ``local_lr`` and
    returns ``(x - x_K) / local_lr`` (FedAvg's model change in gradient units:
    for ``K = 1`` the minibatch gradient) and its mean loss.

    Parameters
    ----------
    loss : callable
        ``loss(params, (x, y)) -> scalar`` on one batch.

    Returns
    -------
    callable
        ``(params, (x, y), local_lr) -> (losses, vectors)``: ``x``
        ``(W, K, B, ...)``, ``y`` ``(W, K, B)``; ``losses`` ``(W,)`` (each the
        mean of the ``K`` local losses), ``vectors`` leaves ``(W, ...)``.

    References
    ----------
    McMahan, Moore, Ramage, Hampson, Aguera y Arcas, "Communication-efficient
    learning of deep networks from decentralized data", AISTATS 2017 (FedAvg).

    Examples
    --------
    Two local steps at rate 0.5 on ``(w - 1)^2 / 2`` from ``w = 0``: ``w``
    goes to 0.5 then 0.75, so the vector is ``(0 - 0.75) / 0.5 = -1.5`` (in
    gradient units; the gradient at ``w = 0`` is -1).

    >>> import jax.numpy as jnp
    >>> run = local_vectors(lambda w, b: jnp.mean(0.5 * (b[0] * w - b[1]) ** 2))
    >>> x = jnp.ones((1, 2, 1))
    >>> losses, v = run(jnp.float32(0.0), (x, x), 0.5)
    >>> v.tolist(), losses.tolist()
    ([-1.5], [0.3125])
    """

    def local(params, batches, local_lr):
        def one(p, batch):
            value, grad = jax.value_and_grad(loss)(p, batch)
            return jax.tree_util.tree_map(lambda w, g: w - local_lr * g, p, grad), value

        final, losses = jax.lax.scan(one, params, batches)
        vector = jax.tree_util.tree_map(lambda a, z: (a - z) / local_lr, params, final)
        return jnp.mean(losses), vector

    return jax.vmap(local, in_axes=(None, 0, None))


def momentum_update(
    beta: jax.Array,
    momentum: PyTree,
    vectors: PyTree,
    rows: jax.Array | None = None,
    workers: jax.Array | None = None,
) -> PyTree:
    """Worker momentum ``m_i <- beta m_i + (1 - beta) g_i``: ``optax.ema(beta, debias=False)``.

    Equal to applying ``per_worker(optax.ema(beta, debias=False), n)`` to the
    stacked vectors (to float rounding; tested), with client sampling on top.

    Parameters
    ----------
    beta : float or scalar array
        The momentum coefficient (a per-run array inside sweeps).
    momentum : pytree
        Every honest worker's momentum, leaves ``(h, ...)``.
    vectors : pytree
        The new vectors, leaves ``(h, ...)``, or ``(C, ...)`` with ``rows``.
    rows, workers : int arrays ``(C,)``, optional
        Partial participation: only the momentum of the sampled honest workers
        moves. Vector ``j`` updates worker ``workers[j]``'s momentum, written to
        row ``rows[j]`` (an out-of-range row, e.g. ``h`` for a Byzantine slot,
        is dropped).

    Returns
    -------
    pytree
        The new momentum, same shapes and dtypes as ``momentum``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> m, g = jnp.array([[1.0], [2.0]]), jnp.array([[3.0], [5.0]])
    >>> momentum_update(0.5, m, g).tolist()
    [[2.0], [3.5]]

    With client sampling, only worker 1 moves (slot 1 is a dropped row):

    >>> momentum_update(0.5, m, g, rows=jnp.array([1, 2]), workers=jnp.array([1, 0])).tolist()
    [[1.0], [2.5]]
    """
    old = momentum if rows is None else jax.tree_util.tree_map(lambda m: m[workers], momentum)
    # optax.ema's update, written as beta * m + (1 - beta) * g: optax's order of the
    # two terms contracts differently into FMAs on CPU, which moves results by a
    # rounding error that fragile settings (top-1 compression, batch 1) amplify.
    new = jax.tree_util.tree_map(
        lambda m, g: (beta * m + (1.0 - beta) * g).astype(m.dtype), old, vectors
    )
    if rows is None:
        return new
    return jax.tree_util.tree_map(lambda m, v: m.at[rows].set(v, mode="drop"), momentum, new)
