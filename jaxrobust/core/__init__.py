"""Core of jaxrobust: the registry type (imports no JAX)."""

from jaxrobust.core.registry import (
    REGISTRIES,
    Entry,
    Registry,
    check_defence,
    register,
    registry,
)

__all__ = ["REGISTRIES", "Entry", "Registry", "check_defence", "register", "registry"]
