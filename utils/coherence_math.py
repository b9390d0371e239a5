"""Moved to ``emseg.core.coherence_math``; this name stays importable for one more release (CHANGELOG 1.1.0)."""

import sys

from emseg.core import coherence_math as _moved

sys.modules[__name__] = _moved
