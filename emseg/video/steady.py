"""Steady masks: the binary masks of a sequence decided with their neighbours, not frame by frame.

Each frame's mask is the sign of a **margin** at the frame's resolution (the refined foreground
score minus the background's, :func:`foreground_margin`). Decided alone, the pixels whose margin is
near 0 (an object's boundary, a low-texture patch the flow cannot settle) change label from one
frame to the next, and a blob the network sees in one frame only comes and goes: the masks flicker.
:class:`SteadyMasks` decides frame t with its neighbours, carried onto it by the flow:

- **Hysteresis.** A pixel whose margin lies within ``band`` of 0 keeps the label of frame t − 1's
  final mask carried onto t by the flow from t back to t − 1; elsewhere its own sign decides.
- **A median over three frames.** The label is then the majority of three votes: the carried
  final mask of t − 1, that hysteresis label, and frame t + 1's own mask carried back onto t by the
  flow from t to t + 1. So a blob of a single frame is dropped, and a pixel follows the majority.
- Where a carried sample falls outside the frame, or frame t has no linked neighbour on a side
  (the sequence's ends, a broken sequence), the frame's own label stands there.

A frame is decided once its next frame is known: one frame of latency, memory flat in the length.
``band`` was chosen on the dev split of the repository's video benchmark (docs/METHOD.md, "Steady
masks"); ``band = 0`` keeps the median and drops the hysteresis.

Conventions: margins (H, W) float32 (> 0: foreground); masks (H, W) bool; flows (H, W, 2) float32
in pixels of the frame's grid, channel 0 along x (columns); ``to_prev`` maps a pixel of frame t to
its position in frame t − 1, ``forward`` to its position in frame t + 1.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from emseg.core.masks import labels_of

#: margins within this of 0 keep the carried previous label (chosen on the video benchmark's dev split)
DEFAULT_BAND = 0.1


def foreground_margin(scores: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """The argmax labels (H, W) and the foreground margin (H, W) float32 of per-pixel scores.

    ``scores``: (H, W) p1 − p0 when ``n_labels`` = 2, else (H, W, L) probabilities (refined or
    upsampled). The background is the label most pixels take (``exceptbiggest``); the margin is the
    best other label's score minus the background's, so ``margin > 0`` is the ``exceptbiggest``
    foreground (up to exact ties).
    """
    if n_labels == 2:
        if scores.ndim != 2:
            raise ValueError(f"expected scores (H, W) p1 - p0 for 2 labels, got {scores.shape}")
        labels = labels_of(scores, 2)
        flip = 2 * np.count_nonzero(labels) > labels.size  # label 1 is the background
        return labels, (-scores if flip else scores).astype(np.float32, copy=False)
    if scores.ndim != 3 or scores.shape[2] != n_labels:
        raise ValueError(f"expected scores (H, W, {n_labels}), got {scores.shape}")
    labels = labels_of(scores, n_labels)
    big = int(np.bincount(labels.ravel(), minlength=n_labels).argmax())
    others = np.delete(scores, big, axis=-1).max(-1)
    return labels, (others - scores[..., big]).astype(np.float32, copy=False)


def upsample_flow(flow: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A flow (2, I, J) in pixels of its grid → (H, W, 2) in pixels of ``size`` = (H, W), bilinearly: the
    array twin of ``emseg.video.flow_confidence.resize_flow(..., rescale=True)`` (tests/test_steady.py checks
    they agree), in OpenCV because it runs on the writer thread for every frame (0.7 ms against 3.8 ms at
    640 × 480)."""
    if flow.ndim != 3 or flow.shape[0] != 2:
        raise ValueError(f"expected flow (2, I, J), got {flow.shape}")
    H, W = size
    _, I, J = flow.shape
    up = cv2.resize(np.ascontiguousarray(flow.transpose(1, 2, 0), dtype=np.float32), (W, H),
                    interpolation=cv2.INTER_LINEAR)
    up[..., 0] *= W / J
    up[..., 1] *= H / I
    return up


