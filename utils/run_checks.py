"""Moved to ``emseg.app.run_checks``; this name stays importable for one more release (CHANGELOG 1.1.0)."""

import sys

from emseg.app import run_checks as _moved

sys.modules[__name__] = _moved
