"""The temporal model (``--clip_length`` T > 1, docs/METHOD.md §5): its networks, its loss, its per-frame
steps, its checkpoints and its per-frame evaluation (``evaluationmodule/clip_frames.py``)."""

from __future__ import annotations

import pytest
import torch

from emseg.core import coherence_math as cm
from emseg.core import hparams as H
from Models.Backbones.temporal import TEMPORAL_BACKBONES, TemporalBackbone
from Models.CoherenceNets.MethodeB import MethodeB
from Models.LitBackbone import Backbone
from Models.temporal import clip_loss, clips_as_frames, frame_theta, temporal_term
from tests.conftest import read_csv

TINY = {"unet.num_layers": 2, "unet.features_start": 4, "features_backbone": 8, "img_size": [16, 24]}


def clip_batch(B: int = 2, T: int = 3, I: int = 16, J: int = 24, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    paths = [[f"Flows/s{b}/{t:05d}.flo" for t in range(T)] for b in range(B)]
    return {"Flow": torch.randn(B, 2, T, I, J, generator=g),
            "GtMask": (torch.rand(B, T, I, J, generator=g) > 0.5).long(),
            "FlowPath": paths, "Index": torch.arange(B), "Sequence": [f"Flows/s{b}" for b in range(B)],
            "RowIndices": torch.arange(B * T).reshape(B, T) + 10, "FrameIndices": torch.arange(T).repeat(B, 1),
            "Skipped": []}


def quiet(model: MethodeB) -> MethodeB:
    model.log = lambda *a, **k: None  # outside a Trainer
    return model


# ------------------------------------------------------------------------------------------------
# The temporal term and the loss
# ------------------------------------------------------------------------------------------------
def test_temporal_term_gradcheck_float64():
    g = torch.Generator().manual_seed(1)
    pred = torch.rand(2, 2, 3, 4, 5, generator=g, dtype=torch.float64).requires_grad_()
    flow = torch.randn(2, 2, 3, 4, 5, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: temporal_term(p, flow, 0.7), (pred,), eps=1e-6, atol=1e-6)


def test_temporal_term_is_zero_for_masks_constant_in_time_and_gated_by_the_flow():
    g = torch.Generator().manual_seed(2)
    frame = torch.rand(2, 3, 1, 8, 9, generator=g).softmax(1)
    flow = torch.randn(2, 2, 4, 8, 9, generator=g)
    assert torch.equal(temporal_term(frame.expand(-1, -1, 4, -1, -1), flow, 1.0), torch.zeros(2))
    changing = torch.rand(2, 3, 4, 8, 9, generator=g).softmax(1)
    still = torch.zeros_like(flow)  # flow constant in time: the gate is 1 everywhere
    plain = (changing[:, :, 1:] - changing[:, :, :-1]).abs().mean((1, 2, 3, 4))
    assert torch.allclose(temporal_term(changing, still, 1.0), plain)
    gated = temporal_term(changing, flow, 1.0)
    assert bool((gated > 0).all()) and bool((gated < plain).all())
    assert torch.equal(temporal_term(changing[:, :, :1], flow[:, :, :1], 1.0), torch.zeros(2))


def test_clip_loss_is_em_loss_clip_at_weight_zero_and_adds_the_weighted_term():
    b = clip_batch()
    pred = torch.rand(2, 2, 3, 16, 24, generator=torch.Generator().manual_seed(3)).softmax(1)
    ref = cm.em_loss_clip(pred, b["Flow"], "QuadraticST1", "l1", "IRLS", 0.01)
    out = clip_loss(pred, b["Flow"], "QuadraticST1", "l1", "IRLS", 0.01, temporal_weight=0.0)
    assert torch.equal(out["losses"], ref["losses"]) and torch.equal(out["theta"], ref["theta"])
    weighted = clip_loss(pred, b["Flow"], "QuadraticST1", "l1", "IRLS", 0.01, temporal_weight=0.5)
    assert torch.allclose(weighted["losses"], ref["losses"] + 0.5 * temporal_term(pred, b["Flow"]), atol=1e-6)
    # the per-frame terms average to the clip's
    assert torch.allclose(out["frame_coherence"].mean(1), ref["coherence_losses"], atol=1e-6)
    assert torch.allclose(out["frame_entropies"].mean(1), ref["entropies"], atol=1e-6)
    assert torch.allclose(weighted["frame_losses"].mean(1), weighted["losses"].detach(), atol=1e-6)


def test_frame_theta_gives_each_frame_its_flow():
    for name in ("QuadraticST1", "AffineST2", "QuadraticBSpline2"):
        T = 5
        ft = cm.st_ft(name, T)
        theta = torch.randn(2, 3, ft, 2, dtype=torch.float64)
        clip = cm.flow_from_theta_clip(theta, name, (T, 6, 7))  # (B, L, 2, T, I, J)
        per_frame = frame_theta(theta, name, T)  # (B, T, L, ft_s, 2)
        spatial = cm.ST_MODELS[name][0]
        for t in range(T):
            flows = cm.flow_from_theta(per_frame[:, t], spatial, (6, 7))
            assert torch.allclose(flows, clip[:, :, :, t], atol=1e-9), (name, t)


# ------------------------------------------------------------------------------------------------
# The networks and the steps
# ------------------------------------------------------------------------------------------------
def test_the_temporal_networks_keep_the_frame_names_and_give_masks_per_frame():
    frame = MethodeB(**TINY)
    assert frame.clip_length == 1 and type(frame.backbone_model) is Backbone
    for kind in TEMPORAL_BACKBONES:
        model = MethodeB(**TINY, clip_length=3, temporal_backbone=kind)
        assert isinstance(model.backbone_model, TemporalBackbone) and model.backbone_model.kind == kind
        assert list(model.state_dict()) == list(frame.state_dict())
        pred = model.prediction(clip_batch())["Pred"]
        assert pred.shape == (2, 2, 3, 16, 24) and torch.allclose(pred.sum(1), torch.ones(2, 3, 16, 24), atol=1e-5)
        try:
            model.prediction({"Flow": torch.zeros(2, 2, 16, 24)})
        except ValueError as err:
            assert "--clip_length 3" in str(err) and "(B, 2, 3, I, J)" in str(err)
        else:
            raise AssertionError("a frame batch was accepted by the temporal model")
    stacked = MethodeB(**TINY, clip_length=3).state_dict()
    assert stacked["backbone_model.model.layers.0.net.0.weight"].shape[1] == 6  # 2 · T input channels
    assert stacked["head_model.model.pred_conv.weight"].shape[0] == 6  # L · T output channels


def test_a_clip_step_gives_rows_per_frame_and_the_clip_loss():
    torch.manual_seed(0)
    model = quiet(MethodeB(**TINY, clip_length=3))
    b = clip_batch()
    flow = b["Flow"].clone()
    out = model._step(b, "val", 0)
    assert out["losses"].shape == (6,) and out["Pred"].shape == (6, 2, 16, 24) and out["PredMask"].shape == (6, 16, 24)
    assert out["index"].tolist() == list(range(10, 16))  # each frame's CSV row
    assert out["file_name"] == [f"Flows/s{b_}/{t:05d}.flo" for b_ in range(2) for t in range(3)]
    assert out["jaccs"].shape == (6,) and out["theta"].shape == (6, 2, 6, 2)
    with torch.no_grad():
        pred = model(model.backbone_model.prepare_input({"Flow": flow}))
    ref = cm.em_loss_clip(pred, flow, "QuadraticST1", "l1", "IRLS", 0.01)
    assert torch.allclose(out["loss"].detach(), ref["losses"].mean(), atol=1e-6)
    assert torch.allclose(out["losses"].reshape(2, 3).mean(1), ref["losses"], atol=1e-6)
    # the batch is now its frames (what callbacks see)
    assert b["Flow"].shape == (6, 2, 16, 24) and torch.equal(b["Flow"][4], flow[1, :, 1])
    assert b["ClipIndex"].tolist() == [0, 0, 0, 1, 1, 1] and b["Sequence"][3] == "Flows/s1"


def test_clips_as_frames_orders_frames_clip_by_clip():
    b = clip_batch(B=2, T=4)
    flow = b["Flow"].clone()
    clips_as_frames(b, 4)
    for k in range(8):
        assert torch.equal(b["Flow"][k], flow[k // 4, :, k % 4])
    assert b["GtMask"].shape == (8, 16, 24) and b["FrameIndices"].tolist() == [0, 1, 2, 3] * 2


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------
def test_a_temporal_checkpoint_loads_as_a_temporal_model_and_a_frame_one_as_before(tmp_path):
    from Models.network import METHODE_B_DATA_HPARAMS, SegmentationNetwork

    assert METHODE_B_DATA_HPARAMS == MethodeB.DATA_HPARAMS and H.TEMPORAL_BACKBONES == TEMPORAL_BACKBONES
    torch.manual_seed(0)
    model = MethodeB(**TINY, clip_length=4, temporal_backbone="unet3d", temporal_weight=0.2).eval()
    path = tmp_path / "temporal.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    again = MethodeB.load_from_checkpoint(path).eval()
    assert again.clip_length == 4 and again.backbone_model.kind == "unet3d" and again.temporal_weight == 0.2
    b = clip_batch(T=4)
    with torch.no_grad():
        assert torch.equal(again.prediction(dict(b))["Pred"], model.prediction(dict(b))["Pred"])
    # segment.py's network (no Lightning) is the same temporal network, with the same weights and masks
    net = SegmentationNetwork.load_from_checkpoint(path)
    assert net.clip_length == 4 and list(net.state_dict()) == list(model.state_dict())
    with torch.no_grad():
        assert torch.equal(net.prediction(dict(b))["Pred"], model.prediction(dict(b))["Pred"])
    bundled = MethodeB.load_from_checkpoint("checkpoints/em_small.ckpt")
    assert bundled.clip_length == 1 and type(bundled.backbone_model) is Backbone
    net = SegmentationNetwork.load_from_checkpoint("checkpoints/em_small.ckpt")
    assert list(net.state_dict()) == list(bundled.state_dict())


# ------------------------------------------------------------------------------------------------
# Per-frame evaluation of clips
# ------------------------------------------------------------------------------------------------
def test_every_frame_gets_one_clip_centred_on_it(tmp_path):
    from csvflowdatamodule.clips import CsvClipDataset
    from csvflowdatamodule.dataset import CsvDataset
    from csvflowdatamodule.synthetic import make_synthetic_split
    from evaluationmodule.clip_frames import FrameClipDataset, clip_window

    assert clip_window(0, 5, 3) == ([0, 0, 1], 1) and clip_window(2, 5, 3) == ([1, 2, 3], 1)
    assert clip_window(4, 5, 3) == ([3, 4, 4], 1) and clip_window(1, 2, 4) == ([0, 1, 1, 1], 1)
    assert clip_window(0, 1, 2) == ([0, 0], 0) and clip_window(3, 7, 4) == ([2, 3, 4, 5], 1)
    prefix = make_synthetic_split(str(tmp_path), "c", n_train=1, n_val=1, n_test=8, img_size=(16, 24), seed=1,
                                  frames_per_sequence=6)
    csv = f"{prefix}_test.csv"
    frames = CsvDataset(csv, str(tmp_path), (16, 24), ["Flow", "GtMask"])
    ds = FrameClipDataset(frames, 3)
    assert len(ds) == 8 and ds.indices == frames.indices
    clips = {c.rows for c in CsvClipDataset(csv, str(tmp_path), (16, 24), ["Flow"], clip_length=3).clips}
    for i in range(len(ds)):
        item = ds[i]
        rows = tuple(item["ClipRows"].tolist())
        assert item["Index"] == frames.indices[i] and rows[item["ClipFrame"]] == item["Index"]
        assert rows in clips or len(set(rows)) < 3  # a stride-1 clip of clips.py, or one padded at an end
        assert torch.equal(item["Flow"], item["ClipFlow"][:, item["ClipFrame"]])
        assert torch.equal(item["Flow"], frames[i]["Flow"]) and item["GtMask"].shape == (16, 24)


def test_train_and_evaluate_a_temporal_model_per_frame(tmp_path):
    from csvflowdatamodule.synthetic import make_synthetic_split
    from emseg.app import evaluation_cli, evaluation_run, training
    from emseg.app.run_checks import ConfigError

    prefix = make_synthetic_split(str(tmp_path / "data"), "t", n_train=12, n_val=6, n_test=7, img_size=(32, 48),
                                  seed=3, frames_per_sequence=6, motion="smooth")
    base = str(tmp_path / "data")
    run = tmp_path / "run"
    common = ["--path_save_model", str(run), "--base_dir", base, "--data_file", prefix, "--img_size", "32", "48",
              "--unet.num_layers", "2", "--unet.features_start", "4", "--batch_size", "2", "--num_workers", "0",
              "--accelerator", "cpu", "--logger", "none", "--clip_length", "3", "--clip_stride", "3",
              "--temporal_weight", "0.1",
              "--limit_train_batches", "2", "--limit_val_batches", "1"]
    training.run_training(training.parse_args([*common, "--max_epochs", "1"]))
    rows = read_csv(run / "results.csv")
    train = [r for r in rows if r["step_label"] == "train"]
    # 2 batches of 2 clips of 3 frames (stride 3: no frame in two clips), one row per frame
    assert len(train) == 2 * 2 * 3 and len({r["file_name"] for r in train}) == 12
    assert len([r for r in rows if r["step_label"] == "val"]) == 2 * 3
    training.run_training(training.parse_args([*common, "--max_epochs", "2", "--ckpt_path", "last"]))
    assert sorted({r["epoch"] for r in read_csv(run / "results.csv")}) == ["0", "1"]
    model = MethodeB.load_from_checkpoint(run / "last.ckpt")
    assert model.clip_length == 3 and model.temporal_weight == 0.1

    ev = tmp_path / "eval"
    argv = ["--ckpt", str(run / "last.ckpt"), "--save_dir", str(ev), "--base_dir", base, "--data_file", prefix,
            "--steps", "test", "--save_npy", "--save_mask", "--num_workers", "0", "--accelerator", "cpu"]
    try:
        evaluation_cli.parse_args([*argv, "--clip_length", "3"])
    except ConfigError as err:
        assert "--clip_length" in str(err)
    else:
        raise AssertionError("model_eval took --clip_length")
    res = evaluation_run.run_evaluation(evaluation_cli.parse_args(argv))
    assert res["test"]["frames"] == res["test"]["frames_in_split"] == 7
    rows = read_csv(ev / "results_test.csv")
    expected = [str(r["Flow"]) for r in read_csv(f"{prefix}_test.csv")]
    assert [r["file_name"] for r in rows] == expected  # every frame once, in CSV order (a 1-frame sequence too)
    for r in rows:
        stem = ev / r["file_name"].rsplit(".", 1)[0]
        assert all((stem.parent / (stem.name + suffix)).exists() for suffix in ("_proba.npy", "_binary.png"))


@pytest.mark.parametrize("mode", ["mean", "centre"])
def test_model_train_inflates_a_frame_checkpoint_as_told(tmp_path, mode):
    """--init_ckpt FRAME.ckpt --clip_length 3 [--inflate MODE]: the run starts from inflate_frame_weights(MODE)
    (a frozen run, --optim.lr 0, keeps exactly that start)."""
    from csvflowdatamodule.synthetic import make_synthetic_split
    from emseg.app import training
    from Models.temporal import inflate_frame_weights

    prefix = make_synthetic_split(str(tmp_path / "data"), "i", n_train=6, n_val=3, n_test=1, img_size=(16, 24),
                                  seed=4, frames_per_sequence=3, motion="smooth")
    torch.manual_seed(0)
    frame = MethodeB(**TINY)
    src = tmp_path / "frame.ckpt"
    torch.save({"state_dict": frame.state_dict(), "hyper_parameters": dict(frame.hparams)}, src)
    run = tmp_path / "run"
    argv = ["--path_save_model", str(run), "--base_dir", str(tmp_path / "data"), "--data_file", prefix,
            "--img_size", "16", "24", "--unet.num_layers", "2", "--unet.features_start", "4",
            "--features_backbone", "8", "--batch_size", "2", "--num_workers", "0", "--accelerator", "cpu",
            "--logger", "none", "--clip_length", "3", "--init_ckpt", str(src), "--optim.lr", "0",
            "--max_steps", "1", "--limit_val_batches", "1"]
    training.run_training(training.parse_args(argv + (["--inflate", mode] if mode != "mean" else [])))
    got = MethodeB.load_from_checkpoint(run / "last.ckpt").state_dict()
    want = inflate_frame_weights(frame.state_dict(), 3, mode)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_a_bad_file_skips_the_frames_whose_clip_holds_it(tmp_path):
    from csvflowdatamodule.dataset import CsvDataset
    from csvflowdatamodule.synthetic import make_synthetic_split
    from evaluationmodule.clip_frames import FrameClipDataset

    prefix = make_synthetic_split(str(tmp_path), "b", n_train=1, n_val=1, n_test=5, img_size=(16, 24), seed=2,
                                  frames_per_sequence=5)
    frames = CsvDataset(f"{prefix}_test.csv", str(tmp_path), (16, 24), ["Flow"])
    bad = frames.rows[0]["Flow"]
    (tmp_path / bad).write_bytes(b"not a flow")
    ds = FrameClipDataset(frames, 3)
    skipped = [i for i in range(len(ds)) if "Skipped" in ds[i]]
    assert skipped == [0, 1]  # frames 0 and 1 are predicted from clip 0-2, which holds the bad frame 0
    assert ds[1]["Skipped"][1].endswith(bad) and sorted(ds.skipped_report()["samples"])[0][0] == frames.indices[0]


def test_the_command_line_refuses_a_space_time_model_the_clip_cannot_fit():
    from emseg.app import training
    from emseg.app.run_checks import ConfigError

    for argv in (["--clip_length", "2", "--st_param_model", "QuadraticST2"],
                 ["--clip_length", "3", "--temporal_backbone", "unet3d", "--backbone", "fake"]):
        try:
            training.parse_args(["--data_file", "x", *argv])
        except ConfigError as err:
            assert argv[-2] in str(err) or "--backbone fake" in str(err)
        else:
            raise AssertionError(f"accepted {argv}")
    assert training.parse_args(["--data_file", "x", "--clip_length", "3"]).st_param_model == "QuadraticST1"


def test_a_frame_model_inflated_to_stack2d_segments_a_still_clip_as_the_frame_model():
    """inflate_frame_weights: on a clip of T copies of one flow, every frame's masks are the frame model's."""
    from Models.temporal import inflate_frame_weights

    torch.manual_seed(0)
    frame = MethodeB(**TINY).eval()
    temporal = MethodeB(**TINY, clip_length=3).eval()
    temporal.load_state_dict(inflate_frame_weights(frame.state_dict(), 3), strict=True)
    flow = torch.randn(2, 2, 16, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = frame.prediction({"Flow": flow})["Pred"]
        got = temporal.prediction({"Flow": flow[:, :, None].repeat(1, 1, 3, 1, 1)})["Pred"]
    for t in range(3):
        assert torch.allclose(got[:, :, t], ref, atol=1e-5)
    try:
        inflate_frame_weights({"x": flow}, 3)
    except KeyError as err:
        assert "frame U-Net" in str(err)
    else:
        raise AssertionError("a state dict without a U-Net was inflated")


@pytest.mark.parametrize("T", [3, 4])
def test_a_frame_model_inflated_on_the_centre_segments_any_clip_as_the_frame_model_its_central_flow(T):
    """--inflate centre: on a clip of T different flows, every frame's masks are the frame model's on the
    central flow ⌊(T − 1)/2⌋ (the one segment.py and model_eval.py take from that window), the others unread."""
    from Models.temporal import inflate_frame_weights

    torch.manual_seed(0)
    frame = MethodeB(**TINY).eval()
    temporal = MethodeB(**TINY, clip_length=T).eval()
    temporal.load_state_dict(inflate_frame_weights(frame.state_dict(), T, "centre"), strict=True)
    clip = torch.randn(2, 2, T, 16, 24, generator=torch.Generator().manual_seed(2))
    centre = (T - 1) // 2
    with torch.no_grad():
        ref = frame.prediction({"Flow": clip[:, :, centre]})["Pred"]
        got = temporal.prediction({"Flow": clip})["Pred"]
        other = clip.clone()
        other[:, :, [t for t in range(T) if t != centre]] = 5.0  # the other frames do not matter
        again = temporal.prediction({"Flow": other})["Pred"]
        mean = MethodeB(**TINY, clip_length=T).eval()
        mean.load_state_dict(inflate_frame_weights(frame.state_dict(), T), strict=True)
        averaged = mean.prediction({"Flow": clip})["Pred"]
    for t in range(T):
        assert torch.allclose(got[:, :, t], ref, atol=1e-5)
    assert torch.allclose(again, got, atol=1e-5)
    assert not torch.allclose(averaged[:, :, centre], ref, atol=1e-3)  # the mean inflation reads every frame
    with pytest.raises(ValueError, match="inflation must be one of"):
        inflate_frame_weights(frame.state_dict(), T, "first")
