"""``Binariser``: a batch's L soft masks → one binary foreground, by the rules of :mod:`emseg.core.masks`
and, on request, the motion-significance test of :mod:`emseg.core.significance`.

The model's validation and test steps, ``model_eval.py`` and the benchmark evaluation binarise through
it; the authors' name for it is ``evaluationmodule.BinarisationModule.BinarisationModule``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from emseg.core import masks
from emseg.core.masks import BINARY_METHODS
from emseg.core.significance import check_min_motion, significant_foregrounds

__all__ = ["BINARY_METHODS", "Binariser"]


class Binariser:
    """``binarise(d)`` adds ``'PredMask'`` (B, I, J) bool to a batch holding ``'Pred'`` (B, L, I, J).

    - ``exceptbiggest`` (no ground truth needed): foreground is every pixel whose argmax label is
      not the most frequent label of its frame.
    - ``fair`` (uses ``'GtMask'``; not valid for benchmarks): a label is foreground when more than
      half of its argmax pixels lie inside the ground-truth mask.

    With ``min_motion > 0`` (off by default, so published numbers stay comparable) the foreground is
    then kept only where it moves unlike the background (:mod:`emseg.core.significance`, which reads
    the batch's ``'Flow'`` (B, 2, I, J)).
    """

    def __init__(self, binary_method: str = "exceptbiggest", min_motion: float = 0.0) -> None:
        self.binary_method = masks.check_binary_method(binary_method)
        self.min_motion = check_min_motion(min_motion)

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
        if Flow.shape[:1] + Flow.shape[2:] != PredMask.shape or Flow.shape[1] != 2:
            raise ValueError(f"expected Flow (B, 2, I, J) on PredMask's grid {tuple(PredMask.shape)}, "
                             f"got {tuple(Flow.shape)}")
        # the batch's background fits in one solver call, as in segment.py
        sigs = significant_foregrounds(list(Pred.detach().float().cpu()), list(Flow.detach().float().cpu()),
                                       foregrounds=list(PredMask.cpu().numpy()), min_motion=min_motion)
        return torch.stack([torch.from_numpy(s.foreground) for s in sigs]).to(PredMask.device)

    exceptbiggest = staticmethod(masks.exceptbiggest)
    fair = staticmethod(masks.fair)
