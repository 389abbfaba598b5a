"""Data: offline-first loaders and heterogeneous splits over workers.

Loaders (:mod:`jaxrobust.data.datasets`) return a :class:`Dataset` of host
numpy arrays; :func:`partition` splits the training examples over the honest
workers (``iid``, ``dirichlet``, ``gamma_similarity``, ``extreme``,
``shards``), :func:`stack_partition` pads the parts into one index table and
:func:`sample_batches` draws every worker's minibatch from it inside a jitted
step.

Examples
--------
>>> from jaxrobust.data import load_dataset, partition, stack_partition
>>> ds = load_dataset("digits")  # or "mnist" with data_dir=..., "a9a", ...
>>> ds
Dataset(name='digits', train=1618, test=179, input_shape=(8, 8, 1), num_classes=10)
>>> parts = partition(ds.y_train, num_workers=10, scheme="dirichlet", alpha=0.5, seed=0)
>>> indices, sizes = stack_partition(parts)
>>> indices.shape, int(sizes.sum())
((10, 202), 1618)
"""

from jaxrobust.data.datasets import BUILTIN_DATASETS, LIBSVM_DATASETS, Dataset, load_dataset
from jaxrobust.data.partition import (
    HETEROGENEITY,
    check_batch_size,
    class_counts,
    format_class_table,
    partition,
    sample_batches,
    stack_partition,
)

__all__ = [
    "BUILTIN_DATASETS",
    "HETEROGENEITY",
    "LIBSVM_DATASETS",
    "check_batch_size",
    "Dataset",
    "class_counts",
    "format_class_table",
    "load_dataset",
    "partition",
    "sample_batches",
    "stack_partition",
]
