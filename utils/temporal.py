"""Moved to ``emseg.video.temporal``; this name stays importable for one more release (CHANGELOG 1.1.0)."""

import sys

from emseg.video import temporal as _moved

sys.modules[__name__] = _moved
