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
    """``x + y`` leaf by leaf, in ``x``'s dtype."""
    return jax.tree_util.tree_map(lambda a, b: (a + b).astype(a.dtype), x, y)


def sub(x: PyTree, y: PyTree) -> PyTree:
    """``x - y`` leaf by leaf, in ``x``'s dtype."""
    return jax.tree_util.tree_map(lambda a, b: (a - b).astype(a.dtype), x, y)


def zeros(params: PyTree, count: int) -> PyTree:
    """``count`` stacked zero copies of ``params``: leaves ``(count, ...)``."""
    return jax.tree_util.tree_map(lambda p: jnp.zeros((count, *p.shape), p.dtype), params)


def concat(x: PyTree, y: PyTree) -> PyTree:
    """Rows of ``x`` then rows of ``y`` (cast to ``x``'s dtype)."""
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b.astype(a.dtype)]), x, y)


def rows(tree: PyTree, index: jax.Array) -> PyTree:
    """The rows ``index`` of every leaf."""
    return jax.tree_util.tree_map(lambda v: v[index], tree)


def select_rows(mask: jax.Array, a: PyTree, b: PyTree) -> PyTree:
    """Row ``j`` of ``a`` where ``mask[j]``, else of ``b``."""

    def one(x, y):
        return jnp.where(mask.reshape((-1,) + (1,) * (x.ndim - 1)), x, y.astype(x.dtype))

    return jax.tree_util.tree_map(one, a, b)


def broadcast(vector: PyTree, count: int) -> PyTree:
    """``count`` copies of one vector, stacked (a broadcast, no copy)."""
    return jax.tree_util.tree_map(lambda v: jnp.broadcast_to(v, (count, *v.shape)), vector)
