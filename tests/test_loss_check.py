"""``video_benchmark loss_check``: the training loss of the true partition against a run's masks.

Exact cases first (flows built from known motions on a known partition, hand-computed weights and
grids), then the command on a tiny rendered benchmark.
"""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from emseg.app import video_benchmark as vb
from emseg.app.video_benchmark import loss_check as lc
from emseg.core.video_io import iter_frames, open_video
from tests.test_video_benchmark import N, make, textures  # noqa: F401 (textures: the fixture)

I, J = 24, 32


def _square(T: int = 1, shift: int = 0) -> torch.Tensor:
    """(T, I, J) bool: a 10 × 12 square, moved right by ``shift`` + t px in frame t."""
    m = torch.zeros(T, I, J, dtype=torch.bool)
    for t in range(T):
        m[t, 6:16, 8 + shift + t:20 + shift + t] = True
    return m


def _flow(masks: torch.Tensor, linear_in_t: bool) -> torch.Tensor:
    """(2, T, I, J) float64: the background translates by (1, −0.5) px, the square by (−2, 1.5); with
    ``linear_in_t`` both translations grow by 0.25 px per frame (a QuadraticST1 motion, not a frame one)."""
    T = masks.shape[0]
    flow = torch.zeros(2, T, I, J, dtype=torch.float64)
    for t in range(T):
        g = 0.25 * t if linear_in_t else 0.0
        flow[0, t], flow[1, t] = 1.0 + g, -0.5 + g
        flow[0, t][masks[t]], flow[1, t][masks[t]] = -2.0 + g, 1.5 + g
    return flow


def test_the_true_partition_of_an_exact_frame_flow_has_zero_loss_and_a_wrong_one_does_not():
    truth = _square()
    flow = _flow(truth, linear_in_t=False)
    c_true, tt = lc.partition_loss(truth, flow, lc.LossSettings())
    assert c_true == pytest.approx(0.0, abs=1e-6) and tt == 0.0
    c_shift, _ = lc.partition_loss(_square(shift=3), flow, lc.LossSettings())
    c_none, _ = lc.partition_loss(torch.zeros_like(truth), flow, lc.LossSettings())
    assert c_shift > 0.05 and c_none > 0.05
    # one layer, l1: the background's motion is the median; the square's 120 of 768 pixels each miss by
    # |−2 − 1| + |1.5 + 0.5| = 5, so the mean l1 residual is 5 · 120 / 768 (the IRLS's smoothed l1 lands
    # within 0.3 % of the exact l1 optimum)
    assert c_none == pytest.approx(5 * 120 / (I * J), rel=5e-3)


def test_space_time_loss_is_zero_on_a_motion_linear_in_time_and_the_temporal_term_sees_moving_masks():
    truth = _square(T=3)
    flow = _flow(truth, linear_in_t=True)
    settings = lc.LossSettings(clip_length=3)
    c, tt = lc.partition_loss(truth, flow, settings)
    assert c == pytest.approx(0.0, abs=1e-6)
    assert tt > 0  # the square moves one pixel a frame: its edges change label where the flow does not
    frozen = truth[:1].expand(3, I, J)
    c_frozen, tt_frozen = lc.partition_loss(frozen, flow, settings)
    assert tt_frozen == 0.0 and c_frozen > 0.01
    # the frame loss cannot fit a motion changing in time with a constant basis over the clip, the
    # space-time one can: with T = 1 each frame alone is exact again
    for t in range(3):
        assert lc.partition_loss(truth[t:t + 1], flow[:, t:t + 1], lc.LossSettings())[0] == pytest.approx(0, abs=1e-6)


def test_partition_loss_checks_shapes():
    with pytest.raises(ValueError, match=r"expected masks \(T, I, J\) and flow \(2, T, I, J\)"):
        lc.partition_loss(_square(), torch.zeros(2, 2, I, J), lc.LossSettings())


def test_flip_weight_by_hand():
    truth_c, truth_t = np.array([1.0, 1.0, 1.0, 1.0]), np.array([0.0, 0.0, 0.0, 0.0])
    run_c, run_t = np.array([0.8, 0.9, 1.2, 0.5]), np.array([0.1, 0.05, 0.3, 0.0])
    # frames 0, 1, 3 prefer the run: w = 0.2 / 0.1 = 2, 0.1 / 0.05 = 2, 0.5 / 0 → ∞; median 2
    assert lc.flip_weight(truth_c, truth_t, run_c, run_t) == pytest.approx(2.0)
    assert lc.flip_weight(truth_c, truth_t, run_c + 1, run_t) != lc.flip_weight(truth_c, truth_t, run_c + 1, run_t)
    assert lc.flip_weight(truth_c[3:], truth_t[3:], run_c[3:], run_t[3:]) == math.inf


def test_to_grid_is_foreground_where_half_the_cell_is():
    m = np.zeros((4, 4), bool)
    m[0, 0:2] = True          # cell (0, 0): 2 of 4 → foreground
    m[2, 2] = True            # cell (1, 1): 1 of 4 → background
    assert lc.to_grid(m, (2, 2)).tolist() == [[True, False], [False, False]]
    assert lc.to_grid(m, (4, 4)) is not m and (lc.to_grid(m, (4, 4)) == m).all()


def test_settings_are_checked():
    with pytest.raises(ValueError, match="--clip_length"):
        lc.LossSettings(clip_length=0).check()
    with pytest.raises(ValueError):
        lc.LossSettings(param_model="Cubic").check()


