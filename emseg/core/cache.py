"""Where the project keeps what it makes once and reuses between runs (generated data, exported
networks): ``$XDG_CACHE_HOME/em_motion_segmentation``, or ``~/.cache/em_motion_segmentation``."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_NAME = "em_motion_segmentation"


def cache_root() -> Path:
    """The project's cache folder (not created here)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / CACHE_NAME
