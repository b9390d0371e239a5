"""Settings from files and flags are checked at parsing (issue 21, items 10 and 11): every number finite
and in range, a settings file bounded in size, nesting and YAML aliases, a key given twice refused."""

from __future__ import annotations

import json
import time

import pytest

from emseg.core import hparams as H
from emseg.core.hparams import ConfigError


def _write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    rows = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    rows += [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]
    path = _write(tmp_path, "bomb.yaml", "\n".join(rows) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="more than 32 YAML aliases") as err:
        H.read_config(path)
    assert time.perf_counter() - t0 < 2 and len(str(err.value)) < 400 and "\n" not in str(err.value)


@pytest.mark.parametrize("name,text", [("deep.json", "[" * 100_000 + "]" * 100_000),
                                       ("deep.yaml", "[" * 5_000 + "]" * 5_000),
                                       ("deepdict.json", '{"a": ' * 20 + "1" + "}" * 20)])
def test_deep_nesting_is_refused_without_a_recursion_error(tmp_path, name, text):
    with pytest.raises(ConfigError, match="nested deeper than 8 levels"):
        H.read_config(_write(tmp_path, name, text))


@pytest.mark.parametrize("name,text", [("dup.json", '{"optim.lr": 0.1, "optim.lr": 0.2}'),
                                       ("dup.yaml", "optim.lr: 0.1\noptim.lr: 0.2\n")])
def test_a_key_given_twice_is_refused(tmp_path, name, text):
    with pytest.raises(ConfigError, match="'optim.lr' appears more than once"):
        H.read_config(_write(tmp_path, name, text))


def test_a_huge_or_binary_file_is_refused(tmp_path):
    big = tmp_path / "big.json"
    big.write_text('{"a": "' + "x" * (H.MAX_CONFIG_BYTES + 10) + '"}')
    with pytest.raises(ConfigError, match="a settings file is at most"):
        H.read_config(str(big))
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        H.read_config(str(binary))


def test_a_plain_settings_file_still_reads(tmp_path):
    text = json.dumps({"optim.lr": 0.001, "img_size": [64, 112], "nested": {"ok": [1, 2]}})
    assert H.read_config(_write(tmp_path, "ok.json", text))["img_size"] == [64, 112]
    assert H.read_config(_write(tmp_path, "ok.yaml", "optim.lr: 0.001\nimg_size: [64, 112]\n"))["optim.lr"] == 0.001


@pytest.mark.parametrize("key,value,message", [
    ("entropy_weight", float("nan"), "must be a finite number"),
    ("optim.weight_decay", float("inf"), "must be a finite number"),
    ("optim.lr", -1.0, "must be >= 0"),
    ("batch_size", 0, "must be >= 1"),
    ("img_size", [64, -1], "must be >= 1"),
    ("limit_train_batches", float("nan"), "count or a fraction"),
    ("flow_noise", 1.5, "must be <= 1"),
])
def test_config_values_are_checked_like_the_flags(tmp_path, key, value, message):
    path = _write(tmp_path, "run.json", json.dumps({key: value}))  # json writes NaN / Infinity tokens
    known = H.spec_map(*H.ALL_GROUPS)
    with pytest.raises(ConfigError, match=rf"--config .*run\.json: {key}: .*{message}"):
        H.check_config(H.read_config(path), path, known)


@pytest.mark.parametrize("argv,message", [
    (["--optim.lr", "nan"], "--optim.lr must be a finite number"),
    (["--entropy_weight", "inf"], "--entropy_weight must be a finite number"),
    (["--seed", "-3"], "--seed must be >= 0"),
    (["--img_size", "0", "224"], "--img_size must be >= 1"),
    (["--unet.num_layers", "0"], "--unet.num_layers must be >= 1"),
])
def test_training_flags_are_checked_at_parsing(argv, message, capsys):
    from emseg.app.training_cli import parse_args

    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err


def test_model_eval_min_motion_nan_is_refused(capsys):
    from emseg.app.evaluation_cli import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--save_dir", "x", "--min_motion", "nan"])
    assert "--min_motion must be a finite number" in capsys.readouterr().err


def test_a_replayed_nan_is_a_one_line_error_naming_the_file(tmp_path):
    from emseg.app.training_cli import parse_args

    path = _write(tmp_path, "hparams.json", '{"entropy_weight": NaN}')
    with pytest.raises(ConfigError, match=r"hparams\.json: entropy_weight: must be a finite number"):
        parse_args(["--config", path])
