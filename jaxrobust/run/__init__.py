"""The run: the scanned chunk and CPU step loop, seeds, sweeps and devices.

- :mod:`~jaxrobust.run.simulator`: one configuration, its seeds vmapped, one
  jitted step per round of whatever registered algorithm the config names;
- :mod:`~jaxrobust.run.sweep`: grids of configurations, grouped into vmapped
  programs, written as they go and resumed after a kill;
- :mod:`~jaxrobust.run.distributed`: the same programs over several devices
  and hosts.
"""
