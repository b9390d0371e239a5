"""One definition per setting (emseg/core/hparams.py): every default derives from it; the model gets only
its own hyperparameters; --config replays a run; --help shows the defaults and the demo's."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

import model_eval
import model_train
from csvflowdatamodule import synthetic
from csvflowdatamodule.CsvDataModule import CsvDataModule, resolve_data_path
from emseg.app import evaluation_run, training
from emseg.core import hparams as H
from emseg.core.hparams import ConfigError
from Models.Backbones.unet import UNet, UNetAbstract
from Models.CoherenceNets.ClassicalEM import ClassicalEM
from Models.CoherenceNets.MethodeB import MethodeB
from Models.LitBackbone import LitBackbone
from tests.data_helpers import make_split

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--img_size", "16", "32", "--unet.num_layers", "2", "--unet.features_start", "4", "--num_workers", "0",
        "--accelerator", "cpu", "--logger", "none", "--batch_size", "3"]


def patch_default(monkeypatch, group: type, attr: str, value) -> None:
    f = {f.name: f for f in dataclasses.fields(group)}[attr]
    if isinstance(value, list):
        monkeypatch.setattr(f, "default_factory", lambda: list(value))
    else:
        monkeypatch.setattr(f, "default", value)


# ------------------------------------------------------------------------------------------------
# One home per default
# ------------------------------------------------------------------------------------------------
def test_changing_a_definition_changes_every_default(monkeypatch):
    patch_default(monkeypatch, H.InputHparams, "img_size", [40, 56])
    patch_default(monkeypatch, H.ClassicalEMHparams, "em_iterations", 7)
    patch_default(monkeypatch, H.NetworkHparams, "nAffineMasks", 3)
    patch_default(monkeypatch, H.LossHparams, "theta_method", "OLS")
    patch_default(monkeypatch, H.DataHparams, "batch_size", 5)
    patch_default(monkeypatch, H.UNetHparams, "unet_num_layers", 5)

    train = training.build_parser().parse_args([])
    assert train.img_size == [40, 56] and train.nAffineMasks == 3 and train.theta_method == "OLS"
    assert train.batch_size == 5 and getattr(train, "unet.num_layers") == 5
    ev = evaluation_run.build_parser().parse_args(["--save_dir", "x", "--model", "ClassicalEM"])
    assert (ev.img_size, ev.em_iterations, ev.nAffineMasks, ev.theta_method) == ([40, 56], 7, 3, "OLS")
    data = CsvDataModule.add_specific_args(argparse.ArgumentParser()).parse_args([])
    assert data.img_size == [40, 56] and data.batch_size == 5
    assert getattr(UNetAbstract.add_specific_args(argparse.ArgumentParser()).parse_args([]), "unet.num_layers") == 5
    d = MethodeB.all_hparam_defaults()
    assert d["img_size"] == [40, 56] and d["nAffineMasks"] == 3 and d["unet.num_layers"] == 5
    em = ClassicalEM()
    assert em.em_iterations == 7 and em.L == 3 and em.theta_method == "OLS" and em.hparams["img_size"] == [40, 56]


def test_constants_read_from_the_definitions_equal_them():
    """Signature defaults and module constants are computed from emseg/core/hparams.py at import (a
    changed definition moves them too); the library constructors' own keyword defaults must agree."""
    assert UNetAbstract.DEFAULTS == H.defaults(H.UNetHparams)
    assert list(synthetic.DEFAULT_IMG_SIZE) == H.default("img_size")
    params = inspect.signature(CsvDataModule.__init__).parameters
    for key, value in H.defaults(H.DataHparams).items():
        if key in params and params[key].default is not inspect.Parameter.empty:
            assert params[key].default == value, key
    assert list(params["img_size"].default) == H.default("img_size")
    unet = H.defaults(H.UNetHparams)
    for fn in (UNet.__init__, LitBackbone.__init__):
        p = inspect.signature(fn).parameters
        assert p["num_layers"].default == unet["unet.num_layers"]
        assert p["features_start"].default == unet["unet.features_start"]
        for key in ("bilinear", "inner_normalisation", "padding_mode", "train_bn"):
            assert p[key].default == unet[key], (fn, key)
    assert inspect.signature(LitBackbone.__init__).parameters["features_backbone"].default == \
        H.default("features_backbone")


