"""From L soft masks to one binary foreground mask."""

from __future__ import annotations

import torch
from torch import Tensor

BINARY_METHODS = ("exceptbiggest", "fair")


class Binariser:
    """``binarise(d)`` adds ``'PredMask'`` (B, I, J) bool to a batch holding ``'Pred'`` (B, L, I, J).

    - ``exceptbiggest`` (no ground truth needed): foreground is every pixel whose argmax label is
      not the most frequent label of its frame.
    - ``fair`` (uses ``'GtMask'``; not valid for benchmarks): a label is foreground when more than
      half of its argmax pixels lie inside the ground-truth mask.

    With ``min_motion > 0`` (off by default, so published numbers stay comparable) the foreground is
    then kept only where it moves unlike the background (``emseg.video.motion_significance``, which reads
    the batch's ``'Flow'`` (B, 2, I, J)).
    """

    def __init__(self, binary_method: str = "exceptbiggest", min_motion: float = 0.0) -> None:
        if binary_method not in BINARY_METHODS:
            raise ValueError(f"binary_method must be one of {list(BINARY_METHODS)}, got {binary_method!r}")
        if min_motion < 0:
            raise ValueError(f"min_motion must be >= 0, got {min_motion}")
        self.binary_method = binary_method
        self.min_motion = float(min_motion)

    def binarise(self, d: dict) -> dict:
        if "Pred" not in d:
            raise KeyError("binarise needs the batch key 'Pred' (B, L, I, J)")
        if self.binary_method == "fair":
            if "GtMask" not in d:
                raise KeyError("binary_method 'fair' needs the ground truth 'GtMask' (B, I, J) in the batch")
            d["PredMask"] = self.fair(d["Pred"], d["GtMask"])
        else:
            d["PredMask"] = self.exceptbiggest(d["Pred"])
        if self.min_motion > 0:
            d["PredMask"] = self.significant(d["Pred"], d["Flow"], d["PredMask"], self.min_motion)
        return d

    @staticmethod
    def significant(Pred: Tensor, Flow: Tensor, PredMask: Tensor, min_motion: float) -> Tensor:
        """PredMask (B, I, J) bool → the part of it that moves unlike the background's fitted motion."""
        from emseg.video.motion_significance import significant_foregrounds

        if Flow.shape[:1] + Flow.shape[2:] != PredMask.shape or Flow.shape[1] != 2:
            raise ValueError(f"expected Flow (B, 2, I, J) on PredMask's grid {tuple(PredMask.shape)}, "
                             f"got {tuple(Flow.shape)}")
        # the batch's background fits in one solver call, as in segment.py
        sigs = significant_foregrounds(list(Pred.detach().float().cpu()), list(Flow.detach().float().cpu()),
                                       foregrounds=list(PredMask.cpu().numpy()), min_motion=min_motion)
        return torch.stack([torch.from_numpy(s.foreground) for s in sigs]).to(PredMask.device)

    @staticmethod
    def _check(Pred: Tensor) -> None:
        if Pred.dim() != 4:
            raise ValueError(f"expected Pred (B, L, I, J), got {tuple(Pred.shape)}")

    @staticmethod
    def exceptbiggest(Pred: Tensor) -> Tensor:
        """Pred (B, L, I, J) → (B, I, J) bool: pixels not in the most frequent argmax label."""
        Binariser._check(Pred)
        labels = Pred.max(1).indices  # (B, I, J); = argmax(1), whose CPU kernel is ~20x slower
        counts = torch.nn.functional.one_hot(labels.flatten(1), Pred.shape[1]).sum(1)  # (B, L)
        biggest = counts.argmax(1)  # ties go to the lowest label, deterministically
        return labels != biggest[:, None, None]

    @staticmethod
    def fair(Pred: Tensor, GtMask: Tensor) -> Tensor:
        """Pred (B, L, I, J), GtMask (B, I, J) → (B, I, J) bool: labels mostly inside the truth."""
        Binariser._check(Pred)
        if GtMask.shape != Pred.shape[:1] + Pred.shape[2:]:
            raise ValueError(f"expected GtMask (B, I, J) = {tuple(Pred.shape[:1] + Pred.shape[2:])}, "
                             f"got {tuple(GtMask.shape)}")
        L = Pred.shape[1]
        onehot = torch.nn.functional.one_hot(Pred.max(1).indices.flatten(1), L)  # (B, N, L)
        inside = (onehot * (GtMask.flatten(1) > 0)[..., None]).sum(1)  # (B, L)
        total = onehot.sum(1)
        fg_labels = 2 * inside > total  # strictly more than half
        return (onehot * fg_labels[:, None, :]).sum(-1).reshape(GtMask.shape).bool()


#: the authors' name for it (their scripts and snippets import it)
BinarisationModule = Binariser
