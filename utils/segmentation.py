"""Moved to ``emseg.app.segmentation``; this name stays importable for one more release (CHANGELOG 1.1.0)."""

import sys

from emseg.app import segmentation as _moved

sys.modules[__name__] = _moved
