"""The former place of :mod:`jaxrobust.rules.base` (an alias: old imports keep working)."""

import sys

from jaxrobust.rules import base as _module

sys.modules[__name__] = _module
