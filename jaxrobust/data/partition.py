"""Heterogeneous splits of a data set over honest workers.

:func:`partition` gives each worker an array of example indices, reproducibly
from a seed, under one of the schemes of ``HETEROGENEITY`` (see
:func:`partition` for their definitions). :func:`class_counts` and
:func:`format_class_table` print the resulting workers x classes table.
:func:`stack_partition` turns the ragged split into padded device-friendly
arrays and :func:`sample_batches` draws per-worker minibatches from them inside a jitted step::

    parts = partition(ds.y_train, 10, "dirichlet", alpha=0.1, seed=0)
    print(format_class_table(class_counts(ds.y_train, parts, ds.num_classes)))
    indices, sizes = stack_partition(parts)
    batch_idx = sample_batches(key, indices, sizes, 32)  # (10, 32), inside jit
    xb, yb = x_train[batch_idx], y_train[batch_idx]
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Annotated

import jax
import jax.numpy as jnp
import numpy as np
from annotated_types import Ge, Gt, Le

from jaxrobust.core import registry

__all__ = [
    "HETEROGENEITY",
    "check_batch_size",
    "class_counts",
    "format_class_table",
    "partition",
    "sample_batches",
    "stack_partition",
]

HETEROGENEITY = registry("heterogeneity")
"""The registered schemes: ``scheme(labels, num_workers, rng, **options) -> parts``."""


@HETEROGENEITY.register("iid")
def iid(labels: np.ndarray, num_workers: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A uniformly random split into near-equal parts.

    Sizes differ by at most one (``np.array_split`` of a permutation).

    Parameters
    ----------
    labels : np.ndarray
        Integer class labels, shape ``(num_examples,)``.
    num_workers : int
        Number of workers, ``1 <= num_workers <= num_examples``.
    rng : np.random.Generator
        The source of randomness.

    Returns
    -------
    list of np.ndarray
        ``num_workers`` disjoint integer index arrays covering
        ``range(num_examples)`` (unsorted; :func:`partition` sorts them).

    Examples
    --------
    >>> import numpy as np
    >>> y = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    >>> [len(p) for p in iid(y, 3, np.random.default_rng(0))]
    [3, 3, 2]
    """
    return np.array_split(rng.permutation(len(labels)), num_workers)


@HETEROGENEITY.register("dirichlet")
def dirichlet(
    labels: np.ndarray,
    num_workers: int,
    rng: np.random.Generator,
    alpha: Annotated[float, Gt(0)] = 1.0,
) -> list[np.ndarray]:
    """Per-class proportions drawn from Dir(alpha); no worker left empty.

    For each class, proportions ``p ~ Dir(alpha * 1)`` over the workers cut
    that class's shuffled examples; then every empty worker receives one
    example taken at random from the currently largest worker.

    Parameters
    ----------
    labels : np.ndarray
        Integer class labels, shape ``(num_examples,)``.
    num_workers : int
        Number of workers, ``1 <= num_workers <= num_examples``.
    rng : np.random.Generator
        The source of randomness.
    alpha : float
        Concentration, ``> 0`` (small: very heterogeneous).

    Returns
    -------
    list of np.ndarray
        ``num_workers`` disjoint integer index arrays covering
        ``range(num_examples)`` (unsorted; :func:`partition` sorts them).

    Raises
    ------
    ValueError
        ``"dirichlet needs alpha > 0, got alpha=.."``.

    References
    ----------
    T.-M. H. Hsu, H. Qi, M. Brown, "Measuring the effects of non-identical
    data distribution for federated visual classification", arXiv:1909.06335,
    2019.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    >>> parts = dirichlet(y, 2, np.random.default_rng(0), alpha=0.5)
    >>> sorted(np.concatenate(parts).tolist()) == list(range(8)), min(map(len, parts)) > 0
    (True, True)
    """
    if not alpha > 0:
        raise ValueError(f"dirichlet needs alpha > 0, got alpha={alpha}")
    return _dirichlet(labels, num_workers, float(alpha), rng)


