"""Core of jaxrobust: the registry type (imports no JAX)."""

from jaxrobust.core.registry import REGISTRIES, Entry, Registry, register, registry

__all__ = ["REGISTRIES", "Entry", "Registry", "register", "registry"]