def test_choice_lists_equal_what_the_modules_accept():
    from csvflowdatamodule.Transforms import FLOW_AUGMENTATIONS, FLOW_NOISE_TARGETS, FLOW_NORMALISATIONS
    from evaluationmodule.BinarisationModule import BINARY_METHODS
    from Models.Backbones.unet import NORMALISATIONS
    from Models.LitBackbone import BACKBONES, BatchPreparator

    assert H.BACKBONES == BACKBONES and H.NORMALISATIONS == NORMALISATIONS
    assert H.INPUT_TYPES == tuple(BatchPreparator.TYPES) and H.BINARY_METHODS == BINARY_METHODS
    assert H.FLOW_NORMALISATIONS == FLOW_NORMALISATIONS and H.FLOW_AUGMENTATIONS == FLOW_AUGMENTATIONS
    assert H.FLOW_NOISE_TARGETS == FLOW_NOISE_TARGETS


#: the modules that read the settings: none may spell a setting's default itself
SCANNED = ["Models", "csvflowdatamodule/CsvDataModule.py", "csvflowdatamodule/synthetic.py", "emseg/app/training.py",
           "emseg/app/trainer_args.py", "emseg/app/evaluation_run.py", "model_train.py", "model_eval.py"]


def test_no_module_spells_a_default_of_its_own():
    keys = {s.key for g in H.ALL_GROUPS for s in H.specs(g)}
    literal = (ast.Constant, ast.List, ast.Tuple)
    found = []
    files = [p for entry in SCANNED for p in ((ROOT / entry).rglob("*.py") if (ROOT / entry).is_dir()
                                              else [ROOT / entry])]
    assert len(files) > 10
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                flags = [a.value.lstrip("-") for a in node.args if isinstance(a, ast.Constant)]
                if any(f in keys for f in flags) and any(kw.arg == "default" and isinstance(kw.value, literal)
                                                         for kw in node.keywords):
                    found.append(f"{where} flag {flags}")
            if isinstance(node, ast.Dict):
                for k, v in zip(node.keys, node.values):
                    flag_name = isinstance(v, ast.Constant) and str(v.value).startswith("-")
                    if isinstance(k, ast.Constant) and k.value in keys and isinstance(v, literal) and not flag_name:
                        found.append(f"{where} dict {k.value!r}")
            if isinstance(node, (ast.List, ast.Tuple)) and [getattr(e, "value", None) for e in node.elts] == \
                    H.default("img_size"):
                found.append(f"{where} img_size literal")
    assert found == []


# ------------------------------------------------------------------------------------------------
# Flags
# ------------------------------------------------------------------------------------------------
def test_the_authors_spellings_and_every_definition_parse():
    args = training.build_parser().parse_args(
        ["--nAffineMasks", "3", "--unet.num_layers", "5", "--unet.features_start", "8", "--path_save_model", "r",
         "--optim.lr", "0.01", "--image_size", "64", "96", "-bb", "fake", "-inm", "None", "--devices", "0,1",
         "--limit_val_batches", "2", "--fast_dev_run", "0.5"])
    assert (args.nAffineMasks, getattr(args, "unet.num_layers"), getattr(args, "unet.features_start")) == (3, 5, 8)
    assert args.path_save_model == "r" and getattr(args, "optim.lr") == 0.01 and args.img_size == [64, 96]
    assert args.backbone == "fake" and args.inner_normalisation == "None" and args.devices == [0, 1]
    assert args.limit_val_batches == 2 and isinstance(args.limit_val_batches, int) and args.fast_dev_run == 0.5
    # every setting is --KEY on the command line, and its default is a value of its own type
    dests = vars(training.build_parser().parse_args([]))
    for key, s in H.spec_map(*(g for g in H.ALL_GROUPS if g is not H.ClassicalEMHparams)).items():
        assert key in dests, key
        assert H.coerce(s, s.default) == s.default, key


def test_explicit_flags_are_what_the_command_line_set():
    parser = training.build_parser()
    argv = ["--batch_size", "10", "-L", "2", "--train_bn", "--img_size", "128", "224"]
    assert training.explicit_flags(parser, argv) == {"batch_size", "nAffineMasks", "train_bn", "img_size"}
    parser.set_defaults(batch_size=4)  # a replayed config's defaults: still not "set on the command line"
    assert training.explicit_flags(parser, ["--seed", "1"]) == {"seed"}
    assert training.explicit_flags(parser, []) == set()