@HETEROGENEITY.register("gamma_similarity")
def gamma_similarity(
    labels: np.ndarray,
    num_workers: int,
    rng: np.random.Generator,
    gamma: Annotated[float, Ge(0), Le(1)] = 0.5,
) -> list[np.ndarray]:
    """A fraction gamma split iid, the rest sorted by label into contiguous chunks.

    ``gamma = 1`` is iid, ``gamma = 0`` is :func:`extreme`; every worker gets
    ``num_examples / num_workers`` examples up to one or two.

    Parameters
    ----------
    labels : np.ndarray
        Integer class labels, shape ``(num_examples,)``.
    num_workers : int
        Number of workers, ``1 <= num_workers <= num_examples``.
    rng : np.random.Generator
        The source of randomness.
    gamma : float
        Fraction split iid, in ``[0, 1]``.

    Returns
    -------
    list of np.ndarray
        ``num_workers`` disjoint integer index arrays covering
        ``range(num_examples)`` (unsorted; :func:`partition` sorts them).

    Raises
    ------
    ValueError
        ``"gamma_similarity needs 0 <= gamma <= 1, got gamma=.."``.

    References
    ----------
    S. P. Karimireddy, S. Kale, M. Mohri, S. J. Reddi, S. U. Stich,
    A. T. Suresh, "SCAFFOLD: stochastic controlled averaging for federated
    learning", ICML 2020 (the "similarity" split of its experiments).

    Examples
    --------
    >>> import numpy as np
    >>> y = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    >>> parts = gamma_similarity(y, 2, np.random.default_rng(0), gamma=0.0)
    >>> class_counts(y, parts, 3).tolist()
    [[3, 1, 0], [0, 2, 2]]
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma_similarity needs 0 <= gamma <= 1, got gamma={gamma}")
    return _gamma_similarity(labels, num_workers, float(gamma), rng)


@HETEROGENEITY.register("extreme")
def extreme(labels: np.ndarray, num_workers: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Sorted by label, cut into contiguous near-equal chunks, one per worker.

    Worker ``w`` gets chunk ``w`` (the lowest labels go to worker 0); ties
    within a class are broken by ``rng``.

    Parameters
    ----------
    labels : np.ndarray
        Integer class labels, shape ``(num_examples,)``.
    num_workers : int
        Number of workers, ``1 <= num_workers <= num_examples``.
    rng : np.random.Generator
        The source of randomness.

    Returns
    -------
    list of np.ndarray
        ``num_workers`` disjoint integer index arrays covering
        ``range(num_examples)`` (unsorted; :func:`partition` sorts them).

    Examples
    --------
    >>> import numpy as np
    >>> y = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    >>> class_counts(y, extreme(y, 2, np.random.default_rng(0)), 3).tolist()
    [[3, 1, 0], [0, 2, 2]]
    """
    return np.array_split(_label_sorted(labels, rng.permutation(len(labels))), num_workers)


