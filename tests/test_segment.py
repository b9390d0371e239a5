"""segment.py: flows or a video in, probabilities, masks, overlays and a GIF out."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import segment as segment_cli
from csvflowdatamodule.CsvDataset import write_flow
from emseg.app.segmentation import (
    BUNDLED_CKPT,
    FLOW_WIDTH_HPARAM,
    SegmentOptions,
    list_flows,
    load_segmenter,
    segment_flows,
    segment_video,
)
from Models.CoherenceNets.MethodeB import MethodeB
from tests.conftest import ROOT, SMALL, read_csv, run_cli  # noqa: F401  (SMALL: importable from here as before)

FLO = str(Path(ROOT) / "images" / "00000.flo")



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


def write_clip(path, n_frames=4, size=(96, 72), fps=10):
    """A textured background and a square moving 3 px/frame to the right, as MJPG AVI."""
    rng = np.random.default_rng(0)
    W, H = size
    bg = cv2.GaussianBlur((rng.random((H, W, 3)) * 255).astype(np.uint8), (5, 5), 0)
    square = (rng.random((20, 20, 3)) * 255).astype(np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (W, H))
    for t in range(n_frames):
        frame = bg.copy()
        frame[20:40, 20 + 3 * t:40 + 3 * t] = square
        writer.write(frame)
    writer.release()
    return str(path)


def test_segment_video_cli(tmp_path, small_ckpt):
    video = write_clip(tmp_path / "clip.avi")
    out = run_cli(["segment.py", "--video", video, "--ckpt", small_ckpt, "--out", str(tmp_path / "seg")])
    outs = sorted(p.name for p in (tmp_path / "seg").iterdir())
    assert "segmentation.mp4" in outs and "manifest.json" in outs
    assert [n for n in outs if n.endswith("_binary.png")] == [f"{t:05d}_binary.png" for t in range(3)]  # 3 flows
    assert not any(n.endswith(("_overlay.png", "_proba.npy")) for n in outs)  # opt-in for a video
    assert cv2.imread(str(tmp_path / "seg" / "00000_binary.png"), 0).shape == (72, 96)  # the frame's size
    cap = cv2.VideoCapture(str(tmp_path / "seg" / "segmentation.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3 and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10)
    manifest = json.loads((tmp_path / "seg" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["decoded_frames"] == 4 and manifest["n_segmented"] == 3
    assert "frames/s" in out.stdout


def test_video_outputs_on_request_and_the_same_masks_with_or_without_them(tmp_path, small_ckpt):
    video = write_clip(tmp_path / "clip.avi", n_frames=5)
    model = load_segmenter(small_ckpt, device="cpu")
    a = segment_video(model, video, tmp_path / "a", SegmentOptions(progress=False, animation=False))
    b = segment_video(model, video, tmp_path / "b", SegmentOptions(progress=False, overlays=True, save_proba=True,
                                                                   save_flows=True, batch_size=3))
    assert a["n_flows"] == b["n_flows"] == 4
    for t in range(4):
        ma = cv2.imread(str(tmp_path / "a" / f"{t:05d}_binary.png"), 0)
        mb = cv2.imread(str(tmp_path / "b" / f"{t:05d}_binary.png"), 0)
        assert np.array_equal(ma, mb)  # batching and the extra outputs change nothing
        assert (tmp_path / "b" / f"{t:05d}_overlay.png").is_file()
        assert np.load(tmp_path / "b" / f"{t:05d}_proba.npy").shape == (2, 32, 48)
    flows = np.load(tmp_path / "b" / "flows.npz")["flows"]
    assert flows.shape == (4, 72, 96, 2) and flows.dtype == np.float16


def test_video_flow_is_computed_at_the_models_recorded_width(tmp_path, small_ckpt):
    ckpt = torch.load(small_ckpt, weights_only=True)
    ckpt["hyper_parameters"][FLOW_WIDTH_HPARAM] = 48
    torch.save(ckpt, tmp_path / "w48.ckpt")
    model = load_segmenter(str(tmp_path / "w48.ckpt"), device="cpu")
    video = write_clip(tmp_path / "clip.avi")
    segment_video(model, video, tmp_path / "s", SegmentOptions(progress=False, save_flows=True, animation=False))
    assert np.load(tmp_path / "s" / "flows.npz")["flows"].shape == (3, 36, 48, 2)
    segment_video(model, video, tmp_path / "o", SegmentOptions(progress=False, save_flows=True, animation=False,
                                                                max_width=64))
    assert np.load(tmp_path / "o" / "flows.npz")["flows"].shape == (3, 48, 64, 2)  # --max_width overrides
    # masks stay at the frame's own size
    assert cv2.imread(str(tmp_path / "s" / "00000_binary.png"), 0).shape == (72, 96)


def test_truncated_video_is_an_error_unless_allowed(tmp_path, small_ckpt):
    video = tmp_path / "clip.avi"
    write_clip(video, n_frames=12)
    data = video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])  # the header still says 12 frames
    cap = cv2.VideoCapture(str(cut))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    out = run_cli(["segment.py", "--video", str(cut), "--ckpt", small_ckpt, "--out", str(tmp_path / "c")],
                  expect_ok=False)
    assert out.returncode != 0 and "of the 12 frames" in out.stderr and "--allow_partial" in out.stderr
    assert "Traceback" not in out.stderr
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["status"] == "partial"
    run_cli(["segment.py", "--video", str(cut), "--ckpt", small_ckpt, "--out", str(tmp_path / "d"),
             "--allow_partial"])


def segment_main_error(args: list[str], capsys) -> str:
    """Run segment.py's main in-process; it must exit non-zero with one line (after argparse's usage,
    for argument errors) and no traceback: return that line."""
    with pytest.raises(SystemExit) as exc:
        segment_cli.main(args)
    code = exc.value.code
    message = code if isinstance(code, str) else capsys.readouterr().err
    assert code not in (0, None), message
    assert "Traceback" not in str(message)
    lines = str(message).strip().splitlines()
    assert isinstance(code, str) and len(lines) == 1 or "error:" in lines[-1], message
    return lines[-1]


@pytest.mark.parametrize("kind", ["missing", "empty", "text"])
def test_unreadable_videos_give_one_line(tmp_path, small_ckpt, kind, capsys):
    video = tmp_path / "v.mp4"
    if kind == "empty":
        video.write_bytes(b"")
    elif kind == "text":
        video.write_text("this is not a video\n" * 100)
    line = segment_main_error(["--video", str(video), "--ckpt", small_ckpt, "--out", str(tmp_path / "o")], capsys)
    assert "--video" in line and "v.mp4" in line
    assert {"missing": "no such file", "empty": "empty", "text": "cannot open"}[kind] in line


@pytest.mark.parametrize("args, needle", [
    (["--batch_size", "0"], "--batch_size must be >= 1"),
    (["--max_width", "-5"], "--max_width must be >= 1"),
    (["--max_width", "0"], "--max_width must be >= 1"),
    (["--min_motion", "-1"], "--min_motion must be >= 0"),
    (["--min_motion", "nan"], "--min_motion must be a finite number"),
    (["--fusion_weight", "inf"], "--fusion_weight must be a finite number"),
    (["--fusion_weight", "-0.5"], "--fusion_weight must be >= 0"),
    (["--adapt_lr", "0"], "--adapt_lr must be > 0"),
    (["--batch_size", "two"], "--batch_size must be an integer"),
    (["--adapt", "5"], "--adapt needs --video"),
])
def test_segment_bad_arguments_give_one_line(tmp_path, small_ckpt, args, needle, capsys):
    line = segment_main_error(["--flow", FLO, "--ckpt", small_ckpt, "--out", str(tmp_path / "o"),
                               *args], capsys)
    assert needle in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_device_cuda_without_cuda_is_one_line(tmp_path, small_ckpt, capsys):
    line = segment_main_error(["--flow", FLO, "--ckpt", small_ckpt, "--out", str(tmp_path / "o"),
                               "--device", "cuda"], capsys)
    assert "CUDA is not available" in line


def test_flows_dir_skips_and_records_a_bad_file(tmp_path, small_ckpt):
    flows = tmp_path / "flows"
    flows.mkdir()
    for t in range(4):
        write_flow(str(flows / f"{t:05d}.flo"), moving_square_flow(shift=1.0 + t))
    (flows / "00002.flo").write_bytes(b"PIEH garbage")
    out = run_cli(["segment.py", "--flows", str(flows), "--ckpt", small_ckpt, "--out", str(tmp_path / "o")])
    assert "3 flow(s)" in out.stdout and "1 unreadable" in out.stdout
    skipped = read_csv(tmp_path / "o" / "skipped.csv")
    assert [Path(r["file"]).name for r in skipped] == ["00002.flo"] and skipped[0]["reason"]
    assert not (tmp_path / "o" / "00002_binary.png").exists()
    assert all((tmp_path / "o" / f"{t:05d}_binary.png").exists() for t in (0, 1, 3))


def test_flows_dir_refuses_files_that_would_share_outputs(tmp_path):
    (tmp_path / "00004.flo").write_bytes(b"")
    np.save(tmp_path / "00004.npy", np.zeros((4, 4, 2), np.float32))
    with pytest.raises(ValueError, match="00004.flo and 00004.npy would write the same outputs"):
        list_flows(flows=str(tmp_path))


def test_adapt_from_the_command_line_keeps_the_adapted_weights(tmp_path, small_ckpt):
    video = write_clip(tmp_path / "clip.avi", n_frames=5)
    run_cli(["segment.py", "--video", video, "--ckpt", small_ckpt, "--out", str(tmp_path / "o"), "--adapt", "3",
             "--save_adapted", str(tmp_path / "adapted.ckpt"), "--no_animation"],
            env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["adaptation"]["steps"] == 3 and manifest["adaptation"]["loss_after"] > 0
    # the adapted network is this run's alone: its export is not kept in the cache
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.suffix in (".xml", ".bin", ".onnx")]
    adapted = MethodeB.load_from_checkpoint(str(tmp_path / "adapted.ckpt"))
    original = MethodeB.load_from_checkpoint(small_ckpt)
    diff = max(float((a - b).abs().max()) for a, b in zip(adapted.state_dict().values(),
                                                              original.state_dict().values()) if a.is_floating_point())
    assert diff > 0


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


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_every_backend_writes_the_same_masks(tmp_path, small_ckpt, backend):
    from Models.backends import available_backends

    if backend not in available_backends():
        pytest.skip(f"{backend} is not installed")
    video = write_clip(tmp_path / "clip.avi", n_frames=5)
    model = load_segmenter(small_ckpt, device="cpu")
    for name in ("torch", backend):
        segment_video(model, video, tmp_path / name, SegmentOptions(progress=False, animation=False, backend=name,
                                                                    save_proba=True))
    for t in range(4):
        assert np.array_equal(cv2.imread(str(tmp_path / "torch" / f"{t:05d}_binary.png"), 0),
                              cv2.imread(str(tmp_path / backend / f"{t:05d}_binary.png"), 0))
        pa, pb = (np.load(tmp_path / n / f"{t:05d}_proba.npy") for n in ("torch", backend))
        assert np.abs(pa - pb).max() <= 1e-4


def test_video_keeps_its_export_for_the_next_run_unless_told_not_to(tmp_path, small_ckpt, monkeypatch):
    import Models.backends as B

    exported = [n for n in ("openvino", "onnxruntime") if n in B.available_backends()]
    if not exported:
        pytest.skip("no onnxruntime nor openvino installed")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    video = write_clip(tmp_path / "clip.avi", n_frames=3)
    model = load_segmenter(small_ckpt, device="cpu")
    opts = dict(progress=False, animation=False, backend=exported[0])
    segment_video(model, video, tmp_path / "a", SegmentOptions(**opts))
    kept = sorted(p.name for p in (tmp_path / "cache" / "em_motion_segmentation" / "exports").iterdir())
    assert len([n for n in kept if n.endswith((".xml", ".onnx"))]) == 1

    def no_export(*args, **kwargs):
        raise AssertionError("the kept export should have been reused")

    monkeypatch.setattr(B, "export_onnx", no_export)
    monkeypatch.setattr(B, "export_openvino", no_export)
    segment_video(model, video, tmp_path / "b", SegmentOptions(**opts))
    for t in range(2):
        assert np.array_equal(cv2.imread(str(tmp_path / "a" / f"{t:05d}_binary.png"), 0),
                              cv2.imread(str(tmp_path / "b" / f"{t:05d}_binary.png"), 0))
    monkeypatch.undo()

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other"))
    segment_video(model, video, tmp_path / "c", SegmentOptions(keep_export=False, **opts))
    assert not (tmp_path / "other").exists()


def test_video_network_leaves_a_core_to_the_flow_thread(tmp_path, small_ckpt):
    video = write_clip(tmp_path / "clip.avi", n_frames=3)
    model = load_segmenter(small_ckpt, device="cpu")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        segment_video(model, video, tmp_path / "seg", SegmentOptions(progress=False, animation=False, backend="torch"))
        assert torch.get_num_threads() == 2  # the torch backend's own count is not left behind
        manifest = json.loads((tmp_path / "seg" / "manifest.json").read_text())
        assert manifest["network_threads"] == 1
        torch.set_num_threads(1)
        segment_video(model, video, tmp_path / "one", SegmentOptions(progress=False, animation=False, backend="torch"))
        assert json.loads((tmp_path / "one" / "manifest.json").read_text())["network_threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_overlay_blends_each_label_colour_and_outlines_the_foreground():
    from emseg.app.segmentation import PALETTE, overlay

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (12, 15, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, (12, 15)).astype(np.uint8)  # 10 labels: the 8 colours wrap
    binary = np.zeros((12, 15), bool)
    binary[3:8, 4:11] = True
    binary[0, :3] = True  # touches the border: outside the image counts as inside (no edge there)
    out = overlay(base, labels, binary, alpha=0.45)
    assert out.dtype == np.uint8 and out.shape == base.shape
    edge = np.zeros_like(binary)
    edge[3:8, 4:11] = True
    edge[4:7, 5:10] = False  # the square's outline
    edge[0, :3] = True       # a 1-pixel-high strip is all edge (its 4-neighbours below are outside it)
    assert (out[edge] == 255).all()
    expected = 0.55 * base.astype(np.float64) + 0.45 * PALETTE[labels % len(PALETTE)].astype(np.float64)
    assert np.abs(out[~edge].astype(np.float64) - expected[~edge]).max() <= 0.5 + 1e-6  # rounded


def test_help_needs_no_torch():
    """segment.py --help (and parsing) reads only the settings: no torch, Lightning or backend."""
    code = ("import sys, segment; segment.build_parser().format_help(); "
            "heavy = {'torch', 'pytorch_lightning', 'openvino', 'onnxruntime', 'matplotlib'} & set(sys.modules); "
            "assert not heavy, heavy")
    run_cli(["-c", code])


def test_a_video_source_started_early_gives_the_same_masks(tmp_path, small_ckpt):
    from emseg.app.segment.model import flow_width_of, peek_hparams
    from emseg.app.segment.source import VideoSource

    assert peek_hparams(small_ckpt) == torch.load(small_ckpt, weights_only=True)["hyper_parameters"]
    assert peek_hparams(FLO) is None  # not a checkpoint: the caller waits for the model
    video = write_clip(tmp_path / "clip.avi", n_frames=6)
    model = load_segmenter(small_ckpt, device="cpu")
    opts = SegmentOptions(progress=False, animation=False, save_flows=True)
    segment_video(model, video, tmp_path / "a", opts)
    early = VideoSource(video, opts, flow_width_of(model, None)).start()
    segment_video(model, video, tmp_path / "b", opts, source=early)
    wrong = VideoSource(video, opts, 40).start()  # not the model's width: computed again
    segment_video(model, video, tmp_path / "c", opts, source=wrong)
    for out in ("b", "c"):
        for t in range(5):
            assert np.array_equal(cv2.imread(str(tmp_path / "a" / f"{t:05d}_binary.png"), 0),
                                  cv2.imread(str(tmp_path / out / f"{t:05d}_binary.png"), 0))
        assert np.array_equal(np.load(tmp_path / "a" / "flows.npz")["flows"],
                              np.load(tmp_path / out / "flows.npz")["flows"])
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".") or "tmp" in p.name]


def test_video_io_is_the_one_downscale_rule():
    from csvflowdatamodule.extract_flow import _fit_width
    from emseg.core.video_io import fit_width

    frame = np.random.default_rng(0).integers(0, 255, (75, 101, 3), dtype=np.uint8)
    for w in (None, 101, 200, 64, 33):
        assert np.array_equal(fit_width(frame, w), _fit_width(frame, w))
    assert fit_width(frame, 64).shape == (48, 64, 3) and fit_width(frame, 200) is frame
