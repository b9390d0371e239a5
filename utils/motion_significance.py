"""Moved to ``emseg.video.motion_significance``; this name stays importable for one more release (CHANGELOG 1.1.0)."""

import sys

from emseg.video import motion_significance as _moved

sys.modules[__name__] = _moved
