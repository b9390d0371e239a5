"""Moved to ``emseg.app.evaluation_run``; this name stays importable for one more release (CHANGELOG 1.1.0)."""

import sys

from emseg.app import evaluation_run as _moved

sys.modules[__name__] = _moved
