"""The mask rules, one home: ground truth, probabilities at another size, L soft masks → one foreground.

Every layer that turns masks into a foreground decides it here, so training, ``model_eval.py``, the
benchmark evaluation, ``segment.py`` and the video benchmark agree:

- **ground truth** (:func:`decode_mask`, :func:`is_foreground`): a pixel is foreground where its value
  is > 0, whatever the image mode (palette indices, any colour channel, alpha ignored). The authors
  divided by 255 and truncated, which silently empties palette masks (DAVIS-2017's).
- **probabilities at another size** (:func:`resize_proba` for tensors, :func:`labels_at` for arrays):
  bilinear, ``align_corners=False``; results at the ground truth's size come from resizing the
  probabilities, never the masks. The array twin uses OpenCV (a third of the time of torch on a CPU)
  and gives the argmax of the same bilinear probabilities (tested equal).
- **foreground of L masks** (:func:`exceptbiggest` on tensors, :func:`exceptbiggest_labels` on label
  arrays, tested equal): every pixel whose argmax label is not the most frequent label of its frame;
  argmax ties go to the lowest label, and so do ties of the counts. :func:`fair` uses the ground truth
  (a label is foreground when more than half of its argmax pixels lie inside it): not valid for
  benchmarks, kept for the authors' experiments.

Conventions: pred (B, L, I, J) or (L, I, J) softmax over L; masks (B, I, J) or (H, W) bool.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BINARY_METHODS = ("exceptbiggest", "fair")


def is_foreground(values: np.ndarray) -> np.ndarray:
    """A ground-truth plane (H, W) of any integer or float type → bool (H, W): True where > 0."""
    return np.asarray(values) > 0


def decode_mask(im: Any) -> np.ndarray:
    """A ground-truth mask as a PIL image of any mode → bool (H, W), True where the value is > 0.

    Palette images give their indices (0 = background); multi-channel images are foreground where
    any colour channel is > 0, an alpha channel ignored. Raises ValueError (without the file's name:
    the callers add it) for an image that is not one (H, W) plane.
    """
    arr = np.asarray(im)
    if arr.ndim == 3:
        if im.mode in ("RGBA", "LA", "PA"):
            arr = arr[..., :-1]
        arr = is_foreground(arr).any(-1)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"unexpected mask shape {arr.shape}; expected an (H, W) mask")
    return is_foreground(arr)


def check_binary_method(binary_method: str) -> str:
    if binary_method not in BINARY_METHODS:
        raise ValueError(f"binary_method must be one of {list(BINARY_METHODS)}, got {binary_method!r}")
    return binary_method


def _check_pred(pred) -> None:
    if pred.dim() != 4:
        raise ValueError(f"expected pred (B, L, I, J), got {tuple(pred.shape)}")


def exceptbiggest(pred):
    """pred (B, L, I, J) tensor → (B, I, J) bool: pixels not in the most frequent argmax label."""
    import torch

    _check_pred(pred)
    labels = pred.max(1).indices  # (B, I, J); = argmax(1), whose CPU kernel is ~20x slower
    counts = torch.nn.functional.one_hot(labels.flatten(1), pred.shape[1]).sum(1)  # (B, L)
    biggest = counts.argmax(1)  # ties go to the lowest label, deterministically
    return labels != biggest[:, None, None]


def exceptbiggest_labels(labels: np.ndarray, n_labels: int) -> np.ndarray:
    """The array twin of :func:`exceptbiggest`, on argmax labels (H, W) int in [0, n_labels) → (H, W)
    bool (counted by a histogram; a tie goes to the lower label, as ``argmax`` does)."""
    if n_labels == 2:  # a count of ones: np.bincount would first copy the labels to int64
        ones = np.count_nonzero(labels)
        return labels != (1 if 2 * ones > labels.size else 0)
    return labels != np.bincount(labels.ravel(), minlength=n_labels).argmax()


def fair(pred, gt):
    """pred (B, L, I, J), gt (B, I, J) → (B, I, J) bool: the labels mostly inside the ground truth."""
    import torch

    _check_pred(pred)
    if gt.shape != pred.shape[:1] + pred.shape[2:]:
        raise ValueError(f"expected GtMask (B, I, J) = {tuple(pred.shape[:1] + pred.shape[2:])}, "
                         f"got {tuple(gt.shape)}")
    L = pred.shape[1]
    onehot = torch.nn.functional.one_hot(pred.max(1).indices.flatten(1), L)  # (B, N, L)
    inside = (onehot * (gt.flatten(1) > 0)[..., None]).sum(1)  # (B, L)
    total = onehot.sum(1)
    fg_labels = 2 * inside > total  # strictly more than half
    return (onehot * fg_labels[:, None, :]).sum(-1).reshape(gt.shape).bool()


def resize_proba(proba, size: tuple[int, int]):
    """Probabilities (L, I, J), array or tensor → float32 tensor (L, H, W), bilinear with
    ``align_corners=False`` (unchanged when already at ``size``)."""
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(np.asarray(proba) if not isinstance(proba, torch.Tensor) else proba, dtype=torch.float32)
    if t.dim() != 3:
        raise ValueError(f"expected probabilities (L, I, J), got shape {tuple(t.shape)}")
    size = (int(size[0]), int(size[1]))
    if tuple(t.shape[1:]) == size:
        return t
    return F.interpolate(t[None], size=size, mode="bilinear", align_corners=False)[0]


def scores_at(pred: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """pred (L, I, J) float32 array → the probabilities resized bilinearly to ``size`` = (H, W): (H, W)
    p1 − p0 when L = 2 (one channel decides), else (H, W, L)."""
    import cv2

    H, W = size
    L = pred.shape[0]
    if L == 2:
        return cv2.resize(np.ascontiguousarray(pred[1] - pred[0]), (W, H), interpolation=cv2.INTER_LINEAR)
    up = cv2.resize(np.ascontiguousarray(pred.transpose(1, 2, 0)), (W, H), interpolation=cv2.INTER_LINEAR)
    return up.reshape(H, W, L)


def labels_of(scores: np.ndarray, n_labels: int) -> np.ndarray:
    """The argmax labels (H, W) of per-pixel scores: (H, W) p1 − p0 when ``n_labels`` = 2 (its sign; ties
    go to label 0, as argmax does), else (H, W, L) probabilities."""
    return (scores > 0).astype(np.uint8) if n_labels == 2 else scores.argmax(-1)


def labels_at(pred: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """pred (L, I, J) float32 array → the argmax label (H, W) of the probabilities resized bilinearly
    to ``size`` (the array twin of ``resize_proba(pred, size).argmax(0)``; :func:`labels_of`)."""
    return labels_of(scores_at(pred, size), pred.shape[0])


def foreground_at(pred: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """pred (L, I, J) array → ``exceptbiggest`` foreground (H, W) bool of the probabilities at ``size``."""
    return exceptbiggest_labels(labels_at(pred, size), pred.shape[0])
