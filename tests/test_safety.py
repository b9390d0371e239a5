"""Safety and integrity: no code from checkpoint files, no silent NaN, no stale or misplaced
results, and one-line errors for bad input (issue 12)."""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import model_train
from csvflowdatamodule.CsvDataset import DataFileError, read_flow, write_flow
from emseg.app import training
from emseg.app.results import atomic_write_json
from Models.checkpoint_io import CheckpointError, UnsafeCheckpointError, read_checkpoint
from Models.CoherenceNet import CoherenceNet
from Models.CoherenceNets.MethodeB import MethodeB
from Models.convert_checkpoint import main as convert_main
from Models.LitSegmentationModel import NonFiniteLossError
from tests.conftest import read_csv
from tests.data_helpers import make_split, write_csv

DATA = os.path.join(os.path.dirname(__file__), "data")
LEGACY = os.path.join(DATA, "legacy_small.ckpt")
# the smallest network and frames that still train: quick on 2 cores
TINY = ["--img_size", "16", "32", "--unet.num_layers", "2", "--unet.features_start", "4", "--num_workers", "0",
        "--accelerator", "cpu", "--logger", "none", "--batch_size", "3", "--log_every_n_steps", "1"]


def strict_json(path) -> dict:
    def refuse(name):
        raise ValueError(f"{path} holds {name}: not strict JSON")

    return json.loads(open(path).read(), parse_constant=refuse)


def error_of(main, argv: list[str], capsys) -> tuple[int, str]:
    """(exit code, stderr) of an entry script's main run in this process."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        if isinstance(exit_.code, str):
            return 1, exit_.code
        code = exit_.code
    return code, capsys.readouterr().err


def one_error_line(text: str) -> str:
    # ours ("error: ...") or argparse's for a flag refused while parsing ("prog: error: argument ...")
    lines = [ln for ln in text.splitlines() if ln.startswith("error") or ": error: " in ln or "Traceback" in ln
             or ln.startswith("--")]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


class Payload:
    """Pickles as a call that creates ``marker`` when the file is unpickled in full."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> tuple[str, str]:
    base = tmp_path_factory.mktemp("safety_split")
    return str(base), make_split(base, n=6)


def train_argv(split, run_dir, *extra) -> list[str]:
    base, prefix = split
    return ["--path_save_model", str(run_dir), "--base_dir", base, "--data_file", prefix, *TINY, *extra]


# ------------------------------------------------------------------------------------------------
# 1–2. Code execution
# ------------------------------------------------------------------------------------------------
def test_converter_refuses_code_without_the_flag_and_reads_the_authors_file_safely(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": Payload(str(marker))}, evil)
    code = convert_main([str(evil), str(tmp_path / "out.ckpt")])
    err = capsys.readouterr().err
    assert code != 0 and not marker.exists() and not (tmp_path / "out.ckpt").exists()
    assert "builtins.exec" in err and "--trust_checkpoint" in err  # says what the file contains
    # the authors' PL 1.2.8 file: read weights-only through the allow-list, no flag needed
    assert convert_main([LEGACY, str(tmp_path / "safe.ckpt")]) == 0
    torch.load(tmp_path / "safe.ckpt", weights_only=True)
    # a file that abuses an allow-listed name to call it is refused, and runs nothing
    from pytorch_lightning.callbacks.model_checkpoint import ModelCheckpoint

    class CallsAllowed:
        def __reduce__(self):
            return (ModelCheckpoint, (str(tmp_path / "made_by_pickle"),))

    abuse = tmp_path / "abuse.ckpt"
    torch.save({"state_dict": {}, "x": CallsAllowed()}, abuse)
    with pytest.raises(CheckpointError):
        read_checkpoint(abuse)
    assert not (tmp_path / "made_by_pickle").exists()


def test_legacy_class_references_are_inert_stand_ins():
    ckpt = read_checkpoint(LEGACY)
    assert list(ckpt["callbacks"]) == ["pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"]
    assert ckpt["hyper_parameters"]["unet.num_layers"] == 4


def test_resume_never_unpickles_even_when_torch_is_told_to(split, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "epoch": 0, "x": Payload(str(marker))}, evil)
    code, err = error_of(model_train.main, train_argv(split, tmp_path / "run", "--ckpt_path", str(evil)), capsys)
    assert code != 0 and "builtins.exec" in one_error_line(err) and not marker.exists()
    # and Lightning's own read says weights_only=True, whatever the project's checks before it
    import Models.checkpoint_io as cio

    monkeypatch.setattr(cio, "check_resume_checkpoint", lambda path: None)
    monkeypatch.setattr(cio, "read_checkpoint", lambda path, **kw: {"hyper_parameters": {}})
    args = training.parse_args(train_argv(split, tmp_path / "run2", "--ckpt_path", str(evil), "--max_epochs", "1"))
    with pytest.raises(pickle.UnpicklingError):
        training.run_training(args)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"just some text\n", b"\x93NUMPY fake", pickle.dumps({"a": 1})])
