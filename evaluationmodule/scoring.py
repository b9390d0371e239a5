"""Scoring saved probabilities against ground-truth masks, frame by frame and sequence by sequence.

Per frame: the probabilities (L, I, J) are resized to the ground truth's size (H, W) (bilinear,
align_corners=False), binarised with ``Binariser`` and scored with

- ``jacc``: the region Jaccard J (``utils.evaluations.db_eval_iou``),
- ``bbox_jacc``: Jaccard of the ground truth's bounding box and the bounding box of the largest
  8-connected component of the prediction (MoCA's measure),
- ``boundary_f``: the DAVIS boundary measure F (``davis_metrics.db_eval_boundary``),
- ``score``: ``jacc`` or ``bbox_jacc`` according to ``scoring_method`` (``db_eval_iou`` | ``bbox_jacc``),

plus per-mask statistics.

The evaluation of a whole DataSplit (``evaluate``, the per-sequence table and the summary) is
``evaluationmodule.runner``'s, which calls this module. The authors' path ``evaluationmodule.ScoreModule``
re-exports both.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from emseg.core.binarisation import BINARY_METHODS, Binariser
from emseg.core.masks import resize_proba
from evaluationmodule import davis_metrics
from utils.evaluations import db_eval_iou

__all__ = ["BINARY_METHODS", "SCORE_COLUMNS", "SCORING_METHODS", "Binariser", "FrameScore", "FrameScorer",
           "ScoreModule", "bbox_jaccard", "binary_mask", "box_iou", "db_eval_iou", "default_scoring_method", "jaccard",
           "largest_component_bbox", "mask_bbox", "mask_stats", "resize_proba"]

SCORING_METHODS = ("db_eval_iou", "bbox_jacc")
SCORE_COLUMNS = ("score", "jacc", "bbox_jacc", "boundary_f")


# ----------------------------------------------------------------------------------------------
# Per-frame primitives
# ----------------------------------------------------------------------------------------------

def default_scoring_method(name: str) -> str:
    """``bbox_jacc`` for MoCA splits (name containing 'moca', any case), ``db_eval_iou`` otherwise."""
    return "bbox_jacc" if "moca" in name.lower() else "db_eval_iou"


def binary_mask(proba: torch.Tensor, gt: np.ndarray | None = None,
                binary_method: str = "exceptbiggest") -> np.ndarray:
    """Probabilities (L, H, W) → binary foreground (H, W) bool via ``Binariser``.

    ``gt`` (H, W) is needed for ``fair`` only.
    """
    batch: dict[str, torch.Tensor] = {"Pred": torch.as_tensor(proba)[None]}
    if gt is not None:
        batch["GtMask"] = torch.as_tensor(np.asarray(gt, dtype=bool))[None]
    return Binariser(binary_method).binarise(batch)["PredMask"][0].cpu().numpy().astype(bool)


def jaccard(gt: np.ndarray, pred: np.ndarray) -> float:
    """Region Jaccard J of two binary masks (H, W); 1 when both are empty."""
    return float(db_eval_iou(np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)))


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box (row0, col0, row1, col1), inclusive, of a mask's non-zero pixels (H, W); None if empty."""
    rows = np.flatnonzero(np.asarray(mask).any(1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(np.asarray(mask).any(0))
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def largest_component_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive bounding box (row0, col0, row1, col1) of the largest 8-connected component of (H, W).

    The largest is the one with the most pixels (ties: the first in raster order); None if empty.
    """
    m = np.ascontiguousarray(np.asarray(mask, dtype=bool), dtype=np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return None
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(stats[k, c]) for c in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH,
                                              cv2.CC_STAT_HEIGHT))
    return y, x, y + h - 1, x + w - 1


def box_iou(a: tuple[int, int, int, int] | None, b: tuple[int, int, int, int] | None) -> float:
    """IoU of two inclusive pixel boxes (row0, col0, row1, col1): 1 if both are None, 0 if one is."""
    if a is None and b is None:
        return 1.0
    if a is None or b is None:
        return 0.0

    def area(r: tuple[int, int, int, int]) -> int:
        return max(0, r[2] - r[0] + 1) * max(0, r[3] - r[1] + 1)

    inter = area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    return inter / float(area(a) + area(b) - inter)


def bbox_jaccard(gt: np.ndarray, pred: np.ndarray) -> float:
    """MoCA's measure: IoU of the GT's bounding box (all pixels > 0) and the prediction's largest-component box.

    gt, pred (H, W). Empty prediction → 0 unless the ground truth is empty too (→ 1).
    """
    return box_iou(mask_bbox(np.asarray(gt) > 0), largest_component_bbox(pred))


def mask_stats(labels: np.ndarray, n_masks: int, gt: np.ndarray, pred_mask: np.ndarray) -> dict[str, float]:
    """Per-mask size and overlap statistics of one frame.

    labels (H, W) argmax of the probabilities, gt and pred_mask (H, W) bool. Returns
    ``n_masks``, ``mask{k}_size`` (fraction of pixels whose argmax is k), ``mask{k}_overlap``
    (fraction of the GT's pixels whose argmax is k; NaN for an empty GT), ``pred_fg_size`` and
    ``gt_fg_size`` (foreground fractions).
    """
    n_pix = labels.size
    gt = np.asarray(gt, dtype=bool)
    n_gt = int(gt.sum())
    size = np.bincount(labels.ravel(), minlength=n_masks)[:n_masks] / n_pix
    inside = np.bincount(labels[gt].ravel(), minlength=n_masks)[:n_masks]
    out: dict[str, float] = {"n_masks": n_masks}
    for k in range(n_masks):
        out[f"mask{k}_size"] = float(size[k])
        out[f"mask{k}_overlap"] = float(inside[k] / n_gt) if n_gt else float("nan")
    out["pred_fg_size"] = float(np.asarray(pred_mask, dtype=bool).mean())
    out["gt_fg_size"] = n_gt / n_pix
    return out


@dataclass
class FrameScore:
    """Scores of one frame; ``pred_mask`` and ``labels`` are (H, W) at the ground truth's size."""

    score: float
    jacc: float
    bbox_jacc: float
    boundary_f: float
    stats: dict[str, float]
    pred_mask: np.ndarray
    labels: np.ndarray

    def row(self) -> dict[str, float]:
        return {"score": self.score, "jacc": self.jacc, "bbox_jacc": self.bbox_jacc,
                "boundary_f": self.boundary_f, **self.stats}


class FrameScorer:
    """Scores one frame: resize → binarise → J, bbox Jaccard, boundary F and mask statistics.

    Args:
        scoring_method: ``db_eval_iou`` (region Jaccard) or ``bbox_jacc`` (MoCA); picks ``score``.
        binary_method: ``exceptbiggest`` or ``fair`` (see Binariser).
        bound_th: boundary tolerance, fraction of the image diagonal (< 1) or pixels (≥ 1).
    """

    def __init__(self, scoring_method: str = "db_eval_iou", binary_method: str = "exceptbiggest",
                 bound_th: float = 0.008) -> None:
        if scoring_method not in SCORING_METHODS:
            raise ValueError(f"--scoring_method must be one of {list(SCORING_METHODS)}, got {scoring_method!r}")
        if binary_method not in BINARY_METHODS:
            raise ValueError(f"--binary_method must be one of {list(BINARY_METHODS)}, got {binary_method!r}")
        if not bound_th >= 0:
            raise ValueError(f"--bound_th must be ≥ 0, got {bound_th}")
        self.scoring_method = scoring_method
        self.binary_method = binary_method
        self.bound_th = bound_th

    def score(self, proba: np.ndarray | torch.Tensor, gt: np.ndarray) -> FrameScore:
        """proba (L, I, J) at any size, gt (H, W) bool → FrameScore at (H, W)."""
        gt = np.asarray(gt, dtype=bool)
        if gt.ndim != 2:
            raise ValueError(f"expected a ground truth (H, W), got shape {gt.shape}")
        p = resize_proba(proba, gt.shape)
        pred = binary_mask(p, gt if self.binary_method == "fair" else None, self.binary_method)
        labels = p.argmax(0).cpu().numpy()
        jacc = jaccard(gt, pred)
        bbox = bbox_jaccard(gt, pred)
        bf = davis_metrics.db_eval_boundary(gt, pred, self.bound_th)
        return FrameScore(score=bbox if self.scoring_method == "bbox_jacc" else jacc, jacc=jacc, bbox_jacc=bbox,
                          boundary_f=bf, stats=mask_stats(labels, p.shape[0], gt, pred), pred_mask=pred,
                          labels=labels)


#: the authors' name for it (their scripts and snippets import it)
ScoreModule = FrameScorer
