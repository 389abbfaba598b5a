"""Repository-level pytest settings: the former module paths are aliases, not modules to collect."""

# Each of these files makes an old import path an alias of the moved module;
# collecting them for doctests would run its examples twice.
collect_ignore = [
    f"jaxrobust/{name}.py"
    for name in (
        "aggregators",
        "preaggregators",
        "defence",
        "transforms",
        "simulator",
        "sweep",
        "distributed",
    )
]