def test_help_shows_defaults_and_the_demo():
    text = " ".join(training.build_parser().format_help().split())
    assert "U-Net levels (default: 7)" in text and "size the inputs are resized to (default: 128 224)" in text
    assert "(default: the built-in synthetic dataset)" in text and "--config" in text
    assert "Without --data_file the built-in demo runs" in text
    for key, value in H.DEMO_DEFAULTS.items():
        assert f"--{key} {value}" in text
    assert f"--max_epochs defaults to {H.PAPER_MAX_EPOCHS}" in text
    ev = " ".join(evaluation_run.build_parser().format_help().split())
    assert "--theta_method {IRLS,OLS,Optim}" in ev and "(default: IRLS)" in ev and "(default: 20)" in ev


# ------------------------------------------------------------------------------------------------
# The model's own hyperparameters
# ------------------------------------------------------------------------------------------------
def test_the_model_gets_only_its_own_hyperparameters(tmp_path, monkeypatch):
    prefix = make_split(tmp_path, n=3)
    seen: dict = {}

    class StopError(Exception):
        pass

    class Probe(MethodeB):
        def __init__(self, **kwargs):
            seen.update(kwargs)
            raise StopError

    monkeypatch.setattr(training, "MethodeB", Probe)
    args = training.parse_args(["--data_file", prefix, "--base_dir", str(tmp_path), "--flow_width", "320", *TINY])
    with pytest.raises(StopError):
        training.run_training(args)
    assert set(seen) == set(MethodeB.all_hparam_defaults())
    assert seen["img_size"] == [16, 32] and seen["flow_width"] == 320 and seen["unet.num_layers"] == 2
    # and a checkpoint whose hyperparameters hold a whole run's flags (the authors', older runs) loads
    small = {"unet.num_layers": 2, "unet.features_start": 4, "img_size": [16, 32]}
    model = MethodeB(**small)
    stored = {**small, "max_epochs": 3, "gpus": ["1"], "data_file": "DataSplit/x", "batch_size": 8}
    again = MethodeB.from_checkpoint_dict({"state_dict": model.state_dict(), "hyper_parameters": stored})
    assert again.hparams["unet.num_layers"] == 2 and again.hparams["max_epochs"] == 3


def test_checkpoints_carry_the_run_config():
    config = {"batch_size": 3, "optim.lr": 0.01}
    ckpt: dict = {}
    training.HparamsWriter("unused.json", config).on_save_checkpoint(None, None, ckpt)
    assert ckpt[training.RUN_CONFIG_KEY] == config


# ------------------------------------------------------------------------------------------------
# Config replay
# ------------------------------------------------------------------------------------------------
def recorded(tmp_path, argv: list[str]) -> tuple[argparse.Namespace, Path]:
    """The args of ``argv`` and the hparams.json HparamsWriter writes for them (with the data paths
    resolved, as run_training records them)."""
    args = training.parse_args(argv)
    config = training.run_config(args)
    config["data_file"] = resolve_data_path(config["data_file"]) if config["data_file"] else None
    path = tmp_path / "run" / "hparams.json"
    path.parent.mkdir(exist_ok=True)
    training.HparamsWriter(str(path), config).on_train_start(SimpleNamespace(is_global_zero=True), None)
    return args, path


def comparable(args: argparse.Namespace, *drop: str) -> dict:
    out = training.run_config(args)
    out["data_file"] = resolve_data_path(out["data_file"]) if out["data_file"] else None
    for key in ("path_save_model", *drop):
        out.pop(key)
    return out


ORIGINAL = ["--data_file", "DataSplit/Exp6_Split", "--path_save_model", "runs/a", "--img_size", "128", "256",
            "--optim.lr", "0.002", "-L", "3", "--theta_method", "OLS", "--train_bn", "--max_epochs", "5",
            "--inputs", "Flow", "Image", "--devices", "0,1", "--limit_val_batches", "2", "--max_time", "00:01:00:00",
            "--gpus", "0", "--num_workers", "2", "--flow_width", "640"]