@HETEROGENEITY.register("shards")
def shards(
    labels: np.ndarray,
    num_workers: int,
    rng: np.random.Generator,
    shards_per_worker: Annotated[int, Ge(1)] = 2,
) -> list[np.ndarray]:
    """Sorted by label, cut into shards; each worker gets ``shards_per_worker`` at random.

    The ``num_workers * shards_per_worker`` shards are near-equal contiguous
    pieces of the label-sorted examples.

    Parameters
    ----------
    labels : np.ndarray
        Integer class labels, shape ``(num_examples,)``.
    num_workers : int
        Number of workers, ``1 <= num_workers <= num_examples``.
    rng : np.random.Generator
        The source of randomness.
    shards_per_worker : int
        Shards per worker, ``>= 1``, with
        ``num_workers * shards_per_worker <= num_examples``.

    Returns
    -------
    list of np.ndarray
        ``num_workers`` disjoint integer index arrays covering
        ``range(num_examples)`` (unsorted; :func:`partition` sorts them).

    Raises
    ------
    ValueError
        ``"shards needs shards_per_worker >= 1, got shards_per_worker=.."``;
        ``"shards needs num_workers * shards_per_worker <= .. examples, got .."``.

    References
    ----------
    H. B. McMahan, E. Moore, D. Ramage, S. Hampson, B. Aguera y Arcas,
    "Communication-efficient learning of deep networks from decentralized
    data", AISTATS 2017.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    >>> [len(p) for p in shards(y, 2, np.random.default_rng(0))]
    [4, 4]
    >>> shards(y, 5, np.random.default_rng(0))
    Traceback (most recent call last):
    ...
    ValueError: shards needs num_workers * shards_per_worker <= 8 examples, got 5 * 2 = 10
    """
    n = len(labels)
    if int(shards_per_worker) != shards_per_worker or shards_per_worker < 1:
        raise ValueError(
            f"shards needs shards_per_worker >= 1, got shards_per_worker={shards_per_worker}"
        )
    k = int(shards_per_worker)
    if num_workers * k > n:
        raise ValueError(
            f"shards needs num_workers * shards_per_worker <= {n} examples, "
            f"got {num_workers} * {k} = {num_workers * k}"
        )
    pieces = np.array_split(_label_sorted(labels, rng.permutation(n)), num_workers * k)
    owner = rng.permutation(num_workers * k).reshape(num_workers, k)
    return [np.concatenate([pieces[s] for s in row]) for row in owner]


