"""Moved to ``emseg.core.quiet_logs``; this name stays importable for one more release (CHANGELOG 1.1.0)."""

import sys

from emseg.core import quiet_logs as _moved

sys.modules[__name__] = _moved
