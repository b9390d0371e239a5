"""Moved to ``emseg.app.results``; this name stays importable for one more release (CHANGELOG 1.1.0)."""

import sys

from emseg.app import results as _moved

sys.modules[__name__] = _moved
