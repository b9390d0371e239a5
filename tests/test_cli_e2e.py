"""End to end through the command lines: train → checkpoint → model_eval → Evaluation, and resume."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.conftest import read_csv, run_cli

pytestmark = pytest.mark.slow

SMALL = ["--img_size", "64", "112", "--unet.num_layers", "3", "--unet.features_start", "8", "--batch_size", "4",
         "--num_workers", "0", "--accelerator", "cpu", "--log_every_n_steps", "1"]


def test_train_eval_evaluate_and_resume(tiny_split, tmp_path):
    base, prefix = tiny_split
    run_dir = tmp_path / "run"
    common = ["model_train.py", "--path_save_model", str(run_dir), "--base_dir", base, "--data_file", prefix, *SMALL]
    out = run_cli([*common, "--max_epochs", "1"])
    assert "best checkpoint" in out.stdout and "validation Jaccard" in out.stdout
    ckpts = sorted(p.name for p in run_dir.glob("*.ckpt"))
    assert "last.ckpt" in ckpts and any(n.startswith("epoch=0-epoch_val_loss=") for n in ckpts)
    rows = read_csv(run_dir / "results.csv")
    assert list(rows[0]) == ["epoch", "step_label", "file_name", "losses", "jaccs", "masks_usages"]
    assert {r["step_label"] for r in rows} == {"train", "val"}
    assert sum(r["step_label"] == "train" for r in rows) == 24 and sum(r["step_label"] == "val" for r in rows) == 8
    # J is validation's: training steps do not binarise
    assert all(0.0 <= float(r["jaccs"]) <= 1.0 if r["step_label"] == "val" else r["jaccs"] == "" for r in rows)
    hp = json.loads((run_dir / "hparams.json").read_text())
    assert hp["unet.num_layers"] == 3 and hp["img_size"] == [64, 112]
    assert list((run_dir / "logs").rglob("metrics.csv")) and list((run_dir / "logs").rglob("*.png"))

    # resume: one more epoch from last.ckpt, earlier rows kept exactly once
    run_cli([*common, "--max_epochs", "2", "--ckpt_path", "last"])
    rows2 = read_csv(run_dir / "results.csv")
    assert rows2[: len(rows)] == rows
    epochs = [int(r["epoch"]) for r in rows2]
    assert epochs.count(0) == 32 and epochs.count(1) == 32

    # evaluation with every output
    ev = tmp_path / "eval"
    run_cli(["model_eval.py", "--ckpt", str(run_dir / "last.ckpt"), "--save_dir", str(ev), "--base_dir", base,
             "--data_file", prefix, "--steps", "test", "val", "--draw_figs", "--save_npy", "--save_mask",
             "--num_workers", "0", "--accelerator", "cpu"])
    for step, n in (("test", 8), ("val", 8)):
        res = read_csv(ev / f"results_{step}.csv")
        assert len(res) == n and len({r["file_name"] for r in res}) == n
        assert all(0.0 <= float(r["jaccs"]) <= 1.0 for r in res)
        summary = (ev / f"results_{step}_summary.tsv").read_text().splitlines()
        assert summary[0].split("\t")[:2] == ["level", "name"]
        assert any(line.startswith("overall\tall_frames") for line in summary)
        assert any(line.startswith("overall\tall_sequences") for line in summary)
        for r in res:
            stem = ev / os.path.splitext(r["file_name"])[0]
            proba = np.load(f"{stem}_proba.npy")
            assert proba.shape == (2, 64, 112) and np.allclose(proba.sum(0), 1, atol=1e-4)
            mask = np.array(Image.open(f"{stem}_binary.png"))
            assert mask.shape == (64, 112) and set(np.unique(mask)) <= {0, 255}
            assert os.path.getsize(f"{stem}_fig.png") > 1000

    # the evaluation module on those probabilities
    run_cli(["-m", "evaluationmodule.Evaluation", "--data_file", prefix, "--step", "test", "--model_base_dir",
             str(tmp_path), "--data_base_dir", base, "--model_id", "eval", "--no_progress"])
    out_dir = next(ev.glob("evaluation_*"))
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["total_rows"] == 8 and summary["missing_rows"] == 0
    assert 0.0 <= summary["mean_score"] <= 1.0
    scores = read_csv(out_dir / "scores.csv")
    # the evaluation module and model_eval score the same masks at the same size: same J
    mine = {r["file_name"]: float(r["jaccs"]) for r in read_csv(ev / "results_test.csv")}
    for r in scores:
        assert abs(float(r["jacc"]) - mine[r["Flow"]]) < 1e-6


def test_eval_resume_skips_complete_frames(tiny_split, tmp_path):
    base, prefix = tiny_split
    ev = tmp_path / "em"
    cmd = ["model_eval.py", "--model", "ClassicalEM", "--em_iterations", "3", "--img_size", "64", "112",
           "--save_dir", str(ev), "--base_dir", base, "--data_file", prefix, "--steps", "test", "--save_npy",
           "--num_workers", "0", "--accelerator", "cpu", "--batch_size", "3"]
    run_cli(cmd)
    full = read_csv(ev / "results_test.csv")
    assert len(full) == 8
    # simulate a crash: two frames lost their outputs, the final file is a part file again
    stems = [ev / os.path.splitext(r["file_name"])[0] for r in full]
    os.remove(f"{stems[2]}_proba.npy")
    os.remove(f"{stems[5]}_proba.npy")
    os.rename(ev / "results_test.csv", ev / "results_test.part0.csv")
    before = {s: os.path.getmtime(f"{s}_proba.npy") for i, s in enumerate(stems) if i not in (2, 5)}
    run_cli([*cmd, "--resume"])
    again = read_csv(ev / "results_test.csv")
    assert [r["file_name"] for r in again] == [r["file_name"] for r in full]
    assert all(os.path.exists(f"{s}_proba.npy") for s in stems)
    assert all(os.path.getmtime(f"{s}_proba.npy") == t for s, t in before.items())  # not recomputed
    assert not list(ev.glob("results_test.part*.csv"))


def test_init_ckpt_fine_tunes_from_weights(tiny_split, tmp_path):
    import torch

    from Models.CoherenceNets.MethodeB import MethodeB

    base, prefix = tiny_split
    src = tmp_path / "src.ckpt"
    torch.manual_seed(1)
    model = MethodeB(**{"unet.num_layers": 3, "unet.features_start": 8, "img_size": [64, 112]})
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, src)
    common = ["model_train.py", "--base_dir", base, "--data_file", prefix, *SMALL, "--max_epochs", "1",
              "--limit_train_batches", "2", "--init_ckpt", str(src), "--logger", "none"]
    run_cli([*common, "--path_save_model", str(tmp_path / "ft")])
    rows = read_csv(tmp_path / "ft" / "results.csv")
    assert {r["epoch"] for r in rows} == {"0"}  # a fresh run, not a resume
    # another architecture than the weights' (the last --unet.features_start wins)
    mismatch = run_cli([*common, "--path_save_model", str(tmp_path / "bad"), "--unet.features_start", "16"],
                       expect_ok=False)
    assert mismatch.returncode != 0 and "--init_ckpt" in mismatch.stderr and "size mismatch" in mismatch.stderr


def test_cosine_schedule_decays_to_zero_over_the_run(tiny_split, tmp_path):
    import torch

    base, prefix = tiny_split
    common = ["model_train.py", "--base_dir", base, "--data_file", prefix, *SMALL, "--max_epochs", "2",
              "--limit_train_batches", "2", "--logger", "none", "--optim.lr", "1e-3"]
    run_cli([*common, "--path_save_model", str(tmp_path / "cos"), "--optim.schedule", "cosine"])
    ckpt = torch.load(tmp_path / "cos" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["optim.schedule"] == "cosine"
    (sched,) = ckpt["lr_schedulers"]
    assert sched["T_max"] == 4 and sched["last_epoch"] == 4  # 2 epochs × 2 batches, stepped per batch
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    run_cli([*common, "--path_save_model", str(tmp_path / "const")])
    ckpt = torch.load(tmp_path / "const" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["lr_schedulers"] == []
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-3)


@pytest.mark.parametrize("kind", ["wandb", "tensorboard"])
def test_other_loggers_work_offline(tiny_split, tmp_path, kind):
    base, prefix = tiny_split
    run_dir = tmp_path / kind
    run_cli(["model_train.py", "--path_save_model", str(run_dir), "--base_dir", base, "--data_file", prefix, *SMALL,
             "--max_epochs", "1", "--limit_train_batches", "2", "--logger", kind],
            env={"WANDB_API_KEY": "", "WANDB_MODE": ""})
    if kind == "wandb":
        runs = list((run_dir / "wandb").glob("offline-run-*"))
        assert len(runs) == 1  # no account, no network: an offline run to `wandb sync` later
        assert list(runs[0].rglob("*.png"))  # the validation figure
    else:
        assert list((run_dir / "logs").rglob("events.out.tfevents.*"))
