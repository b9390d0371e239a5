"""End-to-end tests of ``evaluationmodule.Evaluation.main`` on a tiny synthetic DataSplit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from evaluationmodule.DataLoadingModule import (
    DataLoadingError,
    load_gt,
    load_proba,
    prediction_path,
    read_split,
    resolve_data_file,
)
from evaluationmodule.Evaluation import main
from evaluationmodule.SaveModule import write_csv, write_json
from evaluationmodule.ScoreModule import evaluate

H, W = 16, 24  # ground-truth size; predictions are saved at 8 x 12


def _toolkit_decay(v: np.ndarray) -> float:
    ids = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(int)
    return float(np.mean(v[ids[0]:ids[1] + 1]) - np.mean(v[ids[3]:ids[4] + 1]))


def _write_gt(path: Path, mask: np.ndarray, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":  # palette PNG with object index 1 (the original's /255 would empty it)
        im = Image.fromarray(mask.astype(np.uint8), mode="P")
        im.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    elif mode == "RGB":
        rgb = np.zeros((*mask.shape, 3), np.uint8)
        rgb[mask, 2] = 128  # only the blue channel
        im = Image.fromarray(rgb, mode="RGB")
    else:
        im = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    im.save(path)


def _proba_for(mask_small: np.ndarray) -> np.ndarray:
    """(3, 8, 12): label 1 on the object, label 0 elsewhere, label 2 a weak third layer."""
    p = np.full((3, *mask_small.shape), 0.1, np.float32)
    p[0] = np.where(mask_small, 0.1, 0.8)
    p[1] = np.where(mask_small, 0.8, 0.1)
    return p


@pytest.fixture
def split(tmp_path):
    """A DataSplit of 7 frames in 2 sequences; one missing npy, one corrupt npy, one npy of the wrong ndim."""
    data = tmp_path / "data"
    preds = tmp_path / "preds"
    rng = np.random.default_rng(0)
    rows = []
    frames = [("cows", k) for k in range(4)] + [("dog", k) for k in range(3)]
    for seq, k in frames:
        gt_small = np.zeros((8, 12), bool)
        gt_small[2:6, 2 + k:7 + k] = True
        gt = np.kron(gt_small, np.ones((2, 2), bool))
        gt_rel = f"DS/Annotations/{seq}/{k:05d}.png"
        flow_rel = f"DS/Flows/{seq}/{k:05d}.flo"
        img_rel = f"DS/JPEGImages/{seq}/{k:05d}.jpg"
        _write_gt(data / gt_rel, gt, mode=("P", "RGB", "L")[k % 3])
        (data / img_rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(data / img_rel)
        rows.append({"Flow": flow_rel, "Image": img_rel, "GtMask": gt_rel})
        npy = preds / f"DS/Flows/{seq}/{k:05d}_proba.npy"
        npy.parent.mkdir(parents=True, exist_ok=True)
        if (seq, k) == ("dog", 1):
            continue  # missing prediction
        if (seq, k) == ("cows", 2):
            npy.write_bytes(b"\x93NUMPY garbage that is not an array")
            continue
        if (seq, k) == ("dog", 2):
            np.save(npy, np.zeros((8, 12), np.float32))  # wrong ndim
            continue
        pred_small = np.zeros((8, 12), bool)
        pred_small[2:6 + (k % 2), 2:7 + k] = True  # partly right, different per frame
        np.save(npy, _proba_for(pred_small))
    csv = tmp_path / "DataSplit" / "Toy_test.csv"
    csv.parent.mkdir()
    pd.DataFrame(rows).to_csv(csv, index=False)
    return {"data": data, "preds": preds, "csv": csv, "prefix": tmp_path / "DataSplit" / "Toy", "n": len(rows)}


@pytest.mark.slow
def test_main_full_run(split, capsys):
    # the authors' layout: predictions in {model_base_dir}/{model_id}/, results in its evaluation_{datetime}/
    result = main(["--data_file", str(split["prefix"]), "--step", "test", "--model_base_dir",
                   str(split["preds"].parent), "--data_base_dir", str(split["data"]), "--model_id", "preds",
                   "--no_progress"])
    out = result.out_dir
    assert out.parent == split["preds"] and out.name.startswith("evaluation_")
    assert "mean_score" in capsys.readouterr().out

    for name in ("scores.csv", "per_sequence.csv", "per_sequence.png", "settings.json", "summary.json"):
        assert (out / name).is_file(), name
    assert not list(out.rglob("*.tmp")), "temporary files left behind"

    scores = pd.read_csv(out / "scores.csv", keep_default_na=False, na_values=[""])
    assert len(scores) == split["n"]
    for col in ("Flow", "Image", "GtMask", "sequence", "score", "jacc", "bbox_jacc", "boundary_f", "status",
                "pred_fg_size", "gt_fg_size", "mask0_size", "mask0_overlap", "mask2_size", "mask2_overlap"):
        assert col in scores.columns, col
    assert list(scores["GtMask"]) == list(pd.read_csv(split["csv"])["GtMask"])  # merged, same order

    status = dict(zip(scores["GtMask"].str.split("/").str[-2:].str.join("/"), scores["status"], strict=True))
    assert status["dog/00001.png"] == "missing"
    assert status["cows/00002.png"].startswith("error:") and "00002_proba.npy" in status["cows/00002.png"]
    assert status["dog/00002.png"].startswith("error:") and "(L, I, J)" in status["dog/00002.png"]
    ok = scores[scores["status"] == "ok"]
    assert len(ok) == 4
    unscored = scores[scores["status"] != "ok"]
    assert unscored[["score", "jacc", "boundary_f"]].isna().all().all()
    for col in ("score", "jacc", "bbox_jacc", "boundary_f", "pred_fg_size", "gt_fg_size", "mask1_size"):
        assert ok[col].between(0, 1).all(), col
    assert (ok["score"] == ok["jacc"]).all()  # default scoring for a non-MoCA split
    assert np.allclose(ok[["mask0_size", "mask1_size", "mask2_size"]].sum(axis=1), 1)
    # frame cows/00000: prediction rows 2..5 cols 2..6 (at 8 x 12) = the GT exactly
    first = scores.iloc[0]
    assert first["jacc"] == pytest.approx(1.0) and first["boundary_f"] == pytest.approx(1.0)
    # frame cows/00001: GT rows 2..5 cols 3..7 (20 px), prediction rows 2..6 cols 2..7 (30 px), overlap 20
    assert scores.iloc[1]["jacc"] == pytest.approx(20 / 30)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["total_rows"] == split["n"]
    assert summary["missing_rows"] == 1
    assert summary["error_rows"] == 2
    assert summary["scored_rows"] == 4
    assert summary["mean_score"] == pytest.approx(ok["score"].mean())
    assert summary["mean_score_missing_as_zero"] == pytest.approx(ok["score"].sum() / split["n"])
    assert summary["J_mean_frames"] == pytest.approx(ok["jacc"].mean())
    assert summary["F_mean_frames"] == pytest.approx(ok["boundary_f"].mean())
    assert summary["J_recall_frames"] == pytest.approx((ok["jacc"] > 0.5).mean())
    assert summary["JF_frames"] == pytest.approx((ok["jacc"].mean() + ok["boundary_f"].mean()) / 2)

    seq_j = ok.groupby("sequence")["jacc"].mean()
    seq_f = ok.groupby("sequence")["boundary_f"].mean()
    assert summary["n_sequences"] == 2
    assert summary["J_mean_sequences"] == pytest.approx(seq_j.mean())
    assert summary["F_mean_sequences"] == pytest.approx(seq_f.mean())
    assert summary["JF_sequences"] == pytest.approx((seq_j.mean() + seq_f.mean()) / 2)
    decays = [_toolkit_decay(g.sort_values("GtMask")["jacc"].to_numpy()) for _, g in ok.groupby("sequence")]
    assert summary["J_decay_sequences"] == pytest.approx(np.mean(decays))

    per_seq = pd.read_csv(out / "per_sequence.csv").set_index("sequence")
    assert list(per_seq.columns[:8]) == ["n_frames", "J_mean", "J_recall", "J_decay", "F_mean", "F_recall",
                                         "F_decay", "JF"]
    assert per_seq.loc["cows", "n_frames"] == 3 and per_seq.loc["dog", "n_frames"] == 1
    assert per_seq.loc["cows", "J_mean"] == pytest.approx(seq_j["cows"])
    assert per_seq.loc["dog", "JF"] == pytest.approx((seq_j["dog"] + seq_f["dog"]) / 2)

    settings = json.loads((out / "settings.json").read_text())
    assert settings["model_id"] == "preds" and settings["scoring_method"] == "db_eval_iou"
    assert settings["prediction_dir"] == str(split["preds"])
    assert settings["binary_method"] == "exceptbiggest" and settings["step"] == "test"

    binaries = sorted((out / "binary").rglob("*.png"))
    assert len(binaries) == 4
    b0 = np.array(Image.open(out / "binary" / "DS/Annotations/cows/00000.png"))
    assert b0.shape == (H, W) and set(np.unique(b0)) <= {0, 255}
    np.testing.assert_array_equal(b0 > 0, load_gt(split["data"] / scores.iloc[0]["GtMask"]))
    figures = list((out / "figures").rglob("*.png"))
    assert [f.relative_to(out / "figures").as_posix() for f in figures] == ["DS/Annotations/cows/00000.png"]
    for png in [out / "per_sequence.png", *figures]:
        with Image.open(png) as im:
            assert im.size[0] > 50


def test_moca_split_defaults_to_bbox_jacc(split, tmp_path):
    csv = tmp_path / "MoCA_test.csv"
    pd.read_csv(split["csv"]).to_csv(csv, index=False)
    res = evaluate(csv, split["preds"], split["data"], fig_every=0, save_masks=False, progress=False)
    assert res.summary["scoring_method"] == "bbox_jacc"
    assert res.out_dir == split["preds"] / "Evaluation" / "eval_MoCA_test"
    ok = res.scores[res.scores["status"] == "ok"]
    assert (ok["score"] == ok["bbox_jacc"]).all()
    assert res.summary["mean_score"] == pytest.approx(ok["bbox_jacc"].mean())
    assert not (res.out_dir / "binary").exists() and not (res.out_dir / "figures").exists()


def test_fair_binarisation_and_out_dir(split, tmp_path):
    res = main(["--data_file", str(split["csv"]), "--model_base_dir", str(split["preds"]), "--data_base_dir",
                str(split["data"]), "--binary_method", "fair", "--scoring_method", "db_eval_iou",
                "--out_dir", str(tmp_path / "o"), "--fig_every", "0", "--no_progress"])
    assert res.out_dir == tmp_path / "o" and (tmp_path / "o" / "summary.json").is_file()
    assert json.loads((tmp_path / "o" / "settings.json").read_text())["binary_method"] == "fair"


# ---------------------------------------------------------------------------------------- errors
def test_data_file_resolution_and_errors(split, tmp_path):
    assert resolve_data_file(split["prefix"], "test") == split["csv"]
    assert resolve_data_file(split["csv"]) == split["csv"]
    with pytest.raises(FileNotFoundError, match="Toy_val.csv"):
        resolve_data_file(split["prefix"], "val")
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        main(["--data_file", str(tmp_path / "nope.csv"), "--model_base_dir", str(split["preds"])])
    bad = tmp_path / "NoGt_test.csv"
    pd.DataFrame({"Flow": ["a.flo"], "Image": ["a.jpg"]}).to_csv(bad, index=False)
    with pytest.raises(DataLoadingError, match=r"NoGt_test\.csv.*'GtMask'"):
        read_split(bad)
    with pytest.raises(FileNotFoundError, match="model_base_dir"):
        evaluate(split["csv"], tmp_path / "absent", split["data"])


def test_prediction_lookup_rule(tmp_path):
    assert prediction_path(tmp_path, "DAVIS/Flows/bear/00000.flo") == tmp_path / "DAVIS/Flows/bear/00000_proba.npy"
    assert prediction_path(tmp_path, "x.flo") == tmp_path / "x_proba.npy"


def test_load_proba_errors(tmp_path):
    good = tmp_path / "g.npy"
    np.save(good, np.ones((2, 3, 4), np.float16))
    assert load_proba(good).dtype == np.float32 and load_proba(good).shape == (2, 3, 4)
    for name, arr in (("nd4.npy", np.zeros((1, 2, 3, 4))), ("nan.npy", np.full((2, 3, 3), np.nan)),
                      ("obj.npy", np.array(["a", "b", "c"]).reshape(1, 1, 3))):
        np.save(tmp_path / name, arr)
        with pytest.raises(DataLoadingError, match=name):
            load_proba(tmp_path / name)
    trunc = tmp_path / "trunc.npy"
    trunc.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(DataLoadingError, match="trunc.npy"):
        load_proba(trunc)


def test_load_gt_modes(tmp_path):
    m = np.zeros((5, 6), bool)
    m[1:3, 2:5] = True
    for mode in ("P", "RGB", "L"):
        _write_gt(tmp_path / f"{mode}.png", m, mode)
        np.testing.assert_array_equal(load_gt(tmp_path / f"{mode}.png"), m)
    rgba = np.zeros((5, 6, 4), np.uint8)
    rgba[..., 3] = 255  # opaque alpha everywhere must not make everything foreground
    rgba[m, 0] = 1
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_gt(tmp_path / "a.png"), m)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataLoadingError, match="bad.png"):
        load_gt(tmp_path / "bad.png")
    with pytest.raises(FileNotFoundError, match="none.png"):
        load_gt(tmp_path / "none.png")


def test_atomic_write_leaves_no_truncated_file(tmp_path, monkeypatch):
    target = tmp_path / "scores.csv"
    target.write_text("old,complete\n1,2\n")

    class BoomError(RuntimeError):
        pass

    def failing_to_csv(self, path, **kw):
        Path(path).write_text("half,writ")
        raise BoomError

    monkeypatch.setattr(pd.DataFrame, "to_csv", failing_to_csv)
    with pytest.raises(BoomError):
        write_csv(pd.DataFrame({"a": [1]}), target)
    assert target.read_text() == "old,complete\n1,2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv"]
    write_json({"x": math.nan, "y": np.float32(0.5)}, tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text()) == {"x": None, "y": 0.5}


def test_motion_ceiling_cli_scores_the_support(tmp_path, capsys):
    from csvflowdatamodule.synthetic import make_synthetic_split
    from emseg.app import motion_ceiling
    from emseg.app.motion_ceiling import motion_support

    prefix = make_synthetic_split(tmp_path / "d", "syn", 0, 10, 20, img_size=(48, 80), seed=4)
    means = motion_ceiling.main(["--data_file", prefix, "--steps", "val", "test", "--save_dir", str(tmp_path / "o")])
    for step in ("val", "test"):
        by_hand = [(g & s).sum() / (g | s).sum() for _, g, s in motion_support(tmp_path / "d", "syn", step)]
        table = pd.read_csv(tmp_path / "o" / f"ceiling_{step}.csv")
        assert np.allclose(table["jaccs"], by_hand) and means[step] == pytest.approx(np.mean(by_hand))
        assert table["sequence"].iloc[0] == f"{step}_seq_000"
    assert 0.5 < means["test"] < 1.0  # bleed in some frames of this seed, not in all
    assert f"motion-support ceiling J = {means['test']:.4f}" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--data_file .*nowhere"):
        motion_ceiling.main(["--data_file", str(tmp_path / "nowhere" / "syn")])


def test_motion_ceiling_compare_aligns_frames_and_plots(tmp_path, capsys):
    from csvflowdatamodule.synthetic import make_synthetic_split
    from emseg.app import motion_ceiling

    prefix = make_synthetic_split(tmp_path / "d", "syn", 0, 0, 20, img_size=(48, 80), seed=4)
    ceiling = motion_ceiling.ceiling_scores(prefix, "test")
    rng = np.random.default_rng(0)
    # a method's results in another order and with extra columns, like model_eval writes them
    res = pd.DataFrame({"epoch": 0, "file_name": ceiling["file_name"], "jaccs": rng.uniform(0.3, 1.0, 20)})
    res.iloc[::-1].to_csv(tmp_path / "m.csv", index=False)
    means = motion_ceiling.main(["--data_file", prefix, "--compare", f"m={tmp_path / 'm.csv'}",
                                 "--save_dir", str(tmp_path / "o")])
    assert means["test/m"] == pytest.approx(res["jaccs"].mean())
    above = int((res["jaccs"].to_numpy() > ceiling["jaccs"].to_numpy()).sum())
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("m "))
    assert line.split()[1:] == [f"{res['jaccs'].mean():.4f}", f"{ceiling['jaccs'].mean() - res['jaccs'].mean():.4f}",
                                str(above)]
    per_seq = pd.read_csv(tmp_path / "o" / "ceiling_test_per_sequence.csv")
    assert list(per_seq["sequence"]) == ["test_seq_000", "test_seq_001"]
    assert per_seq["m"].tolist() == pytest.approx([res["jaccs"][:10].mean(), res["jaccs"][10:].mean()])
    assert Image.open(tmp_path / "o" / "ceiling_test_per_sequence.png").size[0] > 100
    # a results file missing a frame, or holding one twice: refused, naming the file
    res.iloc[1:].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(SystemExit, match="short.csv: 1 frame"):
        motion_ceiling.main(["--data_file", prefix, "--compare", f"s={tmp_path / 'short.csv'}"])
    pd.concat([res, res.iloc[:1]]).to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(SystemExit, match="dup.csv: frame .* more than once"):
        motion_ceiling.main(["--data_file", prefix, "--compare", f"d={tmp_path / 'dup.csv'}"])
    with pytest.raises(SystemExit, match="LABEL=CSV"):
        motion_ceiling.main(["--data_file", prefix, "--compare", "nolabel"])


def test_motion_ceiling_old_path_is_the_moved_module_and_runs_under_python_m():
    import subprocess
    import sys

    import evaluationmodule.motion_ceiling as old
    from emseg.app import motion_ceiling

    assert old is motion_ceiling
    root = Path(__file__).resolve().parents[1]
    for module in ("evaluationmodule.motion_ceiling", "emseg.app.motion_ceiling"):
        out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=root, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0 and f"usage: python -m {module} " in out.stdout, out.stderr


def test_motion_support_of_a_written_split(tmp_path):
    import cv2

    from csvflowdatamodule import synthetic
    from emseg.app import motion_ceiling

    synthetic.make_synthetic_split(tmp_path, "s", 0, 3, 12, img_size=(32, 48), seed=2)
    out = motion_ceiling.motion_support(tmp_path, "s", "test")
    assert [r[0] for r in out] == list(pd.read_csv(tmp_path / "s_test.csv")["Flow"])
    for flow_path, gt, support in out:
        mask = cv2.imread(str(tmp_path / flow_path.replace("Flows", "Masks").replace(".flo", ".png")), 0)
        assert np.array_equal(mask > 0, gt) and not (gt & ~support).any()
    assert len(motion_ceiling.motion_support(tmp_path, "s", "val")) == 3
    # a mask that is not the generator's: refused, naming the file
    bad = tmp_path / "Masks" / "test_seq_001" / "00001.png"
    cv2.imwrite(str(bad), np.zeros((32, 48), np.uint8))
    with pytest.raises(ValueError, match="test_seq_001/00001.png"):
        motion_ceiling.motion_support(tmp_path, "s", "test")
    with pytest.raises(ValueError, match="split must be one of"):
        motion_ceiling.motion_support(tmp_path, "s", "training")
    info = json.loads((tmp_path / "s_info.json").read_text())
    (tmp_path / "s_info.json").write_text(json.dumps({**info, "generator_version": 0}))
    with pytest.raises(ValueError, match="generator version"):
        motion_ceiling.motion_support(tmp_path, "s", "val")
