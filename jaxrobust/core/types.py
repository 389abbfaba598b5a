"""Types shared by every layer (import no JAX)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

PyTree = Any

__all__ = ["METRIC_COLUMNS", "Problem", "PyTree"]

#: The columns of every ``metrics.csv`` (and, after the grid's, of ``runs.csv``):
#: the run's seed, the round, and the measurements every algorithm may report.
#: An algorithm's further metrics follow (see
#: :func:`jaxrobust.run.simulator.metric_columns`). A column an algorithm does not
#: measure (e.g. ``bits_sent`` for D-SGD, or the validation columns without a
#: validation split) holds NaN.
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
    pass your own to :func:`jaxrobust.run.simulator.simulate` to train any flax
    module or any pure ``loss(params, batch)``.

    Attributes
    ----------
    init : callable
        ``init(key) -> params``: a PRNG key to the initial parameters (a pytree
        of float arrays).
    loss : callable
        ``loss(params, (x, y)) -> scalar``: the mean loss on a batch ``x`` of
        shape ``(B, ...)`` with labels ``y`` of shape ``(B,)``; pure and
        differentiable, so it can be ``vmap``-ed over workers.
    accuracy : callable or None
        ``accuracy(params, (x, y)) -> scalar`` in ``[0, 1]``; ``None`` when
        the problem has none (the reported accuracies are then NaN).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> problem = Problem(
    ...     init=lambda key: jnp.zeros(2),
    ...     loss=lambda w, batch: jnp.mean((batch[0] @ w - batch[1]) ** 2),
    ... )
    >>> x, y = jnp.array([[1.0, 0.0], [0.0, 1.0]]), jnp.array([1.0, 3.0])
    >>> float(problem.loss(problem.init(None), (x, y))), problem.accuracy
    (5.0, None)
    """

    init: Callable[[Any], PyTree]
    loss: Callable[[PyTree, tuple], Any]
    accuracy: Callable[[PyTree, tuple], Any] | None = None
