"""Per-frame predictions of a temporal model over a stream (emseg/app/segment/windows.py): every frame
gets exactly one prediction, from the window model_eval.py would use, whatever the batching."""

from __future__ import annotations

import pytest
import torch

from emseg.app.segment.windows import ClipWindows, FrameWindows
from evaluationmodule.clip_frames import clip_window


def _stub(clips: torch.Tensor) -> torch.Tensor:
    """(n, 2, T, I, J) → (n, 2, T, I, J): mask 0 carries the frame's own input value, mask 1 the value of
    the clip's first frame, so an output says which frame and which window it came from."""
    first = clips[:, 0, :1].expand_as(clips[:, 0])
    return torch.stack([clips[:, 0], first], dim=1)


def _stream(T: int, n: int, batches: list[int]) -> list[tuple[int, int]]:
    w = ClipWindows(_stub, T)
    flows = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 2, 3, 4).clone()
    out, k = [], 0
    for b in batches:
        out += w.push(flows[k:k + b])
        k += b
    out += w.restart()
    return [(int(p[0, 0, 0]), int(p[1, 0, 0])) for p in out]


@pytest.mark.parametrize("T", [2, 3, 4, 5])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 12])
def test_each_frame_once_from_model_evals_window(T, n):
    for batches in ([n], [1] * n, [2] * (n // 2) + [n % 2], [3] * (n // 3) + [n % 3]):
        got = _stream(T, n, [b for b in batches if b])
        assert [f for f, _ in got] == list(range(n))  # every frame once, in order
        for t, (_, start) in enumerate(got):
            positions, _ = clip_window(t, n, T)
            assert start == positions[0], (T, n, batches, t)


def test_frames_come_out_at_most_half_a_window_late_and_memory_stays_flat():
    w = ClipWindows(_stub, 5)
    flows = torch.zeros(1, 2, 3, 4)
    decided = []
    for t in range(10):
        decided.append(len(w.push(flows + t)))
        assert len(w._inputs) <= 5
    assert decided == [0, 0, 1, 1, 1, 1, 1, 1, 1, 1]  # frame t is out once frame t + 2 is in
    assert len(w.restart()) == 2


def _spied(T: int, n: int) -> tuple[list[list[float]], list[torch.Tensor]]:
    """The clips a ClipWindows of length T sends to the network over a run of n frames (frame t's input
    holds t), and its outputs: all pushed at once, then the run ended."""
    seen: list[list[float]] = []

    def spy(clips: torch.Tensor) -> torch.Tensor:
        seen.extend(clips[:, 0, :, 0, 0].tolist())
        return _stub(clips)

    w = ClipWindows(spy, T)
    out = w.push(torch.arange(float(n))[:, None, None, None].expand(n, 2, 1, 1).clone())
    return seen, out + w.restart()


def test_a_run_shorter_than_a_clip_repeats_its_end_frames_around_each_frame():
    seen, out = _spied(4, 2)
    assert len(out) == 2
    # each frame at the window's centre (place 1 of 4): frames -1 … 2 and 0 … 3, clamped into 0 … 1
    assert seen == [[0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0]]


def test_each_frame_sits_at_its_windows_centre():
    seen, out = _spied(3, 5)
    assert seen == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 4]]
    assert [float(p[0, 0, 0]) for p in out] == [0, 1, 2, 3, 4]  # each one's own output: the centre's


def test_frame_windows_and_bad_settings():
    assert len(FrameWindows(lambda f: f * 2).push(torch.ones(3, 2, 4, 4))) == 3
    with pytest.raises(ValueError, match="clip_length >= 2"):
        ClipWindows(_stub, 1)
    w = ClipWindows(lambda c: c[:, :, :1], 3)
    with pytest.raises(ValueError, match=r"expected the temporal network's output \(n, L, 3, I, J\)"):
        w.push(torch.zeros(3, 2, 2, 2))
