"""The temporal model shipped beside the frame one (checkpoints/em_temporal.ckpt; model card, "The temporal
model"): what the file is, that every loader of the project takes it, and that it segments an exact case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from emseg.core.masks import exceptbiggest
from evaluationmodule.scoring import jaccard

REPO = Path(__file__).resolve().parents[1]
TEMPORAL = REPO / "checkpoints" / "em_temporal.ckpt"
FRAME = REPO / "checkpoints" / "em_small.ckpt"


def moving_disc_clip(T: int = 3, I: int = 128, J: int = 224) -> tuple[torch.Tensor, np.ndarray]:
    """A clip (1, 2, T, I, J): a panning, slightly zooming background (Affine θ) and a disc translating
    (3, −2) px a frame that moves on by that much each frame → (clip, the central frame's disc (I, J) bool)."""
    yy, xx = torch.meshgrid(torch.arange(I, dtype=torch.float64), torch.arange(J, dtype=torch.float64), indexing="ij")
    flows, discs = [], []
    for t in range(T):
        cy, cx = 64 - 2.0 * t, 90 + 3.0 * t
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 22 ** 2
        u = 0.8 + 0.01 * (xx - J / 2)   # background: pan right, slight zoom
        v = -0.3 + 0.01 * (yy - I / 2)
        u = torch.where(disc, torch.full_like(u, 3.0), u)
        v = torch.where(disc, torch.full_like(v, -2.0), v)
        flows.append(torch.stack([u, v]))
        discs.append(disc.numpy())
    return torch.stack(flows, dim=1)[None].float(), discs[(T - 1) // 2]


def test_the_file_is_small_and_loads_weights_only():
    assert TEMPORAL.stat().st_size <= 20 * 2 ** 20
    ckpt = torch.load(TEMPORAL, map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert hp["clip_length"] == 3 and hp["temporal_backbone"] == "stack2d" and hp["nAffineMasks"] == 2
    assert set(ckpt) <= {"state_dict", "hyper_parameters", "pytorch-lightning_version", "epoch", "global_step"}


def test_it_segments_a_moving_disc_as_well_as_the_frame_model():
    from Models.CoherenceNets.MethodeB import MethodeB
    from Models.network import SegmentationNetwork

    clip, disc = moving_disc_clip()
    temporal = MethodeB.load_from_checkpoint(TEMPORAL).eval()
    net = SegmentationNetwork.load_from_checkpoint(TEMPORAL)
    frame = MethodeB.load_from_checkpoint(FRAME).eval()
    assert temporal.clip_length == net.clip_length == 3 and frame.clip_length == 1
    with torch.no_grad():
        pred = temporal.prediction({"Flow": clip})["Pred"]          # (1, L, T, I, J)
        same = net.prediction({"Flow": clip})["Pred"]
        ref = frame.prediction({"Flow": clip[:, :, 1]})["Pred"]     # (1, L, I, J)
    assert pred.shape == (1, 2, 3, 128, 224) and torch.equal(pred, same)
    j_temporal = jaccard(disc, np.asarray(exceptbiggest(pred[:, :, 1])[0], dtype=bool))
    j_frame = jaccard(disc, np.asarray(exceptbiggest(ref)[0], dtype=bool))
    assert j_frame > 0.9 and j_temporal > 0.9, (j_frame, j_temporal)


def test_segment_py_runs_it_on_a_sequence(tmp_path):
    import subprocess
    import sys

    from emseg.core.flow_io import write_flow

    clip, _ = moving_disc_clip(T=5)
    d = tmp_path / "flows"
    d.mkdir()
    for t in range(5):
        write_flow(d / f"{t:05d}.flo", clip[0, :, t].permute(1, 2, 0).numpy())
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(REPO / "segment.py"), "--flows", str(d), "--out", str(out), "--ckpt",
                        str(TEMPORAL), "--backend", "torch", "--no_animation", "--min_motion", "0"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in out.glob("*_binary.png")) == [f"{t:05d}_binary.png" for t in range(5)]
