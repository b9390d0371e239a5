"""From L soft masks to one binary foreground mask."""

from __future__ import annotations

import torch
from torch import Tensor

BINARY_METHODS = ("exceptbiggest", "fair")


class BinarisationModule:
    """``binarise(d)`` adds ``'PredMask'`` (B, I, J) bool to a batch holding ``'Pred'`` (B, L, I, J).

    - ``exceptbiggest`` (no ground truth needed): foreground is every pixel whose argmax label is
      not the most frequent label of its frame.
    - ``fair`` (uses ``'GtMask'``; not valid for benchmarks): a label is foreground when more than
      half of its argmax pixels lie inside the ground-truth mask.
    """

    def __init__(self, binary_method: str = "exceptbiggest") -> None:
        if binary_method not in BINARY_METHODS:
            raise ValueError(f"binary_method must be one of {list(BINARY_METHODS)}, got {binary_method!r}")
        self.binary_method = binary_method

    def binarise(self, d: dict) -> dict:
        if "Pred" not in d:
            raise KeyError("binarise needs the batch key 'Pred' (B, L, I, J)")
        if self.binary_method == "fair":
            if "GtMask" not in d:
                raise KeyError("binary_method 'fair' needs the ground truth 'GtMask' (B, I, J) in the batch")
            d["PredMask"] = self.fair(d["Pred"], d["GtMask"])
        else:
            d["PredMask"] = self.exceptbiggest(d["Pred"])
        return d

    @staticmethod
    def _check(Pred: Tensor) -> None:
        if Pred.dim() != 4:
            raise ValueError(f"expected Pred (B, L, I, J), got {tuple(Pred.shape)}")

    @staticmethod
    def exceptbiggest(Pred: Tensor) -> Tensor:
        """Pred (B, L, I, J) → (B, I, J) bool: pixels not in the most frequent argmax label."""
        BinarisationModule._check(Pred)
        labels = Pred.argmax(1)  # (B, I, J)
        counts = torch.nn.functional.one_hot(labels.flatten(1), Pred.shape[1]).sum(1)  # (B, L)
        biggest = counts.argmax(1)  # ties go to the lowest label, deterministically
        return labels != biggest[:, None, None]

    @staticmethod
    def fair(Pred: Tensor, GtMask: Tensor) -> Tensor:
        """Pred (B, L, I, J), GtMask (B, I, J) → (B, I, J) bool: labels mostly inside the truth."""
        BinarisationModule._check(Pred)
        if GtMask.shape != Pred.shape[:1] + Pred.shape[2:]:
            raise ValueError(f"expected GtMask (B, I, J) = {tuple(Pred.shape[:1] + Pred.shape[2:])}, "
                             f"got {tuple(GtMask.shape)}")
        L = Pred.shape[1]
        onehot = torch.nn.functional.one_hot(Pred.argmax(1).flatten(1), L)  # (B, N, L)
        inside = (onehot * (GtMask.flatten(1) > 0)[..., None]).sum(1)  # (B, L)
        total = onehot.sum(1)
        fg_labels = 2 * inside > total  # strictly more than half
        return (onehot * fg_labels[:, None, :]).sum(-1).reshape(GtMask.shape).bool()
