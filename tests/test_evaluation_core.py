"""evaluationmodule/core.py and writers.py: the naming, mask, split, summary and writer rules that
model_eval.py and evaluationmodule.Evaluation share — and a check that both pipelines name
sequences and summarise the same frames identically."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from csvflowdatamodule.CsvDataset import DataFileError, FilesLoaders
from emseg.app import evaluation_run
from evaluationmodule import core, writers
from evaluationmodule.DataLoadingModule import DataLoadingError, load_gt
from evaluationmodule.runner import evaluate


# ------------------------------------------------------------------------------------------ naming
@pytest.mark.parametrize("path, seq", [
    ("DAVIS/Flows/bear/00000.flo", "bear"),
    ("/data/DAVIS/Flows/bear/00000.flo", "bear"),  # absolute
    ("DAVIS/Flows/bear/./00000.flo", "bear"),  # '.' components go
    ("Flows/bear/../00000.flo", "_up_"),  # as the outputs' folder: '..' → '_up_'
    ("00000.flo", core.ROOT_SEQUENCE),  # no folder
    ("", core.ROOT_SEQUENCE),
])
def test_sequence_is_the_flow_files_folder(path, seq):
    assert core.sequence_of(path) == seq
    assert evaluation_run.sequence_of is core.sequence_of  # model_eval's name is the core's


def test_output_stem_stays_inside_save_dir():
    assert core.output_stem("out", "DS/Flows/a/0.flo") == str(Path("out/DS/Flows/a/0"))
    assert core.output_stem("out", "/abs/a/0.npy") == str(Path("out/abs/a/0"))
    assert core.output_stem("out", "../a/0.flo") == str(Path("out/_up_/a/0"))
    assert sorted(["f10.flo", "f2.flo", "f1.flo"], key=core.natural_key) == ["f1.flo", "f2.flo", "f10.flo"]


# ------------------------------------------------------------------------------------------ splits
def test_split_resolution(tmp_path):
    for step in ("train", "test"):
        (tmp_path / f"X_{step}.csv").write_text("Flow,GtMask\n")
    assert core.resolve_data_file(tmp_path / "X", "test") == tmp_path / "X_test.csv"
    assert core.resolve_data_file(str(tmp_path / "X_{}.csv"), "train") == tmp_path / "X_train.csv"
    assert core.resolve_data_file(tmp_path / "X_train.csv", "test") == tmp_path / "X_train.csv"  # a .csv as it is
    with pytest.raises(FileNotFoundError, match="X_val.csv"):
        core.resolve_data_file(tmp_path / "X", "val")
    with pytest.raises(FileNotFoundError, match="Y.csv"):
        core.resolve_data_file(tmp_path / "Y.csv")
    assert core.split_name(tmp_path / "X_test.csv") == "X_test"


# ------------------------------------------------------------------------------------------- masks
def _mask_images(m: np.ndarray) -> dict[str, Image.Image]:
    u8 = m.astype(np.uint8)
    rgb = np.zeros((*m.shape, 3), np.uint8)
    rgb[m, 1] = 40  # only green
    rgba = np.dstack([rgb, np.full(m.shape, 255, np.uint8)])  # opaque everywhere: alpha must not count
    p = Image.fromarray(u8 * 3, mode="P")
    p.putpalette([0, 0, 0] * 3 + [200, 0, 0] + [0] * 756)
    return {"L": Image.fromarray(u8 * 255, mode="L"), "P": p, "RGB": Image.fromarray(rgb, mode="RGB"),
            "RGBA": Image.fromarray(rgba, mode="RGBA"), "LA": Image.fromarray(np.dstack([u8, u8 * 0 + 255]), "LA"),
            "1": Image.fromarray(m), "I;16": Image.fromarray(u8.astype(np.uint16) * 1000)}


def test_one_mask_rule_for_training_data_and_scoring(tmp_path):
    m = np.zeros((5, 7), bool)
    m[1:4, 2:6] = True
    m[0, 0] = True
    for mode, im in _mask_images(m).items():
        path = tmp_path / f"{mode.replace(';', '_')}.png"
        im.save(path)
        np.testing.assert_array_equal(core.decode_mask(im), m, err_msg=mode)
        np.testing.assert_array_equal(load_gt(path), m, err_msg=mode)  # the benchmark's reader
        np.testing.assert_array_equal(FilesLoaders.load_mask(str(path)).numpy().astype(bool), m, err_msg=mode)

    class Flat:  # not one (H, W) plane
        mode = "L"

        def __array__(self, dtype=None, copy=None):
            return np.zeros(4, np.uint8)

    with pytest.raises(ValueError, match=r"expected an \(H, W\) mask"):
        core.decode_mask(Flat())
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataLoadingError, match="bad.png"):
        load_gt(tmp_path / "bad.png")
    with pytest.raises(DataFileError, match="bad.png"):
        FilesLoaders.load_mask(str(tmp_path / "bad.png"))


# --------------------------------------------------------------------------------------- summaries
def test_sequence_stats_and_overall_with_the_authors_columns():
    rows = [{"file_name": "S/a/10.flo", "jaccs": "0.1", "losses": "1.0"},
            {"file_name": "S/a/2.flo", "jaccs": "0.9", "losses": "3.0"},
            {"file_name": "S/b/0.flo", "jaccs": "", "losses": "2.0"},  # no ground truth: no Jaccard
            {"file_name": "S/a/3.flo", "jaccs": "0.5", "losses": "2.0"}]
    per = core.sequence_stats(rows, {"jacc": "jacc", "loss": "loss"}, scored_by="loss")
    assert [s["sequence"] for s in per] == ["a", "b"]  # order of first appearance
    a, b = per
    assert a["n_frames"] == a["n_rows"] == 3 and b["n_frames"] == 1
    assert a["jacc_mean"] == pytest.approx(0.5) and a["jacc_recall"] == pytest.approx(1 / 3)
    # decay in natural order of the Flow paths 2, 3, 10 (0.9, 0.5, 0.1); the toolkit's bins for
    # n = 3: ids [0, 1, 1, 2, 2], first X[0:2] = [0.9, 0.5], last X[2:3] = [0.1]
    assert a["jacc_decay"] == pytest.approx(0.7 - 0.1)
    assert math.isnan(b["jacc_mean"]) and b["loss_mean"] == 2.0
    overall = core.overall_summary(rows, per, {"jacc": "jacc", "loss": "loss"})
    assert overall["jacc_mean_frames"] == pytest.approx(0.5) and overall["loss_mean_frames"] == 2.0
    assert overall["jacc_mean_sequences"] == pytest.approx(0.5)  # b has no Jaccard: left out
    assert overall["loss_mean_sequences"] == pytest.approx(2.0) and overall["n_sequences"] == 2
    tsv = [line.split("\t") for line in core.summary_table(rows).splitlines()]
    assert tsv[0] == ["level", "name", "n_frames", "loss", "jacc", "mean_over"]
    assert tsv[1] == ["sequence", "a", "3", "2.000000", "0.500000", "frames"]
    assert tsv[2] == ["sequence", "b", "1", "2.000000", "nan", "frames"]
    assert tsv[3] == ["overall", "all_frames", "4", "2.000000", "0.500000", "frames"]
    assert tsv[4] == ["overall", "all_sequences", "4", "2.000000", "0.500000", "sequences"]


H, W = 8, 12


def _tiny_split(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Frames of three sequences (one written with a '.' component, one at the split's root), in
    shuffled order; one frame without a prediction."""
    data, preds = tmp_path / "data", tmp_path / "preds"
    rows = []
    frames = [("cows", 3), ("dog", 0), ("cows", 0), ("cows", 10), ("./dog", 1), ("", 0), ("cows", 2)]
    for k, (seq, t) in enumerate(frames):
        folder = f"Flows/{seq}/" if seq else ""
        flow, gt = f"{folder}{t:05d}.flo", f"{folder.replace('Flows', 'Masks')}{t:05d}.png"
        mask = np.zeros((H, W), bool)
        mask[2:6, 3:3 + t % 5 + 2] = True
        (data / gt).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(data / gt)
        rows.append({"Flow": flow, "GtMask": gt})
        if (seq, t) == ("cows", 10):
            continue  # missing prediction: unscored in both pipelines
        pred = np.zeros((H, W), bool)
        pred[2:6, 3:3 + k % 4 + 2] = True
        npy = preds / core.relative_key(flow).parent / f"{t:05d}_proba.npy"
        npy.parent.mkdir(parents=True, exist_ok=True)
        np.save(npy, np.stack([np.where(pred, 0.2, 0.8), np.where(pred, 0.8, 0.2)]).astype(np.float32))
    csv = tmp_path / "Tiny_test.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv, data, preds


