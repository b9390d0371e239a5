"""Moved to ``emseg.app.video_benchmark``; this name stays importable for one more release.

``python -m evaluationmodule.video_benchmark ...`` still runs the command line (an alias alone would
run nothing under ``-m``).
"""

import sys

from emseg.app import video_benchmark as _moved

if __name__ == "__main__":
    sys.exit(_moved.main(prog="python -m evaluationmodule.video_benchmark"))
sys.modules[__name__] = _moved
