"""Moved to ``emseg.core.significance``; this name stays importable for one more release (CHANGELOG 1.1.0)."""

import sys

from emseg.core import significance as _moved

sys.modules[__name__] = _moved
