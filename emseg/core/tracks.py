"""Track-level motion significance: a region is judged over the frames it lives in, not alone.

One flow cannot tell a slow or faint mover from the estimator's noise; time can: an object keeps
moving unlike the background frame after frame, a noise blob comes and goes. The one-frame test
(``emseg.core.significance``) gives each foreground region of frame t a **score**

    z = departure / threshold,   threshold = max(min_motion · σ_t, MIN_DEPARTURE_PX)

(the median residual of its flow against the background's fitted motion, over the flow's own noise
σ_t; it keeps the region when z > 1). :class:`TrackGate` links regions across frames and replaces
that verdict by the track's:

- **Linking.** Frame t's region labels are carried onto frame t + 1 by the flow from t + 1 back to
  t (nearest sample). A region of frame t + 1 continues the track of the previous region it overlaps
  most, if that overlap is at least ``LINK_OVERLAP`` of the smaller of the two; otherwise it starts
  a new track. Splits share their parent's track; at a merge, the best-overlapping parent's track
  continues. A broken sequence (no flow to the previous frame) starts every region afresh.
- **Evidence.** A region of frame t is kept when its track (a) appears in at least
  ``min_frames`` of the frames of t's window and (b) the median over those frames of the track's
  score in each (its best region's: a fragment split off an object does not outvote it) exceeds
  ``threshold`` (1: the one-frame test's own level). So a lasting mover is kept through the frames
  where it dips under the level, and a lasting region that passes only now and then (a noise patch
  the estimator gets wrong in some frames) is dropped in all of them. The window is t − memory … t + horizon,
  shifted to stay inside the run of unbroken frames near its start and end (so the first and last
  frames are judged on as many frames as the others), and shorter only when the run is; then
  ``min_frames`` shrinks to the run's length. A region with no score (a speck, or a flow failing its
  forward–backward check almost everywhere inside) is dropped, as by the one-frame test.

So a mover whose score dips below 1 in some frames is kept through them, from its first frame
(the look-ahead sees its future), and a blob that lives one or two frames is dropped however large
its single-frame score. The gate holds ``horizon`` frames back (a run's first frames, a whole
window), so memory is flat in the video's length. With ``horizon = 0`` it is causal: frame t is decided
at once, on t − memory … t (so a run's first frames are judged on fewer frames). ``min_frames = 1``
with ``threshold = 1`` is the one-frame test.

Conventions: region labels (I, J) int32 (0 = background, 1 … n − 1 the regions), flows (2, I, J)
in pixels of that grid, channel 0 = u (columns).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

LINK_OVERLAP = 0.2  # a region continues a track when it covers this share of the smaller of the two
DEFAULT_MIN_FRAMES = 3
DEFAULT_HORIZON = 3
DEFAULT_MEMORY = 3
DEFAULT_THRESHOLD = 1.0


def kept_foreground(regions: np.ndarray, keep: Mapping[int, bool]) -> np.ndarray:
    """(I, J) bool: the pixels of the regions (labels (I, J), 0 = background) that ``keep`` keeps."""
    kept = np.zeros(max(int(regions.max(initial=0)), max(keep, default=0)) + 1, dtype=bool)
    for k, v in keep.items():
        kept[k] = v
    return kept[regions] & (regions > 0)


def carry_labels(labels: np.ndarray, flow_to_prev: Tensor | np.ndarray) -> np.ndarray:
    """The previous frame's region labels (I, J) int brought onto the current frame by the flow from
    the current frame to the previous one (2, I, J): nearest sample; outside the frame → 0."""
    f = flow_to_prev.detach().cpu().numpy() if isinstance(flow_to_prev, Tensor) else np.asarray(flow_to_prev)
    I, J = labels.shape
    if f.shape != (2, I, J):
        raise ValueError(f"expected flow_to_prev (2, {I}, {J}), got {tuple(f.shape)}")
    ii, jj = np.mgrid[0:I, 0:J]
    si = np.rint(ii + f[1]).astype(np.int64)
    sj = np.rint(jj + f[0]).astype(np.int64)
    inside = (si >= 0) & (si < I) & (sj >= 0) & (sj < J)
    out = np.zeros_like(labels)
    out[inside] = labels[si[inside], sj[inside]]
    return out


def link_regions(prev_carried: np.ndarray, n_prev: int, regions: np.ndarray, n_cur: int) -> dict[int, int]:
    """Current region → previous region it continues (absent: a new track), from the previous labels
    carried onto this frame (I, J) and this frame's labels (I, J); ``n_*`` count the background."""
    if n_prev <= 1 or n_cur <= 1:
        return {}
    both = (prev_carried > 0) & (regions > 0)
    pair = regions[both].astype(np.int64) * n_prev + prev_carried[both]
    overlap = np.bincount(pair, minlength=n_cur * n_prev).reshape(n_cur, n_prev)
    size_cur = np.bincount(regions.ravel(), minlength=n_cur)
    size_prev = np.bincount(prev_carried.ravel(), minlength=n_prev)
    out = {}
    for k in range(1, n_cur):
        m = int(overlap[k].argmax())
        if m == 0 or overlap[k, m] == 0:
            continue
        smaller = max(1, min(int(size_cur[k]), int(size_prev[m])))
        if overlap[k, m] >= LINK_OVERLAP * smaller:
            out[k] = m
    return out