def test_a_file_that_is_no_checkpoint_is_named_as_what_it_is(tmp_path, content):
    path = tmp_path / "x.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint: it is") as err:
        MethodeB.load_from_checkpoint(str(path))
    assert "pickled Python objects" not in str(err.value) and not isinstance(err.value, UnsafeCheckpointError)


# ------------------------------------------------------------------------------------------------
# 3. Implausible flows, non-finite losses, strict JSON
# ------------------------------------------------------------------------------------------------
def test_a_finite_but_absurd_flow_is_a_bad_file(tmp_path):
    flow = np.random.default_rng(0).normal(0, 3, (12, 20, 2)).astype(np.float32)
    write_flow(tmp_path / "ok.flo", flow)
    write_flow(tmp_path / "huge.flo", flow * 1e30)
    assert np.isfinite(read_flow(tmp_path / "ok.flo")).all()
    with pytest.raises(DataFileError, match="implausible flow"):
        read_flow(tmp_path / "huge.flo")


def test_training_skips_an_absurd_flow_and_writes_strict_json(tmp_path, capsys):
    base = tmp_path / "data"
    base.mkdir()
    prefix = make_split(base, n=6)
    bad = read_csv(f"{prefix}_train.csv")[2]["Flow"]
    write_flow(base / bad, read_flow(base / bad) * 1e30)
    run = tmp_path / "run"
    argv = ["--path_save_model", str(run), "--base_dir", str(base), "--data_file", prefix, *TINY, "--max_epochs", "1"]
    assert model_train.main(argv) == 0
    skipped = read_csv(run / "skipped.csv")
    assert [r["file_name"].endswith(bad) for r in skipped] == [True] and "implausible" in skipped[0]["reason"]
    summary = strict_json(run / "train_summary.json")
    assert summary["epoch_val_loss"] is not None and np.isfinite(summary["epoch_val_loss"])
    assert "nan" not in os.path.basename(summary["best_checkpoint"])
    strict_json(run / "hparams.json")


def test_json_records_are_strict(tmp_path):
    atomic_write_json(str(tmp_path / "s.json"), {"loss": float("nan"), "j": float("inf"), "t": torch.tensor(0.5)})
    assert strict_json(tmp_path / "s.json") == {"loss": None, "j": None, "t": 0.5}


def test_a_non_finite_loss_stops_the_run_naming_the_files(split, tmp_path, monkeypatch, capsys):
    original = CoherenceNet.Criterion

    def nan_on_second_batch(self, batch, with_parametric_flow=True):
        out = original(self, batch, with_parametric_flow)
        if self.training and self.global_step == 1:
            out["losses"] = out["losses"] * float("nan")
        return out

    monkeypatch.setattr(CoherenceNet, "Criterion", nan_on_second_batch)
    run = tmp_path / "run"
    code, err = error_of(model_train.main, train_argv(split, run, "--max_epochs", "1"), capsys)
    line = one_error_line(err)
    assert code != 0 and "non-finite train loss" in line and ".flo" in line
    assert not (run / "train_summary.json").exists()
    model = MethodeB(**{"unet.num_layers": 2, "unet.features_start": 4, "img_size": [16, 32]})
    with pytest.raises(NonFiniteLossError, match=r"b\.flo \(inf\)"):
        model.check_finite(torch.tensor([0.5, float("inf")]), {"FlowPath": ["a.flo", "b.flo"]}, "train", 0)


