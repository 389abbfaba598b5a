"""Shared worker-axis kernels.

Every robust rule in jaxrobust is written on top of the few primitives in this
module. They take *stacked* pytrees: every leaf has a leading worker axis of
size ``n``, and a worker's vector is the concatenation of its rows over all
leaves.

Conventions
-----------
* A worker vector with a NaN or an infinite entry (or whose squared norm
  overflows) is *bad*: its norm is ``inf`` and its distance to every vector,
  itself included, is ``inf``. For distances the squared norm that must not
  overflow is that of the vector minus the robust coordinate-wise reference
  (:func:`coordinate_reference`), so a common offset alone never makes a
  vector bad.
* Distances never use the expanded form ``|a|^2 + |b|^2 - 2 <a, b>`` on raw
  vectors: it cancels under a common offset. They are computed on centred
  vectors, exact to float rounding whatever the offset.
* Reductions accumulate in at least float32, and every matrix product runs at
  ``Precision.HIGHEST``, whatever the input dtype or the platform's default.

Performance notes (measured on a 2-core CPU, see ``benchmarks/``)
-----------------------------------------------------------------
* Order statistics across a small worker axis are elementwise work: a sorting
  network of ``jnp.minimum`` / ``jnp.maximum`` on whole rows fuses into one
  loop and costs about one memory pass, where ``jnp.sort(axis=0)`` costs
  hundreds.
* XLA's CPU dot for the skinny ``(n, d) x (d, n)`` Gram product is several
  times slower than a loop of cache-sized blocks, so on CPU the Gram matrix
  runs blocked; on accelerators it is a plain dot. Row mixing (``W @ X``) is
  a plain dot everywhere (the blocked loop measured 2.6x slower).
* Centring before the Gram product (exact distances under a common offset)
  costs one extra pass for the coordinate-wise median: at ``n = 16``,
  ``d = 1,663,370`` float32, 6.7 ms next to 23 ms for the raw Gram product
  (31 ms centred), best of 7 on a shared, loaded machine.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
PyTree = object

# Largest n sorted by a compare + select network; above it, minimum / maximum.
_SELECT_NETWORK_MAX = 32

# Order statistics across the worker axis (median, trimmed mean, the centring
# reference of the distance rules) come from a sorting network up to this n and
# from selection by bisection on the values' order keys above it (meamed, which
# needs every order statistic near both ends, from ``jnp.sort``), chosen at
# trace time. Measured on the 2-core CPU, d = 65,536, with
# ``python benchmarks/large_n.py --crossover --n 64 96 128 --methods network bisection``
# (see benchmarks/README.md): the network 3 to 10x faster up to 128; at 256 it did not
# compile within 15 minutes, and bisection ran 4 to 7x faster than jnp.sort or lax.top_k.
SORT_NETWORK_MAX_N = 128

# Bytes of keys per column block in the CPU bisection (n = 256: 256 columns; widths
# of 64 to 1,024 columns measured within noise of each other at d = 65,536).
_SELECT_BLOCK_BYTES = 1 << 18

# The methods :func:`order_statistics` accepts.
ORDER_STATISTIC_METHODS = ("network", "sort", "top_k", "bisection")

# Columns per block in the blocked CPU products (4096 to 65536 all run within
# 20 % of each other on the benchmark machine; small blocks stay in L2).
_BLOCK = 8192


# --------------------------------------------------------------------------
# Shapes and checks
# --------------------------------------------------------------------------


def check_f(name: str, f: int, *, minimum: int = 0, label: str = "f") -> int:
    """Validate an integer setting (by default ``f``) at construction time.

    Parameters
    ----------
    name : str
        The rule's name, for messages.
    f : int
        The value (Python or numpy integer; ``bool`` is refused).
    minimum : int
        Smallest accepted value.
    label : str
        The setting's name, for messages.

    Returns
    -------
    int
        ``int(f)``.

    Raises
    ------
    TypeError
        ``"<name> needs an integer <label>, got <label>=.."``.
    ValueError
        ``"<name> needs <label> >= <minimum>, got <label>=.."``.

    Examples
    --------
    >>> check_f("krum", 2)
    2
    >>> check_f("bucketing", 0, minimum=1, label="bucket_size")
    Traceback (most recent call last):
    ...
    ValueError: bucketing needs bucket_size >= 1, got bucket_size=0
    """
    if isinstance(f, bool) or not isinstance(f, (int, np.integer)):
        raise TypeError(f"{name} needs an integer {label}, got {label}={f!r}")
    if f < minimum:
        raise ValueError(f"{name} needs {label} >= {minimum}, got {label}={f}")
    return int(f)


def num_workers(updates: PyTree, name: str = "rule") -> int:
    """Size of the leading worker axis, the same on every leaf.

    Parameters
    ----------
    updates : pytree
        Every leaf of shape ``(n, ...)``.
    name : str
        The rule's name, for messages.

    Returns
    -------
    int
        ``n``.

    Raises
    ------
    ValueError
        ``"<name> got an empty pytree of updates"``; ``"<name> needs a
        leading worker axis on every leaf, got a scalar leaf"``; ``"<name>
        needs the same worker axis size on every leaf, got sizes [..]"``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> num_workers({"w": jnp.zeros((4, 3)), "b": jnp.zeros((4,))})
    4
    >>> num_workers({"w": jnp.zeros((4, 3)), "b": jnp.zeros((5,))}, "krum")
    Traceback (most recent call last):
    ...
    ValueError: krum needs the same worker axis size on every leaf, got sizes [4, 5]
    """
    leaves = jax.tree_util.tree_leaves(updates)
    if not leaves:
        raise ValueError(f"{name} got an empty pytree of updates")
    sizes = set()
    for leaf in leaves:
        if jnp.ndim(leaf) == 0:
            raise ValueError(f"{name} needs a leading worker axis on every leaf, got a scalar leaf")
        sizes.add(jnp.shape(leaf)[0])
    if len(sizes) != 1:
        raise ValueError(
            f"{name} needs the same worker axis size on every leaf, got sizes {sorted(sizes)}"
        )
    return sizes.pop()


def accumulation_dtype(dtype) -> jnp.dtype:
    """The dtype sums run in: ``dtype`` promoted to at least float32.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> accumulation_dtype(jnp.bfloat16), accumulation_dtype(jnp.float32)
    (dtype('float32'), dtype('float32'))
    """
    return jnp.promote_types(dtype, jnp.float32)


def worker_rows(leaf: Array) -> Array:
    """A leaf of shape ``(n, ...)`` viewed as ``(n, d_leaf)`` rows.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> worker_rows(jnp.zeros((3, 2, 4))).shape
    (3, 8)
    """
    return jnp.reshape(leaf, (leaf.shape[0], -1))


# --------------------------------------------------------------------------
# Norms, Gram matrix, distances
# --------------------------------------------------------------------------


def worker_squared_norms(updates: PyTree) -> Array:
    """Squared global l2 norm of every worker vector, shape ``(n,)``, float32+.

    Non-finite vectors give ``inf`` (never NaN).

    Parameters
    ----------
    updates : pytree
        Every leaf of shape ``(n, ...)``.

    Returns
    -------
    Array
        Shape ``(n,)``, at least float32.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x = {"a": jnp.array([[3.0], [0.0], [jnp.nan]])}
    >>> x["b"] = jnp.array([[4.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    >>> worker_squared_norms(x).tolist()
    [25.0, 1.0, inf]
    """
    total = None
    for leaf in jax.tree_util.tree_leaves(updates):
        rows = worker_rows(leaf).astype(accumulation_dtype(leaf.dtype))
        part = jnp.sum(rows * rows, axis=1)
        total = part if total is None else total + part
    return jnp.where(jnp.isfinite(total), total, jnp.inf)


def worker_norms(updates: PyTree) -> Array:
    """Global l2 norm of every worker vector over all leaves, shape ``(n,)``.

    A vector with a NaN or infinite entry has norm ``inf``.

    Parameters
    ----------
    updates : pytree
        Every leaf of shape ``(n, ...)``.

    Returns
    -------
    Array
        Shape ``(n,)``, at least float32.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x = {"a": jnp.array([[3.0], [0.0], [jnp.nan]])}
    >>> x["b"] = jnp.array([[4.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    >>> worker_norms(x).tolist()
    [5.0, 1.0, inf]
    """
    return jnp.sqrt(worker_squared_norms(updates))


def _gram_plain(rows: Array, centre: Array | None = None) -> Array:
    if centre is not None:
        rows = rows - centre[None, :]
    return jnp.dot(rows, rows.T, precision=lax.Precision.HIGHEST)


def _gram_blocked(rows: Array, centre: Array | None = None) -> Array:
    n, d = rows.shape
    blocks = d // _BLOCK

    def body(b, acc):
        blk = lax.dynamic_slice_in_dim(rows, b * _BLOCK, _BLOCK, axis=1)
        c = None if centre is None else lax.dynamic_slice_in_dim(centre, b * _BLOCK, _BLOCK)
        return acc + _gram_plain(blk, c)

    acc = lax.fori_loop(0, blocks, body, jnp.zeros((n, n), rows.dtype))
    tail = None if centre is None else centre[blocks * _BLOCK :]
    return acc + _gram_plain(rows[:, blocks * _BLOCK :], tail)


def _leaf_gram(rows: Array, centre: Array | None = None) -> Array:
    if rows.shape[1] < 4 * _BLOCK:
        return _gram_plain(rows, centre)
    return lax.platform_dependent(
        rows,
        cpu=lambda r: _gram_blocked(r, centre),
        default=lambda r: _gram_plain(r, centre),
    )


def coordinate_reference(updates: PyTree) -> PyTree:
    """A robust per-coordinate reference point: the lower coordinate-wise median.

    Element ``(n - 1) // 2`` of every coordinate sorted across the worker
    axis (NaN sorts as ``+inf``), one fused pass of a sorting network; where
    it is not finite (more than half the entries of a coordinate are bad) the
    reference is 0. With fewer than ``n / 2`` bad or far-away vectors it lies
    within the range of the other vectors' coordinates, so subtracting it
    brings every such vector close to the origin. Distances are translation
    invariant, and computed on vectors centred this way they stay exact to
    float rounding whatever offset the vectors share (``|a|^2 + |b|^2 -
    2 <a, b>`` on raw vectors loses every digit of the spread once the
    common offset is ``1 / sqrt(eps)`` times larger).

    Parameters
    ----------
    updates : pytree
        Every leaf of shape ``(n, ...)``.

    Returns
    -------
    pytree
        Leaves of shape ``(...)``, finite, in the input dtype.

    References
    ----------
    N. J. Higham, "Accuracy and stability of numerical algorithms", 2nd ed.,
    SIAM, 2002 (cancellation in the expanded form of a squared difference).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[4096.0, 1.0], [4097.0, jnp.nan], [4100.0, 3.0]])
    >>> coordinate_reference(x).tolist()
    [4097.0, 3.0]
    """

    def one(leaf):
        (middle,) = order_statistics(leaf, [(leaf.shape[0] - 1) // 2])
        return computed_once(jnp.where(jnp.isfinite(middle), middle, 0.0).astype(leaf.dtype))

    return jax.tree_util.tree_map(one, updates)


def computed_once(value: Array) -> Array:
    """``value`` itself, but written out once before its consumers read it.

    XLA fuses an elementwise producer into its consumer, and when the
    consumer broadcasts it over the worker axis (``x_i - c``) it recomputes
    the producer once per worker. For a sorting network that is ``n`` times
    its cost: the centred Gram matrix of ``n = 100`` vectors of ``d =
    26,122`` took 266 ms, 6 ms with this (an ``optimization_barrier`` or a
    one-trip loop did not stop it, a ``cond`` does not survive ``vmap``). A
    reduction over ``value`` gives it a second consumer, so XLA computes it
    once; the test is true for every value, so the result is ``value``.

    Parameters
    ----------
    value : Array
        Any shape and dtype.

    Returns
    -------
    Array
        ``value``, unchanged (NaN and inf included).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> computed_once(jnp.array([1.0, jnp.nan, -jnp.inf])).tolist()
    [1.0, nan, -inf]
    """
    always = jnp.all(jnp.isfinite(value) | ~jnp.isfinite(value))
    return jnp.where(always, value, jnp.zeros_like(value))


def gram_matrix(updates: PyTree, centre: PyTree | None = None) -> Array:
    """Inner products between worker vectors, ``G[i, j] = <x_i - c, x_j - c>``, shape ``(n, n)``.

    Summed over all leaves in at least float32 (each product at
    ``Precision.HIGHEST``). ``c`` is ``centre`` (no worker axis), subtracted
    block by block inside the product, or 0 when ``None``. Entries involving
    a bad vector may be NaN or inf; use :func:`pairwise_squared_distances`
    for the NaN-safe view.

    Parameters
    ----------
    updates : pytree
        Every leaf of shape ``(n, ...)``.
    centre : pytree or None
        Same structure, leaves of shape ``(...)``, e.g.
        :func:`coordinate_reference`; ``None`` for the raw inner products.

    Returns
    -------
    Array
        Shape ``(n, n)``, at least float32.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> gram_matrix({"a": jnp.array([[3.0, 4.0], [1.0, 0.0]])}).tolist()
    [[25.0, 3.0], [3.0, 1.0]]
    >>> gram_matrix(jnp.array([[3.0, 4.0], [1.0, 0.0]]), jnp.array([1.0, 0.0])).tolist()
    [[20.0, 0.0], [0.0, 0.0]]
    """
    leaves = jax.tree_util.tree_leaves(updates)
    centres = [None] * len(leaves) if centre is None else jax.tree_util.tree_leaves(centre)
    total = None
    for leaf, c in zip(leaves, centres, strict=True):
        acc = accumulation_dtype(leaf.dtype)
        rows = worker_rows(leaf).astype(acc)
        c = None if c is None else jnp.reshape(c, (-1,)).astype(acc)
        part = _leaf_gram(rows, c)
        total = part if total is None else total + part
    return total


def centred_gram_matrix(updates: PyTree) -> Array:
    """The Gram matrix of the worker vectors centred on :func:`coordinate_reference`.

    Everything translation invariant (distances, Weiszfeld steps in Gram
    space) reads the same from it as from the raw Gram matrix in exact
    arithmetic, and stays exact to float rounding under a common offset.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[4096.0], [4096.5], [4097.0], [4100.0]])
    >>> centred_gram_matrix(x).diagonal().tolist()
    [0.25, 0.0, 0.25, 12.25]
    """
    return gram_matrix(updates, coordinate_reference(updates))


def finite_from_gram(gram: Array) -> Array:
    """Which worker vectors are finite, from the Gram diagonal (squared norms).

    Parameters
    ----------
    gram : Array
        Shape ``(n, n)``.

    Returns
    -------
    Array
        Bool, shape ``(n,)``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> finite_from_gram(jnp.array([[1.0, 0.0], [0.0, jnp.inf]])).tolist()
    [True, False]
    """
    return jnp.isfinite(jnp.diagonal(gram))


def distances_from_gram(gram: Array) -> Array:
    """Squared distances ``||x_i - x_j||^2`` from a Gram matrix, NaN-safe.

    ``G_ii + G_jj - 2 G_ij``, clamped at 0 against rounding; exactly 0 on
    the diagonal of finite vectors; ``inf`` on every row and column of a bad
    vector, diagonal included. The expansion cancels when the vectors share
    an offset much larger than their spread: pass the Gram matrix of centred
    vectors (:func:`centred_gram_matrix`) for distances exact to rounding.

    Parameters
    ----------
    gram : Array
        Shape ``(n, n)``.

    Returns
    -------
    Array
        Shape ``(n, n)``, the dtype of ``gram``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> distances_from_gram(jnp.array([[25.0, 3.0], [3.0, 1.0]])).tolist()
    [[0.0, 20.0], [20.0, 0.0]]
    """
    diag = jnp.diagonal(gram)
    finite = jnp.isfinite(diag)
    both = finite[:, None] & finite[None, :]
    safe = jnp.where(both, gram, 0.0)
    safe_diag = jnp.where(finite, diag, 0.0)
    dist = jnp.maximum(safe_diag[:, None] + safe_diag[None, :] - 2.0 * safe, 0.0)
    dist = jnp.where(jnp.eye(gram.shape[0], dtype=bool), 0.0, dist)
    return jnp.where(both, dist, jnp.inf)


def pairwise_squared_distances(updates: PyTree) -> Array:
    """Squared distances between all worker vectors, shape ``(n, n)``.

    Computed from the Gram matrix of the vectors centred on the robust
    :func:`coordinate_reference` (one pass for the reference, one blocked
    product over the data), so the result is exact to float rounding
    whatever offset the vectors share. A bad vector is at distance ``inf``
    from everything, itself included.

    Parameters
    ----------
    updates : pytree
        Every leaf of shape ``(n, ...)``.

    Returns
    -------
    Array
        Shape ``(n, n)``, at least float32.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x = {"a": jnp.array([[3.0], [0.0], [jnp.nan]])}
    >>> x["b"] = jnp.array([[4.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    >>> pairwise_squared_distances(x).tolist()
    [[0.0, 18.0, inf], [18.0, 0.0, inf], [inf, inf, inf]]

    Under a common offset the distances stay exact (the raw Gram route gives
    ``[0, 0, 0, 16]`` on the first row here):

    >>> pairwise_squared_distances(jnp.array([[4096.0], [4096.5], [4097.0], [4100.0]]))[0].tolist()
    [0.0, 0.25, 1.0, 16.0]
    """
    return distances_from_gram(centred_gram_matrix(updates))


def squared_distances_to(updates: PyTree, center: PyTree) -> Array:
    """Squared distance of every worker vector to one vector ``center``, ``(n,)``.

    ``center`` has no worker axis. One fused pass over the differences
    ``x_i - center`` (never the expanded form, so exact to rounding under a
    common offset); bad vectors give ``inf``.

    Parameters
    ----------
    updates : pytree
        Every leaf of shape ``(n, ...)``.
    center : pytree
        Same structure, leaves of shape ``(...)``.

    Returns
    -------
    Array
        Shape ``(n,)``, at least float32.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> squared_distances_to(jnp.array([[3.0, 4.0], [1.0, 0.0]]), jnp.zeros(2)).tolist()
    [25.0, 1.0]
    """
    total = None
    for leaf, c in zip(
        jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(center), strict=True
    ):
        acc = accumulation_dtype(leaf.dtype)
        diff = worker_rows(leaf).astype(acc) - jnp.reshape(c, (1, -1)).astype(acc)
        part = jnp.sum(diff * diff, axis=1)
        total = part if total is None else total + part
    return jnp.where(jnp.isfinite(total), total, jnp.inf)


# --------------------------------------------------------------------------
# Combining rows
# --------------------------------------------------------------------------


# Up to this many workers weighted_sum is one chain of additions (one fused pass). Above
# it a chain of n additions runs far from one pass on XLA:CPU (n = 256, d = 65,536: 10-12 ms
# against 1.4 ms for one pass; n = 1,024: 155 ms), so the sum is a matrix-vector product
# (1.3 ms; 8.4 ms at n = 1,024) or, when zero-weight rows must be skipped, chains of
# _CHAIN_BLOCK rows in a scan (4.2 ms; 19 ms at n = 1,024). Measured with
# ``python benchmarks/large_n.py --rules mean multi_krum``.
WEIGHTED_CHAIN_MAX_N = 64
_CHAIN_BLOCK = 16


def weighted_sum(weights: Array, updates: PyTree, *, skip_zero: bool = True) -> PyTree:
    """``sum_i weights[i] * x_i`` over the worker axis, in about one pass over the data.

    One fused chain of additions up to ``WEIGHTED_CHAIN_MAX_N`` workers; above,
    a matrix-vector product, or chains of 16 rows in a scan with ``skip_zero``.

    With ``skip_zero`` a row of weight exactly 0 contributes nothing even if
    it holds NaN or inf (``0 * inf`` would be NaN). The result has the input
    dtype; the sum runs in at least float32.

    Parameters
    ----------
    weights : Array
        Shape ``(n,)``.
    updates : pytree
        Every leaf of shape ``(n, ...)``.
    skip_zero : bool
        Whether rows of weight 0 are skipped.

    Returns
    -------
    pytree
        Leaves of shape ``(...)``, in the input dtype.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[1.0, 2.0], [3.0, 4.0], [jnp.inf, 0.0]])
    >>> weighted_sum(jnp.array([0.5, 0.5, 0.0]), x).tolist()
    [2.0, 3.0]
    """

    def one(leaf):
        acc = accumulation_dtype(leaf.dtype)
        w = weights.astype(acc)
        n = leaf.shape[0]
        if n <= WEIGHTED_CHAIN_MAX_N:
            return _weighted_chain(w, leaf, skip_zero, acc).astype(leaf.dtype)
        if not skip_zero:
            total = _mix_plain(w, leaf.reshape(n, -1).astype(acc))
            return total.reshape(leaf.shape[1:]).astype(leaf.dtype)
        # chains of _CHAIN_BLOCK rows in a scan: one read of the data, the zero-weight
        # rows masked row by row (a masked copy for a matrix product would cost more)
        blocks = n // _CHAIN_BLOCK
        body_rows = blocks * _CHAIN_BLOCK
        xs = leaf[:body_rows].reshape((blocks, _CHAIN_BLOCK) + leaf.shape[1:])
        ws = w[:body_rows].reshape(blocks, _CHAIN_BLOCK)

        def add_block(total, block):
            wb, xb = block
            return total + _weighted_chain(wb, xb, True, acc), None

        total, _ = lax.scan(add_block, jnp.zeros(leaf.shape[1:], acc), (ws, xs))
        if body_rows < n:
            total = total + _weighted_chain(w[body_rows:], leaf[body_rows:], True, acc)
        return total.astype(leaf.dtype)

    return jax.tree_util.tree_map(one, updates)


def _weighted_chain(w: Array, leaf: Array, skip_zero: bool, acc) -> Array:
    """``sum_i w[i] * leaf[i]`` as one chain of additions XLA fuses into one pass."""
    total = None
    for i in range(leaf.shape[0]):
        term = w[i] * leaf[i].astype(acc)
        if skip_zero:
            term = jnp.where(w[i] != 0, term, 0.0)
        total = term if total is None else total + term
    return total


def _mix_plain(weights: Array, rows: Array) -> Array:
    return jnp.dot(weights, rows, precision=lax.Precision.HIGHEST)


def mix_rows(weights: Array, updates: PyTree, finite: Array | None = None) -> PyTree:
    """Rows of ``weights @ X`` for a weight matrix of shape ``(m, n)``.

    Bad rows listed by ``finite`` (bool, ``(n,)``) are zeroed first, so a
    weight of 0 on them gives an exactly finite output. Output leaves have a
    leading axis of size ``m`` and the input dtype.

    Parameters
    ----------
    weights : Array
        Shape ``(m, n)``.
    updates : pytree
        Every leaf of shape ``(n, ...)``.
    finite : Array or None
        Bool, shape ``(n,)``, or ``None`` when every row is finite.

    Returns
    -------
    pytree
        Leaves of shape ``(m, ...)``, in the input dtype.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[1.0], [3.0], [jnp.nan]])
    >>> w = jnp.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])
    >>> mix_rows(w, x, jnp.array([True, True, False])).tolist()
    [[2.0], [3.0]]
    """

    def one(leaf):
        acc = accumulation_dtype(leaf.dtype)
        rows = worker_rows(leaf).astype(acc)
        w = weights.astype(acc)
        if finite is None:
            mixed = _mix_plain(w, rows)
        else:
            # Zero the bad rows only when there are some: the masked copy is a
            # full extra write of (n, d).
            mixed = lax.cond(
                jnp.all(finite),
                lambda: _mix_plain(w, rows),
                lambda: _mix_plain(w, jnp.where(finite[:, None], rows, 0.0)),
            )
        return mixed.reshape((weights.shape[0],) + leaf.shape[1:]).astype(leaf.dtype)

    return jax.tree_util.tree_map(one, updates)


def scale_rows(scales: Array, updates: PyTree) -> PyTree:
    """``x_i * scales[i]``; a row with scale 0 becomes exactly zero (even if bad).

    Parameters
    ----------
    scales : Array
        Shape ``(n,)``, non-negative.
    updates : pytree
        Every leaf of shape ``(n, ...)``.

    Returns
    -------
    pytree
        ``updates``' structure, shapes and dtypes.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> scale_rows(jnp.array([2.0, 0.0]), jnp.array([[1.0, 2.0], [jnp.nan, 1.0]])).tolist()
    [[2.0, 4.0], [0.0, 0.0]]
    """

    def one(leaf):
        acc = accumulation_dtype(leaf.dtype)
        s = scales.astype(acc).reshape((-1,) + (1,) * (leaf.ndim - 1))
        out = jnp.where(s > 0, leaf.astype(acc) * s, 0.0)
        return out.astype(leaf.dtype)

    return jax.tree_util.tree_map(one, updates)


# --------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------


# Rows up to this long are ranked by two stable argsorts (cheap at this size, and they
# compile in a fraction of the time a sorting network of the row takes).
SMALLEST_MASK_SORT_MAX_N = 64


def smallest_mask(values: Array, k: int) -> Array:
    """Boolean mask of the ``k`` smallest entries along the last axis.

    Ties go to the lower index; ``inf`` and NaN entries are taken last (NaN
    counts as ``+inf``). Rows of up to ``SMALLEST_MASK_SORT_MAX_N`` entries
    are ranked by two stable ``argsort``; longer ones take the ``k``-th
    smallest value from :func:`order_statistics` and keep in one pass what
    lies below it and the first ties (two ``argsort`` of a 1,000 x 1,000
    distance matrix took 368 ms on the CPU, NNM's whole round; this 10 ms).

    Parameters
    ----------
    values : Array
        Shape ``(..., n)``.
    k : int
        ``0 <= k <= n``.

    Returns
    -------
    Array
        Bool, the shape of ``values``, ``k`` True per row.

    Raises
    ------
    ValueError
        ``"cannot select <k> of <n> entries"``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> smallest_mask(jnp.array([3.0, 1.0, jnp.inf, 1.0]), 2).tolist()
    [False, True, False, True]
    >>> smallest_mask(jnp.array([jnp.nan, 2.0, jnp.inf, 1.0]), 3).tolist()
    [True, True, False, True]
    """
    n = values.shape[-1]
    if not 0 <= k <= n:
        raise ValueError(f"cannot select {k} of {n} entries")
    if k == 0 or k == n:
        return jnp.full(values.shape, k == n)
    v = jnp.where(jnp.isnan(values), jnp.inf, values)
    if n <= SMALLEST_MASK_SORT_MAX_N:  # small rows: two stable argsorts compile fastest
        ranks = jnp.argsort(jnp.argsort(v, axis=-1, stable=True), axis=-1, stable=True)
        return ranks < k
    rows = v.reshape(-1, n)
    (threshold,) = order_statistics(rows.T, [k - 1])
    threshold = computed_once(threshold)[:, None]
    below = rows < threshold
    ties = rows == threshold
    room = k - jnp.sum(below, axis=-1, keepdims=True)
    chosen = below | (ties & (jnp.cumsum(ties, axis=-1) <= room))
    return chosen.reshape(values.shape)


def smallest_sum(values: Array, k: int) -> Array:
    """Sum of the ``k`` smallest entries along the last axis.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> float(smallest_sum(jnp.array([3.0, 1.0, 5.0, 2.0]), 2))
    3.0
    """
    return jnp.sum(jnp.sort(values, axis=-1)[..., :k], axis=-1)


# --------------------------------------------------------------------------
# Order statistics across the worker axis: a sorting network
# --------------------------------------------------------------------------


@functools.cache
def sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Comparators ``(i, j)``, ``i < j``, of Batcher's odd-even merge sort on ``n`` wires.

    Applying ``(min, max)`` to every pair in order sorts any input ascending.
    ``O(n log^2 n)`` comparators; XLA drops those that do not reach the
    outputs a rule uses.

    Parameters
    ----------
    n : int
        Number of wires.

    Returns
    -------
    tuple of (int, int)

    References
    ----------
    K. E. Batcher, "Sorting networks and their applications", AFIPS Spring
    Joint Computer Conference, 1968.

    Examples
    --------
    >>> sorting_network(4)
    ((0, 1), (2, 3), (0, 2), (1, 3), (1, 2))
    """
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple(pairs)


def sort_rows(rows: Sequence[Array]) -> list[Array]:
    """Sort a list of equal-shaped arrays elementwise across the list.

    NaN sorts as ``+inf``, so up to ``f`` bad rows only occupy the top
    ``f`` places (or the bottom ones for ``-inf``).

    Parameters
    ----------
    rows : sequence of Array
        Equal shapes.

    Returns
    -------
    list of Array
        Same length and shapes; element ``j`` holds the ``j``-th smallest
        value of every coordinate.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> [r.tolist() for r in sort_rows([jnp.array([3.0, jnp.nan]), jnp.array([1.0, 2.0])])]
    [[1.0, 2.0], [3.0, inf]]
    """
    out = [jnp.where(jnp.isnan(r), jnp.inf, r) for r in rows]
    select = len(out) <= _SELECT_NETWORK_MAX
    for i, j in sorting_network(len(out)):
        if select:
            # compare + select: no NaN is left, so minimum / maximum's NaN
            # handling only costs time (median 6.0 -> 2.6 ms at n = 16 on CPU)
            less = out[i] < out[j]
            out[i], out[j] = jnp.where(less, out[i], out[j]), jnp.where(less, out[j], out[i])
        else:  # for large n XLA fuses min / max networks better (CWTM n = 128: 168 vs 676 ms)
            out[i], out[j] = jnp.minimum(out[i], out[j]), jnp.maximum(out[i], out[j])
    return out


def sorted_workers(leaf: Array) -> list[Array]:
    """The rows of a worker-stacked leaf, sorted coordinate-wise (ascending).

    A sorting network up to ``SORT_NETWORK_MAX_N`` workers, ``jnp.sort``
    along the worker axis above it (NaN sorts as ``+inf`` either way).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> [r.tolist() for r in sorted_workers(jnp.array([[2.0, 0.0], [1.0, 5.0]]))]
    [[1.0, 0.0], [2.0, 5.0]]
    """
    n = leaf.shape[0]
    if n <= SORT_NETWORK_MAX_N:
        return sort_rows([leaf[i] for i in range(n)])
    ordered = jnp.sort(_order_canonical(leaf), axis=0)
    return [ordered[i] for i in range(n)]


def order_statistic_method(n: int) -> str:
    """The order-statistics kernel chosen for ``n`` workers (at trace time).

    ``"network"`` up to ``SORT_NETWORK_MAX_N`` workers, ``"bisection"``
    above (``jnp.sort`` and ``lax.top_k`` measured 6 to 30 times slower than
    bisection on the CPU at every ``n`` tried).

    Examples
    --------
    >>> order_statistic_method(16), order_statistic_method(1024)
    ('network', 'bisection')
    """
    return "network" if n <= SORT_NETWORK_MAX_N else "bisection"


def _order_canonical(leaf: Array) -> Array:
    """NaN as ``+inf`` and ``-0.0`` as ``+0.0``: a total order on values."""
    leaf = jnp.where(jnp.isnan(leaf), jnp.inf, leaf)
    return jnp.where(leaf == 0, jnp.zeros((), leaf.dtype), leaf)


def sum_workers(rows: Array) -> Array:
    """Sum over the leading (worker) axis by pairwise halving.

    ``log2(n)`` slices and adds that XLA fuses into one pass; on CPU a plain
    ``jnp.sum(axis=0)`` reduction of a tall array runs several times slower.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> sum_workers(jnp.arange(10.0).reshape(5, 2)).tolist()
    [20.0, 25.0]
    """
    while rows.shape[0] > 1:
        half = rows.shape[0] // 2
        top = rows[:half] + rows[half : 2 * half]
        if rows.shape[0] % 2:
            top = top.at[0].add(rows[2 * half])
        rows = top
    return rows[0]


def _float_keys(values: Array) -> Array:
    """Unsigned integers ordered like the (canonical, NaN-free) float values."""
    bits = values.dtype.itemsize * 8
    unsigned = jnp.uint32 if bits == 32 else jnp.uint64
    u = lax.bitcast_convert_type(values, unsigned)
    sign = jnp.asarray(1 << (bits - 1), unsigned)
    return jnp.where(u >= sign, ~u, u | sign)


def _from_float_keys(keys: Array, dtype) -> Array:
    sign = jnp.asarray(1 << (keys.dtype.itemsize * 8 - 1), keys.dtype)
    return lax.bitcast_convert_type(jnp.where(keys >= sign, keys ^ sign, ~keys), dtype)


def _bisect_keys(keys: Array, ranks: Sequence[int]) -> Array:
    """Keys ``(K, m)`` of the order statistics ``ranks`` of the key columns ``(n, m)``.

    One counting pass per key bit: the answer for rank ``k`` is the largest
    key ``v`` with ``#{x < v} <= k``, built from the top bit down.
    """
    bits = keys.dtype.itemsize * 8
    target = jnp.asarray(ranks, jnp.int32)[:, None]
    one = jnp.ones((), keys.dtype)
    # Counts in int16 where n allows: half the bytes through the halving sum (2.0x faster
    # than int32 at n = 256, d = 65,536 on the CPU, side by side).
    count_dtype = jnp.int16 if keys.shape[0] < 2**15 else jnp.int32

    def body(p, lo):
        bit = one << (bits - 1 - p).astype(keys.dtype)
        trial = lo + bit
        below = (keys[:, None, :] < trial[None]).astype(count_dtype)
        count = sum_workers(below).astype(jnp.int32)
        return jnp.where(count <= target, trial, lo)

    return lax.fori_loop(0, bits, body, jnp.zeros((len(ranks), keys.shape[1]), keys.dtype))


def _bisect_keys_blocked(keys: Array, ranks: Sequence[int]) -> Array:
    """:func:`_bisect_keys` one cache-sized block of columns at a time (for CPUs)."""
    n, m = keys.shape
    width = max(64, _SELECT_BLOCK_BYTES // (keys.dtype.itemsize * n) // 64 * 64)
    blocks = m // width
    if blocks < 2:
        return _bisect_keys(keys, ranks)

    def body(i, acc):
        block = lax.dynamic_slice_in_dim(keys, i * width, width, axis=1)
        return lax.dynamic_update_slice_in_dim(acc, _bisect_keys(block, ranks), i * width, axis=1)

    acc = lax.fori_loop(0, blocks, body, jnp.zeros((len(ranks), m), keys.dtype))
    if blocks * width < m:
        acc = acc.at[:, blocks * width :].set(_bisect_keys(keys[:, blocks * width :], ranks))
    return acc


def _select_bisection(rows: Array, ranks: Sequence[int]) -> list[Array]:
    """Order statistics of canonical rows ``(n, m)`` by bisection on their order keys.

    On CPU the 32 counting passes run block by block over cache-sized column
    blocks (about 4x faster at n = 256, d = 65,536 than over all columns at
    once, side by side); elsewhere over all columns at once.
    """
    keys = _float_keys(rows)
    lo = lax.platform_dependent(
        keys,
        cpu=lambda k: _bisect_keys_blocked(k, ranks),
        default=lambda k: _bisect_keys(k, ranks),
    )
    values = _from_float_keys(lo, rows.dtype)
    return [values[i] for i in range(len(ranks))]


def _select_top_k(rows: Array, ranks: Sequence[int]) -> list[Array]:
    """Order statistics of canonical rows ``(n, m)`` from ``lax.top_k`` partial sorts."""
    n = rows.shape[0]
    low = [r for r in ranks if r < n - 1 - r]
    high = [r for r in ranks if r >= n - 1 - r]
    out = {}
    if low:
        smallest = -lax.top_k(-rows.T, max(low) + 1)[0]
        out.update({r: smallest[:, r] for r in low})
    if high:
        largest = lax.top_k(rows.T, n - min(high))[0]
        out.update({r: largest[:, n - 1 - r] for r in high})
    return [out[r] for r in ranks]


def order_statistics(leaf: Array, ranks: Sequence[int], method: str | None = None) -> list[Array]:
    """Coordinate-wise order statistics across the worker axis.

    Element ``r`` (0-based, ascending) of every coordinate sorted across the
    ``n`` workers, for each ``r`` in ``ranks``; NaN sorts as ``+inf``. Every
    method returns exactly the same values (elements of ``leaf``; a zero may
    come back as ``+0.0`` where the input held ``-0.0``).

    Parameters
    ----------
    leaf : Array
        Shape ``(n, ...)``, floating.
    ranks : sequence of int
        Each in ``[0, n)``.
    method : str or None
        ``"network"`` (Batcher's sorting network, :func:`sort_rows`),
        ``"sort"`` (``jnp.sort`` along the worker axis), ``"top_k"``
        (``lax.top_k`` partial sorts from whichever end is nearer) or
        ``"bisection"`` (selection by counting, one pass per key bit);
        ``None`` picks :func:`order_statistic_method` of ``n``.

    Returns
    -------
    list of Array
        One array of shape ``leaf.shape[1:]`` per rank, in the input dtype.

    Raises
    ------
    ValueError
        ``"rank <r> is outside [0, <n>)"`` or ``"unknown order-statistics
        method <method>"``.

    References
    ----------
    K. E. Batcher, "Sorting networks and their applications", AFIPS Spring
    Joint Computer Conference, 1968. C. A. R. Hoare, "Algorithm 65: Find",
    Communications of the ACM 4(7), 1961 (selection without a full sort).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[3.0, jnp.nan], [1.0, 2.0], [2.0, -1.0]])
    >>> [r.tolist() for r in order_statistics(x, [0, 2], method="bisection")]
    [[1.0, -1.0], [3.0, inf]]
    """
    n = leaf.shape[0]
    for r in ranks:
        if not 0 <= r < n:
            raise ValueError(f"rank {r} is outside [0, {n})")
    method = order_statistic_method(n) if method is None else method
    if method not in ORDER_STATISTIC_METHODS:
        raise ValueError(f"unknown order-statistics method {method!r}")
    if method == "network":
        ordered = sorted_workers(leaf) if n <= SORT_NETWORK_MAX_N else sort_rows(list(leaf))
        return [ordered[r] for r in ranks]
    shape = leaf.shape[1:]
    wide = leaf.dtype.itemsize < 4
    rows = worker_rows(_order_canonical(leaf.astype(jnp.float32) if wide else leaf))
    if method == "sort":
        ordered = jnp.sort(rows, axis=0)
        picked = [ordered[r] for r in ranks]
    elif method == "top_k":
        picked = _select_top_k(rows, ranks)
    else:
        picked = _select_bisection(rows, ranks)
    return [p.reshape(shape).astype(leaf.dtype) for p in picked]


def rank_range_sum(leaf: Array, lo: int, hi: int, method: str | None = None) -> Array:
    """Sum of the order statistics of ranks ``lo .. hi - 1``, per coordinate.

    With the sorting network the ``hi - lo`` sorted values are added in
    order. Otherwise the two boundary values ``s_lo`` and ``s_{hi-1}`` come
    from :func:`order_statistics` and one more pass adds every value strictly
    between them plus the right number of copies of each boundary (ties
    included), so no large value is ever added and subtracted back. The two
    routes agree to float rounding (the order of the additions differs).

    Parameters
    ----------
    leaf : Array
        Shape ``(n, ...)``, floating.
    lo, hi : int
        ``0 <= lo < hi <= n``.
    method : str or None
        As in :func:`order_statistics`.

    Returns
    -------
    Array
        Shape ``leaf.shape[1:]``, at least float32.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[5.0], [1.0], [1.0], [jnp.nan], [3.0]])
    >>> rank_range_sum(x, 1, 4, method="top_k").tolist()
    [9.0]
    """
    n = leaf.shape[0]
    if not 0 <= lo < hi <= n:
        raise ValueError(f"rank range [{lo}, {hi}) is outside [0, {n}]")
    acc = accumulation_dtype(leaf.dtype)
    method = order_statistic_method(n) if method is None else method
    if method == "network":
        ordered = order_statistics(leaf, range(lo, hi), method)
        return sum(r.astype(acc) for r in ordered)
    low, high = (v.astype(acc) for v in order_statistics(leaf, [lo, hi - 1], method))
    values = _order_canonical(leaf).astype(acc)
    # Three halving sums, each fused with its elementwise producer (stacking the three
    # first measured 17x slower on the CPU: the stack is written out).
    count = jnp.int16 if n < 2**15 else jnp.int32
    inner = sum_workers(jnp.where((values > low) & (values < high), values, 0.0))
    n_le_low = sum_workers((values <= low).astype(count)).astype(acc)
    n_lt_high = sum_workers((values < high).astype(count)).astype(acc)
    copies_low = jnp.where(low == high, hi - lo, n_le_low - lo)
    copies_high = jnp.where(low == high, 0, hi - n_lt_high)
    return inner + copies_low * low + jnp.where(copies_high > 0, copies_high * high, 0.0)


def closest_sum(leaf: Array, centre: Array, keep: int) -> Array:
    """Sum of the ``keep`` values closest to ``centre``, per coordinate, without a sort.

    The ``keep``-th smallest distance ``t = |x_i - centre|`` comes from
    :func:`order_statistics`; the values closer than ``t`` are added, and
    the rest of the ``keep`` are taken at distance ``t``, from below the
    centre first (the lowest window of sorted values, as a sorted-window
    rule breaks ties). NaN counts as ``+inf``. Values at distance ``t`` on
    one side enter through their mean (equal values, up to the rounding of
    ``t``).

    Parameters
    ----------
    leaf : Array
        Shape ``(n, ...)``.
    centre : Array
        Shape ``(...)``, e.g. the coordinate-wise median.
    keep : int
        ``1 <= keep <= n``.

    Returns
    -------
    Array
        Shape ``(...)``, in at least float32.

    Raises
    ------
    ValueError
        ``"cannot keep <keep> of <n> values"``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> x = jnp.array([[1.0], [2.0], [3.0], [100.0]])
    >>> closest_sum(x, jnp.array([2.5]), 3).tolist()  # 2 and 3, then 1 before 100
    [6.0]
    """
    n = leaf.shape[0]
    if not 1 <= keep <= n:
        raise ValueError(f"cannot keep {keep} of {n} values")
    acc = accumulation_dtype(leaf.dtype)
    values = _order_canonical(leaf).astype(acc)
    centre = computed_once(centre.astype(acc))
    distance = jnp.abs(values - centre)
    distance = jnp.where(jnp.isnan(distance), jnp.inf, distance)
    (t,) = order_statistics(distance, [keep - 1])
    t = computed_once(t)
    count = jnp.int16 if n < 2**15 else jnp.int32

    def total(mask):
        return sum_workers(jnp.where(mask, values, 0.0)), sum_workers(mask.astype(count))

    inner, n_inner = total(distance < t)
    low, n_low = total((distance == t) & (values < centre))
    high, n_high = total((distance == t) & (values >= centre))
    room = keep - n_inner.astype(acc)
    take_low = jnp.minimum(room, n_low.astype(acc))
    take_high = room - take_low

    def part(taken, s, k):
        return jnp.where(taken > 0, taken * s / jnp.maximum(k.astype(acc), 1.0), 0.0)

    return inner + part(take_low, low, n_low) + part(take_high, high, n_high)


def coordinate_median(leaf: Array) -> Array:
    """Coordinate-wise median of a worker-stacked leaf (mean of the middle two for even ``n``).

    NaN sorts as ``+inf``; the kernel is chosen by ``n``
    (:func:`order_statistic_method`).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> coordinate_median(jnp.array([[1.0, 0.0], [2.0, 1.0], [3.0, 2.0], [100.0, -100.0]])).tolist()
    [2.5, 0.5]
    """
    n = leaf.shape[0]
    acc = accumulation_dtype(leaf.dtype)
    if n % 2:
        return order_statistics(leaf, [n // 2])[0]
    a, b = order_statistics(leaf, [n // 2 - 1, n // 2])
    return (0.5 * (a.astype(acc) + b.astype(acc))).astype(leaf.dtype)


def coordinate_trimmed_mean(leaf: Array, f: int) -> Array:
    """Coordinate-wise mean of the ``n - 2f`` middle values of a worker-stacked leaf.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> coordinate_trimmed_mean(jnp.array([[1.0], [2.0], [3.0], [100.0]]), 1).tolist()
    [2.5]
    """
    n = leaf.shape[0]
    return (rank_range_sum(leaf, f, n - f) / (n - 2 * f)).astype(leaf.dtype)


def subsets_count(n: int, size: int) -> int:
    """Number of subsets of ``size`` workers among ``n``.

    Examples
    --------
    >>> subsets_count(5, 3)
    10
    """
    return math.comb(n, size)


_MARGIN_SIGMAS = 8.0
_MARGIN_FLOOR = 16.0
_UINT32_MAX = 2**32 - 1


def sample_without_replacement(key: Array, population: int, size: int) -> Array:
    """``size`` distinct indices of ``range(population)``, a uniformly random subset.

    ``d = population``, ``k = size``. The indices of the ``k`` smallest of
    ``d`` iid random keys (``jax.random.choice(replace=False)`` sorts all
    ``d`` of them: 0.8 s for 1.6M coordinates on CPU); here only the keys
    below a threshold (about ``k + 8 sqrt(k)`` of them) are sorted. Where
    the count below the threshold misses ``[k, capacity]`` (probability
    below ``1e-14``), the keys are redrawn in a ``lax.while_loop`` rather
    than sorted in full under ``lax.cond``: the accepted keys are still
    exchangeable, so the subset stays exactly uniform, and under ``vmap``
    (where ``cond`` runs both branches, a full sort of ``d`` per worker)
    the loop body practically never runs. Ties in the 32-bit keys are
    broken by a second random 32-bit key.

    Parameters
    ----------
    key : Array
        A PRNG key.
    population : int
        ``d``.
    size : int
        ``k``, with ``0 <= k <= d``.

    Returns
    -------
    Array
        int32, shape ``(k,)``, distinct indices in ``[0, d)``.

    Raises
    ------
    ValueError
        ``"cannot draw <k> distinct indices from <d>"``.

    Examples
    --------
    >>> import jax
    >>> idx = sample_without_replacement(jax.random.key(0), 1000, 10)
    >>> idx.shape, len(set(idx.tolist())), bool((idx >= 0).all() & (idx < 1000).all())
    ((10,), 10, True)
    """
    if not 0 <= size <= population:
        raise ValueError(f"cannot draw {size} distinct indices from {population}")
    d, k = population, size
    if k == 0:
        return jnp.zeros((0,), jnp.int32)
    margin = _MARGIN_SIGMAS * math.sqrt(k) + _MARGIN_FLOOR
    capacity = min(d, int(k + 2 * margin))
    if capacity >= d:
        primary, secondary = jax.random.bits(key, (2, d), jnp.uint32)
        return lax.sort((primary, secondary, jnp.arange(d, dtype=jnp.int32)), num_keys=2)[2][:k]

    threshold = jnp.uint32(min(_UINT32_MAX, int((k + margin) / d * 2.0**32)))

    # Draw d primary keys and `capacity` tie-breaking keys until the count is in range.
    def rejected(carry):
        attempt, draw = carry
        count = jnp.sum(draw[:d] < threshold)
        return (attempt == 0) | (count < k) | (count > capacity)

    def redraw(carry):
        attempt, _ = carry
        sub = jax.random.fold_in(key, attempt)
        return attempt + 1, jax.random.bits(sub, (d + capacity,), jnp.uint32)

    init = (jnp.int32(0), jnp.zeros((d + capacity,), jnp.uint32))
    _, draw = lax.while_loop(rejected, redraw, init)
    u, secondary = draw[:d], draw[d:]
    below = u < threshold
    (candidates,) = jnp.nonzero(below, size=capacity, fill_value=0)
    valid = jnp.arange(capacity) < jnp.sum(below)
    primary = jnp.where(valid, u[candidates], jnp.uint32(_UINT32_MAX))
    order = lax.sort((primary, secondary, candidates.astype(jnp.int32)), num_keys=2)[2]
    return order[:k]
