"""Benchmark preparation (csvflowdatamodule/datasets) on miniature trees in each dataset's published layout."""

from __future__ import annotations

import csv
import importlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from csvflowdatamodule.datasets import LayoutError, PreparationMismatchError, prepare
from csvflowdatamodule.datasets.__main__ import main as cli
from csvflowdatamodule.datasets.layouts import DAVIS16_TRAIN, DAVIS16_VAL, read_fbms_def
from emseg.core.flow_io import read_flow

try:
    from data_helpers import moving_square_frames
except ImportError:  # tests/ imported as a package
    from tests.data_helpers import moving_square_frames

prepare_module = importlib.import_module("csvflowdatamodule.datasets.prepare")
ROOT = Path(__file__).resolve().parent.parent
H, W, SIDE, START, STEP = 48, 64, 16, (8, 6), (3, 2)  # (dx, dy) px per frame


def _frames(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A textured square moving by STEP over a textured background; after 8 frames it starts again."""
    frames, masks = moving_square_frames(min(n, 8), h=H, w=W, side=SIDE, start=START, step=STEP, seed=seed)
    return [frames[t % 8] for t in range(n)], [masks[t % 8] for t in range(n)]


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _write_mask(path: Path, mask: np.ndarray, value: int = 255) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * value).save(path)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def make_davis(root: Path, seqs: dict[str, int], imagesets: bool = True) -> Path:
    """DAVIS-2016 as distributed: DAVIS/JPEGImages/480p/<seq>/00000.jpg, Annotations/480p/<seq>/00000.png,
    ImageSets/480p/{train,val}.txt."""
    d = root / "DAVIS"
    for k, (name, n) in enumerate(seqs.items()):
        frames, masks = _frames(n, seed=k)
        for t in range(n):
            _write_rgb(d / "JPEGImages" / "480p" / name / f"{t:05d}.jpg", frames[t])
            _write_mask(d / "Annotations" / "480p" / name / f"{t:05d}.png", masks[t])
    if imagesets:
        for step, names in (("train", DAVIS16_TRAIN), ("val", DAVIS16_VAL)):
            lines = [f"/JPEGImages/480p/{s}/{t:05d}.jpg /Annotations/480p/{s}/{t:05d}.png"
                     for s in names if s in seqs for t in range(seqs[s])]
            (d / "ImageSets" / "480p").mkdir(parents=True, exist_ok=True)
            (d / "ImageSets" / "480p" / f"{step}.txt").write_text("\n".join(lines) + "\n")
    return root


def _mtimes(d: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------------------------
# DAVIS
# ----------------------------------------------------------------------------------------------
def test_davis_prepare_writes_the_authors_layout_with_the_right_direction(tmp_path):
    root = make_davis(tmp_path, {"bear": 4, "boat": 3, "blackswan": 4, "car-shadow": 3})
    s = prepare("davis2016", root, progress=False)
    assert s["computed"] == 14 and s["reused"] == 0 and not s["skipped"]
    flow_root = root / "DAVIS" / "OpticalFlow020321" / "480p"
    for seq, n in {"bear": 4, "boat": 3, "blackswan": 4, "car-shadow": 3}.items():
        for t in range(n):  # every frame has a flow, the last one included
            assert (flow_root / seq / f"{t:05d}.flo").is_file()
            assert cv2.imread(str(flow_root / seq / f"{t:05d}.flo.png")).shape == (H, W, 3)
    # forward flow (t → t + 1) inside the square, and the last frame's (negated backward) flow too
    for t in (0, 3):
        f = read_flow(flow_root / "bear" / f"{t:05d}.flo")
        y0, x0 = START[0] + STEP[1] * t, START[1] + STEP[0] * t
        inner = f[y0 + 4: y0 + SIDE - 4, x0 + 4: x0 + SIDE - 4].reshape(-1, 2)
        assert np.allclose(np.median(inner, 0), STEP, atol=0.6), (t, np.median(inner, 0))
    train, val, test = (_rows(root / "DataSplit" / f"DAVIS16_{k}.csv") for k in ("train", "val", "test"))
    with open(root / "DataSplit" / "DAVIS16_train.csv") as fh:
        assert fh.readline().strip() == "Image,GtMask,Flow,FlowRGB"  # the authors' column order
    assert {r["Flow"].split("/")[3] for r in train} == {"bear", "boat"} and len(train) == 7
    assert {r["Flow"].split("/")[3] for r in val} == {"blackswan", "car-shadow"} and val == test
    assert train[0] == {"Image": "DAVIS/JPEGImages/480p/bear/00000.jpg",
                        "GtMask": "DAVIS/Annotations/480p/bear/00000.png",
                        "Flow": "DAVIS/OpticalFlow020321/480p/bear/00000.flo",
                        "FlowRGB": "DAVIS/OpticalFlow020321/480p/bear/00000.flo.png"}


def test_the_shipped_authors_datasplits_resolve_against_a_prepared_davis_tree(tmp_path):
    """The authors' CSVs (DAVIS_D16Split_*, Exp6_Split_*) name, for these sequences, exactly the files written."""
    counts = {}
    for name in ("DAVIS_D16Split_train", "DAVIS_D16Split_val"):
        for r in _rows(ROOT / "DataSplit" / f"{name}.csv"):
            seq = r["Flow"].split("/")[3]
            counts[seq] = counts.get(seq, 0) + 1
    seqs = {"car-shadow": counts["car-shadow"], "motocross-jump": counts["motocross-jump"]}  # 40 frames each
    root = make_davis(tmp_path, seqs, imagesets=False)  # the built-in standard splits
    s = prepare("davis2016", root, progress=False)
    assert s["computed"] == sum(seqs.values()) and s["n_rows"]["val"] == sum(seqs.values())
    ours = _rows(root / "DataSplit" / "DAVIS16_val.csv")
    for name in ("DAVIS_D16Split_val", "Exp6_Split_test"):
        theirs = [r for r in _rows(ROOT / "DataSplit" / f"{name}.csv") if r["Flow"].split("/")[3] in seqs]
        assert len(theirs) == sum(seqs.values())
        for r in theirs:
            for col, rel in r.items():
                assert (root / rel).is_file(), (name, col, rel)
        mine = [{k: r[k] for k in theirs[0]} for r in ours]
        assert mine == theirs  # same rows, same order
    for r in ours:
        assert read_flow(root / r["Flow"]).shape == (H, W, 2)


def test_a_rerun_does_no_work_and_recomputes_only_what_is_missing(tmp_path, monkeypatch):
    root = make_davis(tmp_path, {"bear": 4, "blackswan": 3})
    prepare("davis2016", root, progress=False)
    flow_root = root / "DAVIS" / "OpticalFlow020321" / "480p"
    before = _mtimes(flow_root / "bear")
    calls = []
    real = prepare_module.make_batch_estimator

    def counting(*a, **k):
        fn = real(*a, **k)
        return lambda A, B: (calls.append(len(A)), fn(A, B))[1]

    monkeypatch.setattr(prepare_module, "make_batch_estimator", counting)
    s = prepare("davis2016", root, progress=False)
    assert s["computed"] == 0 and s["reused"] == 7 and calls == []
    assert _mtimes(flow_root / "bear") == before  # nothing rewritten
    (flow_root / "bear" / "00001.flo").unlink()
    p = flow_root / "blackswan" / "00002.flo"
    p.write_bytes(p.read_bytes()[:100])  # truncated: fails the size check
    s = prepare("davis2016", root, progress=False)
    assert s["computed"] == 2 and s["reused"] == 5 and sum(calls) == 2
    assert read_flow(p).shape == (H, W, 2)


def test_some_sequences_only_keeps_the_rows_of_the_others(tmp_path):
    root = make_davis(tmp_path, {"bear": 3, "boat": 3})
    s = prepare("davis2016", root, sequences=["bear"], progress=False)
    assert s["computed"] == 3 and s["n_rows"]["train"] == 3
    s = prepare("davis2016", root, sequences=["boat"], progress=False)
    assert s["computed"] == 3 and s["n_rows"]["train"] == 6  # bear's rows kept
    with pytest.raises(LayoutError, match="nope"):
        prepare("davis2016", root, sequences=["nope"], progress=False)


def test_davis2017_unsupervised_merges_the_palette_objects(tmp_path):
    d = tmp_path / "DAVIS"
    frames, _ = _frames(3)
    pal = np.zeros((H, W), np.uint8)
    pal[2:8, 2:8], pal[20:30, 30:40] = 1, 2
    for t in range(3):
        _write_rgb(d / "JPEGImages" / "480p" / "dogs-jump" / f"{t:05d}.jpg", frames[t])
        im = Image.fromarray(pal, mode="P")
        im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
        (d / "Annotations_unsupervised" / "480p" / "dogs-jump").mkdir(parents=True, exist_ok=True)
        im.save(d / "Annotations_unsupervised" / "480p" / "dogs-jump" / f"{t:05d}.png")
    (d / "ImageSets" / "2017").mkdir(parents=True)
    (d / "ImageSets" / "2017" / "train.txt").write_text("\n")
    (d / "ImageSets" / "2017" / "val.txt").write_text("dogs-jump\n")
    s = prepare("davis2017", tmp_path, progress=False)
    rows = _rows(tmp_path / "DataSplit" / "DAVIS17_val.csv")
    assert s["computed"] == 3 and len(rows) == 3 and s["n_rows"]["train"] == 0
    assert rows[0]["GtMask"] == "DAVIS/Annotations_unsupervised/480p/dogs-jump/00000.png"
    from emseg.core.masks import decode_mask

    with Image.open(tmp_path / rows[0]["GtMask"]) as im:
        assert np.array_equal(decode_mask(im), pal > 0)  # both objects are foreground


def test_a_broken_frame_is_skipped_and_recorded(tmp_path):
    root = make_davis(tmp_path, {"bear": 5})
    bad = root / "DAVIS" / "JPEGImages" / "480p" / "bear" / "00002.jpg"
    bad.write_bytes(b"not a jpeg at all")
    s = prepare("davis2016", root, progress=False)
    rel = "DAVIS/JPEGImages/480p/bear/00002.jpg"
    assert s["skipped"] == [("bear", rel, "unreadable image")]
    assert _rows(Path(s["skipped_csv"])) == [{"sequence": "bear", "file": rel, "reason": "unreadable image"}]
    flows = [r["Flow"].rsplit("/", 1)[1] for r in _rows(root / "DataSplit" / "DAVIS16_train.csv")]
    assert flows == ["00000.flo", "00003.flo", "00004.flo"]  # 00001 (→ 00002) and 00002 have no flow
    s2 = prepare("davis2016", root, progress=False)  # a rerun retries only the broken pairs
    assert s2["computed"] == 0 and s2["reused"] == 3 and len(s2["skipped"]) == 1


def test_other_settings_in_the_same_folder_are_refused(tmp_path, capsys):
    root = make_davis(tmp_path, {"bear": 3})
    prepare("davis2016", root, progress=False)
    with pytest.raises(PreparationMismatchError, match="method"):
        prepare("davis2016", root, method="farneback", progress=False)
    assert cli(["prepare", "davis2016", "--root", str(root), "--method", "farneback", "--no_progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prepare: error:") and "\n" not in err and "--overwrite" in err
    s = prepare("davis2016", root, method="farneback", overwrite=True, progress=False)
    assert s["computed"] == 3
    s = prepare("davis2016", root, gap=2, progress=False)  # another gap: its own folder and CSVs
    assert (root / "DAVIS" / "OpticalFlow020321_gap2" / "480p" / "bear" / "00002.flo").is_file()
    assert Path(s["data_file"]).name == "DAVIS16_gap2"


def test_an_unrecognised_layout_names_the_path_it_expected(tmp_path, capsys):
    (tmp_path / "DAVIS" / "JPEGImages").mkdir(parents=True)
    with pytest.raises(LayoutError, match=str(tmp_path / "DAVIS" / "JPEGImages" / "480p")):
        prepare("davis2016", tmp_path, progress=False)
    with pytest.raises(LayoutError, match=str(tmp_path / "SegTrackv2" / "JPEGImages")):
        prepare("segtrackv2", tmp_path, progress=False)
    with pytest.raises(LayoutError, match=str(tmp_path / "FBMS59" / "Testset")):
        prepare("fbms59", tmp_path, progress=False)
    assert cli(["prepare", "fbms59", "--root", str(tmp_path / "nowhere")]) == 2
    assert "is not a directory" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# SegTrackV2
# ----------------------------------------------------------------------------------------------
def test_segtrackv2_merges_the_objects_into_one_foreground(tmp_path):
    d = tmp_path / "SegTrackv2"
    frames, masks = _frames(3)
    for t in range(3):  # one object, .png frames, masks named like the frames
        _write_rgb(d / "JPEGImages" / "girl" / f"girl_{t:05d}.png", frames[t])
        _write_mask(d / "GroundTruth" / "girl" / f"girl_{t:05d}.png", masks[t])
    frames2, _ = _frames(3, seed=5)
    obj1 = np.zeros((H, W), bool)
    obj1[2:10, 2:12] = True
    obj2 = np.zeros((H, W), bool)
    obj2[30:40, 40:60] = True
    for t in range(3):  # two objects in <obj_id>/ folders, .bmp frames
        _write_rgb(d / "JPEGImages" / "drift" / f"drift_{t:03d}.bmp", frames2[t])
        _write_mask(d / "GroundTruth" / "drift" / "1" / f"drift_{t:03d}.png", obj1)
        if t != 1:  # object 2 is not annotated in frame 1
            _write_mask(d / "GroundTruth" / "drift" / "2" / f"drift_{t:03d}.png", obj2, value=1)
    s = prepare("segtrackv2", tmp_path, progress=False)
    assert s["computed"] == 6 and s["masks_written"] == 6 and not s["skipped"]
    rows = _rows(tmp_path / "DataSplit" / "SegTrackV2_test.csv")
    assert len(rows) == 6 and rows == _rows(tmp_path / "DataSplit" / "SegTrackV2_train.csv")
    assert rows[0]["Flow"] == "SegTrackv2/OpticalFlow/drift/drift_000.flo"
    assert rows[0]["GtMask"] == "SegTrackv2/GroundTruthMerged/drift/drift_000.png"
    assert rows[0]["Image"] == "SegTrackv2/JPEGImages/drift/drift_000.bmp"
    m0 = np.asarray(Image.open(tmp_path / rows[0]["GtMask"]))
    assert set(np.unique(m0)) == {0, 255} and np.array_equal(m0 > 0, obj1 | obj2)
    m1 = np.asarray(Image.open(tmp_path / rows[1]["GtMask"]))
    assert np.array_equal(m1 > 0, obj1)
    g = np.asarray(Image.open(tmp_path / "SegTrackv2/GroundTruthMerged/girl/girl_00002.png")) > 0
    assert np.array_equal(g, masks[2])
    s2 = prepare("segtrackv2", tmp_path, progress=False)
    assert s2["computed"] == 0 and s2["masks_written"] == 0  # checked by the masks' SHA-1
    (tmp_path / rows[0]["GtMask"]).write_bytes(b"damaged")
    assert prepare("segtrackv2", tmp_path, progress=False)["masks_written"] == 1


# ----------------------------------------------------------------------------------------------
# FBMS-59
# ----------------------------------------------------------------------------------------------
def _def_dat(frames: dict[int, str], n: int) -> str:
    lines = ["Ground truth definition file; do not change!", "", "Total number of regions:", "2",
             "Color of region 0:", "255", "Color of region 1:", "128", "",
             "Total number of frames in this shot:", str(n), "Total number of labeled frames for this shot:",
             str(len(frames))]
    for f, name in frames.items():
        lines += ["Frame number:", str(f), "File name:", name]
    return "\n".join(lines) + "\n"


def test_fbms59_uses_only_the_annotated_frames_of_the_testset(tmp_path):
    d = tmp_path / "FBMS59"
    n = 23
    frames, masks = _frames(n)
    for t in range(n):  # cars1_01.jpg ... (1-based numbers, as distributed)
        _write_rgb(d / "Testset" / "cars1" / f"cars1_{t + 1:02d}.jpg", frames[t])
        _write_rgb(d / "Trainingset" / "bear01" / f"bear01_{t + 1:04d}.jpg", frames[t])
    gdir = d / "Testset" / "cars1" / "GroundTruth"
    gdir.mkdir(parents=True)
    for t in (0, 20):  # sparse: every 20th frame; white background, grey object (pgm)
        Image.fromarray(np.where(masks[t], 128, 255).astype(np.uint8)).save(gdir / f"cars1_{t + 1:02d}_gt.pgm")
    Image.fromarray(np.full((H, W), 7, np.uint8)).save(gdir / "cars1_01_PROB_gt.pgm")  # not an annotation
    (gdir / "cars1Def.dat").write_text(_def_dat({0: "cars1_01_gt.pgm", 20: "cars1_21_gt.pgm"}, n))
    # tennis-style names and colour (.ppm) annotations: black background, two coloured objects
    tdir = d / "Testset" / "tennis"
    tframes, _ = _frames(3, seed=2)
    for t in range(3):
        _write_rgb(tdir / f"tennis{t + 1:03d}.jpg", tframes[t])
    ppm = np.zeros((H, W, 3), np.uint8)
    ppm[5:15, 5:15] = (255, 0, 0)
    ppm[20:30, 30:50] = (0, 0, 255)
    (tdir / "GroundTruth").mkdir()
    Image.fromarray(ppm).save(tdir / "GroundTruth" / "tennis002_gt.ppm")  # no Def.dat: matched by number
    (d / "Trainingset" / "bear01" / "GroundTruth").mkdir()

    s = prepare("fbms59", tmp_path, progress=False)
    assert s["n_sequences"] == 2 and s["computed"] == 3 and s["masks_written"] == 3  # annotated frames only
    rows = _rows(tmp_path / "DataSplit" / "FBMS59_test.csv")
    assert [r["Image"] for r in rows] == ["FBMS59/Testset/cars1/cars1_01.jpg", "FBMS59/Testset/cars1/cars1_21.jpg",
                                          "FBMS59/Testset/tennis/tennis002.jpg"]
    assert rows[1]["Flow"] == "FBMS59/OpticalFlow/cars1/cars1_21.flo"
    assert sorted(p.name for p in (tmp_path / "FBMS59/OpticalFlow/cars1").glob("*.flo")) == \
        ["cars1_01.flo", "cars1_21.flo"]
    g = np.asarray(Image.open(tmp_path / rows[1]["GtMask"])) > 0
    assert np.array_equal(g, masks[20])  # the background colour (white) is what is not foreground
    tg = np.asarray(Image.open(tmp_path / rows[2]["GtMask"])) > 0
    assert np.array_equal(tg, ppm.any(-1))
    s_all = prepare("fbms59", tmp_path, fbms_set="all", all_frames=True, out=tmp_path / "all", progress=False)
    assert s_all["n_sequences"] == 3 and s_all["computed"] == n - 2 + 2 + n  # every frame of the 3 sequences


def test_fbms_def_dat_frame_numbers_are_indices_in_the_shot(tmp_path):
    p = tmp_path / "xDef.dat"
    p.write_text(_def_dat({0: "x_01_gt.pgm", 39: "x_40_gt.pgm"}, 50))
    assert read_fbms_def(p) == {"x_01_gt.pgm": 0, "x_40_gt.pgm": 39}


def test_raft_batches_give_the_flows_of_single_pairs(tmp_path):
    torch = pytest.importorskip("torch")
    from torchvision.models.optical_flow import raft_large

    from csvflowdatamodule.extract_flow import make_batch_estimator, make_estimator

    torch.manual_seed(0)
    weights = tmp_path / "raft.pth"
    torch.save(raft_large(weights=None, progress=False).state_dict(), weights)
    frames, _ = _frames(3)
    batch = make_batch_estimator("raft", weights, "cpu", raft_iters=1)(frames[:2], frames[1:])
    single = make_estimator("raft", weights, "cpu", raft_iters=1)
    for k in range(2):
        assert batch[k].shape == (H, W, 2)
        np.testing.assert_allclose(batch[k], single(frames[k], frames[k + 1]), atol=1e-3)
    if not torch.cuda.is_available():  # a clear one-line error, not a CUDA traceback
        with pytest.raises(ValueError, match="--device cuda: CUDA is not available"):
            make_batch_estimator("raft", weights, "cuda")


def test_prepared_davis_loads_in_the_data_module(tmp_path):
    from csvflowdatamodule.CsvDataModule import CsvDataModule

    root = make_davis(tmp_path, {"bear": 3, "blackswan": 3})
    s = prepare("davis2016", root, progress=False)
    dm = CsvDataModule(s["data_file"], base_dir=str(root), batch_size=3, request=["Flow", "Image", "GtMask"],
                       img_size=(32, 48), num_workers=0)
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert b["Flow"].shape == (3, 2, 32, 48) and b["GtMask"].shape == (3, 32, 48) and not b.get("Skipped")
    assert json.loads((root / "DAVIS/OpticalFlow020321/480p/prepare_manifest.json").read_text())["settings"] == \
        {"dataset": "davis2016", "method": "dis", "gap": 1}
    assert os.path.isfile(root / "DataSplit" / "DAVIS16_skipped.csv")