# ------------------------------------------------------------------------------------------------
# 4. The best checkpoint after a kill and a resume
# ------------------------------------------------------------------------------------------------
def test_best_checkpoint_is_right_after_a_kill_and_resume(split, tmp_path, monkeypatch):
    original = CoherenceNet.Criterion

    def improving(self, batch, with_parametric_flow=True):
        out = original(self, batch, with_parametric_flow)
        if not self.training:  # validation: every epoch better than the last
            out["losses"] = out["losses"] * 0 + (10.0 - self.current_epoch)
        return out

    monkeypatch.setattr(CoherenceNet, "Criterion", improving)
    saved = training.LastCheckpoint.on_train_epoch_end

    def killed_in_epoch_1(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("killed")  # the process dies: nothing after this point runs
        saved(self, trainer, pl_module)

    run = tmp_path / "run"
    argv = train_argv(split, run, "--max_epochs", "3", "--limit_train_batches", "1", "--limit_val_batches", "1")
    monkeypatch.setattr(training.LastCheckpoint, "on_train_epoch_end", killed_in_epoch_1)
    with pytest.raises(RuntimeError, match="killed"):
        training.run_training(training.parse_args(argv))
    monkeypatch.setattr(training.LastCheckpoint, "on_train_epoch_end", saved)
    summary = training.run_training(training.parse_args([*argv, "--ckpt_path", "last"]))
    best = sorted(p.name for p in run.glob("epoch=*.ckpt"))
    assert len(best) == 1 and best[0].startswith("epoch=2-"), best
    assert summary["best_checkpoint"] == str(run.resolve() / best[0])
    assert os.path.exists(summary["best_checkpoint"])


# ------------------------------------------------------------------------------------------------
# 9. Changed flags on resume
# ------------------------------------------------------------------------------------------------
def test_resume_refuses_changed_flags_and_keeps_the_record(split, tmp_path, capsys):
    run = tmp_path / "run"
    quick = ["--limit_train_batches", "1", "--limit_val_batches", "1"]
    assert model_train.main(train_argv(split, run, "--max_epochs", "1", "--optim.lr", "0.002", *quick)) == 0
    before = (run / "hparams.json").read_bytes()
    for flag in (["--optim.lr", "0.5"], ["--unet.features_start", "8"]):
        code, err = error_of(model_train.main, train_argv(split, run, "--max_epochs", "2", "--ckpt_path", "last",
                                                          "--optim.lr", "0.002", *flag), capsys)
        assert code != 0 and flag[0] in one_error_line(err) and "--init_ckpt" in err
        assert (run / "hparams.json").read_bytes() == before  # a failed start rewrites nothing
    # flags left out take the run's own values, and the record says what was used
    base, prefix = split
    assert model_train.main(["--path_save_model", str(run), "--base_dir", base, "--data_file", prefix, *TINY,
                             "--max_epochs", "2", "--ckpt_path", "last", *quick]) == 0
    hp = strict_json(run / "hparams.json")
    assert hp["optim.lr"] == 0.002 and hp["max_epochs"] == 2
    last = torch.load(run / "last.ckpt", weights_only=True)
    assert last["optimizer_states"][0]["param_groups"][0]["lr"] == 0.002


# ------------------------------------------------------------------------------------------------
# One-line errors (training)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, named", [
    (["--img_size", "0", "0"], "--img_size must be >= 1"),
    (["--img_size", "-16", "32"], "--img_size must be >= 1"),
    (["--img_size", "3", "32"], "needs both sides >= 4"),
    (["--batch_size", "0"], "--batch_size must be >= 1"),
    (["-L", "0"], "--nAffineMasks must be >= 1"),
    (["--unet.features_start", "100000"], "--unet.features_start 100000"),
])
def test_impossible_settings_are_one_line_errors_and_leave_no_folder(split, tmp_path, capsys, flags, named):
    run = tmp_path / "run"
    code, err = error_of(model_train.main, train_argv(split, run, *flags), capsys)
    assert code != 0 and named in one_error_line(err)
    assert not run.exists()


def test_one_mask_warns_that_j_is_always_zero(caplog):
    with caplog.at_level(logging.WARNING):
        training.parse_args(["-L", "1", *TINY])
    assert any("-L 1" in r.message and "always" in r.message for r in caplog.records)


