"""segment.py: flows or a video in, probabilities, masks, overlays and a GIF out."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from csvflowdatamodule.CsvDataset import write_flow
from Models.CoherenceNets.MethodeB import MethodeB
from tests.conftest import ROOT, run_cli
from utils.segmentation import BUNDLED_CKPT, list_flows, load_segmenter, segment_flows

SMALL = {"unet.num_layers": 3, "unet.features_start": 8, "img_size": [32, 48]}


@pytest.fixture()
def small_ckpt(tmp_path):
    torch.manual_seed(0)
    model = MethodeB(**SMALL)
    path = tmp_path / "small.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return str(path)


def moving_square_flow(H=40, W=60, shift=2.0):
    flow = np.zeros((H, W, 2), np.float32)
    flow[..., 0] = 0.3
    flow[10:25, 20:40, 1] = shift
    return flow


def test_segment_flows_dir_writes_every_output(tmp_path, small_ckpt):
    flows = tmp_path / "flows"
    flows.mkdir()
    for t in range(3):
        write_flow(str(flows / f"{t:05d}.flo"), moving_square_flow(shift=1.0 + t))
    model = load_segmenter(small_ckpt, device="cpu")
    res = segment_flows(model, list_flows(flows=str(flows)), tmp_path / "out", progress=False)
    assert res["n_flows"] == 3 and os.path.exists(res["gif"])
    for t in range(3):
        proba = np.load(tmp_path / "out" / f"{t:05d}_proba.npy")
        assert proba.shape == (2, 32, 48) and np.allclose(proba.sum(0), 1, atol=1e-4)
        mask = np.array(Image.open(tmp_path / "out" / f"{t:05d}_binary.png"))
        assert mask.shape == (40, 60) and set(np.unique(mask)) <= {0, 255}  # at the flow's own size
        ov = np.array(Image.open(tmp_path / "out" / f"{t:05d}_overlay.png"))
        assert ov.shape == (40, 60, 3)
    assert Image.open(res["gif"]).n_frames == 3


def test_segment_cli_errors_name_the_argument(tmp_path, small_ckpt):
    out = run_cli(["segment.py", "--flow", str(tmp_path / "nope.flo"), "--ckpt", small_ckpt, "--out",
                   str(tmp_path / "o")], expect_ok=False)
    assert out.returncode != 0 and "--flow" in out.stderr and "nope.flo" in out.stderr


def test_segment_video_cli(tmp_path, small_ckpt):
    rng = np.random.default_rng(0)
    bg = (rng.random((72, 96, 3)) * 255).astype(np.uint8)
    bg = cv2.GaussianBlur(bg, (5, 5), 0)
    square = (rng.random((20, 20, 3)) * 255).astype(np.uint8)
    video = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 72))
    for t in range(4):
        frame = bg.copy()
        frame[20:40, 20 + 3 * t:40 + 3 * t] = square
        writer.write(frame)
    writer.release()
    run_cli(["segment.py", "--video", video, "--ckpt", small_ckpt, "--out", str(tmp_path / "seg")])
    outs = sorted(p.name for p in (tmp_path / "seg").iterdir())
    assert "segmentation.gif" in outs and "flow" in outs
    assert sum(n.endswith("_overlay.png") for n in outs) == 3  # 4 frames → 3 flows


@pytest.mark.skipif(not BUNDLED_CKPT.exists(), reason="bundled checkpoint not present")
def test_bundled_model_segments_blackswan_as_one_object(tmp_path):
    model = load_segmenter(None, device="cpu")
    assert BUNDLED_CKPT.stat().st_size < 20e6
    res = segment_flows(model, [Path(ROOT) / "images" / "00000.flo"], tmp_path, gif=False, progress=False)
    assert res["n_flows"] == 1
    mask = np.array(Image.open(tmp_path / "00000_binary.png")) > 0
    assert mask.shape == (480, 854)
    assert 0.05 < mask.mean() < 0.35, mask.mean()  # the swan, not the water or the sky
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    assert areas.max() >= 0.85 * mask.sum()  # one object, a few specks
    swan = labels == 1 + areas.argmax()
    # DAVIS blackswan frame 0: the body left of centre, the neck rising at x ≈ 440 (row, column)
    assert swan[330, 350] and swan[150, 440]
    assert not mask[50, 100] and not mask[40, 700] and not mask[460, 40]  # sky and water
