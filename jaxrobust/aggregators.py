"""The former place of :mod:`jaxrobust.rules.aggregators` (an alias: old imports keep working)."""

import sys

from jaxrobust.rules import aggregators as _module

sys.modules[__name__] = _module
