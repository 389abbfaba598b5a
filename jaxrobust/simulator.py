"""The former place of :mod:`jaxrobust.run.simulator` (an alias: old imports keep working)."""

import sys

from jaxrobust.run import simulator as _module

sys.modules[__name__] = _module
