"""The command line of model_train.py: its parser, ``--config`` replay, the demo's defaults and the
checks of the settings, apart from the run (``emseg/app/training.py``, which re-exports these).

Importing this imports neither torch nor Lightning (the flags are declared from
``emseg/core/hparams.py`` through ``emseg/app/trainer_args.py``), so ``model_train.py --help`` and a
command line's mistakes answer in a fraction of a second; the checks that need torch import it when
they run.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import textwrap
from typing import Any

from emseg.app.run_checks import (
    check_cuda,
    check_img_size,
    check_network,
    check_positive,
    warn_single_mask,
)
from emseg.app.trainer_args import add_data_args, add_model_args, add_trainer_args
from emseg.core import hparams as H
from emseg.core.hparams import DEMO_DEFAULTS, PAPER_MAX_EPOCHS, ConfigError

# the training module's logger: the messages read as they did before the parser moved here
logger = logging.getLogger("emseg.app.training")

#: where a run goes, not what it computes: a replayed --config never takes these (a replay is a new
#: run; it must not resume, or write into, the run it replays)
REPLAY_SKIPS = ("path_save_model", "ckpt_path")
#: settings that let a run execute code (a checkpoint unpickled in full): an opt-in that must come from the
#: command line, never from a file (a replayed --config, hparams.json or hparams.yaml)
CODE_RUNNING_SETTINGS = ("trust_checkpoint",)


def demo_help() -> str:
    """What --help says about the built-in demo's defaults."""
    changed = ", ".join(f"--{k} {v}" for k, v in DEMO_DEFAULTS.items())
    return textwrap.fill(
        f"Without --data_file the built-in demo runs: a CPU-sized model on the built-in synthetic dataset, and "
        f"these defaults change (for every flag not given): {changed}. With --data_file, --max_epochs defaults to "
        f"{PAPER_MAX_EPOCHS} (the paper's) and every other flag to the default shown above.", width=100)


def build_parser() -> argparse.ArgumentParser:
    """The training flags; every default comes from ``emseg/core/hparams.py``."""
    parser = argparse.ArgumentParser(
        description="Train the EM-driven motion segmentation model (MethodeB). Without --data_file it "
                    "trains a CPU-sized model on the built-in synthetic dataset.",
        epilog=demo_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, metavar="RUN/hparams.json",
                        help="replay a run: every setting from its hparams.json (or Lightning's hparams.yaml); "
                             "flags given here override it. Its path_save_model and ckpt_path are not taken: "
                             "the replay is a new run (give --path_save_model)")
    parser.add_argument("--overwrite", action="store_true",
                        help="a new run into a --path_save_model holding an earlier run removes that run's files "
                             "first (default: they are moved aside to PATH.previous-<UTC time>); never recorded or "
                             "replayed")
    g = parser.add_argument_group("run")
    H.add_arguments(g, H.RunHparams)
    H.add_arguments(g, H.InputHparams, only=["flow_width"])
    add_model_args(parser)  # MethodeB.add_specific_args, without importing the model
    add_data_args(parser)  # CsvDataModule.add_specific_args, likewise
    add_trainer_args(parser, training=True)
    return parser


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Destinations the user set on the command line (not left at their defaults, wherever those
    came from). argparse fills in a default only where the namespace it is given has no value, so
    parsing into a namespace that holds a marker everywhere leaves the marker on every flag not given."""
    marker = object()
    probe = argparse.Namespace(**{k: marker for k in vars(parser.parse_args(argv))})
    parser.parse_args(argv, namespace=probe)
    return {k for k, v in vars(probe).items() if v is not marker}


def config_path_of(argv: list[str]) -> str | None:
    """``--config PATH`` of a command line (read before the full parse: it sets the defaults)."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--config", default=None)
    return probe.parse_known_args(argv)[0].config


