"""Moved to ``emseg.app.motion_ceiling``; this name stays importable for one more release.

``python -m evaluationmodule.motion_ceiling ...`` (or ``python evaluationmodule/motion_ceiling.py``) still
runs the command line (an alias alone would run nothing under ``-m``).
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emseg.app import motion_ceiling as _moved  # noqa: E402

if __name__ == "__main__":
    _moved.main(prog="python -m evaluationmodule.motion_ceiling")
sys.modules[__name__] = _moved
