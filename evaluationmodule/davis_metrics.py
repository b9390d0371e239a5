"""DAVIS benchmark measures: boundary F and the per-sequence statistics (mean, recall, decay).

Written from the definitions of the DAVIS toolkit (Perazzi et al., CVPR 2016; Pont-Tuset et al.,
2017):

- **Boundary F.** The boundary map of a binary mask marks every pixel that differs from its right,
  bottom or bottom-right neighbour (``seg2bmap``). A predicted boundary pixel is a true positive
  when a ground-truth boundary pixel lies within ``bound_pix`` of it, and vice versa, with
  ``bound_pix = ceil(bound_th · ‖(I, J)‖)`` for ``bound_th < 1`` (the image diagonal, default
  0.008) and ``bound_pix = bound_th`` pixels otherwise. Matching is a dilation by a disk of that
  radius. F = 2PR / (P + R); empty boundaries follow the toolkit: both empty → P = R = 1 (F = 1),
  empty prediction only → P = 1, R = 0 (F = 0), empty ground truth only → P = 0, R = 1 (F = 0).
- **Statistics** of a sequence's per-frame values X (in frame order): mean = nanmean(X); recall =
  fraction of frames with X > 0.5; decay = mean of the first quarter − mean of the last quarter.
  The toolkit's quarters are ``X[ids[k] : ids[k+1] + 1]`` with
  ``ids = round(linspace(1, n, 5)) − 1`` (neighbouring bins share a frame); ``binning='array_split'``
  uses ``np.array_split(X, 4)`` instead (disjoint bins; empty ones for n < 4).
"""

from __future__ import annotations

import math
import warnings

import cv2
import numpy as np

DECAY_BINNINGS = ("toolkit", "array_split")


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """Boundary map of a binary mask, as the DAVIS toolkit's ``seg2bmap`` defines it.

    seg (I, J), any dtype (non-zero = foreground) → (I, J) bool. A pixel is a boundary pixel when it
    differs from its right, bottom or bottom-right neighbour (missing neighbours count as
    background, except that the last row only compares to the right and the last column only to
    the bottom, and the bottom-right corner is never a boundary).
    """
    seg = np.asarray(seg)
    if seg.ndim != 2:
        raise ValueError(f"seg2bmap expects a 2-D mask (I, J), got shape {seg.shape}")
    seg = seg.astype(bool)
    e = np.zeros_like(seg)  # right neighbour
    s = np.zeros_like(seg)  # bottom neighbour
    se = np.zeros_like(seg)  # bottom-right neighbour
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def disk(radius: int) -> np.ndarray:
    """Disk structuring element (2r+1, 2r+1) uint8: 1 where x² + y² ≤ r² (skimage's ``disk``)."""
    radius = int(radius)
    r = np.arange(-radius, radius + 1)
    return ((r[:, None] ** 2 + r[None, :] ** 2) <= radius**2).astype(np.uint8)


def boundary_tolerance(shape: tuple[int, int], bound_th: float = 0.008) -> int:
    """Matching radius in pixels: ``ceil(bound_th · ‖shape‖)`` if ``bound_th < 1`` else ``bound_th``."""
    if bound_th < 0:
        raise ValueError(f"bound_th must be ≥ 0, got {bound_th}")
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(shape[0], shape[1])))


def boundary_precision_recall(annotation: np.ndarray, segmentation: np.ndarray,
                              bound_th: float = 0.008) -> tuple[float, float]:
    """Boundary precision and recall of ``segmentation`` against ``annotation`` (both (I, J) masks)."""
    gt = np.asarray(annotation).astype(bool)
    fg = np.asarray(segmentation).astype(bool)
    if gt.shape != fg.shape:
        raise ValueError(f"annotation {gt.shape} and segmentation {fg.shape} must have the same shape")
    if gt.ndim != 2:
        raise ValueError(f"boundary F expects 2-D masks (I, J), got shape {gt.shape}")
    fg_b = seg2bmap(fg)
    gt_b = seg2bmap(gt)
    n_fg = int(fg_b.sum())
    n_gt = int(gt_b.sum())
    if n_fg == 0 and n_gt == 0:
        return 1.0, 1.0
    if n_fg == 0:
        return 1.0, 0.0
    if n_gt == 0:
        return 0.0, 1.0
    kernel = disk(boundary_tolerance(gt.shape, bound_th))
    fg_dil = cv2.dilate(fg_b.astype(np.uint8), kernel).astype(bool)
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), kernel).astype(bool)
    precision = float(np.logical_and(fg_b, gt_dil).sum()) / n_fg
    recall = float(np.logical_and(gt_b, fg_dil).sum()) / n_gt
    return precision, recall


def db_eval_boundary(annotation: np.ndarray, segmentation: np.ndarray, bound_th: float = 0.008) -> float:
    """DAVIS boundary measure F ∈ [0, 1] of two binary masks (I, J); see the module docstring."""
    precision, recall = boundary_precision_recall(annotation, segmentation, bound_th)
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def _nanmean(x: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return float(np.nanmean(x)) if len(x) else float("nan")


def db_mean(values) -> float:
    """Mean of the per-frame values (n,), NaN ignored; NaN when there is none."""
    return _nanmean(np.asarray(values, dtype=float))


def db_recall(values, threshold: float = 0.5) -> float:
    """Fraction of frames (n,) scoring strictly above ``threshold``; NaN when n = 0."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return float("nan")
    return float(np.mean(x > threshold))


def decay_bins(n: int, binning: str = "toolkit") -> list[slice]:
    """The four frame ranges (slices into n frames) whose means define the decay."""
    if binning == "toolkit":
        if n == 0:
            return [slice(0, 0)] * 4
        ids = (np.round(np.linspace(1, n, 5) + 1e-10) - 1).astype(int)
        return [slice(int(ids[k]), int(ids[k + 1]) + 1) for k in range(4)]
    if binning == "array_split":
        bounds = np.cumsum([0] + [len(b) for b in np.array_split(np.arange(n), 4)])
        return [slice(int(bounds[k]), int(bounds[k + 1])) for k in range(4)]
    raise ValueError(f"binning must be one of {list(DECAY_BINNINGS)}, got {binning!r}")


def db_decay(values, binning: str = "toolkit") -> float:
    """Decay of per-frame values (n,) in frame order: mean of the first quarter − mean of the last."""
    x = np.asarray(values, dtype=float)
    bins = decay_bins(len(x), binning)
    return _nanmean(x[bins[0]]) - _nanmean(x[bins[3]])


def db_statistics(values, binning: str = "toolkit") -> tuple[float, float, float]:
    """(mean, recall, decay) of a sequence's per-frame values (n,) in frame order."""
    return db_mean(values), db_recall(values), db_decay(values, binning)
