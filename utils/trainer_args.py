"""Moved to ``emseg.app.trainer_args``; this name stays importable for one more release (CHANGELOG 1.1.0)."""

import sys

from emseg.app import trainer_args as _moved

sys.modules[__name__] = _moved