def test_replay_gives_the_run_its_settings_and_flags_override(tmp_path, caplog):
    original, path = recorded(tmp_path, ORIGINAL)
    with caplog.at_level(logging.INFO):
        replay = training.parse_args(["--config", str(path)])
    assert comparable(replay) == comparable(original)
    assert replay.path_save_model is None  # never the replayed run's folder
    assert any("not taking its path_save_model" in r.message for r in caplog.records)
    changed = training.parse_args(["--config", str(path), "--seed", "7", "--img_size", "128", "320",
                                   "--path_save_model", str(tmp_path / "b")])
    assert changed.seed == 7 and changed.img_size == [128, 320] and changed.path_save_model == str(tmp_path / "b")
    assert comparable(changed, "seed", "img_size") == comparable(original, "seed", "img_size")
    # a demo run replays as the demo it was, even with the demo defaults on top
    demo, demo_path = recorded(tmp_path, [])
    again = training.parse_args(["--config", str(demo_path), "--unet.num_layers", "3"])
    assert again.demo and getattr(again, "unet.num_layers") == 3 and again.max_epochs == H.DEMO_DEFAULTS["max_epochs"]
    assert comparable(again, "unet.num_layers") == comparable(demo, "unet.num_layers")


def test_lightning_hparams_yaml_replays_the_model(tmp_path):
    from pytorch_lightning.core.saving import save_hparams_to_yaml

    original, _ = recorded(tmp_path, ORIGINAL)
    model_hp = MethodeB.own_hparams(training.run_config(original))
    save_hparams_to_yaml(tmp_path / "hparams.yaml", model_hp)
    replay = training.parse_args(["--config", str(tmp_path / "hparams.yaml"), "--data_file", "DataSplit/Exp6_Split"])
    assert MethodeB.own_hparams(training.run_config(replay)) == model_hp


@pytest.mark.parametrize("content, named", [
    ({"learning_rate": 0.1}, "unknown setting 'learning_rate'"),
    ({"nAffineMasks": "two"}, "nAffineMasks: expected int, got 'two'"),
    ({"theta_method": "Newton"}, "theta_method: 'Newton' is not one of"),
    ({"img_size": [64]}, "img_size: expected 2 values"),
    ({"em_iterations": 5}, "unknown setting 'em_iterations'"),  # ClassicalEM's: not a training flag
    ("[1, 2]", "expected a mapping"),
    ("{not json", "not valid JSON"),
])
def test_a_bad_config_names_the_key_and_the_file(tmp_path, content, named):
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ConfigError, match="bad.json") as err:
        training.parse_args(["--config", str(path)])
    assert named in str(err.value)
    with pytest.raises(ConfigError, match="cannot read it"):
        training.parse_args(["--config", str(tmp_path / "absent.json")])