def test_both_pipelines_name_and_summarise_the_same_frames_identically(tmp_path):
    csv, data, preds = _tiny_split(tmp_path)
    res = evaluate(csv, preds, data, out_dir=tmp_path / "bench", fig_every=0, save_masks=False, progress=False)
    scores = res.scores
    # the same frames through model_eval's writer, with the benchmark's Jaccards as the model's
    n = len(scores)
    jaccs = [float("nan") if math.isnan(r["jacc"]) else r["jacc"] for _, r in scores.iterrows()]
    writer = evaluation_run.FrameOutputWriter(str(tmp_path / "me"), "test", False, False, False)
    (tmp_path / "me").mkdir()
    # a test step's outputs (SegmentationSteps._step), with the benchmark's Jaccards as the model's
    outputs = {"file_name": scores["Flow"].tolist(), "index": torch.arange(n), "losses": 1.0 + torch.arange(n),
               "jaccs": torch.tensor(jaccs), "masks_usages": torch.full((n, 2), 0.5),
               "Pred": torch.zeros(n, 2, H, W), "PredMask": torch.zeros(n, H, W, dtype=torch.bool)}
    writer.on_test_batch_end(SimpleNamespace(global_rank=0, current_epoch=0), None, outputs, {}, 0)
    written = evaluation_run.collect_rows(str(tmp_path / "me"), "test")
    assert [r["sequence"] for r in written] == scores["sequence"].tolist()
    assert scores["sequence"].tolist() == ["cows", "dog", "cows", "cows", "dog", ".", "cows"]
    tsv = pd.read_csv(io_text(evaluation_run.summary_table(written)), sep="\t", keep_default_na=False,
                      na_values=["nan"])
    per_seq = pd.read_csv(res.out_dir / "per_sequence.csv", keep_default_na=False, na_values=[""])
    seq_lines = tsv[tsv["level"] == "sequence"]
    assert seq_lines["name"].tolist() == per_seq["sequence"].tolist() == ["cows", "dog", "."]
    np.testing.assert_allclose(seq_lines["jacc"].to_numpy(float), per_seq["J_mean"].to_numpy(float), atol=1e-6)
    overall = tsv.set_index("name")["jacc"]
    assert overall["all_frames"] == pytest.approx(res.summary["J_mean_frames"], abs=1e-6)
    assert overall["all_sequences"] == pytest.approx(res.summary["J_mean_sequences"], abs=1e-6)
    assert res.summary["scored_rows"] == 6 and per_seq.set_index("sequence").loc["cows", "n_unscored"] == 1


