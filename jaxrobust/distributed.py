"""The former place of :mod:`jaxrobust.run.distributed` (an alias: old imports keep working)."""

import sys

from jaxrobust.run import distributed as _module

sys.modules[__name__] = _module
