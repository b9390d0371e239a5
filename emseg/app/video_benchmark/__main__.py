"""``python -m emseg.app.video_benchmark``: the command line of ``cli.py``."""

import sys

from emseg.app.video_benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
