"""Evaluation of the parameters a run reaches: test and validation splits, full training loss."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxrobust.core.types import Problem, PyTree

__all__ = ["epochs_at", "evaluator", "full_loss"]


def full_loss(loss_fn: Callable, params: PyTree, x: jax.Array, y: jax.Array, chunk: int = 4096):
    """``loss_fn`` on the whole of ``(x, y)``, in chunks (example-weighted mean).

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn(params, (x, y)) -> scalar``, a mean over the batch.
    params : pytree
        The parameters.
    x, y : arrays
        Inputs ``(m, ...)`` and labels ``(m,)``.
    chunk : int
        Examples per call of ``loss_fn``.

    Returns
    -------
    scalar
        The mean loss over the ``m`` examples (exact for any ``chunk``, as
        every chunk is weighted by its size).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> loss = lambda w, b: jnp.mean(b[0] * w)
    >>> float(full_loss(loss, 1.0, jnp.arange(5.0), jnp.zeros(5), chunk=2))
    2.0
    """
    size = x.shape[0]
    total = 0.0
    for start in range(0, size, chunk):
        part = (x[start : start + chunk], y[start : start + chunk])
        total += loss_fn(params, part) * part[1].shape[0]
    return total / size


def _accuracy_and_loss(problem: Problem, params: PyTree, x: jax.Array, y: jax.Array):
    size = x.shape[0]
    chunk = min(size, 1000)
    total_loss, total_correct = 0.0, 0.0
    for start in range(0, size, chunk):
        batch = (x[start : start + chunk], y[start : start + chunk])
        m = batch[1].shape[0]
        total_loss += problem.loss(params, batch) * m
        if problem.accuracy is not None:
            total_correct += problem.accuracy(params, batch) * m
        else:
            total_correct = jnp.nan
    return total_correct / size, total_loss / size


def evaluator(problem: Problem, dataset) -> Callable[[PyTree], dict]:
    """``evaluate(params) -> {"test_accuracy", "test_loss", ...}`` on the data set's splits.

    The test split always; the validation split (``validation_accuracy``,
    ``validation_loss``) when the data set holds one. Accuracy is NaN when the
    problem has no ``accuracy``. Pure and jittable.

    Parameters
    ----------
    problem : Problem
        Its ``loss`` (and ``accuracy``) are evaluated in chunks of at most
        1,000 examples, weighted by size.
    dataset : Dataset
        Its splits are put on the device once.

    Returns
    -------
    callable
        ``evaluate(params) -> dict`` of scalars: ``test_accuracy``,
        ``test_loss`` and, with a validation split, ``validation_accuracy``
        and ``validation_loss``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from types import SimpleNamespace
    >>> from jaxrobust.core.types import Problem
    >>> problem = Problem(
    ...     init=None,
    ...     loss=lambda w, b: jnp.mean((b[0][:, 0] * w - b[1]) ** 2),
    ...     accuracy=lambda w, b: jnp.mean(jnp.sign(b[0][:, 0] * w) == jnp.sign(b[1])),
    ... )
    >>> data = SimpleNamespace(
    ...     x_test=jnp.array([[1.0], [2.0]]), y_test=jnp.array([1.0, -2.0]), x_validation=None
    ... )
    >>> out = evaluator(problem, data)(1.0)
    >>> sorted(out), float(out["test_loss"]), float(out["test_accuracy"])
    (['test_accuracy', 'test_loss'], 8.0, 0.5)
    """
    splits = {"test": (jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test))}
    if dataset.x_validation is not None:
        splits["validation"] = (
            jnp.asarray(dataset.x_validation),
            jnp.asarray(dataset.y_validation),
        )

    def evaluate(params):
        out = {}
        for name, (x, y) in splits.items():
            out[f"{name}_accuracy"], out[f"{name}_loss"] = _accuracy_and_loss(problem, params, x, y)
        return out

    return evaluate


def epochs_at(rounds, batch_size: int, sizes) -> jax.Array:
    """Honest gradient computations after ``rounds`` rounds over the honest workers' examples.

    ``rounds * batch_size * h / sum(sizes)``: the average number of passes of
    an honest worker over its data.

    Parameters
    ----------
    rounds : int or int array
        Rounds done.
    batch_size : int
        Examples per worker and round.
    sizes : int array ``(..., h)``
        The honest workers' numbers of examples (leading run axes allowed).

    Returns
    -------
    float32 array
        Epochs, shape ``sizes.shape[:-1]``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> float(epochs_at(2, 25, jnp.array([100, 100])))
    0.5
    """
    h = sizes.shape[-1]
    return rounds * (batch_size * h) / jnp.sum(sizes, axis=-1).astype(jnp.float32)
