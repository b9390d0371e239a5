"""Clips of consecutive flows (csvflowdatamodule/clips.py), their clip-level transforms, the data
module's --clip_length / --clip_stride and the synthetic data's smooth motions."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from csvflowdatamodule import synthetic
from csvflowdatamodule.clips import CsvClipDataset, clip_starts, sequence_of
from csvflowdatamodule.CsvDataModule import CsvDataModule, collate_skipping
from csvflowdatamodule.dataset import CsvDataset, DataFileError, FilesLoaders, write_flow
from csvflowdatamodule.Transforms import LOSS_FLOW_KEY, TransformsComposer
from emseg.core import hparams as H
from tests.data_helpers import H as IMG_H
from tests.data_helpers import W as IMG_W
from tests.data_helpers import random_flow, write_csv

COLUMNS = ["Flow", "Image", "GtMask"]
#: sequence → frames; seqC is shorter than every clip below; seqD's names need numeric sorting
SEQS = {"seqA": 7, "seqB": 3, "seqC": 1, "seqD": 12}


def frame_name(k: int, zero_pad: bool) -> str:
    return f"{k:05d}" if zero_pad else f"f_{k}"


def make_seq_split(base: Path, seqs: dict[str, int] = SEQS, shuffle: bool = True, zero_pad: bool = False,
                   seed: int = 0, sizes: dict[tuple[str, int], tuple[int, int]] | None = None) -> str:
    """A DataSplit whose rows are frames of ``seqs`` (folders ``flows/SEQ/``), listed in a shuffled
    order unless ``shuffle`` is False; the same rows in train, val and test. Returns the prefix."""
    rng = np.random.default_rng(seed)
    rows = []
    for seq, n in seqs.items():
        for k in range(n):
            h, w = (sizes or {}).get((seq, k), (IMG_H, IMG_W))
            name = frame_name(k, zero_pad)
            rel = {"Flow": f"flows/{seq}/{name}.flo", "Image": f"images/{seq}/{name}.png",
                   "GtMask": f"masks/{seq}/{name}.png"}
            for p in rel.values():
                (base / p).parent.mkdir(parents=True, exist_ok=True)
            write_flow(base / rel["Flow"], random_flow(rng, h, w) * (1 + k))  # norms differ per frame
            Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(base / rel["Image"])
            mask = np.zeros((h, w), np.uint8)
            mask[: h // 2, k % w:] = 255
            Image.fromarray(mask).save(base / rel["GtMask"])
            rows.append([rel[c] for c in COLUMNS])
    if shuffle:
        rows = [rows[i] for i in rng.permutation(len(rows))]
    for split in ("train", "val", "test"):
        write_csv(base / f"clips_{split}.csv", COLUMNS, rows)
    return str(base / "clips")


def clip_ds(base: Path, T: int, S: int = 1, **kw) -> CsvClipDataset:
    kw.setdefault("img_size", None)
    return CsvClipDataset(f"{base}/clips_train.csv", base, request=kw.pop("request", COLUMNS), clip_length=T,
                          clip_stride=S, **kw)


def frame_of(path: str) -> int:
    return int(Path(path).stem.removeprefix("f_"))


# ------------------------------------------------------------------------------------------------
# Which clips
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, T, S, tail, expected", [
    (7, 3, 1, False, [0, 1, 2, 3, 4]),
    (7, 3, 2, False, [0, 2, 4]),
    (7, 3, 2, True, [0, 2, 4]),  # 4 + 3 = 7: the tail is covered already
    (12, 3, 2, False, [0, 2, 4, 6, 8]),
    (12, 3, 2, True, [0, 2, 4, 6, 8, 9]),
    (12, 5, 4, False, [0, 4]),
    (12, 5, 4, True, [0, 4, 7]),
    (3, 3, 5, False, [0]),
    (2, 3, 1, True, []),
    (5, 1, 1, False, [0, 1, 2, 3, 4]),
])
def test_clip_starts(n, T, S, tail, expected):
    assert clip_starts(n, T, S, cover_tail=tail) == expected
    if not tail and n >= T:
        assert len(expected) == (n - T) // S + 1


def test_clip_starts_refuses_bad_arguments():
    with pytest.raises(ValueError, match="clip_length"):
        clip_starts(5, 0)
    with pytest.raises(ValueError, match="clip_stride"):
        clip_starts(5, 2, 0)


def test_sequence_of():
    assert sequence_of("Flows/seq_003/00007.flo") == "Flows/seq_003"
    assert sequence_of(" a\\b\\c.flo ") == "a/b"
    assert sequence_of("c.flo") == ""


@pytest.mark.parametrize("T, S, tail", [(3, 1, False), (3, 2, False), (3, 2, True), (4, 3, False), (2, 5, True)])
def test_clips_stay_in_their_sequence_in_order_with_the_expected_counts(tmp_path, T, S, tail):
    make_seq_split(tmp_path)
    ds = clip_ds(tmp_path, T, S, cover_tail=tail)
    expected = {seq: clip_starts(n, T, S, tail) for seq, n in SEQS.items()}
    assert len(ds) == sum(len(v) for v in expected.values())
    # sequences in the order of their first row in the (shuffled) CSV
    rows = (tmp_path / "clips_train.csv").read_text().splitlines()[1:]
    first_seen = list(dict.fromkeys(sequence_of(r.split(",")[0]) for r in rows))
    assert list(ds.sequences) == first_seen
    starts: dict[str, list[int]] = {}
    csv_row_of = {r.split(",")[0]: i for i, r in enumerate(rows)}
    for k in range(len(ds)):
        item = ds[k]
        seq = item["Sequence"]
        assert seq.startswith("flows/seq")
        assert all(sequence_of(p) == seq for p in item["FlowPath"])  # never across sequences
        frames = [frame_of(p) for p in item["FlowPath"]]
        assert frames == list(range(frames[0], frames[0] + T))  # consecutive, in numeric order
        assert item["FrameIndices"].tolist() == frames
        assert item["RowIndices"].tolist() == [csv_row_of[p] for p in item["FlowPath"]]
        assert [sequence_of(p).replace("flows", "images") for p in item["ImagePath"]] == [seq.replace("flows",
                                                                                                      "images")] * T
        assert item["Index"] == k
        starts.setdefault(seq.split("/")[1], []).append(frames[0])
    assert starts == {seq: v for seq, v in expected.items() if v}
    left = ds.skipped_report()["left_out"]
    short = {seq for seq, n in SEQS.items() if n < T}
    assert {p for _, p, _ in left} == {f"flows/{seq}/" for seq in short}
    assert all("shorter than clip_length" in reason for _, _, reason in left)
    assert ds.skipped_report()["count"] == 0


def test_item_shapes_and_values(tmp_path):
    make_seq_split(tmp_path)
    T = 4
    ds = clip_ds(tmp_path, T, 3)
    item = ds[0]
    assert item["Flow"].shape == (2, T, IMG_H, IMG_W) and item["Flow"].dtype == torch.float32
    assert item["Image"].shape == (3, T, IMG_H, IMG_W)
    assert item["GtMask"].shape == (T, IMG_H, IMG_W) and item["GtMask"].dtype == torch.int64
    assert item["FrameIndices"].shape == (T,) and item["RowIndices"].dtype == torch.int64
    assert len(item["FlowPath"]) == len(item["GtMaskPath"]) == T
    loaders = FilesLoaders()
    for t in range(T):  # the time axis holds the frames in order
        assert torch.equal(item["Flow"][:, t], loaders.load_file(tmp_path / item["FlowPath"][t], "Flow"))
        assert torch.equal(item["GtMask"][t], loaders.load_file(tmp_path / item["GtMaskPath"][t], "GtMask"))
        assert torch.equal(item["Image"][:, t], loaders.load_file(tmp_path / item["ImagePath"][t], "Image"))
    resized = clip_ds(tmp_path, T, img_size=(8, 16), request=["Flow", "GtMask"])[0]
    assert resized["Flow"].shape == (2, T, 8, 16) and resized["GtMask"].shape == (T, 8, 16)
    assert "Image" not in resized


def test_subsample_keeps_every_nth_clip(tmp_path):
    make_seq_split(tmp_path)
    full, sub = clip_ds(tmp_path, 3), clip_ds(tmp_path, 3, subsample=3)
    assert [c.index for c in sub.clips] == [c.index for c in full.clips][::3]
    assert sub[1]["Index"] == 3 and sub[1]["FlowPath"] == full[3]["FlowPath"]


def test_bad_arguments(tmp_path):
    make_seq_split(tmp_path)
    for kw, name in ((dict(T=0), "clip_length"), (dict(T=2, S=0), "clip_stride"), (dict(T=2, subsample=0), "subsample"),
                     (dict(T=2.5), "clip_length")):
        T, S = kw.pop("T"), kw.pop("S", 1)
        with pytest.raises(ValueError, match=name):
            clip_ds(tmp_path, T, S, **kw)
    with pytest.raises(ValueError, match="lacks the requested column"):
        clip_ds(tmp_path, 2, request=["Flow", "FlowRGB"], optional=())


def test_clip_length_one_gives_exactly_the_frame_items(tmp_path):
    """With T = 1 (and the CSV already in sequence order) every item is CsvDataset's, with a time
    axis of length 1, including its random transforms (same draws from the same generator)."""
    make_seq_split(tmp_path, shuffle=False, zero_pad=True)
    csv = f"{tmp_path}/clips_train.csv"

    def composer():
        return TransformsComposer("median", "globalmotionfullquadlight", generator=torch.Generator().manual_seed(1),
                                  flow_noise=0.5, flow_noise_target="clean")

    frames = CsvDataset(csv, tmp_path, (8, 16), COLUMNS, transform=composer())
    clips = CsvClipDataset(csv, tmp_path, (8, 16), COLUMNS, clip_length=1, transform=composer())
    assert len(clips) == len(frames) == sum(SEQS.values())
    for k in range(len(frames)):
        f, c = frames[k], clips[k]
        for key in ("Flow", "Image", LOSS_FLOW_KEY):
            assert torch.equal(c[key][:, 0], f[key]), (k, key)
        assert torch.equal(c["GtMask"][0], f["GtMask"])
        assert all(c[f"{col}Path"] == [f[f"{col}Path"]] for col in COLUMNS)
        assert c["RowIndices"].tolist() == [f["Index"]] and c["Index"] == f["Index"] == k


# ------------------------------------------------------------------------------------------------
# One random draw per clip
# ------------------------------------------------------------------------------------------------
def test_global_motion_is_one_draw_per_clip(tmp_path):
    make_seq_split(tmp_path)
    raw = clip_ds(tmp_path, 4, 2, request=["Flow"])
    comp = TransformsComposer(flow_augmentation="globalmotionfullquadstrong",
                              generator=torch.Generator().manual_seed(0))
    aug = clip_ds(tmp_path, 4, 2, request=["Flow"], transform=comp)
    fields = []
    for k in range(len(raw)):
        added = aug[k]["Flow"].double() - raw[k]["Flow"].double()  # (2, T, I, J)
        assert aug[k]["Flow"].shape == (2, 4, IMG_H, IMG_W)
        assert torch.allclose(added, added[:, :1].expand_as(added), atol=1e-4), k  # the same field on every frame
        assert added.abs().max() > 0.1
        fields.append(added[:, 0])
    assert not torch.allclose(fields[0], fields[1])  # a new draw per clip
    # what the frame transform would do instead: a draw per frame, different fields
    x = raw[0]["Flow"]
    per_frame = torch.stack([comp({"Flow": x[:, t]})["Flow"] for t in range(4)], 1).double() - x.double()
    assert not torch.allclose(per_frame, per_frame[:, :1].expand_as(per_frame), atol=1e-4)


def test_noise_and_normalisation_are_clip_level(tmp_path):
    make_seq_split(tmp_path)
    raw = clip_ds(tmp_path, 3, request=["Flow", "Image"])
    noisy = clip_ds(tmp_path, 3, request=["Flow", "Image"],
                    transform=TransformsComposer(flow_noise=1.0, generator=torch.Generator().manual_seed(2)))
    added = noisy[0]["Flow"].double() - raw[0]["Flow"].double()
    assert added.abs().max() > 0.1
    assert torch.allclose(added, added[:, :1].expand_as(added), atol=1e-4)  # the same blobs on every frame

    normed = clip_ds(tmp_path, 3, request=["Flow"], transform=TransformsComposer("median"))
    x, y = raw[1]["Flow"], normed[1]["Flow"]
    median = torch.linalg.vector_norm(x, dim=0).flatten().median()  # over the whole clip
    assert torch.allclose(y, x / median, rtol=1e-5, atol=1e-6)
    # the frames keep their relative magnitudes (a per-frame median would equalise them)
    per_frame_medians = torch.linalg.vector_norm(y, dim=0).flatten(1).median(1).values
    assert per_frame_medians.max() - per_frame_medians.min() > 0.1

    clean = clip_ds(tmp_path, 3, request=["Flow", "Image"],
                    transform=TransformsComposer("max", flow_noise=1.0, flow_noise_target="clean",
                                                 generator=torch.Generator().manual_seed(2)))
    item = clean[0]
    assert item[LOSS_FLOW_KEY].shape == item["Flow"].shape == (2, 3, IMG_H, IMG_W)


def test_clip_transforms_refuse_frames():
    comp = TransformsComposer("median", "globalmotionlight")
    with pytest.raises(ValueError, match=r"clip of flows \(2, T, I, J\)"):
        comp.clip(torch.zeros(2, 5, 6))
    with pytest.raises(ValueError, match=r"clip of flows"):
        comp.clip({"Flow": torch.zeros(3, 2, 5, 6)})


# ------------------------------------------------------------------------------------------------
# Bad files: the clip is skipped and recorded, never shortened
# ------------------------------------------------------------------------------------------------
def test_a_corrupt_flow_in_the_middle_skips_every_clip_that_holds_it(tmp_path, caplog):
    make_seq_split(tmp_path)
    bad = tmp_path / "flows/seqA/f_3.flo"
    bad.write_bytes(b"not a flow file at all")
    (tmp_path / "images/seqD/f_10.png").unlink()  # a missing image too
    ds = clip_ds(tmp_path, 3)
    caplog.set_level(logging.WARNING, logger="csvflowdatamodule.clips")
    items = [ds[k] for k in range(len(ds))]
    skipped = [it["Skipped"] for it in items if "Skipped" in it]
    good = [it for it in items if "Skipped" not in it]
    # seqA (7 frames): clips 0-2, 1-3, 2-4, 3-5, 4-6 → the three holding frame 3; seqD (12 frames): 8-10, 9-11
    by_path = {}
    for index, path, reason in skipped:
        by_path.setdefault(path, []).append((index, reason))
    assert set(by_path) == {str(bad), str(tmp_path / "images/seqD/f_10.png")}
    assert len(by_path[str(bad)]) == 3 and len(by_path[str(tmp_path / "images/seqD/f_10.png")]) == 2
    frame_reason = CsvDataset(f"{tmp_path}/clips_train.csv", tmp_path, None, COLUMNS)
    frame_skips = [frame_reason[k] for k in range(len(frame_reason))]
    frame_skips = {s["Skipped"][1]: s["Skipped"][2] for s in frame_skips if "Skipped" in s}
    assert {r for _, r in by_path[str(bad)]} == {frame_skips[str(bad)]}  # the loader's words, as for frames
    assert {r for _, r in by_path[str(tmp_path / "images/seqD/f_10.png")]} == {"missing file"}
    for it in good:  # never shortened, never holding the bad frames
        assert it["Flow"].shape[1] == 3 and len(it["FlowPath"]) == 3
        assert "flows/seqA/f_3.flo" not in it["FlowPath"] and "images/seqD/f_10.png" not in it["ImagePath"]
    assert len(good) + len(skipped) == len(ds)
    report = ds.skipped_report()
    assert report["count"] == 5 and report["samples"] == sorted(skipped)
    clip_warnings = [r.getMessage() for r in caplog.records if r.name == "csvflowdatamodule.clips"]
    assert sum("flows/seqA/f_3.flo" in m for m in clip_warnings) == 1  # one warning per file

    strict = clip_ds(tmp_path, 3, strict=True)
    idx = next(k for k, it in enumerate(items) if "Skipped" in it)
    with pytest.raises(DataFileError, match=r"f_3\.flo|f_10\.png"):
        strict[idx]


def test_frames_of_different_sizes_skip_the_clip(tmp_path):
    make_seq_split(tmp_path, sizes={("seqB", 2): (14, 22)})
    ds = clip_ds(tmp_path, 2)  # img_size None: the files' sizes
    seqb = [k for k, c in enumerate(ds.clips) if c.sequence == "flows/seqB"]
    first, second = ds[seqb[0]], ds[seqb[1]]
    assert "Skipped" not in first
    assert second["Skipped"][1] == "flows/seqB/f_2.flo" and "disagree in size" in second["Skipped"][2]
    assert "Skipped" not in clip_ds(tmp_path, 2, img_size=(8, 16))[seqb[1]]  # resized: fine


def test_empty_and_repeated_rows_are_left_out_and_recorded(tmp_path):
    make_seq_split(tmp_path, {"s": 5}, shuffle=False)
    csv = tmp_path / "clips_train.csv"
    lines = csv.read_text().splitlines()
    lines.append(lines[2])  # row 5 repeats row 1 (frame 1)
    lines.append(",images/s/f_0.png,masks/s/f_0.png")  # row 6: no flow
    csv.write_text("\n".join(lines) + "\n")
    ds = clip_ds(tmp_path, 2)
    assert len(ds) == 4 and [ds[k]["FrameIndices"].tolist() for k in range(4)] == [[0, 1], [1, 2], [2, 3], [3, 4]]
    left = ds.skipped_report()["left_out"]
    assert (6, "<empty Flow cell, row 6>", "empty path in column Flow") in left
    assert (5, "flows/s/f_1.flo", "repeats row 1 in sequence 'flows/s'") in left
    with pytest.raises(DataFileError, match="empty Flow cell"):
        clip_ds(tmp_path, 2, strict=True)


# ------------------------------------------------------------------------------------------------
# Batches and the data module
# ------------------------------------------------------------------------------------------------
def test_dataloader_batches_clips_with_collate_skipping(tmp_path):
    make_seq_split(tmp_path)
    (tmp_path / "flows/seqA/f_3.flo").write_bytes(b"corrupt")
    T = 3
    ds = clip_ds(tmp_path, T, img_size=(8, 16))
    n_good = n_skipped = 0
    for batch in DataLoader(ds, batch_size=4, num_workers=0, collate_fn=collate_skipping):
        n_skipped += len(batch["Skipped"])
        if "Flow" not in batch:
            continue
        b = batch["Flow"].shape[0]
        n_good += b
        assert batch["Flow"].shape == (b, 2, T, 8, 16) and batch["Image"].shape == (b, 3, T, 8, 16)
        assert batch["GtMask"].shape == (b, T, 8, 16) and batch["GtMask"].dtype == torch.int64
        assert batch["Index"].shape == (b,) and batch["FrameIndices"].shape == (b, T)
        assert batch["RowIndices"].shape == (b, T)
        assert len(batch["Sequence"]) == b and all(len(p) == T for p in batch["FlowPath"])
        for s in batch["Skipped"]:
            assert s[1].endswith("flows/seqA/f_3.flo")
    assert n_skipped == 3 and n_good + n_skipped == len(ds)


def test_data_module_serves_clips(tmp_path):
    prefix = make_seq_split(tmp_path)
    dm = CsvDataModule(prefix, tmp_path, batch_size=4, img_size=(8, 16), num_workers=0, shuffle_fit=False,
                       clip_length=3, clip_stride=2, subsample_train=2, flow_augmentation="globalmotionlight")
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert isinstance(train, CsvClipDataset) and isinstance(val, CsvClipDataset)
    n = sum(len(clip_starts(v, 3, 2)) for v in SEQS.values())
    assert len(val) == n and len(train) == -(-n // 2)
    batch = next(iter(dm.train_dataloader()))
    assert batch["Flow"].shape == (4, 2, 3, 8, 16) and batch["Skipped"] == []
    report = dm.skipped_report()
    assert report["train"]["count"] == 0 and [p for _, p, _ in report["train"]["left_out"]] == ["flows/seqC/"]


def test_clip_length_one_is_the_frame_module(tmp_path):
    prefix = make_seq_split(tmp_path)
    common = dict(batch_size=5, img_size=(8, 16), num_workers=0, shuffle_fit=False)
    today, ones = CsvDataModule(prefix, tmp_path, **common), CsvDataModule(prefix, tmp_path, clip_length=1, **common)
    for dm in (today, ones):
        dm.setup("fit")
        assert type(dm.datasets["train"]) is CsvDataset
    for a, b in zip(today.train_dataloader(), ones.train_dataloader()):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]) if isinstance(a[key], torch.Tensor) else a[key] == b[key]


def test_clip_settings_are_flags_with_defaults_from_hparams(tmp_path):
    assert H.default("clip_length") == 1 and H.default("clip_stride") == 1
    parser = CsvDataModule.add_specific_args(argparse.ArgumentParser())
    args = parser.parse_args([])
    assert args.clip_length == 1 and args.clip_stride == 1
    prefix = make_seq_split(tmp_path)
    args = parser.parse_args(["--clip_length", "4", "--clip_stride", "3", "--num_workers", "0"])
    dm = CsvDataModule.from_args(args, data_file=prefix, base_dir=str(tmp_path), img_size=(8, 16))
    assert (dm.clip_length, dm.clip_stride) == (4, 3)
    dm.setup("validate")
    assert dm.datasets["val"].clip_length == 4 and dm.datasets["val"].clip_stride == 3
    for bad in (["--clip_length", "0"], ["--clip_stride", "-1"], ["--clip_length", "1.5"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    with pytest.raises(ValueError, match="--clip_length must be an integer >= 1"):
        CsvDataModule(prefix, tmp_path, clip_length=0)


# ------------------------------------------------------------------------------------------------
# Synthetic sequences: clips over them, and smooth motions
# ------------------------------------------------------------------------------------------------
def test_clips_over_the_synthetic_sequences(tiny_split):
    base, prefix = tiny_split  # 24 training samples: sequences of 10, 10 and 4 frames
    ds = CsvClipDataset(f"{prefix}_train.csv", base, None, ["Flow", "GtMask"], clip_length=3, clip_stride=2)
    assert list(ds.sequences) == ["Flows/train_seq_000", "Flows/train_seq_001", "Flows/train_seq_002"]
    assert len(ds) == 4 + 4 + 1
    item = ds[len(ds) - 1]
    assert item["Sequence"] == "Flows/train_seq_002" and item["FlowPath"][0] == "Flows/train_seq_002/00000.flo"
    assert item["Flow"].shape == (2, 3, 64, 112)


def _background_residuals(motion: str, k: int, size=(64, 112), T: int = 5) -> list[float]:
    """Mean residual (px) of the background's flow over T frames to per-pixel polynomials in t of
    degree 0, 1 and 2."""
    seq = synthetic.generate_sequence(np.random.default_rng([9, k]), size, T, with_support=True, motion=motion)
    flows = np.stack([f for f, _, _ in seq])
    background = ~np.stack([s for _, _, s in seq]).any(0)
    Y = flows[:, background].reshape(T, -1)
    t = np.arange(T, dtype=float)
    out = []
    for degree in (0, 1, 2):
        A = np.stack([t ** d for d in range(degree + 1)], 1)
        out.append(float(np.abs(Y - A @ np.linalg.lstsq(A, Y, rcond=None)[0]).mean()))
    return out


def test_smooth_motion_varies_in_time_over_the_same_scene():
    size = (64, 112)
    for k in range(3):
        const = synthetic.generate_sequence(np.random.default_rng([9, k]), size, 4)
        smooth = synthetic.generate_sequence(np.random.default_rng([9, k]), size, 4, motion="smooth")
        assert np.array_equal(const[0][1], smooth[0][1])  # the same objects where they start
        assert not np.allclose(const[0][0], smooth[0][0])
    const = np.mean([_background_residuals("constant", k) for k in range(6)], axis=0)
    smooth = np.mean([_background_residuals("smooth", k) for k in range(6)], axis=0)
    assert smooth[0] > 1.8 * const[0]  # a model constant in t misses the smooth motion
    assert smooth[1] < 0.5 * smooth[0] and smooth[2] < 1.3 * const[2]  # degree 1-2 in t follows it
    with pytest.raises(ValueError, match="motion must be one of"):
        synthetic.generate_sequence(np.random.default_rng(0), size, 2, motion="jerky")


def test_smooth_split_records_its_motion_and_the_default_does_not(tmp_path):
    a = synthetic.make_synthetic_split(tmp_path / "a", "s", 4, 0, 0, img_size=(16, 24), seed=1)
    b = synthetic.make_synthetic_split(tmp_path / "b", "s", 4, 0, 0, img_size=(16, 24), seed=1, motion="constant")
    c = synthetic.main(["--out", str(tmp_path / "c"), "--name", "s", "--n_train", "4", "--n_val", "0", "--n_test",
                        "0", "--img_size", "16", "24", "--seed", "1", "--motion", "smooth"])
    info = [json.loads(Path(f"{p}_info.json").read_text()) for p in (a, b, c)]
    assert "motion" not in info[0] and info[0] == info[1] and info[2]["motion"] == "smooth"
    fa, fb, fc = (Path(p).parent / "Flows/train_seq_000/00001.flo" for p in (a, b, c))
    assert fa.read_bytes() == fb.read_bytes() != fc.read_bytes()
    with pytest.raises(ValueError, match="motion must be one of"):
        synthetic.make_synthetic_split(tmp_path / "d", "s", 1, 0, 0, img_size=(16, 24), motion="jerky")
