"""Trainer flags: the authors' --gpus, defaults of the demo run, explicit flags."""

from __future__ import annotations

import argparse

import pytest
import torch

from emseg.app.trainer_args import accelerator_and_devices, parse_gpus
from emseg.app.training import DEMO_DEFAULTS, PAPER_MAX_EPOCHS, parse_args
from emseg.core.hparams import ConfigError


def test_parse_gpus_counts_and_ids():
    assert parse_gpus(None) is None
    assert parse_gpus(["2"]) == 2
    assert parse_gpus(["0", "2"]) == [0, 2]
    assert parse_gpus(["0,2"]) == [0, 2]
    assert parse_gpus(["1,"]) == [1]
    with pytest.raises(argparse.ArgumentTypeError, match="--gpus"):
        parse_gpus(["two"])


def test_gpus_maps_to_the_gpu_accelerator(monkeypatch):
    args = argparse.Namespace(gpus=["0", "1"], accelerator="auto", devices="auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert accelerator_and_devices(args) == ("gpu", [0, 1])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="--gpus 0 1: no CUDA GPU"):
        accelerator_and_devices(args)
    assert accelerator_and_devices(argparse.Namespace(gpus=None, accelerator="cpu", devices=2)) == ("cpu", 2)


def test_demo_defaults_only_fill_what_the_user_did_not_set():
    demo = parse_args([])
    assert demo.demo and getattr(demo, "unet.num_layers") == DEMO_DEFAULTS["unet.num_layers"]
    assert demo.max_epochs == DEMO_DEFAULTS["max_epochs"]
    mine = parse_args(["--unet.num_layers", "5", "--max_epochs", "1"])
    assert getattr(mine, "unet.num_layers") == 5 and mine.max_epochs == 1
    assert getattr(mine, "unet.features_start") == DEMO_DEFAULTS["unet.features_start"]
    real = parse_args(["--data_file", "DataSplit/Exp6_Split", "--image_size", "128", "256"])
    assert not real.demo and real.max_epochs == PAPER_MAX_EPOCHS and real.img_size == [128, 256]
    assert getattr(real, "unet.num_layers") == 7  # the paper's network unless told otherwise


def test_cosine_schedule_needs_a_finite_run():
    ok = parse_args(["--optim.schedule", "cosine", "--max_epochs", "3"])
    assert getattr(ok, "optim.schedule") == "cosine"
    assert parse_args(["--optim.schedule", "cosine", "--max_epochs", "-1", "--max_steps", "50"]).max_steps == 50
    assert parse_args(["--max_epochs", "-1"]).max_epochs == -1  # an endless constant-rate run is fine
    with pytest.raises(ConfigError, match=r"give a finite --max_epochs \(got -1\)"):
        parse_args(["--optim.schedule", "cosine", "--max_epochs", "-1"])