@dataclass
class _Frame:
    t: int
    tracks: dict[int, int]       # region → track
    scores: dict[int, float]     # region → z (nan: no score)
    payload: Any
    segment: int                 # index of the unbroken run of frames it belongs to
    done: bool = False           # its verdict was returned


@dataclass
class TrackGate:
    """Streams frames' regions and scores; returns each frame's track-level verdicts ``horizon``
    frames later (module docstring). ``push`` → the frames now decided, as (payload, keep: region →
    bool) pairs, in order; ``finish`` → the rest."""

    min_frames: int = DEFAULT_MIN_FRAMES
    horizon: int = DEFAULT_HORIZON
    memory: int = DEFAULT_MEMORY
    threshold: float = DEFAULT_THRESHOLD
    kept: int = 0
    dropped: int = 0
    _frames: deque = field(default_factory=deque, repr=False)  # at most 2 (memory + horizon) + 1 frames
    _last: tuple[np.ndarray, int, dict[int, int]] | None = field(default=None, repr=False)
    _next_track: int = 1
    _t: int = 0
    _segment: int = 0

    def __post_init__(self) -> None:
        if self.min_frames < 1 or self.horizon < 0 or self.memory < 0:
            raise ValueError(f"expected min_frames >= 1, horizon >= 0 and memory >= 0, got {self.min_frames}, "
                             f"{self.horizon} and {self.memory}")
        if not math.isfinite(self.threshold) or self.threshold < 0:
            raise ValueError(f"expected a finite threshold >= 0, got {self.threshold}")

    def push(self, regions: np.ndarray, n: int, scores: Mapping[int, float], flow_to_prev: Tensor | None,
             payload: Any = None) -> list[tuple[Any, dict[int, bool]]]:
        """One frame: its region labels (I, J) int32 with ``n`` labels (background included), each
        region's score z, and the flow (2, I, J) back to the previous pushed frame (None: the sequence
        is broken here)."""
        if regions.ndim != 2:
            raise ValueError(f"expected regions (I, J), got {tuple(regions.shape)}")
        tracks: dict[int, int] = {}
        if flow_to_prev is not None and self._last is not None:
            last, n_last, last_tracks = self._last
            for k, m in link_regions(carry_labels(last, flow_to_prev), n_last, regions, n).items():
                tracks[k] = last_tracks[m]
        else:
            self._segment += 1
        for k in range(1, n):
            if k not in tracks:
                tracks[k] = self._next_track
                self._next_track += 1
        z = {k: float(scores.get(k, math.nan)) for k in range(1, n)}
        self._frames.append(_Frame(self._t, tracks, z, payload, self._segment))
        self._t += 1
        self._last = (regions, n, tracks)
        return self._drain(final=False)

    def finish(self) -> list[tuple[Any, dict[int, bool]]]:
        """The verdicts still held back; the gate is then empty (a new sequence may follow)."""
        out = self._drain(final=True)
        self._frames.clear()
        self._last = None
        return out

    def _span(self) -> int:
        return self.memory + self.horizon  # a window covers span + 1 frames

    def _window(self, f: _Frame, final: bool) -> tuple[int, int] | None:
        """Frame indices [lo, hi] of ``f``'s window: t − memory … t + horizon, shifted to lie inside its
        run of unbroken frames where that run is short at this end; None while frames are still due."""
        run = [g.t for g in self._frames if g.segment == f.segment]
        start = min(run)
        if self.horizon == 0:  # causal: the past only, decided at once
            return max(start, f.t - self.memory), f.t
        ended = final or self._frames[-1].segment != f.segment
        end = max(run) if ended else math.inf
        lo = max(start, min(f.t - self.memory, end - self._span()))
        hi = lo + self._span()
        if not ended and self._frames[-1].t < hi:
            return None
        return lo, hi

    def _drain(self, final: bool) -> list[tuple[Any, dict[int, bool]]]:
        out = []
        for f in self._frames:
            if f.done:
                continue
            window = self._window(f, final)
            if window is None:
                break
            out.append((f.payload, self._verdict(f, *window)))
            f.done, f.payload = True, None
        # forget the frames that no undecided frame's window can reach back to
        first_open = next((g.t for g in self._frames if not g.done), self._t)
        while self._frames and self._frames[0].done and self._frames[0].t < first_open - self._span():
            self._frames.popleft()
        return out

    def _verdict(self, f: _Frame, lo: int, hi: int) -> dict[int, bool]:
        window = [g for g in self._frames if g.segment == f.segment and lo <= g.t <= hi]
        need = min(self.min_frames, len(window))
        keep = {}
        for k, track in f.tracks.items():
            if not math.isfinite(f.scores[k]):
                keep[k] = False
                continue
            seen = 0
            z = []  # the track's score in each frame of the window where it has one
            for g in window:
                mine = [g.scores[r] for r, tr in g.tracks.items() if tr == track]
                seen += bool(mine)
                mine = [v for v in mine if math.isfinite(v)]
                if mine:
                    # its best region: a fragment split off the object must not outvote the object
                    z.append(max(mine))
            keep[k] = seen >= need and float(np.median(z)) > self.threshold
        self.kept += sum(keep.values())
        self.dropped += len(keep) - sum(keep.values())
        return keep

