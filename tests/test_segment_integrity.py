"""segment.py's output folder holds one run (issue 21, items 3 and 4): a second run at the same time is
refused, an earlier run is moved aside (or removed with --overwrite) so the folder and its manifest
describe this run's files only, inputs are never touched, --save_adapted never writes over a checkpoint
it did not create, and a video too small for the flow is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from emseg.app.run_folder import RunLock
from emseg.app.segment.app import segment_flows, segment_video
from emseg.app.segment.model import BUNDLED_CKPT, check_save_adapted, load_segmenter
from emseg.app.segment.options import SegmentOptions
from emseg.core.flow_io import write_flow
from tests.conftest import run_cli
from tests.test_segment import write_clip

OPTS = dict(progress=False, animation=False, backend="torch")


@pytest.fixture()
def model(small_ckpt):
    return load_segmenter(small_ckpt, device="cpu"), Path(small_ckpt)


def _flows(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    paths = []
    for t in range(n):
        p = folder / f"{t:05d}.flo"
        write_flow(str(p), rng.normal(0, 1, (24, 36, 2)).astype(np.float32))
        paths.append(p)
    return paths


def test_a_second_run_into_the_same_out_at_once_is_refused(model, tmp_path):
    net, _ = model
    out = tmp_path / "out"
    flows = _flows(tmp_path / "f", 2)
    with RunLock(str(out), flag="--out"):
        with pytest.raises(ValueError, match=r"in use by another run .*choose another --out"):
            segment_flows(net, flows, out, opts=SegmentOptions(**OPTS))
    assert not (out / "manifest.json").exists()


def test_a_shorter_rerun_leaves_only_its_own_frames_and_keeps_the_earlier_run(model, tmp_path, caplog):
    net, _ = model
    out = tmp_path / "out"
    long_clip = write_clip(tmp_path / "long.avi", n_frames=6)
    segment_video(net, long_clip, out, SegmentOptions(**OPTS))
    (out / "00009_overlay.png").write_bytes(b"left by a killed run")
    (out / ".manifest.json.123.abc.tmp").write_text("{")
    notes = out / "notes.txt"
    notes.write_text("mine")
    short = write_clip(tmp_path / "short.avi", n_frames=3)
    segment_video(net, short, out, SegmentOptions(**OPTS))
    masks = sorted(p.name for p in out.glob("*_binary.png"))
    assert masks == ["00000_binary.png", "00001_binary.png"]  # not the longer run's 00002-00004
    assert not (out / "00009_overlay.png").exists() and not list(out.glob(".*.tmp"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["n_segmented"] == len(masks)
    assert notes.read_text() == "mine"  # not a file of a run: left alone
    (aside,) = tmp_path.glob("out.previous-*")
    assert sorted(p.name for p in aside.glob("*_binary.png")) == [f"{t:05d}_binary.png" for t in range(5)]
    assert (aside / "00009_overlay.png").exists() and "moved its" in caplog.text
    # --overwrite: the earlier run is removed, not kept
    segment_video(net, long_clip, out, SegmentOptions(overwrite=True, **OPTS))
    assert len(list(out.glob("*_binary.png"))) == 5 and len(list(tmp_path.glob("out.previous-*"))) == 1


def test_flow_files_inside_out_are_inputs_and_never_moved(model, tmp_path):
    net, _ = model
    folder = tmp_path / "seq"
    flows = _flows(folder, 3)
    for _ in range(2):
        segment_flows(net, flows, folder, opts=SegmentOptions(**{**OPTS, "overlays": True, "save_proba": True}))
        assert all(p.exists() for p in flows)
    assert len(list(folder.glob("*_binary.png"))) == 3 and len(list(folder.glob("*_proba.npy"))) == 3
    (aside,) = tmp_path.glob("seq.previous-*")
    assert not list(aside.glob("*.flo")) and len(list(aside.glob("*_proba.npy"))) == 3


def test_save_adapted_never_writes_over_a_checkpoint_it_did_not_create(model, tmp_path):
    _, ckpt = model
    with pytest.raises(ValueError, match="is the bundled model; it is never written over"):
        check_save_adapted(BUNDLED_CKPT, None, overwrite=True)
    with pytest.raises(ValueError, match=r"is the checkpoint being adapted \(--ckpt\)"):
        check_save_adapted(ckpt, ckpt, overwrite=True)
    other = tmp_path / "other.ckpt"
    other.write_bytes(b"an earlier file")
    with pytest.raises(ValueError, match="exists; pass --overwrite"):
        check_save_adapted(other, ckpt)
    check_save_adapted(other, ckpt, overwrite=True)
    check_save_adapted(tmp_path / "new.ckpt", ckpt)
    before = BUNDLED_CKPT.read_bytes()[:4096]
    proc = run_cli(["segment.py", "--video", write_clip(tmp_path / "c.avi", n_frames=3), "--out", str(tmp_path / "o"),
                    "--adapt", "1", "--save_adapted", str(BUNDLED_CKPT)], expect_ok=False)
    assert proc.returncode != 0 and "is the bundled model" in proc.stderr.strip().splitlines()[-1]
    assert BUNDLED_CKPT.read_bytes()[:4096] == before and not (tmp_path / "o").exists()


@pytest.mark.parametrize("side", [1, 2])
def test_a_video_too_small_for_the_flow_is_one_line(tmp_path, side):
    import cv2

    path = tmp_path / f"tiny{side}.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (side, side))
    for _ in range(4):
        writer.write(np.full((side, side, 3), 128, np.uint8))
    writer.release()
    proc = run_cli(["segment.py", "--video", str(path), "--out", str(tmp_path / "o")], expect_ok=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"{side}x{side} frames are too small for the optical flow" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "o" / "manifest.json").exists()
