"""Fault injection: every bad input ends in a clear error or a recorded skip — never a hang, a crash
mid-run, a NaN in the results or a silent drop."""

from __future__ import annotations

import csv
import os
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from csvflowdatamodule.CsvDataset import write_flow
from emseg.app import training
from Models.CoherenceNets.MethodeB import MethodeB
from tests.conftest import read_csv, run_cli

pytestmark = pytest.mark.slow

H, W = 40, 56
SMALL = ["--img_size", "32", "48", "--unet.num_layers", "3", "--unet.features_start", "8", "--num_workers", "0",
         "--accelerator", "cpu", "--logger", "none", "--batch_size", "4"]


def good_flow(rng, kind="random"):
    if kind == "zero":
        return np.zeros((H, W, 2), np.float32)
    if kind == "constant":
        return np.full((H, W, 2), 1.5, np.float32)
    f = np.zeros((H, W, 2), np.float32)
    f[..., 0] = 0.5
    f[10:25, 15:35, 1] = 2.0
    return f + 0.05 * rng.standard_normal((H, W, 2)).astype(np.float32)


@pytest.fixture(scope="module")
def faulty_split(tmp_path_factory):
    """A split whose rows hold every kind of bad file next to good ones (grayscale/RGBA images, masks
    of another size, zero and constant flows are good: they must load and give finite losses)."""
    base = tmp_path_factory.mktemp("faulty")
    rng = np.random.default_rng(0)
    (base / "seq").mkdir()
    rows, bad = [], {}
    kinds = ["random", "zero", "constant", "random", "random", "random"]
    for k, kind in enumerate(kinds):
        write_flow(str(base / "seq" / f"{k}.flo"), good_flow(rng, kind))
        mode = ["RGB", "L", "RGBA"][k % 3]
        Image.new(mode, (W, H)).save(base / "seq" / f"{k}.png")
        mask = np.zeros((H * 2 if k == 3 else H, W * 2 if k == 3 else W), np.uint8)  # k=3: another size
        mask[mask.shape[0] // 4: mask.shape[0] // 2, mask.shape[1] // 4: mask.shape[1] // 2] = 255
        Image.fromarray(mask).save(base / "seq" / f"{k}_gt.png")
        rows.append([f"seq/{k}.flo", f"seq/{k}.png", f"seq/{k}_gt.png"])
    # the bad ones
    (base / "seq" / "magic.flo").write_bytes(struct.pack("<fii", 123.0, W, H) + b"\0" * (H * W * 8))
    bad["seq/magic.flo"] = "magic"
    (base / "seq" / "short.flo").write_bytes(struct.pack("<fii", 202021.25, W, H) + b"\0" * 100)
    bad["seq/short.flo"] = "truncated"
    nan = good_flow(rng)
    nan[3, 4, 0] = np.nan
    write_flow(str(base / "seq" / "nan.flo"), nan)
    bad["seq/nan.flo"] = "NaN"
    np.save(base / "seq" / "chw.npy", np.zeros((2, H, W), np.float32))
    bad["seq/chw.npy"] = "H×W×2"
    bad["seq/missing.flo"] = ""
    for name in bad:
        rows.append([name, "seq/0.png", "seq/0_gt.png"])
    header = ["Flow", "Image", "GtMask"]
    for step in ("train", "val", "test"):
        with open(base / f"faulty_{step}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(rows)
    return str(base), str(base / "faulty"), bad, len(kinds)


def test_training_and_evaluation_record_every_bad_file(faulty_split, tmp_path):
    base, prefix, bad, n_good = faulty_split
    run_dir = tmp_path / "run"
    run_cli(["model_train.py", "--path_save_model", str(run_dir), "--base_dir", base, "--data_file", prefix, *SMALL,
             "--max_epochs", "1"])
    skipped = read_csv(run_dir / "skipped.csv")
    for step in ("train", "val"):
        mine = {os.path.relpath(r["file_name"], base): r["reason"] for r in skipped if r["step_label"] == step}
        assert set(mine) == set(bad), (step, mine)  # each bad file once, by its full path
        for path, reason in mine.items():
            assert bad[path] in reason, (path, reason)
    rows = read_csv(run_dir / "results.csv")
    assert sum(r["step_label"] == "train" for r in rows) == n_good
    assert sum(r["step_label"] == "val" for r in rows) == n_good
    assert all(np.isfinite(float(r["losses"])) for r in rows)
    # J is validation's: training steps do not binarise
    assert all(0 <= float(r["jaccs"]) <= 1 if r["step_label"] == "val" else r["jaccs"] == "" for r in rows)

    ev = tmp_path / "eval"
    run_cli(["model_eval.py", "--ckpt", str(run_dir / "last.ckpt"), "--save_dir", str(ev), "--base_dir", base,
             "--data_file", prefix, "--steps", "test", "--save_npy", "--num_workers", "0", "--accelerator", "cpu"])
    res = read_csv(ev / "results_test.csv")
    assert len(res) == n_good and all(np.isfinite(float(r["losses"])) for r in res)
    lines = (ev / "skipped_test.tsv").read_text().splitlines()
    assert len(lines) == 1 + len(bad)


def test_strict_data_stops_at_the_first_bad_file(faulty_split, tmp_path):
    base, prefix, bad, _ = faulty_split
    out = run_cli(["model_train.py", "--path_save_model", str(tmp_path / "strict"), "--base_dir", base,
                   "--data_file", prefix, *SMALL, "--max_epochs", "1", "--strict_data"], expect_ok=False)
    assert out.returncode != 0
    assert any(name in out.stderr for name in bad)


def test_empty_csv_and_wrong_columns_are_clear_errors(tmp_path):
    for step in ("train", "val", "test"):
        (tmp_path / f"empty_{step}.csv").write_text("")
        (tmp_path / f"cols_{step}.csv").write_text("Image,Mask\na.png,b.png\n")
    out = run_cli(["model_train.py", "--path_save_model", str(tmp_path / "r1"), "--base_dir", str(tmp_path),
                   "--data_file", str(tmp_path / "empty"), *SMALL, "--max_epochs", "1"], expect_ok=False)
    assert out.returncode != 0 and "empty_train.csv" in out.stderr
    out = run_cli(["model_train.py", "--path_save_model", str(tmp_path / "r2"), "--base_dir", str(tmp_path),
                   "--data_file", str(tmp_path / "cols"), *SMALL, "--max_epochs", "1"], expect_ok=False)
    assert out.returncode != 0 and "cols_train.csv" in out.stderr and "Flow" in out.stderr


def test_vanishing_masks_give_finite_losses():
    model = MethodeB(**{"unet.num_layers": 3, "unet.features_start": 8, "img_size": [32, 48]})
    with torch.no_grad():
        model.head_model.model.pred_conv.bias.copy_(torch.tensor([60.0, -60.0]))  # all mass on layer 0
    batch = model.prediction({"Flow": torch.randn(2, 2, 32, 48)})
    assert batch["Pred"][:, 1].max() < 1e-20
    crit = model.Criterion(batch)
    crit["losses"].mean().backward()
    assert torch.isfinite(crit["losses"]).all() and torch.isfinite(crit["theta"]).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_batch_too_large_for_memory_says_what_to_lower(tiny_split, tmp_path, monkeypatch):
    base, prefix = tiny_split

    def explode(self, batch):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 987654321000 bytes.")

    monkeypatch.setattr(MethodeB, "prediction", explode)
    args = training.parse_args(["--path_save_model", str(tmp_path / "oom"), "--base_dir", base, "--data_file",
                                prefix, *SMALL, "--max_epochs", "1", "--batch_size", "8"])
    with pytest.raises(training.OutOfMemoryConfigError, match=r"out of memory with --batch_size 8.*lower --batch_size"):
        training.run_training(args)
    assert not (tmp_path / "oom" / ".run.lock").exists()  # the lock is released on the way out
