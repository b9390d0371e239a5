"""Per-frame measures beyond J and F: temporal **flicker** and **region recall / false regions**.

Both take boolean masks (H, W) at the video's size; the scorer (``score.py``) calls them frame by frame.

**Flicker** of a mask sequence m_0 … m_{T−1} under a backward motion (flow (H, W, 2) of frame t: the
pixel p of frame t was at p + flow_t(p) in frame t − 1; valid_t (H, W): the pixels whose motion is known
and which were visible in frame t − 1 too)::

    w_t(p)     = m_{t−1}(p + flow_t(p))  (bilinear, ≥ 0.5: the previous mask carried onto frame t)
    flicker_t  = |{p ∈ valid_t : w_t(p) XOR m_t(p)}| / max(1, |{p ∈ valid_t : w_t(p) OR m_t(p)}|)
    flicker    = mean of flicker_t over t = 1 … T − 1

so 0 for a mask that moves exactly with the scene, 1 for a frame whose foreground wholly appears or
vanishes (a mask toggling on and off scores 1 on every pair), and 0 for a pair of empty frames. The
benchmark knows every pixel's exact motion (``scenes.backward_motion``), so the flow is the ground truth's
motion, not an estimate; pixels entering the view or uncovered by an object are left out (not valid).
The same measure of the ground-truth masks is its floor (the resampling of exact edges, ≈ 0).

**Regions** of a frame are the 8-connected components (``cv2.connectedComponents``) of its ground truth
and of its prediction. A ground-truth region is *found* when the predicted foreground covers ≥ 30 % of
it; a predicted region is *false* when < 10 % of it lies on the ground-truth foreground.
"""

from __future__ import annotations

import cv2
import numpy as np

FOUND_COVERAGE = 0.30  # a ground-truth region is found when the prediction covers at least this share of it
FALSE_OVERLAP = 0.10  # a predicted region is false when less than this share of it lies on the ground truth


def warp_mask(prev: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """The previous frame's mask(s) carried onto the current frame: prev (H, W) or (C, H, W) bool sampled at
    p + flow(p) (flow (H, W, 2), channel 0 along x) bilinearly, foreground where the sample is ≥ 0.5 →
    bool of prev's shape.

    Uses the project's warping (``emseg.video.flow_confidence.warp``), so a benchmark's flicker and the
    video stages agree on what carrying a mask by a flow means.
    """
    import torch

    from emseg.video.flow_confidence import warp

    if prev.shape[-2:] != flow.shape[:2] or flow.shape[2:] != (2,) or prev.ndim not in (2, 3):
        raise ValueError(f"expected prev (H, W) or (C, H, W) and flow (H, W, 2), got {prev.shape} and {flow.shape}")
    stack = prev.reshape(-1, *prev.shape[-2:])
    x = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[None]
    f = torch.from_numpy(np.ascontiguousarray(flow.transpose(2, 0, 1), dtype=np.float32))[None]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one small sampling: more threads cost more than they save on shared CPUs
    try:
        out, _ = warp(x, f)
    finally:
        torch.set_num_threads(threads)
    return (out[0].numpy() >= 0.5).reshape(prev.shape)


def flicker_of(warped: np.ndarray, cur: np.ndarray, valid: np.ndarray | None = None) -> float:
    """flicker_t from the carried previous mask ``warped`` and the current one ``cur`` (H, W) bool: the share
    of their union that changes label, over the ``valid`` pixels (all when None). Empty union → 0."""
    changed, either = warped ^ cur, warped | cur
    if valid is not None:
        changed, either = changed & valid, either & valid
    return float(changed.sum() / max(1, int(either.sum())))


def flicker_pair(prev: np.ndarray, cur: np.ndarray, flow: np.ndarray, valid: np.ndarray | None = None) -> float:
    """flicker_t of one pair of masks (H, W) bool, frame t's backward flow (H, W, 2) and its valid pixels."""
    return flicker_of(warp_mask(prev, flow), cur, valid)


def flicker(masks: list[np.ndarray], flows: list[np.ndarray], valids: list[np.ndarray | None] | None = None) -> float:
    """Mean flicker_t over t = 1 … T − 1 of ``masks`` (T × (H, W) bool); ``flows[t − 1]`` and
    ``valids[t − 1]`` are frame t's backward motion (H, W, 2) and its valid pixels. NaN for T < 2."""
    if len(masks) < 2:
        return float("nan")
    valids = valids if valids is not None else [None] * (len(masks) - 1)
    return float(np.mean([flicker_pair(masks[t - 1], masks[t], flows[t - 1], valids[t - 1])
                          for t in range(1, len(masks))]))


def _component_shares(mask: np.ndarray, other: np.ndarray) -> np.ndarray:
    """For each 8-connected component of ``mask`` (H, W) bool, the share of its pixels where ``other``
    (H, W) bool is set → (n_components,) float (empty when ``mask`` is empty)."""
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(0)
    size = np.bincount(labels.ravel(), minlength=n)[1:]
    hit = np.bincount(labels.ravel(), weights=other.ravel().astype(np.float64), minlength=n)[1:]
    return hit / size


def region_counts(gt: np.ndarray, pred: np.ndarray) -> dict[str, int]:
    """One frame's regions: ``gt_regions`` (ground-truth components), ``gt_found`` (those the prediction
    covers ≥ 30 %), ``pred_regions`` (predicted components) and ``pred_false`` (those < 10 % on the ground
    truth). gt, pred: (H, W) bool."""
    cover = _component_shares(gt, pred)
    on_gt = _component_shares(pred, gt)
    return {"gt_regions": len(cover), "gt_found": int((cover >= FOUND_COVERAGE).sum()),
            "pred_regions": len(on_gt), "pred_false": int((on_gt < FALSE_OVERLAP).sum())}
