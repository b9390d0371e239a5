"""--gap on flow files (issue 24): consecutive flows composed into the flow over k frames
(emseg/video/compose.py), read by the network and the significance test of segment.py --flows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from emseg.app.segment import app as seg_app
from emseg.app.segment.app import list_flows, segment_flows
from emseg.app.segment.options import SegmentOptions
from emseg.app.segment.stages import SequenceStages, Step
from emseg.video.compose import compose_flows


# ------------------------------------------------------------------------------------------------ composition
def _const(u: float, v: float, I: int = 30, J: int = 40) -> torch.Tensor:  # noqa: E741
    f = torch.empty(1, 2, I, J)
    f[:, 0], f[:, 1] = u, v
    return f


def test_a_constant_translation_composes_to_k_times_itself_everywhere():
    f = _const(1.5, -0.75)
    for k in (1, 2, 4, 7):
        out, steps = compose_flows([f] * k)
        torch.testing.assert_close(out, k * f, rtol=0, atol=1e-5)  # inside and by the fallback alike
        assert steps.shape == (1, 30, 40) and steps.dtype == torch.int64
        assert steps.min() >= 1 and steps.max() == k
        assert steps[0, 10, 10] == k  # an inner pixel's chain stays in the frame
    # the chains that leave: along the top (v < 0) and the right (u > 0) only
    _, steps = compose_flows([f] * 4)
    assert (steps[0, 0] == 1).all() and (steps[0, 5:, :30] == 4).all()
    out, steps = compose_flows(torch.stack([f] * 3))  # one tensor (k, B, 2, I, J) too
    torch.testing.assert_close(out, 3 * f, rtol=0, atol=1e-5)


def _affine(A: np.ndarray, b: np.ndarray, I: int, J: int) -> torch.Tensor:  # noqa: E741, N803
    """The flow (1, 2, I, J) p ↦ A p + b, p = (x = column, y = row)."""
    y, x = np.mgrid[0:I, 0:J].astype(np.float64)
    u = A[0, 0] * x + A[0, 1] * y + b[0]
    v = A[1, 0] * x + A[1, 1] * y + b[1]
    return torch.from_numpy(np.stack([u, v])[None].astype(np.float32))


def test_affine_flows_compose_to_the_analytic_k_step_map():
    """A different affine motion each frame (a zoom, a rotation, a shear and a drift): the chain
    p_{j+1} = p_j + A_j p_j + b_j in closed form. Bilinear sampling reproduces an affine field exactly,
    so the composition matches it to float32 rounding wherever the chain stays in the frame."""
    I, J = 48, 64  # noqa: E741
    rng = np.random.default_rng(0)
    As = [rng.normal(0, 0.02, (2, 2)) for _ in range(5)]
    bs = [rng.normal(0, 1.0, 2) for _ in range(5)]
    flows = [_affine(A, b, I, J) for A, b in zip(As, bs)]
    y, x = np.mgrid[0:I, 0:J].astype(np.float64)
    p = np.stack([x, y])
    for k in (2, 3, 5):
        out, steps = compose_flows(flows[:k])
        q = p.copy()
        for A, b in zip(As[:k], bs[:k]):
            q = q + np.einsum("ab,bij->aij", A, q) + b[:, None, None]
        expected = torch.from_numpy((q - p)[None].astype(np.float32))
        full = steps[0] == k
        assert full.float().mean() > 0.6  # most chains stay in the frame
        err = (out - expected).abs().amax(1)[0]
        assert err[full].max() < 1e-3, float(err[full].max())
        # the motion is far from k × one step's: composing matters
        assert (expected - k * flows[0]).abs().amax(1)[0][full].max() > 0.5


def test_a_chain_that_leaves_the_frame_extrapolates_what_it_composed():
    """u = 2, 3, 1, 5 px/frame on a 20-column frame: from x = 12 the chain stays in (12 → 14 → 17 → 18,
    11 px over 4 frames); from x = 15 it reaches x = 20 > 19 after two flows (5 px), extrapolated to
    4/2 × 5 = 10 px; from x = 18 it leaves after one, 4 × 2 = 8 px."""
    flows = [_const(u, 0.0, I=6, J=20) for u in (2.0, 3.0, 1.0, 5.0)]
    out, steps = compose_flows(flows)
    u, n = out[0, 0, 3], steps[0, 3]
    assert (n[12].item(), u[12].item()) == (4, pytest.approx(11.0))
    assert (n[15].item(), u[15].item()) == (2, pytest.approx(10.0))
    assert (n[18].item(), u[18].item()) == (1, pytest.approx(8.0))
    assert torch.all(out[0, 1] == 0)


def test_compose_flows_refuses_bad_input():
    f = _const(1.0, 0.0)
    with pytest.raises(ValueError, match="at least one"):
        compose_flows([])
    with pytest.raises(ValueError, match=r"\(B, 2, I, J\)"):
        compose_flows([f[0]])
    with pytest.raises(ValueError, match="share one grid"):
        compose_flows([f, _const(1.0, 0.0, I=31)])
    with pytest.raises(ValueError, match="floating-point"):
        compose_flows([f.long()])
    with pytest.raises(TypeError, match="torch.Tensor"):
        compose_flows([f, np.zeros((1, 2, 30, 40), np.float32)])


# ------------------------------------------------------------------------------------------------ --flows --gap
I, J = 48, 80  # noqa: E741
OBJ_ROWS, OBJ_COLS = slice(14, 30), (24, 44)  # the object at frame 0; it moves right
MASK = np.zeros((I, J), bool)
MASK[16:28, 28:42] = True  # inside the object on every frame below


class _Stub:
    """What ``_segment_flows`` reads of a model: its grid (here the flows' own, no resampling)."""

    hparams = {"img_size": [I, J]}


def _known_mask_predictor(seen: list | None = None):
    def predict(flows: torch.Tensor) -> torch.Tensor:
        if seen is not None:
            seen.extend(flows.clone())
        m = torch.from_numpy(MASK).float()
        return (torch.stack([1 - m, m]) * 0.9 + 0.05)[None].repeat(flows.shape[0], 1, 1, 1)
    return predict


def _slow_object_flows(folder: Path, n: int, speed: float = 0.3, noise: float = 0.08) -> list[Path]:
    """A box moving ``speed`` px/frame right over a static background, each flow with independent
    estimator noise: flow t is the box's motion at its place in frame t."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    cols = np.arange(J)
    for t in range(n):
        f = rng.normal(0, noise, (I, J, 2)).astype(np.float32)
        x0, x1 = OBJ_COLS[0] + speed * t, OBJ_COLS[1] + speed * t
        inside = (cols >= x0) & (cols < x1)
        f[OBJ_ROWS, inside, 0] += speed
        np.save(folder / f"{t:05d}.npy", f)
    return list_flows(flows=str(folder))


def _binaries(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.array(Image.open(p)) for p in sorted(out.glob("*_binary.png"))}


def test_a_slow_object_in_flow_files_is_kept_over_a_gap_and_dropped_in_one_frame(tmp_path, monkeypatch):
    """0.3 px/frame is under the significance floor (0.5 px) in one flow; composed over 4 flows it is
    1.2 px against noise about √4 times one flow's, and kept."""
    paths = _slow_object_flows(tmp_path / "flows", 10)
    monkeypatch.setattr(seg_app, "make_predictor", lambda *a, **k: _known_mask_predictor())
    res = {}
    for gap in (1, 4):
        # refine=False: the masks as the stages leave them (refined, they would follow the flow's colours)
        opts = SegmentOptions(gap=gap, progress=False, animation=False, refine=False)
        r = segment_flows(_Stub(), paths, tmp_path / f"g{gap}", opts=opts)
        assert r["n_flows"] == 10
        res[gap] = _binaries(tmp_path / f"g{gap}")
    assert len(res[1]) == len(res[4]) == 10
    assert not any(m.any() for m in res[1].values())  # one frame: dropped everywhere
    kept = [(m[MASK] > 0).mean() for m in res[4].values()]
    assert min(kept[:7]) > 0.95, kept  # every frame with a chain of 4 flows keeps it
    assert not any((m[~MASK] > 0).any() for m in res[4].values())


def test_an_unreadable_file_breaks_the_chain(tmp_path, monkeypatch):
    """File t holds u = 0.1 · (t + 1) everywhere; file 3 is unreadable. The network's input tells which
    flows were composed: frame 1's run ends at file 2 (k = 2), frame 4's starts after the break."""
    folder = tmp_path / "flows"
    folder.mkdir()
    for t in range(8):
        f = np.zeros((I, J, 2), np.float32)
        f[..., 0] = 0.1 * (t + 1)
        np.save(folder / f"{t:05d}.npy", f)
    (folder / "00003.npy").write_bytes(b"not a numpy file")
    seen: list[torch.Tensor] = []
    monkeypatch.setattr(seg_app, "make_predictor", lambda *a, **k: _known_mask_predictor(seen))
    pushed: list[Step] = []
    push_many = SequenceStages.push_many

    def recording(self, steps):
        pushed.extend(steps)
        return push_many(self, steps)

    monkeypatch.setattr(SequenceStages, "push_many", recording)
    opts = SegmentOptions(gap=4, progress=False, animation=False, batch_size=3)
    r = segment_flows(_Stub(), list_flows(flows=str(folder)), tmp_path / "o", opts=opts)
    assert r["n_flows"] == 7 and r["n_skipped"] == 1
    names = [s.name for s in pushed]
    assert names == ["00000", "00001", "00002", "00004", "00005", "00006", "00007"]
    assert sorted(_binaries(tmp_path / "o")) == [f"{n}_binary.png" for n in names]
    u = [float(x[0, I // 2, 10]) for x in seen]  # an inner pixel (its chains stay in the frame)
    sums = {"00000": 0.1 + 0.2 + 0.3, "00001": 0.2 + 0.3, "00002": 0.3,  # the run 0–2: k = 3, 2, 1
            "00004": 0.5 + 0.6 + 0.7 + 0.8, "00005": 0.6 + 0.7 + 0.8, "00006": 0.7 + 0.8, "00007": 0.8}
    assert u == pytest.approx([sums[n] for n in names], abs=1e-5)
    # the temporal stages see the break too: no link from frame 4 back to frame 2
    assert [s.to_prev is None for s in pushed] == [True, False, False, True, False, False, False]
    # composed frames carry the confidence of their chains (1 inside), a single flow none
    assert [s.conf_in is None for s in pushed] == [False, False, True, False, False, False, True]
    assert float(pushed[0].conf_in[I // 2, 10]) == 1.0


def _old_segment_flows_inputs(paths: list[Path], img_size) -> list[torch.Tensor]:
    """What the network read before --gap applied to flow files: each flow resized, not rescaled."""
    out = []
    for p in paths:
        f = torch.from_numpy(np.ascontiguousarray(np.load(p))).permute(2, 0, 1)[None].float()
        out.append(F.interpolate(f, size=img_size, mode="bilinear", align_corners=False)[0])
    return out


def test_gap_1_is_the_plain_per_frame_pipeline(tmp_path, small_ckpt, monkeypatch):
    """--gap 1: the network reads each file's own flow, bit for bit, in the same batches, and the
    masks and probabilities equal those of a gap that no run is long enough for (each frame alone)."""
    from emseg.app.segment.model import load_segmenter

    paths = _slow_object_flows(tmp_path / "flows", 7, speed=1.5)
    model = load_segmenter(small_ckpt, device="cpu")
    batches: list[torch.Tensor] = []
    make = seg_app.make_predictor

    def recording(*a, **k):
        predict = make(*a, **k)

        def run(flows):
            batches.append(flows.clone())
            return predict(flows)
        return run

    monkeypatch.setattr(seg_app, "make_predictor", recording)
    opts = SegmentOptions(gap=1, progress=False, animation=False, batch_size=3, save_proba=True, backend="torch")
    segment_flows(model, paths, tmp_path / "g1", opts=opts)
    assert [len(b) for b in batches] == [3, 3, 1]
    expected = _old_segment_flows_inputs(paths, tuple(model.hparams["img_size"]))
    assert torch.equal(torch.cat(batches), torch.stack(expected))
    # every file unreadable but one in two: no run longer than one flow, so --gap 4 is --gap 1
    lone = tmp_path / "lone"
    lone.mkdir()
    for i, p in enumerate(paths):
        (lone / p.name).write_bytes(p.read_bytes() if i % 2 == 0 else b"broken")
    outs = {}
    for gap in (1, 4):
        opts = SegmentOptions(gap=gap, progress=False, animation=False, batch_size=3, save_proba=True,
                              backend="torch")
        segment_flows(model, list_flows(flows=str(lone)), tmp_path / f"lone{gap}", opts=opts)
        outs[gap] = {p.name: p.read_bytes() for p in sorted((tmp_path / f"lone{gap}").glob("0*"))}
    assert len(outs[1]) == 8 and outs[1] == outs[4]  # 4 frames × (binary, proba)


def test_gap_defaults_by_source_unless_given(tmp_path, monkeypatch):
    import segment
    from emseg.app.segment.options import FLOWS_GAP, VIDEO_GAP
    from emseg.core import hparams as H

    def gap_of(*argv: str) -> int:
        return segment.options_of(segment.build_parser().parse_args([*argv, "--out", "o"])).gap

    assert (VIDEO_GAP, FLOWS_GAP) == (4, 2)  # chosen on the video benchmark's dev split (docs/METHOD.md)
    assert gap_of("--video", "x.mp4") == VIDEO_GAP
    assert gap_of("--flows", "d") == gap_of("--flow", "x.flo") == FLOWS_GAP
    assert gap_of("--flows", "d", "--gap", "4") == 4 and gap_of("--video", "x.mp4", "--gap", "1") == 1
    assert SegmentOptions().gap == VIDEO_GAP
    # the help states the two defaults: one definition, in options.py
    help_default = H.spec_map(*H.SEGMENT_GROUPS)["gap"].meta["default_help"]
    assert help_default == f"{VIDEO_GAP} for --video, {FLOWS_GAP} for flow files"
    # segment_flows without options: the flow files' default
    paths = _slow_object_flows(tmp_path / "flows", 3)
    monkeypatch.setattr(seg_app, "make_predictor", lambda *a, **k: _known_mask_predictor())
    segment_flows(_Stub(), paths, tmp_path / "o", gif=False, progress=False)
    import json

    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["options"]["gap"] == FLOWS_GAP
