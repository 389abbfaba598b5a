"""Evaluation of the parameters a run reaches: test and validation splits, full training loss."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxrobust.core.types import Problem, PyTree

__all__ = ["epochs_at", "evaluator", "full_loss"]


def full_loss(loss_fn: Callable, params: PyTree, x: jax.Array, y: jax.Array, chunk: int = 4096):
    """``loss_fn`` on the whole of ``(x, y)``, in chunks (example-weighted mean)."""
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
    """Honest gradient computations after ``rounds`` rounds over the honest workers' examples."""
    h = sizes.shape[-1]
    return rounds * (batch_size * h) / jnp.sum(sizes, axis=-1).astype(jnp.float32)
