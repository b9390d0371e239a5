"""Per-frame predictions of a network over a stream of frames: one frame at a time (the frame model)
or, for a temporal model, each frame from the clip of T consecutive frames centred on it.

A temporal checkpoint (``clip_length`` T > 1) reads clips (B, 2, T, I, J) and gives T frames of masks
(B, L, T, I, J). Over a run of consecutive frames, frame t takes its masks from the window
t − ⌊(T − 1)/2⌋ … t + ⌈(T − 1)/2⌉, each index clamped into the run (its first or last frame repeated at its
ends), at the window's centre, so every frame gets exactly one prediction, as ``model_eval.py`` gives it
(one rule: ``evaluationmodule.clip_frames.clip_window``). Mask identities across windows are then matched
frame to frame by the temporal stage, as for a frame model. A window is one network call, so a temporal
model costs one call per frame, like a frame model; the stream holds at most T frames' inputs back (memory
flat in the video's length) and frames come out ⌈(T − 1)/2⌉ frames late.

Conventions: flows (n, 2, I, J) the network's inputs; predictions (L, I, J) softmax over L.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import torch
from torch import Tensor

from evaluationmodule.clip_frames import clip_window


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
        self.after = self.T - 1 - self.before
        self._inputs: deque[Tensor] = deque()  # the run's last inputs (2, I, J), at most T
        self._first = 0   # the run index of _inputs[0]
        self._next = 0    # the run index of the next frame to decide
        self._n = 0       # frames pushed in this run

    def push(self, flows: Tensor) -> list[Tensor]:
        clips = []
        for f in flows:
            self._inputs.append(f)
            self._n += 1
            # frame t's window ends at t + after: decide the frames whose window is now complete
            while self._next + self.after <= self._n - 1:
                clips.append(self._clip(self._next, n_frames=None))
                self._next += 1
            while len(self._inputs) > self.T:
                self._inputs.popleft()
                self._first += 1
        return self._run(clips) if clips else []

    def restart(self) -> list[Tensor]:
        clips = []
        while self._next < self._n:
            clips.append(self._clip(self._next, n_frames=self._n))
            self._next += 1
        out = self._run(clips) if clips else []
        self._inputs.clear()
        self._first = self._next = self._n = 0
        return out

    def _clip(self, t: int, n_frames: int | None) -> Tensor:
        """(2, T, I, J): frame t's window (``clip_window``; ``n_frames`` None while the run goes on past it)."""
        positions, _ = clip_window(t, n_frames or t + self.after + 1, self.T)
        return torch.stack([self._inputs[k - self._first] for k in positions], dim=1)

    def _run(self, clips: list[Tensor]) -> list[Tensor]:
        """The clips' central frames' predictions (every frame sits at its clip's centre, ``before``)."""
        pred = self.predict_clips(torch.stack(clips))  # (n, L, T, I, J)
        if pred.dim() != 5 or pred.shape[2] != self.T:
            raise ValueError(f"expected the temporal network's output (n, L, {self.T}, I, J), got {tuple(pred.shape)}")
        return list(pred[:, :, self.before])


def frame_windows(model, predict: Callable[[Tensor], Tensor]) -> FrameWindows | ClipWindows:
    """The stream of ``model``'s predictions: :class:`ClipWindows` for a temporal model (its
    ``clip_length`` T > 1; ``predict`` then takes clips (n, 2, T, I, J)), else
    :class:`FrameWindows`."""
    T = int(getattr(model, "clip_length", 1))
    return ClipWindows(predict, T) if T > 1 else FrameWindows(predict)