def io_text(text: str):
    import io

    return io.StringIO(text)


# ----------------------------------------------------------------------------------------- writers
def test_one_json_safe_for_every_writer(tmp_path):
    obj = {"nan": float("nan"), "inf": -float("inf"), "f32": np.float32(0.5), "arr": np.arange(3),
           "t1": torch.tensor([0.25]), "t": torch.tensor([[1, 2]]), "set": {"b", "a"}, "tuple": (1, 2.0),
           "path": Path("a/b"), 3: None, "obj": object.__name__, "flag": np.bool_(True)}
    safe = writers.json_safe(obj)
    assert safe == {"nan": None, "inf": None, "f32": 0.5, "arr": [0, 1, 2], "t1": 0.25, "t": [[1, 2]],
                    "set": ["a", "b"], "tuple": [1, 2.0], "path": "a/b", "3": None, "obj": "object", "flag": True}
    from emseg.app import results
    from evaluationmodule import SaveModule

    assert results.json_safe is SaveModule.json_safe is writers.json_safe
    SaveModule.write_json(obj, tmp_path / "a.json")
    results.atomic_write_json(str(tmp_path / "b.json"), obj)
    text = (tmp_path / "a.json").read_text()
    assert "NaN" not in text and json.loads(text) == safe
    assert json.loads((tmp_path / "b.json").read_text()) == safe
    assert list(json.loads((tmp_path / "b.json").read_text())) == sorted(safe)  # eval/training settings: sorted


def test_row_tables_round_trip_and_survive_a_torn_line(tmp_path, caplog):
    path = tmp_path / "t.tsv"
    rows = [{"index": 1, "file_name": "a\tb.flo", "reason": 'has "quotes"'}, {"index": 2, "file_name": "c.flo",
                                                                               "reason": "ok", "extra": "dropped"}]
    writers.append_rows(path, rows[:1], ["index", "file_name", "reason"], delimiter="\t")
    writers.append_rows(path, rows[1:], ["index", "file_name", "reason"], delimiter="\t")
    back = writers.read_rows(path, delimiter="\t")
    assert back == [{"index": "1", "file_name": "a\tb.flo", "reason": 'has "quotes"'},
                    {"index": "2", "file_name": "c.flo", "reason": "ok"}]
    with open(path, "a") as fh:
        fh.write("3\tpartial")  # a power cut mid-line
    assert writers.read_rows(path, delimiter="\t") == back and "incomplete last record" in caplog.text
    writers.rewrite_rows(path, back[:1], ["index", "file_name", "reason"], delimiter="\t")
    assert writers.read_rows(path, delimiter="\t") == back[:1]
    assert writers.read_rows(tmp_path / "none.csv") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.tsv"]  # no temporary file left behind


def test_segment_skipped_and_manifest_writers(tmp_path):
    from emseg.app import segmentation

    segmentation._write_skipped(tmp_path, [("a,b.flo", "bad magic"), ("c.flo", "truncated")])
    assert writers.read_rows(tmp_path / "skipped.csv") == [{"file": "a,b.flo", "reason": "bad magic"},
                                                           {"file": "c.flo", "reason": "truncated"}]
    segmentation._write_manifest(tmp_path, {"status": "complete", "fps": float("nan"), "out": tmp_path})
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"status": "complete", "fps": None,
                                                                    "out": str(tmp_path)}
