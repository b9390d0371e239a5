"""Flow extraction from a short clip made here (csvflowdatamodule/extract_flow.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from csvflowdatamodule.CsvDataset import CsvDataset, read_flow
from csvflowdatamodule.extract_flow import SourceMismatchError, extract_flow, main

try:
    from data_helpers import moving_square_frames
except ImportError:  # tests/ imported as a package
    from tests.data_helpers import moving_square_frames

STEP = (3, 2)  # (dx, dy) px per frame
SIDE, START = 28, (18, 16)


def _write_frames(d: Path, frames: list[np.ndarray], names: list[str] | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for k, f in enumerate(frames):
        cv2.imwrite(str(d / (names[k] if names else f"img_{k}.png")), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    return d


def _write_video(path: Path, frames: list[np.ndarray]) -> Path:
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 10, (w, h))  # lossless
    assert vw.isOpened()
    for f in frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    vw.release()
    return path


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _square_error(flow: np.ndarray, t: int, gap: int = 1, margin: int = 4, side: int = SIDE) -> np.ndarray:
    """Per-pixel end-point error inside the square of frame t (away from its border)."""
    y0, x0 = START[0] + STEP[1] * t, START[1] + STEP[0] * t
    inner = flow[y0 + margin: y0 + side - margin, x0 + margin: x0 + side - margin]
    return np.linalg.norm(inner - np.array(STEP, np.float32) * gap, axis=2)


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_extracted_flow_inside_the_square_is_within_half_a_pixel(tmp_path, method):
    frames, _ = moving_square_frames(4)
    src = _write_frames(tmp_path / "src", frames)
    out = tmp_path / "out"
    summary = extract_flow(out, frames=src, method=method, progress=False)
    assert summary["n_frames"] == 4 and summary["n_flows"] == 3 and summary["computed"] == 3
    for t in range(3):
        flow = read_flow(out / "flows" / f"{t:05d}.flo")
        assert flow.shape == (72, 96, 2)
        err = _square_error(flow, t)
        if method == "dis":  # the default: every pixel inside the square within 0.5 px
            assert err.max() < 0.5, (method, t, float(err.max()))
        else:  # Farneback is less precise near the square's corners
            assert np.percentile(err, 90) < 0.5, (method, t, float(np.percentile(err, 90)))
        bg = np.linalg.norm(flow[:, -12:], axis=2)  # static background (right edge, never covered)
        assert np.median(bg) < 0.1
    rows = _rows(out / "flow_train.csv")
    assert rows[0] == ["Flow", "Image"] and len(rows) == 4
    assert rows[1] == ["flows/00000.flo", "frames/00000.png"]
    assert _rows(out / "flow_val.csv") == rows and _rows(out / "flow_test.csv") == rows
    frame0 = cv2.cvtColor(cv2.imread(str(out / "frames" / "00000.png")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(frame0, frames[0])
    ds = CsvDataset(out / "flow_train.csv", out, (32, 48), ["Flow", "Image", "GtMask"])
    assert ds[2]["Flow"].shape == (2, 32, 48) and ds[2]["Image"].shape == (3, 32, 48)


def test_video_source_gap_and_masks(tmp_path):
    frames, masks = moving_square_frames(5, h=96, w=128, side=36)
    video = _write_video(tmp_path / "clip.avi", frames)
    mdir = tmp_path / "masks"
    mdir.mkdir()
    for t, m in enumerate(masks):
        cv2.imwrite(str(mdir / f"{t:05d}.png"), m.astype(np.uint8) * 255)
    out = tmp_path / "out"
    summary = extract_flow(out, video=video, gap=2, masks=mdir, data_file="clip", progress=False)
    assert summary["n_frames"] == 5 and summary["n_flows"] == 3 and summary["n_masks"] == 3
    assert summary["data_file"] == str(out / "clip")
    for t in range(3):
        assert _square_error(read_flow(out / "flows" / f"{t:05d}.flo"), t, gap=2, side=36).max() < 0.5
    rows = _rows(out / "clip_train.csv")
    assert rows[0] == ["Flow", "Image", "GtMask"] and rows[3] == ["flows/00002.flo", "frames/00002.png",
                                                                  "masks/00002.png"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["type"] == "video" and manifest["source"]["path"] == str(video.resolve())
    assert manifest["source"]["size_bytes"] == video.stat().st_size and manifest["n_frames"] == 5
    assert manifest["gap"] == 2 and manifest["method"] == "dis" and manifest["status"] == "complete"
    ds = CsvDataset(out / "clip_test.csv", out, None, ["Flow", "GtMask"])
    assert ds[1]["GtMask"].sum() == 36 * 36


def test_partial_masks_give_a_labelled_split(tmp_path):
    frames, masks = moving_square_frames(4)
    names = [f"frame{k}.jpg" if k % 2 else f"frame{k}.png" for k in range(4)]  # mixed formats, natural order
    src = _write_frames(tmp_path / "src", frames, names)
    mdir = tmp_path / "m"
    mdir.mkdir()
    cv2.imwrite(str(mdir / "frame2.png"), masks[2].astype(np.uint8) * 255)
    out = tmp_path / "out"
    summary = extract_flow(out, frames=src, masks=mdir, progress=False)
    assert summary["n_masks"] == 1
    assert _rows(out / "flow_train.csv")[0] == ["Flow", "Image"]
    labelled = _rows(out / "flow_labelled_val.csv")
    assert labelled == [["Flow", "Image", "GtMask"], ["flows/00002.flo", "frames/00002.png", "masks/00002.png"]]


def test_rerun_skips_written_flows_and_other_sources_are_refused(tmp_path):
    frames, _ = moving_square_frames(3)
    src = _write_frames(tmp_path / "src", frames)
    out = tmp_path / "out"
    extract_flow(out, frames=src, progress=False)
    flo = out / "flows" / "00000.flo"
    mtime = flo.stat().st_mtime_ns
    again = extract_flow(out, frames=src, progress=False)
    assert again["computed"] == 0 and again["reused"] == 2 and flo.stat().st_mtime_ns == mtime
    (out / "flows" / "00001.flo").write_bytes(b"half")  # a damaged flow is recomputed
    fixed = extract_flow(out, frames=src, progress=False)
    assert fixed["computed"] == 1 and read_flow(out / "flows" / "00001.flo").shape == (72, 96, 2)

    other_frames, _ = moving_square_frames(3, seed=1)
    other = _write_frames(tmp_path / "other", other_frames)
    with pytest.raises(SourceMismatchError, match="another extraction"):
        extract_flow(out, frames=other, progress=False)
    with pytest.raises(SourceMismatchError, match="method"):
        extract_flow(out, frames=src, method="farneback", progress=False)
    assert flo.stat().st_mtime_ns == mtime  # nothing was touched
    replaced = extract_flow(out, frames=other, overwrite=True, progress=False)
    assert replaced["computed"] == 2
    assert json.loads((out / "manifest.json").read_text())["source"]["path"] == str(other.resolve())

    stray = tmp_path / "stray"
    (stray / "flows").mkdir(parents=True)
    (stray / "flows" / "x.flo").write_bytes(b"")
    with pytest.raises(SourceMismatchError, match="without a manifest"):
        extract_flow(stray, frames=src, progress=False)


def test_argument_errors(tmp_path):
    frames, _ = moving_square_frames(2)
    src = _write_frames(tmp_path / "src", frames)
    with pytest.raises(ValueError, match="exactly one"):
        extract_flow(tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match="at least gap"):
        extract_flow(tmp_path / "o2", frames=src, gap=2, progress=False)
    with pytest.raises(ValueError, match="method"):
        extract_flow(tmp_path / "o3", frames=src, method="pwc", progress=False)
    with pytest.raises(FileNotFoundError):
        extract_flow(tmp_path / "o4", video=tmp_path / "none.mp4", progress=False)
    with pytest.raises(SystemExit):
        main(["--frames", str(src), "--video", "x.mp4", "--out", str(tmp_path / "o5")])
    with pytest.raises(SystemExit, match="--raft_weights"):  # a one-line message, not a traceback
        main(["--frames", str(src), "--out", str(tmp_path / "o6"), "--method", "raft"])
    for width in ("-5", "0"):
        with pytest.raises(SystemExit, match=f"--max_width must be at least 8 pixels, got {width}"):
            main(["--frames", str(src), "--out", str(tmp_path / "o7"), "--max_width", width])
        assert not (tmp_path / "o7").exists()  # refused before any output


def test_raft_without_weights_says_what_to_do(tmp_path):
    frames, _ = moving_square_frames(2)
    src = _write_frames(tmp_path / "src", frames)
    with pytest.raises(ValueError, match="--raft_weights") as info:
        extract_flow(tmp_path / "o", frames=src, method="raft", progress=False)
    assert "download" in str(info.value) and ".pth" in str(info.value)
    with pytest.raises(FileNotFoundError, match="--raft_weights"):
        extract_flow(tmp_path / "o", frames=src, method="raft", raft_weights=tmp_path / "no.pth", progress=False)
    assert not (tmp_path / "o").exists()  # failed before writing anything


@pytest.mark.slow
def test_raft_runs_with_a_local_weights_file(tmp_path):
    import torch
    from torchvision.models.optical_flow import raft_large

    torch.manual_seed(0)
    weights = tmp_path / "raft.pth"
    torch.save(raft_large(weights=None, progress=False).state_dict(), weights)
    frames, _ = moving_square_frames(2, h=40, w=52, side=12, start=(8, 8))
    src = _write_frames(tmp_path / "src", frames)
    summary = extract_flow(tmp_path / "o", frames=src, method="raft", raft_weights=weights, raft_iters=1,
                           device="cpu", progress=False)
    flow = read_flow(tmp_path / "o" / "flows" / "00000.flo")
    assert summary["computed"] == 1 and flow.shape == (40, 52, 2) and np.isfinite(flow).all()


def test_cli(tmp_path, capsys):
    frames, _ = moving_square_frames(3)
    src = _write_frames(tmp_path / "src", frames)
    summary = main(["--frames", str(src), "--out", str(tmp_path / "o"), "--data_file", "mine"])
    assert summary["n_flows"] == 2 and (tmp_path / "o" / "mine_val.csv").is_file()
    assert "--data_file" in capsys.readouterr().out


def test_max_width_downscales_frames_before_the_flow(tmp_path):
    frames, _ = moving_square_frames(3, h=144, w=192, side=56, start=(36, 32))
    src = _write_frames(tmp_path / "src", frames)
    out = tmp_path / "out"
    extract_flow(out, frames=src, method="dis", progress=False, max_width=96)
    flow = read_flow(out / "flows" / "00000.flo")
    assert flow.shape == (72, 96, 2)  # half size, aspect kept
    assert cv2.imread(str(out / "frames" / "00000.png")).shape[:2] == (72, 96)
    # vectors shrink with the frames: the square moves (3, 2) px at full size → about (1.5, 1) here
    inner = flow[18 + 6:18 + 28 - 6, 16 + 6:16 + 28 - 6]
    assert np.allclose(np.median(inner.reshape(-1, 2), axis=0), [1.5, 1.0], atol=0.3)
    with pytest.raises(SourceMismatchError):  # another width into the same --out is another source
        extract_flow(out, frames=src, method="dis", progress=False, max_width=64)