def carry_mask(mask: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``mask`` (H, W) bool of another frame sampled at p + flow(p) (bilinear, ≥ 0.5) → (carried (H, W)
    bool, inside (H, W) bool: the sample point lies in the frame). The array twin of
    ``emseg.video.flow_confidence.warp`` thresholded at 0.5 (tests/test_steady.py checks they agree), in
    OpenCV for the writer thread (0.9 ms against 6 ms at 640 × 480)."""
    H, W = mask.shape
    if flow.shape != (H, W, 2):
        raise ValueError(f"expected flow ({H}, {W}, 2) on the mask's grid, got {flow.shape}")
    gx, gy = _grid(H, W)
    mx, my = gx + flow[..., 0], gy + flow[..., 1]
    inside = (mx >= 0) & (mx <= W - 1) & (my >= 0) & (my <= H - 1)
    carried = cv2.remap(mask.astype(np.uint8) * 255, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return carried >= 128, inside


@functools.lru_cache(maxsize=4)
def _grid(H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """The pixel coordinates (x, y), each (H, W) float32 (read only: shared between calls)."""
    gx, gy = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    gx.setflags(write=False)
    gy.setflags(write=False)
    return gx, gy


@dataclass
class _Held:
    margin: np.ndarray
    own: np.ndarray
    to_prev: np.ndarray | None
    forward: np.ndarray | None
    payload: Any


@dataclass
class SteadyMasks:
    """Streams a sequence's frames; returns each frame's steady mask one frame later (module docstring).

    ``push(margin, to_prev, forward, payload)`` → the frames now decided, as (payload, mask) pairs;
    ``finish()`` → the last one. ``to_prev`` None marks a break: frame t is then not linked to
    t − 1. ``clean`` (optional, mask (H, W) bool → mask) is applied to each frame's own mask
    ``margin > 0`` (what it votes with as a neighbour) and to each decided mask, e.g. to drop specks.
    """

    band: float = DEFAULT_BAND
    clean: Callable[[np.ndarray], np.ndarray] | None = None
    _held: _Held | None = field(default=None, repr=False)
    _prev_out: np.ndarray | None = field(default=None, repr=False)  # the last decided frame's mask

    def __post_init__(self) -> None:
        if not np.isfinite(self.band) or self.band < 0:
            raise ValueError(f"expected a finite band >= 0, got {self.band}")

    def push(self, margin: np.ndarray, to_prev: np.ndarray | None, forward: np.ndarray | None,
             payload: Any = None) -> list[tuple[Any, np.ndarray]]:
        if margin.ndim != 2:
            raise ValueError(f"expected margin (H, W), got {margin.shape}")
        cur = _Held(margin, self._clean(margin > 0), to_prev, forward, payload)
        out = []
        if self._held is not None:
            linked = to_prev is not None and margin.shape == self._held.margin.shape
            out.append(self._decide(self._held, cur if linked else None))
            if not linked:
                self._prev_out = None
        self._held = cur
        return out

    def finish(self) -> list[tuple[Any, np.ndarray]]:
        """The frame still held; the stream is then empty (a new sequence may follow)."""
        out = [] if self._held is None else [self._decide(self._held, None)]
        self._held = self._prev_out = None
        return out

    def _decide(self, f: _Held, nxt: _Held | None) -> tuple[Any, np.ndarray]:
        label = f.own
        if self._prev_out is not None and f.to_prev is not None:
            prev, in_prev = carry_mask(self._prev_out, f.to_prev)
            label = np.where((np.abs(f.margin) <= self.band) & in_prev, prev, f.own)
            if nxt is not None and f.forward is not None:
                after, in_next = carry_mask(nxt.own, f.forward)
                votes = prev.astype(np.uint8) + label + after
                label = np.where(in_prev & in_next, votes >= 2, label)
        label = self._clean(label)
        self._prev_out = label
        return f.payload, label

    def _clean(self, mask: np.ndarray) -> np.ndarray:
        return np.asarray(mask if self.clean is None else self.clean(mask), bool)
