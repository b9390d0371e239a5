"""Moved to ``emseg.video.flow_confidence``; this name stays importable for one more release (CHANGELOG 1.1.0)."""

import sys

from emseg.video import flow_confidence as _moved

sys.modules[__name__] = _moved