def csv_case(tmp_path, case: str) -> str:
    base = tmp_path / "d"
    base.mkdir(exist_ok=True)
    prefix = make_split(base, n=3)
    rows = read_csv(f"{prefix}_train.csv")
    if case == "no_flow":
        write_csv(base / "split_train.csv", ["Image", "GtMask"], [[r["Image"], r["GtMask"]] for r in rows])
    elif case == "no_header":
        write_csv(base / "split_train.csv", [rows[0]["Flow"], rows[0]["Image"], rows[0]["GtMask"]],
                  [[r["Flow"], r["Image"], r["GtMask"]] for r in rows[1:]])
    elif case == "missing":
        os.remove(base / "split_train.csv")
    elif case == "empty_train":
        write_csv(base / "split_train.csv", ["Flow", "Image", "GtMask"], [])
    return prefix


@pytest.mark.parametrize("case, named", [("no_flow", "lacks the requested column(s) ['Flow']"),
                                         ("no_header", "has no header row"),
                                         ("missing", "DataSplit CSV not found"),
                                         ("empty_train", "has no rows: nothing to train on")])
def test_bad_csvs_are_one_line_errors(tmp_path, capsys, case, named):
    prefix = csv_case(tmp_path, case)
    run = tmp_path / "run"
    code, err = error_of(model_train.main, ["--path_save_model", str(run), "--base_dir", str(tmp_path / "d"),
                                            "--data_file", prefix, *TINY, "--max_epochs", "1"], capsys)
    line = one_error_line(err)
    assert code != 0 and named in line and "split_train.csv" in line
    assert not run.exists()


def test_duplicate_csv_rows_are_reported(tmp_path, caplog):
    from csvflowdatamodule.CsvDataset import CsvDataset

    prefix = make_split(tmp_path, n=3)
    rows = read_csv(f"{prefix}_val.csv")
    write_csv(tmp_path / "dup.csv", ["Flow", "GtMask"], [[r["Flow"], r["GtMask"]] for r in rows + rows[:1]])
    with caplog.at_level(logging.WARNING):
        ds = CsvDataset(tmp_path / "dup.csv", tmp_path, None, ["Flow", "GtMask"])
    assert ds.duplicate_rows == [3] and len(ds) == 4
    assert any("1 duplicate row" in r.message and "row 3 repeats row 0" in r.message for r in caplog.records)


def test_read_only_output_folder_is_a_one_line_error(split, capsys):
    target = "/sys/em_motion_seg_test/run"
    if os.access("/sys", os.W_OK) and subprocess.run(["mkdir", "-p", target], capture_output=True).returncode == 0:
        pytest.skip("/sys is writable here")
    code, err = error_of(model_train.main, train_argv(split, target, "--max_epochs", "1"), capsys)
    line = one_error_line(err)
    assert code != 0 and "--path_save_model" in line and "cannot write" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_accelerator_without_cuda_is_a_one_line_error(split, tmp_path, capsys):
    code, err = error_of(model_train.main, train_argv(split, tmp_path / "run", "--accelerator", "gpu"), capsys)
    assert code != 0 and "--accelerator gpu" in one_error_line(err)


def test_a_non_checkpoint_given_as_a_checkpoint_is_a_one_line_error(split, tmp_path, capsys):
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    for flag in ("--init_ckpt", "--ckpt_path"):
        code, err = error_of(model_train.main, train_argv(split, tmp_path / "run", flag, str(text)), capsys)
        line = one_error_line(err)
        assert code != 0 and "notes.ckpt" in line and "text file" in line


def test_a_lock_held_by_an_unrelated_process_says_how_to_clear_it(split, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".run.lock").write_text(str(other.pid))
        code, err = error_of(model_train.main, train_argv(split, run, "--max_epochs", "1"), capsys)
    finally:
        other.kill()
        other.wait()
    line = one_error_line(err)
    assert code != 0 and f"pid {other.pid}" in line and f"delete {run / '.run.lock'}" in line


# ------------------------------------------------------------------------------------------------
# 5–8, 11. Evaluation: stale, colliding, misplaced or malformed predictions; --resume identity
# ------------------------------------------------------------------------------------------------
NET = {"unet.num_layers": 2, "unet.features_start": 4, "img_size": [16, 32], "nAffineMasks": 2}


def tiny_checkpoint(path, seed: int = 0) -> str:
    torch.manual_seed(seed)
    model = MethodeB(**NET)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return str(path)


def eval_argv(ckpt, save_dir, base, data_file, *extra) -> list[str]:
    return ["--ckpt", str(ckpt), "--save_dir", str(save_dir), "--base_dir", str(base), "--data_file", data_file,
            "--steps", "test", "--num_workers", "0", "--accelerator", "cpu", "--batch_size", "2", "--logger", "none",
            *extra]


