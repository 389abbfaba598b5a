"""jaxrobust: Byzantine-robust distributed learning in JAX.

Every robust rule is an optax gradient transformation over updates with a
leading worker axis::

    import optax, jaxrobust as jr
    tx = optax.chain(jr.arc(f=3), jr.nnm(f=3), jr.trimmed_mean(f=3), optax.sgd(0.1))
"""

from jaxrobust import functional, kernels
from jaxrobust.aggregators import (
    caf,
    centered_clipping,
    dnc,
    geometric_median,
    krum,
    mda,
    meamed,
    mean,
    median,
    monna,
    multi_krum,
    trimmed_mean,
)
from jaxrobust.core import register, registry
from jaxrobust.kernels import pairwise_squared_distances, worker_norms
from jaxrobust.preaggregators import arc, bucketing, clip, nnm
from jaxrobust.transforms import per_worker

__version__ = "0.1.0"

AGGREGATORS = (
    "mean",
    "median",
    "trimmed_mean",
    "meamed",
    "geometric_median",
    "krum",
    "multi_krum",
    "mda",
    "monna",
    "centered_clipping",
    "dnc",
    "caf",
)
PREAGGREGATORS = ("arc", "clip", "nnm", "bucketing")

__all__ = [
    "mean",
    "median",
    "trimmed_mean",
    "meamed",
    "geometric_median",
    "krum",
    "multi_krum",
    "mda",
    "monna",
    "centered_clipping",
    "dnc",
    "caf",
    "arc",
    "clip",
    "nnm",
    "bucketing",
    "AGGREGATORS",
    "PREAGGREGATORS",
    "functional",
    "kernels",
    "pairwise_squared_distances",
    "per_worker",
    "worker_norms",
    "register",
    "registry",
]