def partition(
    labels: np.ndarray,
    num_workers: int,
    scheme: str = "iid",
    *,
    alpha: float = 1.0,
    gamma: float = 0.5,
    shards_per_worker: int = 2,
    seed: int = 0,
    **options,
) -> list[np.ndarray]:
    """Split example indices over workers with a given heterogeneity.

    Parameters
    ----------
    labels : np.ndarray
        Integer class labels, shape ``(num_examples,)``.
    num_workers : int
        Number of (honest) workers, at most ``num_examples``.
    scheme : str
        One of ``HETEROGENEITY``:

        ``"iid"``
            A uniformly random split into near-equal parts (sizes differ by at
            most one).
        ``"dirichlet"``
            For each class, proportions ``p ~ Dir(alpha * 1)`` over the workers
            cut that class's shuffled examples (small ``alpha``: very
            heterogeneous). **Guarantee**: no worker ends empty. After the draw,
            each empty worker receives one example taken at random from the
            currently largest worker (no redraw, so it always terminates; the
            draw is perturbed by at most ``num_workers - 1`` examples).
        ``"gamma_similarity"``
            A random fraction ``gamma`` of the examples is split iid; the rest is
            sorted by label and cut into contiguous chunks, one per worker
            (``gamma=1``: iid, ``gamma=0``: extreme). The chunk sizes are
            chosen so that every worker gets ``num_examples / num_workers``
            examples up to one or two.
        ``"extreme"``
            Sort by label and cut into ``num_workers`` contiguous near-equal
            chunks; worker ``w`` gets chunk ``w`` (the lowest labels go to
            worker 0).
        ``"shards"``
            Sort by label, cut into ``num_workers * shards_per_worker``
            near-equal contiguous shards and give each worker
            ``shards_per_worker`` of them at random.

        Ties within a class are broken by a seeded shuffle, so the sorted
        schemes too depend on ``seed`` (except where chunk boundaries fall
        exactly on class boundaries).
    alpha : float
        Dirichlet concentration, ``> 0`` (used by ``"dirichlet"``).
    gamma : float
        Fraction split iid, in ``[0, 1]`` (used by ``"gamma_similarity"``).
    shards_per_worker : int
        Shards per worker, ``>= 1`` (used by ``"shards"``); needs
        ``num_workers * shards_per_worker <= num_examples``.
    seed : int
        Seed; the same arguments give the same split.

    Returns
    -------
    list of np.ndarray
        ``num_workers`` sorted ``int64`` index arrays, disjoint, non-empty, and
        covering ``range(num_examples)``.

    Raises
    ------
    ValueError
        ``labels`` not 1-D or not integer; ``num_workers`` not an integer
        ``>= 1`` or above ``num_examples``; an unknown scheme (the message
        lists the registered ones); or a scheme's option out of bounds
        (``alpha > 0``, ``0 <= gamma <= 1``, ``shards_per_worker >= 1`` and
        ``num_workers * shards_per_worker <= num_examples``).

    References
    ----------
    Dirichlet: Hsu, Qi, Brown, arXiv:1909.06335, 2019. Gamma similarity:
    Karimireddy et al., "SCAFFOLD", ICML 2020. Shards: McMahan et al.,
    AISTATS 2017.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    >>> parts = partition(y, 2, "extreme", seed=0)
    >>> [p.dtype.name for p in parts], class_counts(y, parts, 3).tolist()
    (['int64', 'int64'], [[3, 1, 0], [0, 2, 2]])
    >>> partition(y, 9)
    Traceback (most recent call last):
    ...
    ValueError: more workers than examples: num_workers=9 > 8 examples ...
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if int(num_workers) != num_workers or num_workers < 1:
        raise ValueError(f"num_workers must be an integer >= 1, got num_workers={num_workers}")
    num_workers = int(num_workers)
    n = len(labels)
    if num_workers > n:
        raise ValueError(
            f"more workers than examples: num_workers={num_workers} > {n} examples "
            "(every worker needs at least one)"
        )
    rng = np.random.default_rng(seed)
    # The flat parameters reach the schemes that take them; ``options`` are
    # checked against the scheme (unknown ones: ValueError listing the valid ones).
    flat = {"alpha": alpha, "gamma": gamma, "shards_per_worker": shards_per_worker}
    accepted = HETEROGENEITY.entry(scheme).options()
    options = {
        **{k: v for k, v in flat.items() if k in accepted},
        **HETEROGENEITY.check_options(scheme, options),
    }
    parts = HETEROGENEITY.entry(scheme).factory(labels, num_workers, rng, **options)
    return [np.sort(np.asarray(p, np.int64)) for p in parts]


def _label_sorted(labels: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``idx`` stably sorted by label (so the order within a class is kept)."""
    return idx[np.argsort(labels[idx], kind="stable")]