def replayed_settings(parser: argparse.ArgumentParser, path: str,
                      command_line: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """The settings of the config file at ``path``, checked against this parser's flags (an
    unknown key or a bad value is a ConfigError naming it and the file), minus ``REPLAY_SKIPS``.

    A setting of ``CODE_RUNNING_SETTINGS`` is never taken from the file: one that is on there
    (``"trust_checkpoint": true``) is a ConfigError unless ``command_line`` (the flags given on the
    command line) sets it too; one that is off is dropped."""
    dests = set(vars(parser.parse_args([])))
    known = {k: s for k, s in H.spec_map(*H.ALL_GROUPS).items() if k in dests}
    settings = H.check_config(H.read_config(path), path, known)
    for key in REPLAY_SKIPS:
        if settings.pop(key, None) is not None:
            logger.info("--config %s: not taking its %s (a replay is a new run)", path, key)
    for key in CODE_RUNNING_SETTINGS:
        if settings.pop(key, None) and key not in command_line:
            raise ConfigError(f"--config {path}: {key} is on there, and a file cannot allow a checkpoint to run "
                              f"code: pass --{key} on the command line if you trust the checkpoint")
    return settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The training settings: defaults (``emseg/core/hparams.py``), then ``--config``'s, then the
    command line's; the demo's defaults fill what none of those set when there is no --data_file.
    Raises ConfigError (a one-line message naming the flag or file) for settings that cannot work."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    config = config_path_of(argv)
    given = explicit_flags(parser, argv)
    replayed = replayed_settings(parser, config, command_line=given) if config else {}
    parser.set_defaults(**replayed)
    args = parser.parse_args(argv)
    args.demo = args.data_file is None
    args.explicit = given | set(replayed)
    if args.overwrite and args.ckpt_path is not None:
        raise ConfigError(f"--overwrite removes the earlier run and --ckpt_path {args.ckpt_path} continues one: "
                          "give one of them")
    if args.demo:
        for key, value in DEMO_DEFAULTS.items():
            if key not in args.explicit:
                setattr(args, key, value)
    elif args.max_epochs is None:
        args.max_epochs = PAPER_MAX_EPOCHS
    check_training_args(args)
    return args


def check_training_args(args: argparse.Namespace) -> None:
    """Settings that cannot work are refused here, before a folder is made or memory allocated."""
    hp = vars(args)
    check_positive(hp, {"batch_size": "--batch_size", "subsample_train": "--subsample_train"})
    if args.num_workers is not None and args.num_workers < 0:
        raise ConfigError(f"--num_workers {args.num_workers}: must be 0 or more")
    check_network(hp)
    check_img_size(args.img_size, int(hp["unet.num_layers"]))
    if not float(hp["optim.lr"]) >= 0 or not math.isfinite(float(hp["optim.lr"])):
        raise ConfigError(f"--optim.lr {hp['optim.lr']}: must be a finite number >= 0")
    if hp["optim.schedule"] == "cosine" and args.max_epochs is not None and args.max_epochs < 0 \
            and args.max_steps <= 0:
        raise ConfigError("--optim.schedule cosine decays over the whole run: give a finite --max_epochs "
                          f"(got {args.max_epochs}) or --max_steps")
    check_cuda(args.accelerator)
    warn_single_mask(args.nAffineMasks)
    check_temporal_args(args)


def check_temporal_args(args: argparse.Namespace) -> None:
    """The temporal model's settings (``--clip_length`` > 1, docs/METHOD.md §5): its space-time motion
    model must have independent temporal functions on the clip's frames, and ``unet3d`` has no fake form."""
    T = int(args.clip_length)
    if T <= 1:
        return
    from emseg.core.method_names import ST_MODELS

    name = args.st_param_model
    _, kind, n = ST_MODELS[name]
    if kind == "poly" and T <= n:
        raise ConfigError(f"--st_param_model {name} has {n + 1} temporal functions: it needs --clip_length > {n}, "
                          f"got {T}")
    if kind == "bspline":
        from emseg.core import coherence_math as cm  # torch: only for the B-spline models' rank check

        try:
            cm.temporal_basis(name, T, centered=True)
        except ValueError as err:
            raise ConfigError(f"--st_param_model {name} with --clip_length {T}: {err}") from None
    if args.temporal_backbone == "unet3d" and args.backbone == "fake":
        raise ConfigError("--backbone fake has no 3-D form: use --temporal_backbone stack2d")
