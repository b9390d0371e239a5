"""Integrity of the new surfaces (issue 21): no trust from files, one run per output folder,
checkpoints written then renamed (a full disk is one line), no command writes over its input."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
from pathlib import Path

import pytest
import torch

import model_eval
import model_train
from csvflowdatamodule.extract_flow import InputOverlapError, SourceMismatchError, extract_flow
from csvflowdatamodule.extract_flow import main as extract_main
from emseg.app import run_folder, training
from emseg.app.run_folder import EVALUATION, TRAINING, earlier_run_files, holds_run, prepare_run_folder
from emseg.app.training_cli import CODE_RUNNING_SETTINGS
from emseg.core import hparams as H
from emseg.core.atomic_io import DiskFullError
from emseg.core.hparams import ConfigError
from Models import checkpoint_io
from Models.checkpoint_io import save_checkpoint_file
from tests.data_helpers import make_split, moving_square_frames

TINY = ["--img_size", "16", "32", "--unet.num_layers", "2", "--unet.features_start", "4", "--num_workers", "0",
        "--accelerator", "cpu", "--logger", "none", "--batch_size", "3", "--max_epochs", "1",
        "--limit_train_batches", "1", "--limit_val_batches", "1", "--log_every_n_steps", "1"]


def one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------------------
# (2) No trust from files
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_a_config_file_cannot_allow_a_checkpoint_to_run_code(tmp_path, capsys, suffix):
    path = tmp_path / f"hparams{suffix}"
    settings = {"init_ckpt": str(tmp_path / "evil.ckpt"), "trust_checkpoint": True, "seed": 5}
    path.write_text(json.dumps(settings))  # JSON is YAML too
    with pytest.raises(ConfigError, match="pass --trust_checkpoint on the command line"):
        training.parse_args(["--config", str(path)])
    assert model_train.main(["--config", str(path)]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"error: --config {path}: trust_checkpoint") and "command line" in line
    # the opt-in given on the command line is the user's own: accepted
    args = training.parse_args(["--config", str(path), "--trust_checkpoint"])
    assert args.trust_checkpoint is True and args.seed == 5
    # a recorded "off" is harmless and simply not taken
    path.write_text(json.dumps({**settings, "trust_checkpoint": False}))
    args = training.parse_args(["--config", str(path)])
    assert args.trust_checkpoint is False and args.init_ckpt == settings["init_ckpt"]


def test_every_setting_that_lets_code_run_is_command_line_only():
    # a new trust-like setting must be added to CODE_RUNNING_SETTINGS (or this fails)
    trusting = {s.key for g in H.ALL_GROUPS for s in H.specs(g) if "trust" in s.key or "unsafe" in s.key}
    assert trusting and trusting <= set(CODE_RUNNING_SETTINGS)
    # nor does a checkpoint's record pass it on when resuming
    args = training.parse_args([])
    assert training.reconcile_resume(args, {"trust_checkpoint": True}) == [] and args.trust_checkpoint is False


# ------------------------------------------------------------------------------------------------
# (7) One run per output folder
# ------------------------------------------------------------------------------------------------
def fake_training(folder: Path, tag: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("results.csv", "last.ckpt", "hparams.json", "skipped.csv", f"epoch=3-epoch_val_loss={tag}.ckpt",
                 ".last.ckpt.123.abcd.tmp"):
        (folder / name).write_text(tag)
    (folder / "logs" / "version_0").mkdir(parents=True, exist_ok=True)
    (folder / "logs" / "version_0" / "metrics.csv").write_text(tag)


def test_a_new_training_moves_the_earlier_one_aside_and_keeps_everything_else(tmp_path, caplog):
    run = tmp_path / "runs" / "demo"
    fake_training(run, "old")
    (run / "notes.txt").write_text("mine")
    (run / "eval").mkdir()
    (run / "eval" / "results_test.csv").write_text("an evaluation of its own")
    (run / ".run.lock").write_text(str(os.getpid()))  # the new run's own lock
    assert holds_run(run, TRAINING) and not holds_run(run / "eval", TRAINING)
    with caplog.at_level(logging.WARNING, logger="emseg.app.run_folder"):
        prev = prepare_run_folder(run, TRAINING)
    target = prev.moved_to
    assert target.parent == run.parent and target.name.startswith("demo.previous-") and target.name.endswith("Z")
    moved = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert moved == sorted([".last.ckpt.123.abcd.tmp", "epoch=3-epoch_val_loss=old.ckpt", "hparams.json",
                            "last.ckpt", "logs/version_0/metrics.csv", "results.csv", "skipped.csv"])
    left = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    assert left == [".run.lock", "eval/results_test.csv", "notes.txt"]
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert str(target) in record.getMessage() and "--ckpt_path" in record.getMessage()
    assert prepare_run_folder(run, TRAINING) is None  # nothing of a run left: nothing to do
    assert run_folder.previous_folder(tmp_path / "x", now=0).name == "x.previous-19700101T000000Z"
    # a second time the same second: another sibling, nothing overwritten
    fake_training(run, "new")
    again = prepare_run_folder(run, TRAINING)
    assert again.moved_to != target and (target / "last.ckpt").read_text() == "old"


def test_overwrite_removes_only_the_earlier_runs_files_and_never_an_input(tmp_path):
    run = tmp_path / "run"
    fake_training(run, "old")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"last\.ckpt, an input of this run"):
        prepare_run_folder(run, TRAINING, overwrite=True, movable=[run / "last.ckpt"])
    with pytest.raises(ConfigError, match="metrics.csv, an input"):
        prepare_run_folder(run, TRAINING, keep=[run / "logs" / "version_0" / "metrics.csv"])
    assert (run / "last.ckpt").exists()  # a refusal touches nothing
    # an input already read may move with the earlier run: the caller learns where it went
    prev = prepare_run_folder(run, TRAINING, movable=[run / "last.ckpt"])
    assert prev.new_location(run / "last.ckpt") == prev.moved_to / "last.ckpt"
    assert prev.new_location(run / "notes.txt") is None
    fake_training(run, "second")
    removed = prepare_run_folder(run, TRAINING, overwrite=True)
    assert removed.moved_to is None and sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    assert not list(tmp_path.glob("run.previous-*/epoch=*second*"))


def test_an_earlier_evaluation_moves_with_the_frames_its_tables_list(tmp_path):
    ev = tmp_path / "ev"
    (ev / "seq").mkdir(parents=True)
    (ev / "results_test.csv").write_text("epoch,step_label,file_name,losses,jaccs,masks_usages,index,sequence\n"
                                         "0,test,flows/seq/0.flo,1,0.5,0.5 0.5,0,seq\n")
    (ev / "predictions_test.tsv").write_text("proba_file\tflow_file\tproba_sha256\tflow_sha256\tmodel_sha256\t"
                                             "shape\nseq/1_proba.npy\tflows/seq/1.flo\ta\tb\tc\t2x4x4\n")
    (ev / "flows" / "seq").mkdir(parents=True)
    for name in ("flows/seq/0_proba.npy", "flows/seq/0_binary.png", "seq/1_proba.npy", "seq/2_proba.npy",
                 "seq/notes.txt", "eval_settings.json"):
        (ev / name).write_text("x")
    files = {str(p.relative_to(ev)) for p in earlier_run_files(ev, EVALUATION)}
    assert files == {"results_test.csv", "predictions_test.tsv", "eval_settings.json", "flows/seq/0_proba.npy",
                     "flows/seq/0_binary.png", "seq/1_proba.npy"}
    prev = prepare_run_folder(ev, EVALUATION)
    assert {str(p.relative_to(prev.moved_to)) for p in prev.moved_to.rglob("*") if p.is_file()} == files
    # an unlisted file at a frame's name, and any other file, stay; the emptied folder goes
    assert sorted(str(p.relative_to(ev)) for p in ev.rglob("*")) == ["seq", "seq/2_proba.npy", "seq/notes.txt"]


def test_rerunning_the_same_training_command_just_works_and_loses_nothing(tmp_path, monkeypatch, capsys):
    """Also (8): every checkpoint of a training goes through the plugin that writes then renames, and a
    full disk ends the run with one line naming the file, the previous last.ckpt intact."""
    prefix = make_split(tmp_path / "d", n=3)
    run = tmp_path / "run"
    argv = ["--path_save_model", str(run), "--base_dir", str(tmp_path / "d"), "--data_file", prefix, *TINY]
    written = []
    real = checkpoint_io.save_checkpoint_file
    monkeypatch.setattr(checkpoint_io, "save_checkpoint_file",
                        lambda obj, path, **kw: (written.append(Path(path).name), real(obj, path, **kw))[1])
    assert model_train.main(argv) == 0
    assert "last.ckpt" in written and any(n.startswith("epoch=0-") for n in written)  # both through the plugin
    first = (run / "last.ckpt").read_bytes()
    assert model_train.main([*argv, "--seed", "7"]) == 0
    [previous] = tmp_path.glob("run.previous-*")
    assert (previous / "last.ckpt").read_bytes() == first and (previous / "results.csv").exists()
    assert len(list(run.glob("epoch=*.ckpt"))) == 1 and len(list(previous.glob("epoch=*.ckpt"))) == 1
    assert json.loads((run / "hparams.json").read_text())["seed"] == 7
    assert "overwrite" not in json.loads((run / "hparams.json").read_text())  # never recorded nor replayed
    assert model_train.main([*argv, "--overwrite"]) == 0
    assert len(list(tmp_path.glob("run.previous-*"))) == 1 and len(list(run.glob("epoch=*.ckpt"))) == 1
    assert model_train.main([*argv, "--overwrite", "--ckpt_path", "last"]) == 2
    assert "give one of them" in one_line(capsys.readouterr().err)
    # a full disk while resuming: one line naming the file; the previous last.ckpt is kept whole
    old = (run / "last.ckpt").read_bytes()
    fill_disk_after(monkeypatch, 4096)
    assert model_train.main([*argv, "--max_epochs", "2", "--ckpt_path", "last"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "the disk is full" in line and line.startswith(f"error: {run}")
    assert (run / "last.ckpt").read_bytes() == old and not list(run.glob(".*.tmp"))


def test_a_new_evaluation_moves_the_earlier_one_aside(tmp_path, capsys):
    prefix = make_split(tmp_path / "d", n=2)
    ev = tmp_path / "ev"
    argv = ["--model", "ClassicalEM", "--em_iterations", "1", "--img_size", "16", "32", "--save_dir", str(ev),
            "--base_dir", str(tmp_path / "d"), "--data_file", prefix, "--steps", "test", "--num_workers", "0",
            "--accelerator", "cpu", "--logger", "none", "--save_npy"]
    assert model_eval.main(argv) == 0
    npys = sorted(p.relative_to(ev) for p in ev.rglob("*_proba.npy"))
    assert len(npys) == 2
    assert model_eval.main([*argv, "--save_mask"]) == 0
    [previous] = tmp_path.glob("ev.previous-*")
    assert sorted(p.relative_to(previous) for p in previous.rglob("*_proba.npy")) == npys
    assert (previous / "results_test.csv").exists() and (previous / "eval_settings.json").exists()
    assert model_eval.main([*argv, "--resume"]) == 0  # continuing it moves nothing
    assert len(list(tmp_path.glob("ev.previous-*"))) == 1
    assert model_eval.main([*argv, "--overwrite"]) == 0
    assert len(list(tmp_path.glob("ev.previous-*"))) == 1 and not list(ev.rglob("*_binary.png"))
    assert model_eval.main([*argv, "--overwrite", "--resume"]) == 2
    assert "give one of them" in one_line(capsys.readouterr().err)


# ------------------------------------------------------------------------------------------------
# (8) Checkpoints are written then renamed; a full disk is one line
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (tests run as root here); skipped where it cannot be mounted."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("cannot mount a tmpfs here")
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=10)


def check_full_disk_kept_the_old_file(err: BaseException, path: Path, old: bytes) -> None:
    message = str(err)
    assert isinstance(err, DiskFullError) and err.errno == errno.ENOSPC
    assert message.startswith(f"{path}: the disk is full") and "\n" not in message
    assert path.read_bytes() == old  # the previous checkpoint, intact
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_a_full_disk_leaves_the_previous_checkpoint_real_tmpfs(small_disk):
    path = small_disk / "last.ckpt"
    save_checkpoint_file({"state_dict": {"w": torch.zeros(10)}}, path)
    old = path.read_bytes()
    with pytest.raises(DiskFullError) as err:
        save_checkpoint_file({"state_dict": {"w": torch.zeros(200_000)}}, path)  # 800 kB on a 256 kB disk
    check_full_disk_kept_the_old_file(err.value, path, old)
    assert torch.load(path, weights_only=True)["state_dict"]["w"].shape == (10,)
    io = checkpoint_io.AtomicCheckpointIO()  # the Trainer's plugin: the same writer
    with pytest.raises(DiskFullError) as err:
        io.save_checkpoint({"state_dict": {"w": torch.zeros(200_000)}}, str(path))
    check_full_disk_kept_the_old_file(err.value, path, old)


def fill_disk_after(monkeypatch, n_bytes: int) -> None:
    """Every checkpoint write fails with ENOSPC once ``n_bytes`` are written (torch then raises its
    opaque RuntimeError, as on a real full disk)."""
    real = checkpoint_io._RecordingWriter.write

    def write(self, data):
        self.written = getattr(self, "written", 0) + len(data)
        if self.written > n_bytes:
            self.error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise self.error
        return real(self, data)

    monkeypatch.setattr(checkpoint_io._RecordingWriter, "write", write)


def test_a_full_disk_is_one_line_naming_the_file_simulated(tmp_path, monkeypatch, capsys):
    from Models import convert_checkpoint

    src, dst = tmp_path / "src.ckpt", tmp_path / "dst.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(50_000)}, "hyper_parameters": {}}, src)
    dst.write_bytes(b"the previous conversion")
    fill_disk_after(monkeypatch, 4096)
    assert convert_checkpoint.main([str(src), str(dst), "--overwrite"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"error: {dst}: the disk is full") and "unexpected pos" not in line
    assert dst.read_bytes() == b"the previous conversion"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# ------------------------------------------------------------------------------------------------
# (5) No command writes over its own input
# ------------------------------------------------------------------------------------------------
def write_frames(folder: Path, n: int, seed: int = 0) -> list[Path]:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    frames, _ = moving_square_frames(n, seed=seed)
    paths = [folder / f"{k:05d}.png" for k in range(n)]
    for p, f in zip(paths, frames):
        cv2.imwrite(str(p), f)
    return paths


def test_extract_flow_never_writes_over_or_removes_its_input(tmp_path, capsys):
    x = tmp_path / "X"
    inputs = write_frames(x / "frames", 4)
    before = [p.read_bytes() for p in inputs]
    with pytest.raises(SystemExit) as exit_:
        extract_main(["--frames", str(x / "frames"), "--out", str(x), "--overwrite"])
    message = str(exit_.value.code)
    assert "\n" not in message and f"--frames {x / 'frames'}" in message and "its own input" in message
    assert [p.read_bytes() for p in inputs] == before and sorted(x.iterdir()) == [x / "frames"]
    masks = write_frames(x / "masks", 2)
    with pytest.raises(InputOverlapError, match="--masks"):
        extract_flow(x, frames=tmp_path / "elsewhere", masks=x / "masks", progress=False)
    assert all(p.exists() for p in masks)
    # inputs elsewhere inside --out are left untouched, so they are allowed
    y = tmp_path / "Y"
    write_frames(y / "raw", 3)
    assert extract_flow(y, frames=y / "raw", progress=False)["n_flows"] == 2
    assert extract_flow(tmp_path / "raw2", frames=write_frames(tmp_path / "raw2", 3)[0].parent,
                        progress=False)["n_flows"] == 2


def test_extract_flow_overwrite_removes_only_the_earlier_extractions_files(tmp_path):
    a, b = write_frames(tmp_path / "a", 3), write_frames(tmp_path / "b", 4, seed=1)
    out = tmp_path / "out"
    extract_flow(out, frames=a[0].parent, progress=False)
    (out / "flows" / "mine.txt").write_text("mine")
    (out / "keep.csv").write_text("mine")
    with pytest.raises(SourceMismatchError, match="--overwrite"):
        extract_flow(out, frames=b[0].parent, progress=False)
    summary = extract_flow(out, frames=b[0].parent, overwrite=True, progress=False)
    assert summary["n_frames"] == 4 and summary["computed"] == 3
    assert (out / "flows" / "mine.txt").read_text() == "mine" and (out / "keep.csv").read_text() == "mine"
    assert all(p.exists() for p in a)
    # a folder of frames no manifest accounts for is never removed, --overwrite or not
    stray = tmp_path / "stray"
    theirs = write_frames(stray / "frames", 2)
    with pytest.raises(SourceMismatchError, match="without a manifest"):
        extract_flow(stray, frames=b[0].parent, overwrite=True, progress=False)
    assert all(p.exists() for p in theirs)
    # an earlier run's input inside the outputs (from before inputs were checked) is refused, not removed
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["source"]["path"] = str((out / "frames").resolve())
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SourceMismatchError, match="would remove it"):
        extract_flow(out, frames=a[0].parent, overwrite=True, progress=False)
    assert len(list((out / "frames").glob("*.png"))) == 4