def evaluation(save_dir, base, data_file):
    from evaluationmodule.ScoreModule import evaluate

    return evaluate(data_file=data_file, model_base_dir=str(save_dir), data_base_dir=str(base), step="test",
                    fig_every=0, save_masks=False, progress=False).scores


def test_stale_predictions_are_never_scored(tmp_path):
    import model_eval

    base = tmp_path / "d"
    base.mkdir()
    prefix = make_split(base, n=4)
    rows = read_csv(f"{prefix}_test.csv")
    ev = tmp_path / "ev"
    assert model_eval.main(eval_argv(tiny_checkpoint(tmp_path / "a.ckpt"), ev, base, prefix, "--save_npy")) == 0
    assert list(evaluation(ev, base, prefix)["status"]) == ["ok"] * 4
    # frame 1 now fails to load; a new model is evaluated into the same folder
    (base / rows[1]["Flow"]).write_bytes(b"broken")
    assert model_eval.main(eval_argv(tiny_checkpoint(tmp_path / "b.ckpt", 1), ev, base, prefix, "--save_npy")) == 0
    assert list(evaluation(ev, base, prefix)["status"]) == ["ok", "missing", "ok", "ok"]
    # a prediction the manifest does not list, or one whose flow changed since, is not scored
    stem = ev / os.path.splitext(rows[1]["Flow"])[0]
    np.save(f"{stem}_proba.npy", np.full((2, 16, 32), 0.5, np.float32))
    write_flow(base / rows[2]["Flow"], read_flow(base / rows[3]["Flow"]))
    scores = evaluation(ev, base, prefix)
    assert "not in the predictions manifest" in scores["status"][1]
    assert "computed from another flow" in scores["status"][2]
    assert list(scores["status"][[0, 3]]) == ["ok", "ok"]
    # predictions from another model than the folder's last run are refused too
    manifest = (ev / "predictions_test.tsv").read_text().splitlines()
    settings = json.loads((ev / "eval_settings.json").read_text())
    settings["identity"]["model_sha256"] = "0" * 64
    (ev / "eval_settings.json").write_text(json.dumps(settings))
    assert len(manifest) == 4  # header and the three frames that were evaluated
    assert all("another model" in s for s in evaluation(ev, base, prefix)["status"][[0, 3]])


def test_output_name_collisions_are_refused(tmp_path, capsys):
    import model_eval

    base = tmp_path / "d"
    base.mkdir()
    prefix = make_split(base, n=2)
    rows = read_csv(f"{prefix}_test.csv")
    npy = rows[0]["Flow"].replace(".flo", ".npy")
    np.save(base / npy, read_flow(base / rows[1]["Flow"]))
    write_csv(base / "split_test.csv", ["Flow", "GtMask"], [[rows[0]["Flow"], rows[0]["GtMask"]],
                                                            [npy, rows[1]["GtMask"]]])
    code, err = error_of(model_eval.main, eval_argv(tiny_checkpoint(tmp_path / "a.ckpt"), tmp_path / "ev", base,
                                                    prefix, "--save_npy"), capsys)
    line = one_error_line(err)
    assert code != 0 and rows[0]["Flow"] in line and npy in line and "would both write" in line


def test_outputs_stay_inside_save_dir(tmp_path):
    import model_eval

    data = tmp_path / "data"
    (data / "splits").mkdir(parents=True)
    prefix = make_split(data, n=2)
    rows = read_csv(f"{prefix}_test.csv")
    write_csv(data / "splits" / "up_test.csv", ["Flow", "GtMask"],
              [[f"../{r['Flow']}", f"../{r['GtMask']}"] for r in rows])
    ev = tmp_path / "out" / "ev"
    up = str(data / "splits" / "up")
    assert model_eval.main(eval_argv(tiny_checkpoint(tmp_path / "a.ckpt"), ev, data / "splits", up,
                                     "--save_npy", "--save_mask", "--draw_figs")) == 0
    outside = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and ev not in p.parents]
    assert outside == [] and len(list(ev.rglob("*_proba.npy"))) == 2
    assert list(evaluation(ev, data / "splits", f"{up}_test.csv")["status"]) == ["ok", "ok"]


