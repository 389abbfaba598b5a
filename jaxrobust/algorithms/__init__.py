"""Algorithms: each a registered factory ``factory(setup) -> Algorithm``.

Robust D-SGD (``dsgd``), Byz-VR-MARINA-PP (``marina_pp``), Byz-EF21-SGDM and
its baselines (``byz_ef21_sgdm``, ``byz_ef21``, ``br_csgd``), and the
decentralized (gossip) algorithms of :mod:`jaxrobust.algorithms.gossip`
(``gossip``, ``robust_gossip``, ``bridge``, ``clipped_gossip``,
``cs_plus_rg``, ``gts_rg``). Every one
shares the protocol and the robust round of :mod:`jaxrobust.algorithms.base`,
so runs, seeds and sweeps treat every algorithm alike.
"""

from __future__ import annotations

from jaxrobust.algorithms import dsgd, ef21, gossip, marina_pp  # noqa: F401  (register built-ins)
from jaxrobust.algorithms.base import (
    Algorithm,
    RoundMetrics,
    Setup,
    metric_fields,
    robust_round,
    round_metrics,
)

__all__ = ["Algorithm", "RoundMetrics", "Setup", "metric_fields", "robust_round", "round_metrics"]
