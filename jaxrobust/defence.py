"""The former place of :mod:`jaxrobust.rules.defence` (an alias: old imports keep working)."""

import sys

from jaxrobust.rules import defence as _module

sys.modules[__name__] = _module
