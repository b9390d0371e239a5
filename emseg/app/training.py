"""Training: the wiring behind model_train.py, importable by tests and notebooks.

The command line (parser, ``--config`` replay, checks) is ``emseg/app/training_cli.py``, which
imports neither torch nor Lightning so that ``--help`` is fast; its names are importable from here too.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from csvflowdatamodule.CsvDataModule import CsvDataModule
from emseg.app.results import RunLock, atomic_write_json
from emseg.app.run_checks import check_writable_dir
from emseg.app.run_folder import TRAINING, prepare_run_folder
from emseg.app.trainer_args import make_logger, trainer_kwargs
from emseg.app.training_cli import (  # noqa: F401  (the command line's names, also importable from here)
    REPLAY_SKIPS,
    build_parser,
    check_training_args,
    config_path_of,
    demo_help,
    explicit_flags,
    parse_args,
    replayed_settings,
)
from emseg.core import hparams as H
from emseg.core.hparams import DEMO_DEFAULTS, PAPER_MAX_EPOCHS, ConfigError  # noqa: F401  (re-exported)
from emseg.core.quiet_logs import allow_run_files_in_checkpoint_dir, quiet_library_logs
from Models.CoherenceNets.MethodeB import MethodeB

logger = logging.getLogger(__name__)

#: the checkpoint entry holding the run's settings (the model's own are its ``hyper_parameters``)
RUN_CONFIG_KEY = "run_config"
#: run state kept on the parsed arguments, never recorded in hparams.json
NOT_RECORDED = ("demo", "explicit", "config", "overwrite")


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """Every setting of the run (what ``hparams.json`` records, and ``--config`` replays)."""
    return {k: v for k, v in vars(args).items() if k not in NOT_RECORDED}


#: flags a resumed run may change: how and how long it runs, not what it computes
RESUME_MAY_CHANGE = frozenset({
    "ckpt_path", "max_epochs", "max_steps", "max_time", "num_workers", "devices", "accelerator", "strategy",
    "num_nodes", "gpus", "logger", "log_every_n_steps", "trust_checkpoint", "limit_val_batches",
    "limit_test_batches", "limit_train_batches", "check_val_every_n_epoch", "precision", "deterministic",
    "fast_dev_run", "path_save_model", "strict_data", "init_ckpt", "explicit", "demo", "config", "overwrite",
})


def reconcile_resume(args: argparse.Namespace, stored: dict[str, Any]) -> list[str]:
    """Make ``args`` the settings the resumed run was built with: flags left at their defaults take
    the stored values; an explicit flag that differs is refused (Lightning would restore the old
    model and optimiser and silently keep the old value). Returns the flags taken from the run."""
    from csvflowdatamodule.CsvDataModule import resolve_data_path

    conflicts, adopted = [], []
    for key, old in stored.items():
        if key in RESUME_MAY_CHANGE or not hasattr(args, key):
            continue
        new = getattr(args, key)
        if key == "data_file" and new is not None:
            new = resolve_data_path(new)
        if key == "base_dir" and new is None:
            new = ""
        if _same(new, old):
            continue
        if key in args.explicit:
            conflicts.append(f"--{key} {H.show_value(getattr(args, key))} (the run has {H.show_value(old)})")
        else:
            setattr(args, key, list(old) if isinstance(old, tuple) else old)
            adopted.append(key)
    if conflicts:
        raise ConfigError(
            f"--ckpt_path {args.ckpt_path}: a resumed run keeps the settings it was started with, and these "
            f"flags differ: {'; '.join(conflicts)}. Drop them to resume, or start a new run from these weights "
            "with --init_ckpt (fresh optimiser and epoch count)")
    if "data_file" in adopted:
        args.demo = False
    return adopted


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _is_rank_zero_process() -> bool:
    # DDP launches one copy of this script per device; only the first owns the run directory.
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def run_training(args: argparse.Namespace) -> dict[str, Any]:
    """Train ``MethodeB`` as the arguments say; return a summary (paths and final metrics)."""
    if not hasattr(args, "explicit"):
        args.explicit = set()
    save_dir = args.path_save_model
    if save_dir is None and not args.fast_dev_run:
        save_dir = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
        logger.warning("no --path_save_model given: saving under %s", save_dir)
    ckpt_path = args.ckpt_path
    if ckpt_path == "last":
        if save_dir is None:
            raise ConfigError("--ckpt_path last needs --path_save_model (the run to resume)")
        ckpt_path = os.path.join(save_dir, "last.ckpt")
        if not os.path.exists(ckpt_path):
            raise ConfigError(f"--ckpt_path last: {ckpt_path} does not exist (nothing to resume)")
    if ckpt_path is not None:
        from Models.checkpoint_io import check_resume_checkpoint, read_checkpoint

        check_resume_checkpoint(ckpt_path)
        ckpt = read_checkpoint(ckpt_path)
        # the model's hyperparameters, and the rest of the run's settings (older runs stored all of
        # them as hyperparameters)
        stored = {**(ckpt.get("hyper_parameters") or {}), **(ckpt.get(RUN_CONFIG_KEY) or {})}
        adopted = reconcile_resume(args, stored)
        if adopted:
            logger.info("resuming with the run's own settings for %s", ", ".join(sorted(adopted)))
        check_training_args(args)
    if args.demo:
        logger.warning("no --data_file given: training a CPU-sized model (%s) on the built-in synthetic "
                       "dataset — pass --data_file to train on your own DataSplit",
                       ", ".join(f"{k}={getattr(args, k)}" for k in DEMO_DEFAULTS))
    pl.seed_everything(args.seed, workers=True)
    dm = CsvDataModule.from_args(args, request=sorted(set(args.inputs) | {"Flow", "GtMask", "Image"}),
                                 optional_columns=tuple({"GtMask", "Image"} - set(args.inputs)))
    # the splits are read now, so a bad CSV or an empty train split fails before any folder is made
    for step in ("train", "val"):
        dm.setup_dataset(step)
    if len(dm.datasets["train"]) == 0:
        raise ConfigError(f"--data_file: the train split {dm.split_path('train')} has no rows: nothing to train on")
    config = run_config(args)
    config["base_dir"], config["data_file"] = dm.base_dir, dm.data_path
    model = MethodeB(**MethodeB.own_hparams(config))
    if args.init_ckpt:
        from Models.checkpoint_io import CheckpointError, read_checkpoint

        try:
            ckpt = read_checkpoint(args.init_ckpt, trust=args.trust_checkpoint)
            state = ckpt["state_dict"]
            frame_ckpt = int((ckpt.get("hyper_parameters") or {}).get("clip_length") or 1) == 1
            if model.clip_length > 1 and frame_ckpt and model.backbone_model.kind == "stack2d":
                from Models.temporal import inflate_frame_weights  # a frame model starts a temporal one

                state = inflate_frame_weights(state, model.clip_length, args.inflate)
            model.load_state_dict(state, strict=True)
        except (CheckpointError, RuntimeError) as err:
            # torch's message spans lines (a header, then one per tensor); the CLI prints one line
            detail = "; ".join(ln.strip() for ln in str(err).splitlines() if ln.strip())
            raise ConfigError(f"--init_ckpt {args.init_ckpt}: {detail[:800]}") from None
        logger.info("initialised the weights from %s", args.init_ckpt)

    quiet_library_logs()
    lock = None
    from utils.Callbacks import ValidationFigure

    callbacks: list[pl.Callback] = [ValidationFigure()]  # draws only when the run has a logger
    ckpt_cb = None
    if save_dir is not None:
        from emseg.app.results import ResultsWriter

        allow_run_files_in_checkpoint_dir(save_dir, resuming=args.ckpt_path is not None)

        if _is_rank_zero_process():
            check_writable_dir(save_dir, "--path_save_model")
            lock = RunLock(save_dir).acquire()
            if args.ckpt_path is None:
                try:
                    _make_room_for_a_new_run(save_dir, args, config, dm)
                except BaseException:
                    lock.release()
                    raise
        ckpt_cb = BestCheckpoint(dirpath=save_dir, filename="{epoch}-{epoch_val_loss:.5f}",
                                 monitor="epoch_val_loss", mode="min", save_top_k=1, save_on_train_epoch_end=False)
        last_cb = LastCheckpoint(os.path.join(save_dir, "last.ckpt"), ckpt_cb)
        # Order matters: an epoch's rows are on disk before the checkpoint that skips that epoch.
        callbacks += [ResultsWriter(save_dir), HparamsWriter(os.path.join(save_dir, "hparams.json"), config),
                      last_cb, ckpt_cb]
    try:
        lg = make_logger(args.logger, save_dir, name="logs") if save_dir is not None else False
        from Models.checkpoint_io import AtomicCheckpointIO

        # every checkpoint Lightning writes (best ones, last.ckpt) goes to a temporary name, then is renamed
        trainer = pl.Trainer(logger=lg, callbacks=callbacks, default_root_dir=save_dir,
                             enable_checkpointing=ckpt_cb is not None, plugins=[AtomicCheckpointIO()],
                             **trainer_kwargs(args))
        try:
            # weights_only explicitly: no environment variable can turn a resume into arbitrary unpickling
            trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_out_of_memory(err):
                raise
            raise OutOfMemoryConfigError(out_of_memory_message(args, err)) from None
    finally:
        if lock is not None:
            lock.release()
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    best = ckpt_cb.best_model_path if ckpt_cb else None
    if best and not os.path.exists(best):
        logger.error("the best checkpoint recorded, %s, is missing", best)
        best = None
    summary = {
        "path_save_model": save_dir,
        "best_checkpoint": best,
        "last_checkpoint": os.path.abspath(last_cb.path) if ckpt_cb else None,
        "epochs": trainer.current_epoch,
        "val_jacc": metrics.get("val/jacc"),
        "epoch_val_loss": metrics.get("epoch_val_loss"),
        "skipped_samples": _count_lines(os.path.join(save_dir, "skipped.csv")) if save_dir else 0,
    }
    if save_dir is not None and trainer.is_global_zero:
        atomic_write_json(os.path.join(save_dir, "train_summary.json"), summary)
    return summary


def _make_room_for_a_new_run(save_dir: str, args: argparse.Namespace, config: dict[str, Any],
                             dm: CsvDataModule) -> None:
    """A new run (no --ckpt_path) into a folder holding an earlier one: the earlier run is moved aside
    (or removed with --overwrite; ``emseg/app/run_folder.py``). The data's split files are never
    touched; --init_ckpt, already read, may move with the earlier run, and the record follows it."""
    splits = [dm.split_path(step) for step in ("train", "val")]
    previous = prepare_run_folder(save_dir, TRAINING, overwrite=bool(getattr(args, "overwrite", False)),
                                  keep=splits, movable=[args.init_ckpt])
    moved = previous.new_location(args.init_ckpt) if previous is not None and args.init_ckpt else None
    if moved is not None:
        logger.warning("--init_ckpt %s moved with the earlier run: it is now %s (hparams.json records that)",
                       args.init_ckpt, moved)
        args.init_ckpt = config["init_ckpt"] = str(moved)


class HparamsWriter(pl.Callback):
    """``hparams.json`` (every setting of the run, which ``--config`` replays) once the run has
    really started (a resumed run's checkpoint restored), so a start that fails never replaces the
    record of the run that is there; the same settings go into every checkpoint (``RUN_CONFIG_KEY``),
    next to the model's own hyperparameters, for a resume to compare with."""

    def __init__(self, path: str, hparams: dict[str, Any]) -> None:
        self.path, self.hparams = path, hparams

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            atomic_write_json(self.path, self.hparams)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[RUN_CONFIG_KEY] = dict(self.hparams)


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose deletions of superseded best files wait until ``last.ckpt`` records
    the new best, so that whenever the run is killed the checkpoint it resumes from names a best
    file that exists; on resume, best files it does not name (left by the killed run) are removed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending_removals: list[str] = []

    def _remove_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        self.pending_removals.append(filepath)

    def flush_removals(self, trainer: pl.Trainer) -> None:
        for path in self.pending_removals:
            if path not in self.best_k_models and path != self.best_model_path:
                super()._remove_checkpoint(trainer, path)
        self.pending_removals.clear()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # only when resuming with this folder's own record (Lightning restores it only then)
        if not (trainer.ckpt_path and self.best_k_models and trainer.is_global_zero and self.dirpath):
            return
        keep = {os.path.abspath(p) for p in [*self.best_k_models, self.best_model_path] if p}
        if all(os.path.dirname(p) == os.path.abspath(self.dirpath) for p in keep):
            for path in glob.glob(os.path.join(self.dirpath, "epoch=*.ckpt")):
                if os.path.abspath(path) not in keep:
                    logger.info("removing %s: a best checkpoint the resumed run does not record", path)
                    os.remove(path)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self.flush_removals(trainer)


class LastCheckpoint(pl.Callback):
    """``last.ckpt`` after every training epoch (validation included), written then renamed (by the
    Trainer's ``AtomicCheckpointIO`` plugin, as every checkpoint of a run; or here, without it).

    Lightning's ``save_last`` only refreshes it when a top-k checkpoint is saved, so a run whose
    last epochs did not improve the monitored loss lost them; and a crash mid-write must not
    leave a truncated file where the previous good one was. ``best`` (saving at validation end,
    before this runs) has recorded the epoch's best by then; its deferred deletions follow.
    """

    def __init__(self, path: str, best: BestCheckpoint | None = None) -> None:
        self.path = path
        self.best = best

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        from Models.checkpoint_io import AtomicCheckpointIO

        if isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO):
            # the plugin writes then renames; every rank takes part, rank 0 writes, then a barrier
            trainer.save_checkpoint(self.path, weights_only=False)
        else:  # a Trainer built without the plugin (a notebook's): rename a fixed temporary name
            tmp = f"{self.path}.tmp"
            trainer.save_checkpoint(tmp, weights_only=False)
            trainer.strategy.barrier("last-checkpoint-written")
            if trainer.is_global_zero:
                os.replace(tmp, self.path)
        if self.best is not None:
            self.best.flush_removals(trainer)


class OutOfMemoryConfigError(ConfigError):
    """The run does not fit in memory at these settings; the message says which flags to lower."""


def is_out_of_memory(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text \
        or "failed to allocate" in text


def out_of_memory_message(args: argparse.Namespace, err: BaseException) -> str:
    H, W = args.img_size
    return (f"ran out of memory with --batch_size {args.batch_size}, --img_size {H} {W}, "
            f"--unet.num_layers {getattr(args, 'unet.num_layers')}, --unet.features_start "
            f"{getattr(args, 'unet.features_start')}: lower --batch_size first (then --img_size or the network's "
            f"size; --precision bf16-mixed also halves activations on GPUs). ({str(err).splitlines()[0][:160]})")


def _count_lines(path: str) -> int:
    if not os.path.exists(path):
        return 0
    with open(path) as fh:
        return max(0, sum(1 for _ in fh) - 1)
