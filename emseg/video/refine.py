"""Masks at the video's resolution that follow the image: edge-aware upsampling of the probabilities.

The network segments at 128 × 224; resizing its probabilities bilinearly to a 640-px frame blurs
every boundary over about three output pixels per model pixel, so small objects bleed into the
background and the boundary measure F suffers. Here the upsampled probabilities are filtered with
the frame itself as the guide (the guided filter of He, Sun and Tang, 2010): within each window of
radius ``r`` the output is an affine function of the guide's intensity, fitted to the upsampled
probabilities by least squares with ridge ``eps``. Where the frame has an edge the mask's boundary
snaps to it; in flat regions the filter is a plain local mean, so nothing changes there.

Everything is box filters (``cv2.boxFilter``), O(H · W) whatever ``r``: a few milliseconds per
640 × 360 frame.

Conventions: pred (L, I, J) float32 softmax over L; frames uint8 RGB (H, W, 3); guide (H, W)
float32 in [0, 1]; labels (H, W) int, the argmax over L as :func:`emseg.core.masks.labels_at`.
"""

from __future__ import annotations

import cv2
import numpy as np

from emseg.core.masks import labels_of, scores_at
from emseg.core.significance import MIN_REGION_FRACTION

#: the window's radius, in model pixels (the output radius is this times the upsampling factor); chosen on the
#: video benchmark's dev split, capped where thin parts (the blackswan's neck) survive (docs/METHOD.md)
RADIUS_MODEL_PX = 4.0
#: the ridge of the local fit, for a guide in [0, 1] (variance units: an edge of contrast 0.1 counts)
EPS = 1e-3
#: foreground specks below this share of the frame are dropped after refining: the significance test's
#: smallest region (``emseg.core.significance.MIN_REGION_FRACTION``), on the frame's grid
MIN_SPECK_FRACTION = MIN_REGION_FRACTION


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float = EPS) -> np.ndarray:
    """The guided filter of ``src`` (H, W) or (H, W, C) float32 by ``guide`` (H, W) float32, window
    (2 · radius + 1)²: per window ``q = a · guide + b`` with ``a = cov(guide, src) / (var(guide) + eps)``,
    the coefficients averaged over the windows covering each pixel. Same shape as ``src``."""
    if guide.ndim != 2 or src.shape[:2] != guide.shape:
        raise ValueError(f"expected guide (H, W) and src (H, W[, C]) on its grid, got {guide.shape} and {src.shape}")
    if radius < 1:
        return src.astype(np.float32, copy=True)
    k = (2 * int(radius) + 1,) * 2

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, cv2.CV_32F, k, borderType=cv2.BORDER_REFLECT)

    g = guide.astype(np.float32)
    s = src.astype(np.float32)
    gc = g if s.ndim == 2 else g[..., None]
    mean_g, mean_s = box(g), box(s)
    mean_gc = mean_g if s.ndim == 2 else mean_g[..., None]
    var_g = box(g * g) - mean_g * mean_g
    cov = box(s * gc) - mean_gc * mean_s
    a = cov / ((var_g if s.ndim == 2 else var_g[..., None]) + eps)
    b = mean_s - a * mean_gc
    return box(a) * gc + box(b)


def guide_of(frame: np.ndarray) -> np.ndarray:
    """An RGB uint8 frame (H, W, 3) → its luminance (H, W) float32 in [0, 1], the filter's guide."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 frame (H, W, 3), got {frame.dtype} {frame.shape}")
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32) * (1.0 / 255.0)


def refined_scores(pred: np.ndarray, frame: np.ndarray, radius_model_px: float = RADIUS_MODEL_PX,
                   eps: float = EPS) -> np.ndarray:
    """pred (L, I, J) → the bilinearly upsampled probabilities guided-filtered by ``frame`` (H, W, 3 RGB
    uint8; module docstring), at its size: (H, W) p1 − p0 when L = 2 (one channel decides), else
    (H, W, L)."""
    if pred.ndim != 3:
        raise ValueError(f"expected pred (L, I, J), got {pred.shape}")
    H, W = frame.shape[:2]
    _, I, J = pred.shape
    radius = max(1, round(radius_model_px * max(H / I, W / J)))
    return guided_filter(guide_of(frame), scores_at(pred, (H, W)), radius, eps)


def refined_labels(pred: np.ndarray, frame: np.ndarray, radius_model_px: float = RADIUS_MODEL_PX,
                   eps: float = EPS) -> np.ndarray:
    """pred (L, I, J) → argmax labels (H, W) at ``frame``'s size of :func:`refined_scores`
    (``emseg.core.masks.labels_of``, as ``labels_at``)."""
    return labels_of(refined_scores(pred, frame, radius_model_px, eps), pred.shape[0])


def drop_specks(foreground: np.ndarray, min_fraction: float = MIN_SPECK_FRACTION) -> np.ndarray:
    """foreground (H, W) bool without its 8-connected regions smaller than ``min_fraction`` of the
    frame: where a textured object's edges cross the filter's zero level, the refinement leaves specks
    that the model's grid could not hold (the significance test drops regions of that size too)."""
    fg = np.asarray(foreground, bool)
    n, regions, stats, _ = cv2.connectedComponentsWithStats(fg.astype(np.uint8), connectivity=8)
    if n <= 1:
        return fg
    small = stats[:, cv2.CC_STAT_AREA] < max(1.0, min_fraction * fg.size)
    small[0] = False
    return fg & ~small[regions]