# --- the command on a rendered benchmark -------------------------------------------------------------

GAP = 2


@pytest.fixture(scope="module")
def bench(tmp_path_factory, textures):  # noqa: F811 (the fixture imported above)
    out = tmp_path_factory.mktemp("bench")
    make(out, textures, roles=("static_empty", "one_textured"))
    return out


def _run(bench, run, masks_of, flow_width=None, gap=GAP):
    """A run folder as segment.py --video leaves it: masks and each sequence's manifest.json."""
    for s in vb.split_sequences(vb.load_manifest(bench), "dev", bench):
        d = run / s["name"]
        d.mkdir(parents=True, exist_ok=True)
        for t in range(s["n_frames"] - 1):
            gt = np.asarray(Image.open(bench / s["path"] / "masks" / f"{t:05d}.png")) > 0
            Image.fromarray(np.where(masks_of(gt), 255, 0).astype(np.uint8)).save(d / f"{t:05d}_binary.png")
        opts = {"gap": gap, "flow_method": "dis", "dis_preset": "fast", "dis_finest_scale": 0,
                "dis_variational": True}
        (d / "manifest.json").write_text(json.dumps({"options": opts, "flow_width": flow_width}))
    return run


def test_flows_are_the_networks_own_over_its_gap(bench):
    from csvflowdatamodule.extract_flow import dis_estimator
    from emseg.app.segment.stages import GAP_CONFIDENT
    from emseg.video.flow_confidence import forward_backward_confidence

    (entry,) = [s for s in vb.split_sequences(vb.load_manifest(bench), "dev", bench) if s["objects"]]
    video = bench / entry["path"] / "video.mp4"
    flows = lc.sequence_flows(video, {"gap": GAP, "flow_method": "dis", "dis_preset": "fast", "dis_finest_scale": 0,
                                      "dis_variational": True, "flow_width": None})
    cap, _ = open_video(video)
    frames = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in iter_frames(cap)]
    cap.release()
    assert len(flows) == N - 1
    fn = dis_estimator("fast")

    def chw(f):
        return torch.from_numpy(np.asarray(f, np.float32)).permute(2, 0, 1)[None]

    # a full gap: the flow to t + GAP where its forward-backward check holds, GAP × the flow to t + 1 elsewhere
    t = 0
    long, back = chw(fn(frames[t], frames[t + GAP])), chw(fn(frames[t + GAP], frames[t]))
    held = forward_backward_confidence(long, back)[:, None] >= GAP_CONFIDENT
    expected = torch.where(held, long, GAP * chw(fn(frames[t], frames[t + 1])))[0].permute(1, 2, 0).numpy()
    assert 0 < float(held.float().mean()) < 1  # both rules are exercised (97 % held here)
    np.testing.assert_allclose(flows[t], expected, atol=1e-5)
    # the last frame: the one gap it has left, the flow to the next frame
    np.testing.assert_allclose(flows[N - 2], fn(frames[N - 2], frames[N - 1]), atol=1e-5)


def test_a_perfect_run_ties_the_truth_and_an_empty_run_loses_to_it(tmp_path, bench, capsys):
    perfect = _run(bench, tmp_path / "perfect", lambda gt: gt)
    empty = _run(bench, tmp_path / "empty", lambda gt: np.zeros_like(gt))
    per_frame, per_seq = lc.loss_check(bench, "dev", [perfect, empty], out=tmp_path / "lc.csv")
    assert list(per_seq["sequence"].unique()) == ["one_textured"]  # the empty scene has no truth to prefer
    assert len(per_frame) == N - 1
    np.testing.assert_array_equal(per_frame["perfect_coherence"], per_frame["truth_coherence"])
    assert (per_frame["empty_coherence"] > per_frame["truth_coherence"]).all()
    assert per_seq.set_index("run")["prefers_run"].to_dict() == {"perfect": 0.0, "empty": 0.0}
    assert (tmp_path / "lc.csv").is_file() and (tmp_path / "lc_per_sequence.csv").is_file()
    # the temporal model's loss, through the command line
    assert vb.main(["loss_check", "--bench", str(bench), "--split", "dev", "--runs", str(perfect), str(empty),
                    "--labels", "P", "E", "--clip_length", "3"]) == 0
    out = capsys.readouterr().out
    assert "QuadraticST1 over clips of 3" in out and "w to flip" in out
    assert "P: the loss prefers the run's masks to the truth on 0% of the frames" in out


def test_runs_on_other_flows_or_without_a_manifest_are_refused(tmp_path, bench):
    a = _run(bench, tmp_path / "a", lambda gt: gt)
    b = _run(bench, tmp_path / "b", lambda gt: gt, gap=1)
    with pytest.raises(vb.BenchmarkError, match=r"b/one_textured/manifest.json: flow settings .* differ"):
        lc.loss_check(bench, "dev", [a, b])
    (a / "one_textured" / "manifest.json").unlink()
    with pytest.raises(vb.BenchmarkError, match=r"a/one_textured/manifest.json: not segment.py's manifest"):
        lc.loss_check(bench, "dev", [a])
    with pytest.raises(ValueError, match="one distinct label per run"):
        lc.loss_check(bench, "dev", [b], labels=["truth"])
    with pytest.raises(SystemExit, match="no such run folder"):
        vb.main(["loss_check", "--bench", str(bench), "--runs", str(tmp_path / "nowhere")])
