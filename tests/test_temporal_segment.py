"""segment.py and the exported backends run a temporal checkpoint (issue 23 item 4): sliding windows of
T flows, every frame segmented once, the same masks from every backend (ONNX / OpenVINO within 1e-4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from emseg.app.segmentation import SegmentOptions, load_segmenter, segment_flows, segment_video
from tests.conftest import SMALL
from tests.test_segment import write_clip


@pytest.fixture()
def temporal_ckpt(tmp_path) -> str:
    from Models.CoherenceNets.MethodeB import MethodeB

    torch.manual_seed(0)
    model = MethodeB(**SMALL, clip_length=3)
    path = tmp_path / "temporal.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return str(path)


def _probas(folder: Path, n: int) -> list[np.ndarray]:
    return [np.load(folder / f"{t:05d}_proba.npy") for t in range(n)]


def test_a_temporal_checkpoint_segments_a_video_and_flow_files(tmp_path, temporal_ckpt):
    model = load_segmenter(temporal_ckpt, device="cpu")
    assert model.clip_length == 3
    video = write_clip(tmp_path / "clip.avi", n_frames=7)
    opts = SegmentOptions(progress=False, animation=False, backend="torch", save_proba=True)
    res = segment_video(model, video, tmp_path / "video", opts)
    assert res["n_flows"] == 6
    assert sorted(p.name for p in (tmp_path / "video").glob("*_binary.png")) == [f"{t:05d}_binary.png"
                                                                                for t in range(6)]
    # the last frame's masks: the network on the clip centred on it, frames 3, 4 and 4 again
    flows = [np.full((72, 96, 2), 0.5 * t, np.float32) for t in range(5)]
    for t, f in enumerate(flows):
        np.save(tmp_path / f"{t:05d}.npy", f)
    paths = sorted(tmp_path.glob("0000*.npy"))
    res = segment_flows(model, paths, tmp_path / "flows", gif=False, progress=False,
                        opts=SegmentOptions(progress=False, animation=False, backend="torch", gap=1,
                                            save_proba=True, min_motion=0.0, temporal=False, refine=False))
    assert res["n_flows"] == 5
    with torch.no_grad():
        clip = torch.stack([torch.nn.functional.interpolate(torch.from_numpy(flows[k]).permute(2, 0, 1)[None],
                                                            size=(32, 48), mode="bilinear", align_corners=False)[0]
                            for k in (3, 4, 4)], dim=1)[None]
        last = model.prediction({"Flow": clip})["Pred"][0, :, 1].numpy()  # frame 4 at the centre of 3, 4, 4
    np.testing.assert_allclose(_probas(tmp_path / "flows", 5)[4], last, atol=1e-6)


def test_adaptation_of_a_temporal_model_is_refused(tmp_path, temporal_ckpt):
    model = load_segmenter(temporal_ckpt, device="cpu")
    video = write_clip(tmp_path / "clip.avi", n_frames=4)
    with pytest.raises(ValueError, match="--adapt"):
        segment_video(model, video, tmp_path / "out", SegmentOptions(progress=False, adapt_steps=2))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_exported_temporal_networks_match_torch(tmp_path, temporal_ckpt, backend):
    from Models.backends import available_backends, make_backend, parity
    from Models.exporting import export

    if backend not in available_backends():
        pytest.skip(f"{backend} is not installed")
    model = load_segmenter(temporal_ckpt, device="cpu")
    out = export(model, tmp_path / ("net.onnx" if backend == "onnxruntime" else "net.xml"),
                 "onnx" if backend == "onnxruntime" else "openvino")
    assert parity(model, out, backend) <= 1e-4
    run = make_backend(model, backend)
    clip = torch.randn(3, 2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model.prediction({"Flow": clip})["Pred"]
    got = run(clip)
    assert got.shape == (3, 2, 3, 32, 48) and (got - ref).abs().max() <= 1e-4
    video = write_clip(tmp_path / "clip.avi", n_frames=6)
    for name in ("torch", backend):
        segment_video(model, video, tmp_path / name, SegmentOptions(progress=False, animation=False, backend=name,
                                                                    save_proba=True))
    for a, b in zip(_probas(tmp_path / "torch", 5), _probas(tmp_path / backend, 5)):
        assert np.abs(a - b).max() <= 1e-4


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_the_3d_temporal_network_exports_too(tmp_path, backend):
    from Models.backends import available_backends, parity
    from Models.CoherenceNets.MethodeB import MethodeB
    from Models.exporting import export
    from Models.network import SegmentationNetwork

    if backend not in available_backends():
        pytest.skip(f"{backend} is not installed")
    torch.manual_seed(0)
    model = MethodeB(**SMALL, clip_length=3, temporal_backbone="unet3d")
    path = tmp_path / "t3d.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    net = SegmentationNetwork.load_from_checkpoint(path)
    out = export(net, tmp_path / ("net.onnx" if backend == "onnxruntime" else "net.xml"),
                 "onnx" if backend == "onnxruntime" else "openvino")
    assert parity(net, out, backend) <= 1e-4
    # sizes other than the traced example's, odd ones included: the graph keeps the U-Net's padding
    odd = torch.randn(1, 2, 3, 30, 45, generator=torch.Generator().manual_seed(2))
    assert parity(net, out, backend, odd) <= 1e-4
