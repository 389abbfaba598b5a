"""The former place of :mod:`jaxrobust.run.sweep` (an alias: old imports keep working)."""

import sys

from jaxrobust.run import sweep as _module

sys.modules[__name__] = _module
