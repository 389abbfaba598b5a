"""jaxrobust: Byzantine-robust distributed learning in JAX.

Every robust rule is an optax gradient transformation over updates with a
leading worker axis::

    import optax, jaxrobust as jr
    tx = optax.chain(jr.arc(f=3), jr.nnm(f=3), jr.trimmed_mean(f=3), optax.sgd(0.1))

Importing the package imports no JAX: every public name below is loaded from
its module on first access (PEP 562), so JAX-free parts such as
:mod:`jaxrobust.report` and :mod:`jaxrobust.core` stay light.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

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

# public name -> the module that defines it (a module's own name: the module itself)
_LAZY = {
    **{name: "jaxrobust.rules.aggregators" for name in AGGREGATORS},
    **{name: "jaxrobust.rules.preaggregators" for name in PREAGGREGATORS},
    "functional": "jaxrobust.functional",
    "kernels": "jaxrobust.kernels",
    "pairwise_squared_distances": "jaxrobust.kernels",
    "worker_norms": "jaxrobust.kernels",
    "per_worker": "jaxrobust.rules.base",
    "register": "jaxrobust.core",
    "registry": "jaxrobust.core",
}

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


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access and cache the name here.

    Names that are submodules (``jaxrobust.run.simulator``, ...) are imported as
    such, as ``import jaxrobust.run.simulator`` would.
    """
    module = _LAZY.get(name)
    if module is not None:
        loaded = importlib.import_module(module)
        value = loaded if module == f"{__name__}.{name}" else getattr(loaded, name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
