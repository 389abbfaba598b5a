"""Algorithms: each a registered factory ``factory(setup) -> Algorithm``.

Robust D-SGD (``dsgd``), Byz-VR-MARINA-PP (``marina_pp``), Byz-EF21-SGDM and
its baselines (``byz_ef21_sgdm``, ``byz_ef21``, ``br_csgd``). Every one
shares the protocol and the robust round of :mod:`jaxrobust.algorithms.base`,
so runs, seeds and sweeps treat every algorithm alike.
"""

from __future__ import annotations

from jaxrobust.algorithms import dsgd, ef21, marina_pp  # noqa: F401  (register the built-ins)
from jaxrobust.algorithms.base import (
    Algorithm,
    RoundMetrics,
    Setup,
    metric_fields,
    robust_round,
    round_metrics,
)

__all__ = ["Algorithm", "RoundMetrics", "Setup", "metric_fields", "robust_round", "round_metrics"]
