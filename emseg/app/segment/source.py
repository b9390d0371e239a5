"""A video as the pipeline reads it: decode → downscale → flow, on a background thread.

OpenCV and numpy only (no torch): segment.py starts this thread first, so that decoding and DIS
flow (both release the GIL) run while torch, the model and the network backend load.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from csvflowdatamodule.extract_flow import dis_estimator, make_estimator
from emseg.app.segment.options import SegmentOptions
from emseg.core.video_io import VideoError, fit_width, open_video

logger = logging.getLogger(__name__)

__all__ = ["Ahead", "FramePair", "StageTimes", "VideoError", "VideoSource", "open_video", "threaded", "video_pairs"]

#: the smallest frame side OpenCV's flow estimators work on (DIS's coarsest patch and pyramid)
MIN_FLOW_SIDE = 12
#: how many decoded frame pairs the flow thread may keep ahead of the network, in bytes: enough for a
#: short clip to be decoded whole while the model loads, and memory still flat for a long video
AHEAD_BYTES = 256 << 20


@dataclass
class FramePair:
    """Frame t and the flows between t and t+1 at the flow's resolution (h, w)."""

    t: int
    frame: np.ndarray | None        #: BGR (H, W, 3) at the source's size, when overlays need it
    size: tuple[int, int]           #: (H, W) of the source frame
    forward: np.ndarray             #: (h, w, 2) t → t+1
    backward: np.ndarray | None     #: (h, w, 2) t+1 → t, on frame t+1's grid
    gap: int = 1                    #: k: the frames between t and the network's second frame
    gap_forward: np.ndarray | None = None   #: (h, w, 2) t → t+k when k > 1 (else ``forward`` is it)
    gap_backward: np.ndarray | None = None  #: (h, w, 2) t+k → t, for its forward-backward check


class StageTimes:
    """Busy seconds per pipeline stage, summed over frames (stages run on different threads, so
    they add up to more than the wall time when the pipeline overlaps them)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, t0: float) -> float:
        now = time.perf_counter()
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + now - t0
        return now

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.seconds.items()}


def video_pairs(video: str | os.PathLike, opts: SegmentOptions, flow_width: int | None, keep_frames: bool,
                stats: dict, times: StageTimes | None = None) -> Iterator[FramePair]:
    """Decode, downscale and compute the flows of consecutive frames; ``stats`` gets the decoded
    count and the header's (checked by the caller once the generator is exhausted)."""
    import cv2

    times = times or StageTimes()
    cap, info = open_video(video)
    stats.update(info)
    if opts.flow_method == "dis":
        flow_fn = dis_estimator(opts.dis_preset, opts.dis_finest_scale, opts.dis_variational)
    else:
        flow_fn = make_estimator(opts.flow_method)
    need_back = opts.temporal or opts.min_motion > 0
    gap = max(1, int(opts.gap))
    # frames waiting for their flows: [t, frame, small, forward, backward, size]; frame t leaves once
    # frame t+gap is decoded (or the video ends), so at most gap + 1 frames are held
    pending: deque[list] = deque()
    n = 0

    def emit(entry: list, target: list) -> FramePair:
        t0 = time.perf_counter()
        k = target[0] - entry[0]
        gf = gb = None
        if k > 1:
            gf = np.asarray(flow_fn(entry[2], target[2]), np.float32)
            gb = np.asarray(flow_fn(target[2], entry[2]), np.float32)
            times.add("flow", t0)
        return FramePair(entry[0], entry[1], entry[5], entry[3], entry[4], k, gf, gb)

    try:
        while True:
            t0 = time.perf_counter()
            ok, frame = cap.read()
            if not ok:
                break
            n += 1
            H, W = frame.shape[:2]
            small = cv2.cvtColor(fit_width(frame, flow_width), cv2.COLOR_BGR2RGB)  # the estimators take RGB
            t0 = times.add("decode+downscale", t0)
            if pending:
                prev = pending[-1]
                prev[3] = np.asarray(flow_fn(prev[2], small), np.float32)
                prev[4] = np.asarray(flow_fn(small, prev[2]), np.float32) if need_back else None
                times.add("flow", t0)
            pending.append([n - 1, frame if keep_frames else None, small, None, None, (H, W)])
            if len(pending) > gap:
                yield emit(pending.popleft(), pending[gap - 1])
        while len(pending) > 1:  # the last frames: the longest gap the video still has
            yield emit(pending.popleft(), pending[-1])
    finally:
        cap.release()
        stats["decoded"] = n


