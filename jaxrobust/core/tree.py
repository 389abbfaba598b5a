"""Small pytree helpers over worker-stacked trees (leaves with a leading worker axis).

One place for the row arithmetic every algorithm needs; each keeps the dtype
of its first argument.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any

__all__ = ["add", "broadcast", "concat", "rows", "select_rows", "sub", "zeros"]


def add(x: PyTree, y: PyTree) -> PyTree:
    """``x + y`` leaf by leaf, in ``x``'s dtype.

    Parameters
    ----------
    x, y : pytree of arrays
        Trees of the same structure, with broadcast-compatible leaf shapes.

    Returns
    -------
    pytree
        ``x + y`` leaf by leaf, each leaf cast to the dtype of ``x``'s leaf.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> out = add({"w": jnp.array([1, 2], jnp.int32)}, {"w": jnp.array([0.5, 0.5])})
    >>> out["w"].dtype, out["w"].tolist()
    (dtype('int32'), [1, 2])
    """
    return jax.tree_util.tree_map(lambda a, b: (a + b).astype(a.dtype), x, y)


def sub(x: PyTree, y: PyTree) -> PyTree:
    """``x - y`` leaf by leaf, in ``x``'s dtype.

    Parameters
    ----------
    x, y : pytree of arrays
        Trees of the same structure, with broadcast-compatible leaf shapes.

    Returns
    -------
    pytree
        ``x - y`` leaf by leaf, each leaf cast to the dtype of ``x``'s leaf.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> sub({"w": jnp.array([3.0, 1.0])}, {"w": jnp.array([1.0, 1.0])})["w"].tolist()
    [2.0, 0.0]
    """
    return jax.tree_util.tree_map(lambda a, b: (a - b).astype(a.dtype), x, y)


def zeros(params: PyTree, count: int) -> PyTree:
    """``count`` stacked zero copies of ``params``: leaves ``(count, ...)``.

    Parameters
    ----------
    params : pytree of arrays
        The template: one vector (no worker axis).
    count : int
        Number of rows (workers).

    Returns
    -------
    pytree
        Zeros of shape ``(count, *leaf.shape)`` and the leaf's dtype, per leaf.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> z = zeros({"w": jnp.ones((2,), jnp.bfloat16)}, 3)
    >>> z["w"].shape, z["w"].dtype
    ((3, 2), dtype(bfloat16))
    """
    return jax.tree_util.tree_map(lambda p: jnp.zeros((count, *p.shape), p.dtype), params)


def concat(x: PyTree, y: PyTree) -> PyTree:
    """Rows of ``x`` then rows of ``y`` (cast to ``x``'s dtype).

    Parameters
    ----------
    x, y : pytree of arrays
        Worker-stacked trees of the same structure: leaves ``(a, ...)`` and
        ``(b, ...)`` with the same trailing shape.

    Returns
    -------
    pytree
        Leaves ``(a + b, ...)`` in ``x``'s dtypes.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> concat(jnp.array([[1.0], [2.0]]), jnp.array([[3.0]])).tolist()
    [[1.0], [2.0], [3.0]]
    """
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b.astype(a.dtype)]), x, y)


def rows(tree: PyTree, index: jax.Array) -> PyTree:
    """The rows ``index`` of every leaf.

    Parameters
    ----------
    tree : pytree of arrays
        Worker-stacked tree, leaves ``(n, ...)``.
    index : int array or int
        Row indices (NumPy indexing rules; an out-of-range index is clamped,
        as in any JAX indexing).

    Returns
    -------
    pytree
        ``leaf[index]`` for every leaf.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> rows(jnp.array([[1.0], [2.0], [3.0]]), jnp.array([2, 0])).tolist()
    [[3.0], [1.0]]
    """
    return jax.tree_util.tree_map(lambda v: v[index], tree)


def select_rows(mask: jax.Array, a: PyTree, b: PyTree) -> PyTree:
    """Row ``j`` of ``a`` where ``mask[j]``, else of ``b``.

    Parameters
    ----------
    mask : bool array, shape ``(n,)``
        Which rows to take from ``a``.
    a, b : pytree of arrays
        Worker-stacked trees of the same structure, leaves ``(n, ...)``.

    Returns
    -------
    pytree
        Leaves ``(n, ...)`` in ``a``'s dtypes.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> a, b = jnp.array([[1.0], [2.0]]), jnp.array([[-1.0], [-2.0]])
    >>> select_rows(jnp.array([True, False]), a, b).tolist()
    [[1.0], [-2.0]]
    """

    def one(x, y):
        return jnp.where(mask.reshape((-1,) + (1,) * (x.ndim - 1)), x, y.astype(x.dtype))

    return jax.tree_util.tree_map(one, a, b)


def broadcast(vector: PyTree, count: int) -> PyTree:
    """``count`` copies of one vector, stacked (a broadcast, no copy).

    Parameters
    ----------
    vector : pytree of arrays
        One vector (no worker axis).
    count : int
        Number of rows.

    Returns
    -------
    pytree
        Leaves ``(count, *leaf.shape)``, same dtypes.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> broadcast(jnp.array([1.0, 2.0]), 2).tolist()
    [[1.0, 2.0], [1.0, 2.0]]
    """
    return jax.tree_util.tree_map(lambda v: jnp.broadcast_to(v, (count, *v.shape)), vector)
