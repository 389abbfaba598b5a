"""The robust rules: aggregators and pre-aggregators by family, and the defence builder.

Pure functions on worker-stacked pytrees, one module per family:

- :mod:`~jaxrobust.rules.coordinatewise`: mean, median, trimmed mean, MeaMed;
- :mod:`~jaxrobust.rules.distance`: Krum, Multi-Krum, MDA, MoNNA;
- :mod:`~jaxrobust.rules.geometric`: geometric median, centered clipping (Weiszfeld-type);
- :mod:`~jaxrobust.rules.spectral`: CAF, DnC;
- :mod:`~jaxrobust.rules.clipping`: static clipping, ARC;
- :mod:`~jaxrobust.rules.mixing`: NNM, bucketing.

Their optax transformations, registered by name, are in
:mod:`~jaxrobust.rules.aggregators` and :mod:`~jaxrobust.rules.preaggregators`
(built on :mod:`~jaxrobust.rules.base`); :mod:`~jaxrobust.rules.defence`
chains them from names. ``jaxrobust.functional`` gathers the pure functions in
one namespace, and the top-level ``jaxrobust.trimmed_mean`` etc. are the
transformations.
"""
