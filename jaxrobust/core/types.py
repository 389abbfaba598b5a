"""Types shared by every layer (import no JAX)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

PyTree = Any

__all__ = ["Problem", "PyTree"]


class Problem(NamedTuple):
    """What is trained: ``init(key) -> params``, ``loss(params, (x, y))``, ``accuracy``.

    Built from ``config.model`` by default (:func:`jaxrobust.models.problem_for`);
    pass your own to :func:`jaxrobust.simulator.simulate` to train any flax
    module or any pure ``loss(params, batch)``.
    """

    init: Callable[[Any], PyTree]
    loss: Callable[[PyTree, tuple], Any]
    accuracy: Callable[[PyTree, tuple], Any] | None = None