def test_eval_resume_checks_the_model_and_each_rows_frame(tmp_path, capsys):
    import model_eval

    base = tmp_path / "d"
    base.mkdir()
    prefix = make_split(base, n=4)
    rows = read_csv(f"{prefix}_test.csv")
    ev = tmp_path / "ev"
    a = tiny_checkpoint(tmp_path / "a.ckpt")
    assert model_eval.main(eval_argv(a, ev, base, prefix, "--save_npy")) == 0
    first = read_csv(ev / "results_test.csv")
    code, err = error_of(model_eval.main, eval_argv(tiny_checkpoint(tmp_path / "b.ckpt", 1), ev, base, prefix,
                                                    "--save_npy", "--resume"), capsys)
    assert code != 0 and "another model" in one_error_line(err)
    # a row inserted into the CSV is evaluated, and every row is its own frame's
    extra = read_csv(f"{prefix}_train.csv")[0]
    write_csv(base / "split_test.csv", ["Flow", "Image", "GtMask"],
              [[r["Flow"], r["Image"], r["GtMask"]] for r in rows[:2] + [extra] + rows[2:]])
    assert model_eval.main(eval_argv(a, ev, base, prefix, "--save_npy", "--resume")) == 0
    again = read_csv(ev / "results_test.csv")
    assert [r["file_name"] for r in again] == [r["Flow"] for r in rows[:2] + [extra] + rows[2:]]
    old = {r["file_name"]: r["losses"] for r in first}
    for r in again:
        if r["file_name"] in old:
            assert float(r["losses"]) == pytest.approx(float(old[r["file_name"]]), rel=1e-5)
    assert list(evaluation(ev, base, prefix)["status"]) == ["ok"] * 5


def test_malformed_probabilities_are_refused(tmp_path):
    from evaluationmodule.DataLoadingModule import DataLoadingError, check_proba_shape, load_proba

    good = np.full((2, 16, 32), 0.5, np.float32)
    cases = {"int.npy": good.astype(np.int64), "range.npy": good * 3, "neg.npy": good - 1}
    for name, arr in cases.items():
        np.save(tmp_path / name, arr)
        with pytest.raises(DataLoadingError, match=name):
            load_proba(tmp_path / name)
    check_proba_shape(good, (48, 96), "p.npy")
    with pytest.raises(DataLoadingError, match="transposed"):
        check_proba_shape(good.transpose(0, 2, 1), (48, 96), "p.npy")
    # and end to end: Evaluation records them as errors, never "ok"
    base = tmp_path / "d"
    base.mkdir()
    prefix = make_split(base, n=3)
    rows = read_csv(f"{prefix}_test.csv")
    preds = tmp_path / "preds"
    for r, arr in zip(rows, (good.transpose(0, 2, 1), good.astype(np.int64), good * 3)):
        stem = preds / os.path.splitext(r["Flow"])[0]
        stem.parent.mkdir(parents=True, exist_ok=True)
        np.save(f"{stem}_proba.npy", arr)
    status = list(evaluation(preds, base, prefix)["status"])
    assert all(s.startswith("error") for s in status), status


def test_eval_out_of_memory_and_bad_flags_are_one_line_errors(split, tmp_path, monkeypatch, capsys):
    import model_eval

    base, prefix = split
    ckpt = tiny_checkpoint(tmp_path / "a.ckpt")
    for flags, named in ((["--batch_size", "0"], "--batch_size must be >= 1"),
                         (["--model", "ClassicalEM", "-L", "0"], "--nAffineMasks must be >= 1")):
        code, err = error_of(model_eval.main, [*eval_argv(ckpt, tmp_path / "ev", base, prefix), *flags], capsys)
        assert code != 0 and named in one_error_line(err)
    text = tmp_path / "notes.ckpt"
    text.write_text("hello\n")
    code, err = error_of(model_eval.main, eval_argv(text, tmp_path / "ev", base, prefix), capsys)
    assert code != 0 and "text file" in one_error_line(err)

    def explode(self, batch):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 987654321000 bytes.")

    monkeypatch.setattr(MethodeB, "prediction", explode)
    code, err = error_of(model_eval.main, eval_argv(ckpt, tmp_path / "ev", base, prefix), capsys)
    line = one_error_line(err)
    assert code != 0 and "out of memory" in line and "--batch_size" in line