def _dirichlet(
    labels: np.ndarray, num_workers: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    buckets: list[list[np.ndarray]] = [[] for _ in range(num_workers)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        p = rng.dirichlet(np.full(num_workers, alpha))
        cuts = np.floor(np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
        for w, chunk in enumerate(np.split(idx, cuts)):
            buckets[w].append(chunk)
    parts = [np.concatenate(b) for b in buckets]
    # Guarantee non-empty workers: move one random example from the largest.
    for w in range(num_workers):
        if len(parts[w]) == 0:
            donor = int(np.argmax([len(p) for p in parts]))
            j = rng.integers(len(parts[donor]))
            parts[w] = parts[donor][j : j + 1]
            parts[donor] = np.delete(parts[donor], j)
    return parts


def _gamma_similarity(
    labels: np.ndarray, num_workers: int, gamma: float, rng: np.random.Generator
) -> list[np.ndarray]:
    n = len(labels)
    perm = rng.permutation(n)
    n_iid = int(round(gamma * n))
    iid_parts = np.array_split(perm[:n_iid], num_workers)  # the first workers get extras
    rest = _label_sorted(labels, perm[n_iid:])
    # Give the sorted chunks' extras to the last workers, so that totals balance
    # and no worker is empty (n >= num_workers).
    q, r = divmod(len(rest), num_workers)
    sizes = np.full(num_workers, q)
    sizes[num_workers - r :] += 1
    sorted_parts = np.split(rest, np.cumsum(sizes)[:-1])
    return [np.concatenate([a, b]) for a, b in zip(iid_parts, sorted_parts, strict=True)]


def class_counts(
    labels: np.ndarray, parts: Sequence[np.ndarray], num_classes: int | None = None
) -> np.ndarray:
    """Examples of each class held by each worker.

    Parameters
    ----------
    labels : np.ndarray
        Integer class labels in ``[0, num_classes)``.
    parts : sequence of np.ndarray
        One index array per worker, as returned by :func:`partition`.
    num_classes : int, optional
        Number of classes; defaults to ``labels.max() + 1``.

    Returns
    -------
    np.ndarray
        ``int64`` array of shape ``(num_workers, num_classes)``.

    Raises
    ------
    ValueError
        ``"labels must lie in [0, num_classes=..), got range [.., ..]"``.

    Examples
    --------
    >>> import numpy as np
    >>> class_counts(np.array([0, 1, 1, 2]), [np.array([0, 1]), np.array([2, 3])]).tolist()
    [[1, 1, 0], [0, 1, 1]]
    """
    labels = np.asarray(labels)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, num_classes={num_classes}), "
            f"got range [{labels.min()}, {labels.max()}]"
        )
    return np.stack(
        [np.bincount(labels[np.asarray(p, np.int64)], minlength=num_classes) for p in parts]
    ).astype(np.int64)


def format_class_table(counts: np.ndarray) -> str:
    """A printable workers x classes table with row and column totals.

    Parameters
    ----------
    counts : np.ndarray
        Shape ``(num_workers, num_classes)``, e.g. from :func:`class_counts`.

    Returns
    -------
    str
        Right-aligned columns: one row per worker, one column per class, a
        ``total`` column and a final ``total`` row.

    Raises
    ------
    ValueError
        ``"counts must be 2-D (workers x classes), got shape .."``.

    Examples
    --------
    >>> import numpy as np
    >>> print(format_class_table(np.array([[3, 1, 0], [0, 2, 2]])))
    worker  c0  c1  c2  total
    -------------------------
         0   3   1   0      4
         1   0   2   2      4
    -------------------------
     total   3   3   2      8
    """
    counts = np.asarray(counts, np.int64)
    if counts.ndim != 2:
        raise ValueError(f"counts must be 2-D (workers x classes), got shape {counts.shape}")
    num_workers, num_classes = counts.shape
    header = ["worker", *(f"c{c}" for c in range(num_classes)), "total"]
    rows = [[str(w), *map(str, row), str(row.sum())] for w, row in enumerate(counts)]
    rows.append(["total", *map(str, counts.sum(0)), str(counts.sum())])
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.rjust(width) for cell, width in zip(cells, widths, strict=True))

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *map(line, rows[:-1]), rule, line(rows[-1])])


def check_batch_size(batch_size: int, parts: Sequence[np.ndarray]) -> int:
    """Refuse a minibatch larger than every honest worker's data.

    Minibatches are drawn with replacement (:func:`sample_batches`), so a
    worker whose part is smaller than ``batch_size`` still trains (a skewed
    split leaves some workers a few examples); but a ``batch_size`` above the
    largest part repeats examples in every worker's batch, which is never
    what a setting means (``--batch-size 100000`` on ``digits``).

    Parameters
    ----------
    batch_size : int
        Examples per worker and step (``Config.batch_size``).
    parts : sequence of np.ndarray
        The honest workers' parts of the training set (:func:`partition`).

    Returns
    -------
    int
        The bound: the number of examples of the largest part.

    Raises
    ------
    ValueError
        If ``batch_size`` exceeds the largest part (``"batch_size needs 1 <=
        batch_size <= ..., got batch_size=..."``, with the sizes of the parts).

    Examples
    --------
    >>> parts = [np.arange(150), np.arange(150, 310)]
    >>> check_batch_size(25, parts)
    160
    >>> check_batch_size(100000, parts)
    Traceback (most recent call last):
        ...
    ValueError: batch_size needs 1 <= batch_size <= 160 (the most training examples an honest
    worker holds: 2 workers hold 150 to 160 of 310), got batch_size=100000; lower --batch-size
    """
    sizes = [len(p) for p in parts]
    bound = max(sizes, default=0)
    if not 1 <= batch_size <= bound:
        raise ValueError(
            f"batch_size needs 1 <= batch_size <= {bound} (the most training examples an honest "
            f"worker holds: {len(sizes)} workers hold {min(sizes, default=0)} to {bound} of "
            f"{sum(sizes)}), got batch_size={batch_size}; lower --batch-size"
        )
    return bound


