"""The robust rules as pure functions on worker-stacked pytrees, in one namespace.

Each rule lives in the module of its family under :mod:`jaxrobust.rules`
(coordinate-wise, distance, geometric, spectral, clipping, mixing); this
namespace gathers them, as ``optax`` gathers its transformations::

    from jaxrobust import functional as F
    F.trimmed_mean(updates, f=3)
"""

from jaxrobust.rules.clipping import arc, arc_clipped_count, arc_threshold, clip, clip_to
from jaxrobust.rules.coordinatewise import meamed, mean, median, trimmed_mean
from jaxrobust.rules.distance import krum, krum_scores, mda, monna, multi_krum
from jaxrobust.rules.geometric import centered_clipping, geometric_median
from jaxrobust.rules.mixing import bucketing, nnm
from jaxrobust.rules.spectral import caf, dnc

__all__ = [
    "arc",
    "arc_clipped_count",
    "arc_threshold",
    "bucketing",
    "caf",
    "centered_clipping",
    "clip",
    "clip_to",
    "dnc",
    "geometric_median",
    "krum",
    "krum_scores",
    "mda",
    "meamed",
    "mean",
    "median",
    "monna",
    "multi_krum",
    "nnm",
    "trimmed_mean",
]
