"""Types shared by every layer (import no JAX)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

PyTree = Any

__all__ = ["METRIC_COLUMNS", "Problem", "PyTree"]

#: The columns of every ``metrics.csv`` (and, after the grid's, of ``runs.csv``):
#: the run's seed, the round, and the measurements every algorithm may report.
#: An algorithm's further metrics follow (see
#: :func:`jaxrobust.simulator.metric_columns`).
METRIC_COLUMNS = (
    "seed",
    "step",
    "test_accuracy",
    "test_loss",
    "validation_accuracy",
    "validation_loss",
    "train_loss",
    "aggregate_norm",
    "distance_to_honest_mean",
    "mean_honest_norm",
    "bits_sent",
    "suboptimality",
    "epochs",
)


class Problem(NamedTuple):
    """What is trained: ``init(key) -> params``, ``loss(params, (x, y))``, ``accuracy``.

    Built from ``config.model`` by default (:func:`jaxrobust.models.problem_for`);
    pass your own to :func:`jaxrobust.simulator.simulate` to train any flax
    module or any pure ``loss(params, batch)``.
    """

    init: Callable[[Any], PyTree]
    loss: Callable[[PyTree, tuple], Any]
    accuracy: Callable[[PyTree, tuple], Any] | None = None
