"""Moved to ``emseg.core.significance`` (the model, the evaluation and the video path all use it); this
name stays importable for one more release."""

import sys

from emseg.core import significance as _moved

sys.modules[__name__] = _moved
