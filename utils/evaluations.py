"""Segmentation scores."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def db_eval_iou(annotation, segmentation):
    """Jaccard index (intersection over union) of binary masks, as the DAVIS toolkit defines it.

    Accepts numpy arrays or tensors of shape (..., I, J); the last two axes are reduced. When
    both masks are empty the score is 1 (a perfect empty prediction).
    """
    if isinstance(annotation, Tensor) or isinstance(segmentation, Tensor):
        a = torch.as_tensor(annotation).bool()
        s = torch.as_tensor(segmentation).bool().to(a.device)
        inter = (a & s).sum((-2, -1)).double()
        union = (a | s).sum((-2, -1)).double()
        return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    a = np.asarray(annotation).astype(bool)
    s = np.asarray(segmentation).astype(bool)
    if a.shape != s.shape:
        raise ValueError(f"annotation {a.shape} and segmentation {s.shape} must have the same shape")
    inter = np.logical_and(a, s).sum(axis=(-2, -1))
    union = np.logical_or(a, s).sum(axis=(-2, -1))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)
