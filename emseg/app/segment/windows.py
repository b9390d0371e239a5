"""Per-frame predictions of a network over a stream of frames: one frame at a time (the frame model)
or, for a temporal model, each frame from the clip of T consecutive frames it is most central in.

A temporal checkpoint (``clip_length`` T > 1) reads clips (B, 2, T, I, J) and gives T frames of masks
(B, L, T, I, J). Over a sequence, frame t takes its masks from the window starting at
t − ⌊(T − 1)/2⌋, shifted inside the run of frames at its ends (the first and last frames sit off
centre), so every frame gets exactly one prediction, as ``model_eval.py`` gives it
(``evaluationmodule/clip_frames.py``); a run shorter than T is padded with its last frame. Mask
identities across windows are then matched frame to frame by the temporal stage, as for a frame model.
A window is one network call, so a temporal model costs one call per frame, like a frame model; the
stream holds at most T frames' inputs back (memory flat in the video's length) and frames come out
⌈(T − 1)/2⌉ frames late.

Conventions: flows (n, 2, I, J) the network's inputs; predictions (L, I, J) softmax over L.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import torch
from torch import Tensor


class FrameWindows:
    """The frame model's stream: each frame predicted alone, at once. ``predict`` (n, 2, I, J) → (n, L, I, J)."""

    def __init__(self, predict: Callable[[Tensor], Tensor]) -> None:
        self.predict = predict

    def push(self, flows: Tensor) -> list[Tensor]:
        """The predictions (L, I, J) of the frames now decided, in order (here: all of ``flows``)."""
        return list(self.predict(flows)) if len(flows) else []

    def restart(self) -> list[Tensor]:
        """End of a run of consecutive frames (a broken sequence or its end): what is still held."""
        return []


class ClipWindows:
    """A temporal model's stream (module docstring): ``predict_clips`` (n, 2, T, I, J) → (n, L, T, I, J).
    ``push`` the frames of a run in order, ``restart`` at its end; both return the predictions of the
    frames now decided, in order."""

    def __init__(self, predict_clips: Callable[[Tensor], Tensor], clip_length: int) -> None:
        if int(clip_length) < 2:
            raise ValueError(f"expected a temporal model's clip_length >= 2, got {clip_length}")
        self.predict_clips = predict_clips
        self.T = int(clip_length)
        self.before = (self.T - 1) // 2  # frames of a window before its central frame
        self._inputs: deque[Tensor] = deque()  # the run's last inputs (2, I, J), at most T
        self._first = 0   # the run index of _inputs[0]
        self._next = 0    # the run index of the next frame to decide
        self._n = 0       # frames pushed in this run

    def push(self, flows: Tensor) -> list[Tensor]:
        out: list[Tensor] = []
        clips, at = [], []
        for f in flows:
            self._inputs.append(f)
            self._n += 1
            # frame t's window starts at max(0, t - before) and needs T frames: decide those it now completes
            while self._n - 1 >= max(self.T - 1, self._next - self.before + self.T - 1):
                start = max(0, self._next - self.before)
                clips.append(self._clip(start))
                at.append(self._next - start)
                self._next += 1
            while len(self._inputs) > self.T:
                self._inputs.popleft()
                self._first += 1
        if clips:
            out += self._run(clips, at)
        return out

    def restart(self) -> list[Tensor]:
        clips, at = [], []
        n = self._n
        while self._next < n:
            start = max(0, min(self._next - self.before, n - self.T))
            clips.append(self._clip(start))
            at.append(self._next - start)
            self._next += 1
        out = self._run(clips, at) if clips else []
        self._inputs.clear()
        self._first = self._next = self._n = 0
        return out

    def _clip(self, start: int) -> Tensor:
        """(2, T, I, J): the run's frames start … start + T − 1, the last one repeated past the run's end."""
        frames = [self._inputs[min(k, self._n - 1) - self._first] for k in range(start, start + self.T)]
        return torch.stack(frames, dim=1)

    def _run(self, clips: list[Tensor], at: list[int]) -> list[Tensor]:
        pred = self.predict_clips(torch.stack(clips))  # (n, L, T, I, J)
        if pred.dim() != 5 or pred.shape[2] != self.T:
            raise ValueError(f"expected the temporal network's output (n, L, {self.T}, I, J), got {tuple(pred.shape)}")
        return [pred[i, :, k] for i, k in enumerate(at)]


def frame_windows(model, predict: Callable[[Tensor], Tensor]) -> FrameWindows | ClipWindows:
    """The stream of ``model``'s predictions: :class:`ClipWindows` for a temporal model (its
    ``clip_length`` T > 1; ``predict`` then takes clips (n, 2, T, I, J)), else
    :class:`FrameWindows`."""
    T = int(getattr(model, "clip_length", 1))
    return ClipWindows(predict, T) if T > 1 else FrameWindows(predict)
