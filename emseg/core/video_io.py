"""Reading videos: opening one (with a one-line error), its frames, and the downscale-to-width rule.

One home for what both ``csvflowdatamodule/extract_flow.py`` (video → frames → flows for training)
and ``segment.py --video`` do to a video before its flow is computed, so that a model's recorded
``flow_width`` means the same frames in both: each frame wider than the width is downscaled with
area interpolation, keeping its aspect ratio (the height rounded, at least 1 pixel).

OpenCV and numpy only (no torch), so that a command can start decoding before anything heavy is
imported. Frames are BGR uint8 (H, W, 3), as OpenCV decodes them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np


class VideoError(ValueError):
    """A video that cannot be read, or is shorter than its header says."""


def open_video(video: str | os.PathLike, flag: str = "--video") -> tuple[cv2.VideoCapture, dict]:
    """An opened ``cv2.VideoCapture`` and the header's ``{'frames_in_header': int, 'fps': float}``
    (0 where the container does not say). A missing file is ``FileNotFoundError``, an empty or
    unreadable one :class:`VideoError`; each message is one line naming ``flag`` and the path."""
    p = Path(video)
    if not p.is_file():
        raise FileNotFoundError(f"{flag} {video}: no such file")
    if p.stat().st_size == 0:
        raise VideoError(f"{flag} {video}: the file is empty")
    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        raise VideoError(f"{flag} {video}: OpenCV cannot open it as a video (not a video, or an unknown codec)")
    info = {"frames_in_header": int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0),
            "fps": float(cap.get(cv2.CAP_PROP_FPS) or 0.0)}
    return cap, info


def iter_frames(cap: cv2.VideoCapture) -> Iterator[np.ndarray]:
    """The frames of an opened capture, BGR uint8 (H, W, 3), until it ends; released at the end
    (or when the generator is closed)."""
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield frame
    finally:
        cap.release()


def fit_width(frame: np.ndarray, width: int | None) -> np.ndarray:
    """frame (H, W, C) → (h, width, C) with h = round(H · width / W) (at least 1), by area
    interpolation, when W > ``width``; otherwise (or with no width) the frame itself."""
    h, w = frame.shape[:2]
    if not width or w <= width:
        return frame
    return cv2.resize(frame, (int(width), max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
