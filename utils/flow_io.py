"""Moved to ``emseg.core.flow_io``; this name stays importable for one more release (CHANGELOG 1.1.0)."""

import sys

from emseg.core import flow_io as _moved

sys.modules[__name__] = _moved
