"""``video_benchmark truth_drift``: the network fitted to the truth, then trained on its loss alone.

Exact cases: on flows built from known motions, a truth the loss is exactly fitted by stays the network's
answer under the loss, and a "truth" larger than the mover is left for the mover; then the windows of a
temporal model, the refusals, and the command on a tiny rendered benchmark.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from emseg.app.video_benchmark import truth_drift as td
from Models.CoherenceNets.MethodeB import MethodeB
from tests.conftest import SMALL, run_cli
from tests.test_video_benchmark import make, textures  # noqa: F401 (textures: the fixture)

I, J = SMALL["img_size"]
N = 6


def _square(t: int, margin: int = 0) -> torch.Tensor:
    m = torch.zeros(I, J, dtype=torch.bool)
    m[9 - margin:21 + margin, 12 - margin + t:24 + margin + t] = True
    return m


def _scene() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(flows (N, 2, I, J), the mover's masks (N, I, J), masks 4 px larger all round): the background
    translates by (0.5, −0.3) px, a 12 × 12 square moving right one pixel a frame by (4, 1). The larger
    masks are a "truth" the loss does not prefer (as DIS spreads a mover's motion past its edges, the
    benchmark's truth is to its flows): J 144 / 400 = 0.36 against the mover's."""
    movers = torch.stack([_square(t) for t in range(N)])
    larger = torch.stack([_square(t, margin=4) for t in range(N)])
    flows = torch.zeros(N, 2, I, J)
    flows[:, 0], flows[:, 1] = 0.5, -0.3
    for t in range(N):
        flows[t, 0][movers[t]], flows[t, 1][movers[t]] = 4.0, 1.0
    return flows, movers, larger


def _model(**kw) -> MethodeB:
    torch.manual_seed(0)
    return MethodeB(**SMALL, **kw)


FAST = td.DriftSettings(steps=(10, 40), truth_steps=40, truth_lr=3e-3, lr=2e-3, batch_size=3)


def _stage(rows: list[dict], stage: str, steps: int = 0) -> dict:
    return next(r for r in rows if r["stage"] == stage and r["steps"] == steps)


def test_a_truth_the_loss_fits_exactly_is_kept_and_a_truth_it_does_not_prefer_is_left():
    flows, movers, larger = _scene()
    model = _model()
    kept = td.drift_sequence(model, flows, movers, FAST)
    assert [(r["stage"], r["steps"]) for r in kept] == [("model", 0), ("truth", 0), ("loss", 10), ("loss", 40)]
    assert _stage(kept, "model")["J"] < 0.6  # the untrained network is not there
    assert _stage(kept, "truth")["J"] > 0.95  # the supervised phase puts the network at the truth
    assert _stage(kept, "loss", 40)["J"] > 0.95  # and the loss, zero there, keeps it
    # a "truth" larger than the mover: the loss prefers the mover, so training on it shrinks the masks
    left = td.drift_sequence(model, flows, larger, FAST)
    assert _stage(left, "truth")["J"] > 0.95
    assert _stage(left, "loss", 40)["J"] == pytest.approx(144 / 400, abs=0.05)  # the mover's J to that truth
    assert _stage(left, "loss", 40)["loss"] < 0.2 * _stage(left, "truth")["loss"]
    # the model given is untouched (each call works on a copy)
    ref = _model()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))


def test_a_temporal_model_reads_each_frame_from_its_centred_clip_and_takes_the_temporal_weight_given():
    wins, centre = td.windows_of(5, 3)
    assert wins == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 4]] and centre == 1
    assert td.windows_of(3, 1) == ([[0], [1], [2]], 0)
    flows = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 2, I, J)
    b = td.batch_of(flows, wins[:2], 3)["Flow"]
    assert b.shape == (2, 2, 3, I, J) and b[:, 0, :, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2]]
    assert td.batch_of(flows, [[3], [1]], 1)["Flow"][:, 0, 0, 0].tolist() == [3, 1]
    f, movers, _ = _scene()
    model = _model(clip_length=3)
    rows = td.drift_sequence(model, f, movers, td.DriftSettings(steps=(2,), truth_steps=2, temporal_weight=5.0))
    assert len(rows) == 3 and all(0 <= r["J"] <= 1 for r in rows)
    assert model.temporal_weight == 0.0  # the copy took the weight, the model keeps its own


def test_refusals_name_the_setting():
    with pytest.raises(ValueError, match="--steps must be increasing"):
        td.DriftSettings(steps=(100, 25)).check()
    with pytest.raises(ValueError, match="--truth_steps must be an integer >= 1"):
        td.DriftSettings(truth_steps=0).check()
    with pytest.raises(ValueError, match="--temporal_weight: the model is a frame model"):
        td.check_drift(td.DriftSettings(temporal_weight=1.0), _model())
    flows, movers, _ = _scene()
    with pytest.raises(ValueError, match=r"expected flows \(N, 2, I, J\) and truth \(N, I, J\)"):
        td.drift_sequence(_model(), flows, movers[:3], FAST)


def test_the_command_on_a_tiny_benchmark_writes_the_table_and_the_plot(tmp_path, textures, small_ckpt):  # noqa: F811
    bench = tmp_path / "bench"
    make(bench, textures)
    out = tmp_path / "drift.csv"
    proc = run_cli(["-m", "emseg.app.video_benchmark", "truth_drift", "--bench", str(bench), "--split", "dev",
                    "--ckpt", small_ckpt, "--steps", "2", "4", "--truth_steps", "3", "--out", str(out)])
    df = pd.read_csv(out)
    # the two sequences with objects, four stages each, J a share
    assert sorted(df.sequence.unique()) == ["one_textured", "two_crossing"]
    assert df.groupby("sequence").size().tolist() == [4, 4]
    assert df.J.between(0, 1).all() and (df.loss > 0).all()
    assert "at truth" in proc.stdout and "+4 steps" in proc.stdout
    assert out.with_suffix(".png").stat().st_size > 1000
    bad = run_cli(["-m", "emseg.app.video_benchmark", "truth_drift", "--bench", str(bench), "--ckpt", small_ckpt,
                   "--sequences", "nope"], expect_ok=False)
    assert bad.returncode != 0 and "no sequence with objects named ['nope']" in bad.stderr
    bad = run_cli(["-m", "emseg.app.video_benchmark", "truth_drift", "--bench", str(bench), "--ckpt", small_ckpt,
                   "--temporal_weight", "1"], expect_ok=False)
    assert bad.returncode == 2 and "frame model" in bad.stderr
