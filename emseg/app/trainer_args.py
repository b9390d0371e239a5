"""The flags model_train.py and model_eval.py share, and their mapping to a pl.Trainer.

Beside the Trainer's own flags, this declares the model's, the data's and ClassicalEM's flags
exactly as ``MethodeB.add_specific_args``, ``CsvDataModule.add_specific_args`` and
``ClassicalEM.add_specific_args`` lay them out (same groups, same order, all from
``emseg/core/hparams.py``; ``tests/test_startup.py`` checks they agree): those classes import torch
and Lightning (5-7 s), which a command line must not wait for to parse its flags or print ``--help``.
Nothing here imports either at module level.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from emseg.core import hparams as H
from emseg.core.hparams import ConfigError

#: the settings ClassicalEM uses, which its command line takes (``ClassicalEM.CLI_FLAGS``)
CLASSICAL_EM_FLAGS: tuple[str, ...] = ("nAffineMasks", "param_model", "v_distance", "theta_method",
                                       "em_iterations")
#: the groups its settings come from (``ClassicalEM.all_hparam_groups()``)
CLASSICAL_EM_GROUPS: tuple[type, ...] = (H.NetworkHparams, H.InputHparams, H.LossHparams, H.ClassicalEMHparams)


def parse_gpus(values: list[str] | None) -> int | list[int] | None:
    """The authors' ``--gpus``: a count (``--gpus 2``) or ids (``--gpus 0 2`` or ``--gpus 0,2``)."""
    if not values:
        return None
    items = [x for v in values for x in str(v).split(",") if x != ""]
    try:
        ids = [int(x) for x in items]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gpus expects a count or GPU ids, got {values}") from None
    if len(ids) == 1 and not (len(values) == 1 and "," in str(values[0])):
        return ids[0]
    return ids


def add_trainer_args(parser: argparse.ArgumentParser, training: bool = True) -> argparse.ArgumentParser:
    """The Trainer flags (``utils/hparams.TrainerHparams``; with ``training`` also ``FitHparams``)."""
    g = parser.add_argument_group("trainer")
    H.add_arguments(g, H.TrainerHparams, *([H.FitHparams] if training else []))
    return parser


def add_model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """MethodeB's flags (network, U-Net, optimiser, then the coherence loss), as
    ``MethodeB.add_specific_args`` adds them."""
    g = parser.add_argument_group("network")  # LitSegmentationModel.add_specific_args
    H.add_arguments(g, H.NetworkHparams, exclude=["inputs"])
    H.add_arguments(g, H.UNetHparams)  # UNetAbstract.add_specific_args, into the same group
    H.add_arguments(g, H.NetworkHparams, only=["inputs"])
    H.add_arguments(g, H.OptimHparams)
    H.add_arguments(parser.add_argument_group("coherence loss"), H.LossHparams)  # CoherenceNet's
    return parser


def add_data_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The data flags, as ``CsvDataModule.add_specific_args`` adds them."""
    g = parser.add_argument_group("CsvDataModule")
    H.add_arguments(g, H.DataHparams, only=["batch_size", "subsample_train"])
    H.add_arguments(g, H.InputHparams, only=["img_size"])
    H.add_arguments(g, H.DataHparams, exclude=["batch_size", "subsample_train"])
    return parser


def add_classical_em_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """ClassicalEM's flags, as ``ClassicalEM.add_specific_args`` adds them."""
    g = parser.add_argument_group("ClassicalEM (with --model ClassicalEM)")
    H.add_arguments(g, *CLASSICAL_EM_GROUPS, only=CLASSICAL_EM_FLAGS)
    return parser


def accelerator_and_devices(args: argparse.Namespace) -> tuple[str, Any]:
    gpus = parse_gpus(getattr(args, "gpus", None))
    if gpus is None:
        return args.accelerator, args.devices
    import torch  # here, not at the top: parsing the flags must not wait for torch

    if not torch.cuda.is_available():
        raise ConfigError(f"--gpus {' '.join(args.gpus)}: no CUDA GPU is visible on this machine; "
                          f"drop --gpus to train on the CPU (or use --accelerator cpu)")
    if gpus == 0:
        return "cpu", "auto"
    return "gpu", gpus


def make_logger(kind: str, save_dir: str, name: str = "logs") -> Any:
    """A Lightning logger writing under ``save_dir``; ``none`` → False."""
    if kind == "none":
        return False
    if kind == "csv":
        from pytorch_lightning.loggers import CSVLogger

        return CSVLogger(save_dir, name=name)
    if kind == "tensorboard":
        from pytorch_lightning.loggers import TensorBoardLogger

        # no placeholder hp_metric = -1 in the hyperparameters view: the runs log real metrics
        return TensorBoardLogger(save_dir, name=name, default_hp_metric=False)
    if kind == "wandb":
        from pytorch_lightning.loggers import WandbLogger

        os.environ.setdefault("WANDB_SILENT", "true")
        os.makedirs(save_dir, exist_ok=True)
        # offline: runs with no account and no network; sync later with `wandb sync`
        return WandbLogger(save_dir=save_dir, offline=True, project="em-motion-segmentation")
    raise ValueError(f"--logger must be csv, tensorboard, wandb or none, got {kind!r}")


def trainer_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    accelerator, devices = accelerator_and_devices(args)
    kw: dict[str, Any] = dict(accelerator=accelerator, devices=devices, strategy=args.strategy,
                              num_nodes=args.num_nodes, precision=args.precision,
                              limit_val_batches=args.limit_val_batches, limit_test_batches=args.limit_test_batches,
                              deterministic=True if args.deterministic else None)
    for name in ("max_epochs", "max_steps", "max_time", "limit_train_batches", "check_val_every_n_epoch",
                 "log_every_n_steps", "fast_dev_run"):
        if hasattr(args, name):
            kw[name] = getattr(args, name)
    return kw