# ------------------------------------------------------------------------------------------------
# Errors at the command-line edge
# ------------------------------------------------------------------------------------------------
def test_clis_turn_config_errors_into_one_line_and_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"learning_rate": 0.1}))
    assert model_train.main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --config {bad}: unknown setting 'learning_rate' (not a flag of this command)"]
    assert model_train.main(["--optim.schedule", "cosine", "--max_epochs", "-1"]) == 2
    assert "give a finite --max_epochs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # refused by the flag's own range, while parsing
        model_eval.main(["--model", "ClassicalEM", "--save_dir", str(tmp_path / "e"), "-L", "0"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("--nAffineMasks must be >= 1, got 0")
    assert model_eval.main(["--save_dir", str(tmp_path / "e")]) == 2
    assert capsys.readouterr().err.strip() == "error: --ckpt is required for MethodeB (or use --model ClassicalEM)"
    assert not (tmp_path / "e").exists()


def test_model_eval_builds_classical_em_from_its_flags():
    args = evaluation_run.parse_args(["--model", "ClassicalEM", "--save_dir", "x", "--theta_method", "OLS",
                                      "--em_iterations", "4", "-L", "3", "--param_model", "Affine",
                                      "--v_distance", "squared", "--img_size", "32", "48"])
    em = evaluation_run.load_model(args)
    assert isinstance(em, ClassicalEM)
    assert (em.theta_method, em.em_iterations, em.L, em.param_model, em.v_distance) == ("OLS", 4, 3, "Affine",
                                                                                     "squared")
    assert em.hparams["img_size"] == [32, 48] and "save_dir" not in em.hparams and "batch_size" not in em.hparams


@pytest.mark.slow  # two tiny trainings (about 10 s on 2 busy cores)
def test_a_run_replays_through_the_command_line(tmp_path):
    import torch

    prefix = make_split(tmp_path / "d", n=3)
    quick = ["--max_epochs", "1", "--limit_train_batches", "1", "--limit_val_batches", "1", "--log_every_n_steps", "1"]
    first, second = tmp_path / "a", tmp_path / "b"
    assert model_train.main(["--path_save_model", str(first), "--base_dir", str(tmp_path / "d"), "--data_file", prefix,
                             *TINY, *quick, "--optim.lr", "0.003", "--theta_method", "OLS"]) == 0
    assert model_train.main(["--config", str(first / "hparams.json"), "--path_save_model", str(second)]) == 0
    a, b = (json.loads((run / "hparams.json").read_text()) for run in (first, second))
    assert a.pop("path_save_model") == str(first) and b.pop("path_save_model") == str(second)
    assert a == b and b["optim.lr"] == 0.003 and b["theta_method"] == "OLS"
    ckpt_a, ckpt_b = (torch.load(run / "last.ckpt", weights_only=True) for run in (first, second))
    assert ckpt_a["hyper_parameters"] == ckpt_b["hyper_parameters"] == MethodeB.own_hparams(a)
    assert ckpt_b[training.RUN_CONFIG_KEY]["path_save_model"] == str(second)


def test_classical_em_identity_covers_its_solver():
    """--resume must not mix frames computed with another --theta_method."""
    argv = ["--model", "ClassicalEM", "--save_dir", "x", "--img_size", "32", "48"]
    ids = []
    for method in ("IRLS", "OLS"):
        args = evaluation_run.parse_args([*argv, "--theta_method", method])
        ids.append(evaluation_run.model_identity(args, evaluation_run.load_model(args))["model_sha256"])
    assert ids[0] != ids[1]


# ------------------------------------------------------------------------------------------------
# segment.py
# ------------------------------------------------------------------------------------------------
def test_segment_flags_and_options_derive_from_the_definitions():
    import segment
    from csvflowdatamodule.extract_flow import DIS_PRESETS
    from emseg.app.segment.options import SegmentOptions
    from emseg.core.significance import DEFAULT_MIN_MOTION
    from emseg.video import adaptation
    from Models import backends

    defaults = H.defaults(*H.SEGMENT_GROUPS)
    args = vars(segment.build_parser().parse_args(["--flow", "x.flo", "--out", "o"]))
    assert set(args) == set(defaults)
    assert {k: v for k, v in args.items() if k not in ("flow", "out")} == \
        {k: v for k, v in defaults.items() if k not in ("flow", "out")}
    o = SegmentOptions()
    assert (o.batch_size, o.fusion_weight, o.min_motion, o.adapt_lr, o.adapt_steps, o.precision, o.backend) == \
        (defaults["batch_size"], defaults["fusion_weight"], defaults["min_motion"], defaults["adapt_lr"],
         defaults["adapt"], defaults["precision"], defaults["backend"])
    assert o.temporal is not defaults["no_temporal"] and o.keep_export is not defaults["no_export_cache"]
    # one definition each: the copies in emseg/core/hparams.py equal the modules' own
    assert adaptation.DEFAULT_ADAPT_LR == defaults["adapt_lr"] and adaptation.DEFAULT_ADAPT_STEPS == H.ADAPT_STEPS
    assert DEFAULT_MIN_MOTION == defaults["min_motion"]
    assert tuple(DIS_PRESETS) == H.DIS_PRESETS
    assert backends.BACKENDS == H.INFERENCE_BACKENDS and backends.PRECISIONS == H.INFERENCE_PRECISIONS
    assert "add_argument(" not in (ROOT / "segment.py").read_text()  # every flag from the definitions


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "-1", "x"])
def test_bounded_numbers_refuse_non_finite_and_out_of_range(text):
    with pytest.raises(ValueError, match="must be"):
        H.Bounded(float, low=0)(text)
    from emseg.core.significance import check_min_motion  # the same rule as --min_motion's parser

    with pytest.raises(ValueError):
        check_min_motion(text)