def threaded(it: Iterator, depth: int = 16) -> Ahead:
    """Run an iterator in a background thread (OpenCV's decoder and DIS release the GIL), keeping at
    most ``depth`` items ahead; exceptions are re-raised in the consumer. The thread starts at
    once, not at the first ``next``."""
    return Ahead(it, depth)


class Ahead:
    """The iterator of :func:`threaded`: ``close`` (or dropping it) stops the thread."""

    _DONE = object()

    def __init__(self, it: Iterator, depth: int) -> None:
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._work, args=(it,), daemon=True, name="decode-flow")
        self.thread.start()

    def _work(self, it: Iterator) -> None:
        try:
            for item in it:
                while not self.stop.is_set():
                    try:
                        self.q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self.stop.is_set():
                    return
            self.q.put(self._DONE)
        except BaseException as err:  # handed to the consumer
            self.q.put(err)

    def __iter__(self) -> Ahead:
        return self

    def __next__(self):
        if self.stop.is_set():
            raise StopIteration
        item = self.q.get()
        if item is self._DONE:
            self.stop.set()
            raise StopIteration
        if isinstance(item, BaseException):
            self.stop.set()
            raise item
        return item

    def close(self) -> None:
        self.stop.set()

    def __del__(self) -> None:
        self.stop.set()


def pairs_ahead(info: dict, flow_width: int | None, keep_frames: bool, width: int, height: int,
                gap: int = 1) -> int:
    """How many frame pairs fit in :data:`AHEAD_BYTES` (at least 16): a pair holds its frame
    (when kept) and two flows at the flow's size (four with a gap > 1)."""
    w = min(width, flow_width) if flow_width else width
    h = max(1, round(height * w / max(width, 1)))
    per_pair = (2 if gap <= 1 else 4) * h * w * 2 * 4 + (height * width * 3 if keep_frames else 0)
    return max(16, AHEAD_BYTES // max(per_pair, 1))


class VideoSource:
    """A video's frame pairs, decoded and flowed on a background thread started by :meth:`start`
    (before the model is loaded, by segment.py), consumed once by ``segment_video``.

    ``flow_width`` is the width the frames are downscaled to (the model's; None: their own), fixed
    when the thread starts; ``info`` the header's frame count and rate; ``stats`` gets the decoded
    count when the thread ends; ``times`` the decode and flow busy seconds.
    """

    def __init__(self, video: str | os.PathLike, opts: SegmentOptions, flow_width: int | None) -> None:
        import cv2

        self.video, self.opts, self.flow_width = video, opts, flow_width
        self.keep_frames = opts.overlays or opts.animation or opts.refine
        cap, self.info = open_video(video)  # fail before any work on an unreadable file
        self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        cap.release()
        w = min(self.width, flow_width) if flow_width else self.width
        h = round(self.height * w / self.width) if self.width else self.height
        if self.width and self.height and min(w, h) < MIN_FLOW_SIDE:
            raise VideoError(f"--video {video}: {self.width}x{self.height} frames"
                             + (f" ({w}x{h} at the flow's width)" if (w, h) != (self.width, self.height) else "")
                             + f" are too small for the optical flow, which needs at least {MIN_FLOW_SIDE} pixels "
                               "a side")
        self.stats: dict = {}
        self.times = StageTimes()
        self._pairs: Ahead | None = None
        self._taken = False

    def start(self) -> VideoSource:
        if self._pairs is None:
            depth = pairs_ahead(self.info, self.flow_width, self.keep_frames, self.width, self.height,
                                self.opts.gap)
            self._pairs = threaded(video_pairs(self.video, self.opts, self.flow_width, self.keep_frames,
                                               self.stats, self.times), depth=depth)
        return self

    def pairs(self) -> Iterator[FramePair]:
        """The frame pairs, in order (once)."""
        if self._taken:
            raise RuntimeError("a VideoSource is read once")
        self._taken = True
        return self.start()._pairs

    def close(self) -> None:
        """Stop the thread (a source that will not be consumed)."""
        if self._pairs is not None:
            self._pairs.close()
