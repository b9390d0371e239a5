"""Moved to ``emseg.app.training``; this name stays importable for one more release (CHANGELOG 1.1.0)."""

import sys

from emseg.app import training as _moved

sys.modules[__name__] = _moved
