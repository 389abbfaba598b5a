"""The former place of :mod:`jaxrobust.rules.preaggregators` (an alias: old imports work)."""

import sys

from jaxrobust.rules import preaggregators as _module

sys.modules[__name__] = _module