def stack_partition(parts: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Pad a ragged partition into one rectangular index array.

    Parameters
    ----------
    parts : sequence of np.ndarray
        One non-empty index array per worker.

    Returns
    -------
    indices : np.ndarray
        ``int32``, shape ``(num_workers, max_size)``. Row ``w`` starts with the
        worker's ``sizes[w]`` indices and is padded by cycling through them
        again (never with another worker's indices).
    sizes : np.ndarray
        ``int32``, shape ``(num_workers,)``: the number of valid entries per row.

    Raises
    ------
    ValueError
        ``"stack_partition needs at least one worker"``; ``"every worker
        needs at least one index; empty: [..]"``; ``"indices do not fit in int32"``.

    Examples
    --------
    >>> import numpy as np
    >>> indices, sizes = stack_partition([np.array([4, 5, 6]), np.array([1])])
    >>> indices.tolist(), sizes.tolist()
    ([[4, 5, 6], [1, 1, 1]], [3, 1])
    """
    if not len(parts):
        raise ValueError("stack_partition needs at least one worker")
    sizes = np.array([len(p) for p in parts], np.int64)
    if (sizes == 0).any():
        raise ValueError(
            f"every worker needs at least one index; empty: {np.flatnonzero(sizes == 0)}"
        )
    if max(int(np.max(p)) for p in parts) > np.iinfo(np.int32).max:
        raise ValueError("indices do not fit in int32")
    width = int(sizes.max())
    indices = np.stack([np.resize(np.asarray(p, np.int32), width) for p in parts])
    return indices, sizes.astype(np.int32)


@partial(jax.jit, static_argnames="batch_size")
def sample_batches(
    key: jax.Array, indices: jax.Array, sizes: jax.Array, batch_size: int
) -> jax.Array:
    """Draw one minibatch of example indices per worker, with replacement.

    Parameters
    ----------
    key : jax.Array
        PRNG key; split into one independent key per worker.
    indices : jax.Array
        ``(num_workers, max_size)`` padded indices from :func:`stack_partition`.
    sizes : jax.Array
        ``(num_workers,)`` valid entries per row.
    batch_size : int
        Examples per worker (static).

    Returns
    -------
    jax.Array
        ``(num_workers, batch_size)`` indices into the data set: row ``w`` is
        drawn uniformly with replacement from ``indices[w, :sizes[w]]``.
        Pure JAX; usable inside ``jit``/``vmap``.

    Examples
    --------
    >>> import jax
    >>> import numpy as np
    >>> indices, sizes = stack_partition([np.array([4, 5, 6]), np.array([1])])
    >>> batch = np.asarray(sample_batches(jax.random.key(0), indices, sizes, 4))
    >>> batch.shape, set(batch[0].tolist()) <= {4, 5, 6}, batch[1].tolist()
    ((2, 4), True, [1, 1, 1, 1])
    """
    keys = jax.random.split(key, indices.shape[0])

    def one(k, row, size):
        pos = jax.random.randint(k, (batch_size,), 0, size)
        return row[pos]

    return jax.vmap(one)(keys, jnp.asarray(indices), jnp.asarray(sizes))
