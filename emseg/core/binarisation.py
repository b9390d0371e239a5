"""``Binariser``: a batch's L soft masks → one binary foreground, by the rules of :mod:`emseg.core.masks`
and, on request, the motion-significance test of :mod:`emseg.core.significance`.

The model's validation and test steps, ``model_eval.py`` and the benchmark evaluation binarise through
it; the authors' name for it is ``evaluationmodule.BinarisationModule.BinarisationModule``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from emseg.core import masks
from emseg.core.datasplit import sequence_folder
from emseg.core.masks import BINARY_METHODS
from emseg.core.significance import check_min_motion, significant_foregrounds
from emseg.core.tracks import DEFAULT_MEMORY, TrackGate, kept_foreground

__all__ = ["BINARY_METHODS", "Binariser"]


class Binariser:
    """``binarise(d)`` adds ``'PredMask'`` (B, I, J) bool to a batch holding ``'Pred'`` (B, L, I, J).

    - ``exceptbiggest`` (no ground truth needed): foreground is every pixel whose argmax label is
      not the most frequent label of its frame.
    - ``fair`` (uses ``'GtMask'``; not valid for benchmarks): a label is foreground when more than
      half of its argmax pixels lie inside the ground-truth mask.

    With ``min_motion > 0`` (off by default, so published numbers stay comparable) the foreground is
    then kept only where it moves unlike the background (:mod:`emseg.core.significance`, which reads
    the batch's ``'Flow'`` (B, 2, I, J)). With ``track_frames > 1`` too, regions are judged over their
    tracks (:mod:`emseg.core.tracks`), causally: frames must come in order, a sequence being the
    folder of ``'FlowPath'``; the flow back to the previous frame is taken as minus its flow, as for
    ``segment.py --flows``. The binariser then holds each sequence's last frames between batches.
    """

    def __init__(self, binary_method: str = "exceptbiggest", min_motion: float = 0.0, track_frames: int = 1) -> None:
        self.binary_method = masks.check_binary_method(binary_method)
        self.min_motion = check_min_motion(min_motion)
        if isinstance(track_frames, bool) or int(track_frames) != track_frames or not 1 <= track_frames <= 7:
            raise ValueError(f"track_frames must be an integer in 1 … 7, got {track_frames!r}")
        self.track_frames = int(track_frames)
        self._gate: TrackGate | None = None
        self._sequence: str | None = None
        self._last_flow: Tensor | None = None

    def binarise(self, d: dict) -> dict:
        if "Pred" not in d:
            raise KeyError("binarise needs the batch key 'Pred' (B, L, I, J)")
        if self.binary_method == "fair":
            if "GtMask" not in d:
                raise KeyError("binary_method 'fair' needs the ground truth 'GtMask' (B, I, J) in the batch")
            d["PredMask"] = self.fair(d["Pred"], d["GtMask"])
        else:
            d["PredMask"] = self.exceptbiggest(d["Pred"])
        if self.min_motion > 0 and self.track_frames > 1:
            d["PredMask"] = self._tracked(d)
        elif self.min_motion > 0:
            d["PredMask"] = self.significant(d["Pred"], d["Flow"], d["PredMask"], self.min_motion)
        return d

    def _tracked(self, d: dict) -> Tensor:
        if "FlowPath" not in d:
            raise KeyError("track_frames > 1 needs the batch key 'FlowPath' (one path per frame, frames in order): "
                           "a sequence is the folder of its flows")
        pred, flow, fg = d["Pred"], d["Flow"], d["PredMask"]
        sigs = significant_foregrounds(list(pred.detach().float().cpu()), list(flow.detach().float().cpu()),
                                       foregrounds=list(fg.cpu().numpy()), min_motion=self.min_motion)
        out = []
        for path, f, sig in zip(d["FlowPath"], flow.detach().float().cpu(), sigs):
            sequence = sequence_folder(path)
            if sequence != self._sequence or self._gate is None:
                self._gate = TrackGate(min_frames=self.track_frames, horizon=0, memory=2 * DEFAULT_MEMORY)
                self._sequence, self._last_flow = sequence, None
            back = None if self._last_flow is None else -self._last_flow
            ((_, keep),) = self._gate.push(sig.regions, len(sig.kept) + 1, sig.scores(), back)
            self._last_flow = f
            out.append(torch.from_numpy(kept_foreground(sig.regions, keep)))
        return torch.stack(out).to(fg.device)

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
