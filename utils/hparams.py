"""Moved to ``emseg.core.hparams``; this name stays importable for one more release (CHANGELOG 1.1.0)."""

import sys

from emseg.core import hparams as _moved

sys.modules[__name__] = _moved
