"""Algorithms beyond Robust D-SGD: partial participation, compression, variance reduction.

Each module registers ``build(config, dataset, problem) -> simulator.Simulation``
in the ``"algorithm"`` registry: the same pure ``init`` / ``step`` /
``evaluate`` triple as D-SGD, so runs, seeds and sweeps treat every algorithm
alike. A state must carry ``params`` (evaluated at chunk boundaries).
"""

from __future__ import annotations

from jaxrobust.core import registry

BUILDERS = registry("algorithm")


def register(name: str):
    return BUILDERS.register(name)


def build(config, dataset, problem):
    return BUILDERS.entry(config.algorithm).factory(config, dataset, problem)


from jaxrobust.algorithms import ef21, marina_pp  # noqa: E402, F401  (register the built-ins)
