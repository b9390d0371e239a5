"""Training: the wiring behind model_train.py, importable by tests and notebooks."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from csvflowdatamodule.CsvDataModule import CsvDataModule
from Models.CoherenceNets.MethodeB import MethodeB
from utils.quiet_logs import allow_run_files_in_checkpoint_dir, quiet_library_logs
from utils.results import RunLock, atomic_write_json
from utils.trainer_args import add_trainer_args, make_logger, trainer_kwargs

logger = logging.getLogger(__name__)

#: the built-in demo: what a 2-core CPU trains in a few minutes (used when no --data_file is given,
#: for every flag the user did not set)
DEMO_DEFAULTS: dict[str, Any] = {
    "unet.num_layers": 4,
    "unet.features_start": 16,
    "max_epochs": 4,
    "flow_augmentation": "globalmotionfullquadlight",
    "optim.lr": 1e-3,
}
PAPER_MAX_EPOCHS = 100


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train the EM-driven motion segmentation model (MethodeB). Without --data_file it "
                    "trains a CPU-sized model on the built-in synthetic dataset.")
    parser.add_argument("--path_save_model", default=None,
                        help="directory for checkpoints, results.csv, logs and hyperparameters")
    parser.add_argument("--model_type", default="coherence_B", choices=["coherence_B"],
                        help="the authors' name for MethodeB")
    parser.add_argument("--init_ckpt", default=None,
                        help="start from these weights (fine-tuning: fresh optimiser and epoch count; the "
                             "architecture flags must match); unlike --ckpt_path, which resumes a run")
    parser.add_argument("--trust_checkpoint", action="store_true",
                        help="allow --init_ckpt to need arbitrary unpickling (the authors' legacy files)")
    parser.add_argument("--flow_width", type=int, default=None,
                        help="width the frames were downscaled to before their flows were computed "
                             "(extract_flow --max_width); recorded in the checkpoint, so that segment.py --video "
                             "computes flows at the scale the model was trained on")
    MethodeB.add_specific_args(parser)
    CsvDataModule.add_specific_args(parser)
    add_trainer_args(parser, training=True)
    return parser


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Destinations the user set on the command line (not left at their defaults)."""
    probe = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:  # same flags, every default suppressed
        if not action.option_strings or action.dest == "help":
            continue
        kw: dict[str, Any] = {"dest": action.dest, "default": argparse.SUPPRESS}
        if action.nargs == 0:
            kw["action"] = "store_const"
            kw["const"] = action.const
        else:
            kw["nargs"] = action.nargs
        probe.add_argument(*action.option_strings, **kw)
    known, _ = probe.parse_known_args(argv)
    return set(vars(known))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.demo = args.data_file is None
    if args.demo:
        given = explicit_flags(parser, argv)
        for key, value in DEMO_DEFAULTS.items():
            if key not in given:
                setattr(args, key, value)
    elif args.max_epochs is None:
        args.max_epochs = PAPER_MAX_EPOCHS
    if getattr(args, "optim.schedule") == "cosine" and args.max_epochs < 0 and args.max_steps <= 0:
        parser.error("--optim.schedule cosine decays over the whole run: give a finite --max_epochs "
                     f"(got {args.max_epochs}) or --max_steps")
    return args


def _is_rank_zero_process() -> bool:
    # DDP launches one copy of this script per device; only the first owns the run directory.
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def run_training(args: argparse.Namespace) -> dict[str, Any]:
    """Train ``MethodeB`` as the arguments say; return a summary (paths and final metrics)."""
    if args.demo:
        logger.warning("no --data_file given: training a CPU-sized model (%s) on the built-in synthetic "
                       "dataset — pass --data_file to train on your own DataSplit",
                       ", ".join(f"{k}={getattr(args, k)}" for k in DEMO_DEFAULTS))
    pl.seed_everything(args.seed, workers=True)
    dm = CsvDataModule.from_args(args, request=sorted(set(args.inputs) | {"Flow", "GtMask", "Image"}),
                                 optional_columns=tuple({"GtMask", "Image"} - set(args.inputs)))
    save_dir = args.path_save_model
    if save_dir is None and not args.fast_dev_run:
        save_dir = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
        logger.warning("no --path_save_model given: saving under %s", save_dir)
    hparams = {k: v for k, v in vars(args).items() if k not in ("demo",)}
    hparams["base_dir"], hparams["data_file"] = dm.base_dir, dm.data_path
    model = MethodeB(**hparams)
    if args.init_ckpt:
        from Models.checkpoint_io import CheckpointError, read_checkpoint

        try:
            state = read_checkpoint(args.init_ckpt, trust=args.trust_checkpoint)["state_dict"]
            model.load_state_dict(state, strict=True)
        except (CheckpointError, RuntimeError) as err:
            raise SystemExit(f"--init_ckpt {args.init_ckpt}: {str(err)[:800]}") from None
        logger.info("initialised the weights from %s", args.init_ckpt)

    quiet_library_logs()
    lock = None
    callbacks: list[pl.Callback] = []
    ckpt_cb = None
    if save_dir is not None:
        from utils.results import ResultsWriter

        allow_run_files_in_checkpoint_dir(save_dir, resuming=args.ckpt_path is not None)

        if _is_rank_zero_process():
            lock = RunLock(save_dir).acquire()
        ckpt_cb = ModelCheckpoint(dirpath=save_dir, filename="{epoch}-{epoch_val_loss:.5f}",
                                  monitor="epoch_val_loss", mode="min", save_top_k=1)
        last_cb = LastCheckpoint(os.path.join(save_dir, "last.ckpt"))
        # Order matters: an epoch's rows are on disk before the checkpoint that skips that epoch.
        callbacks += [ResultsWriter(save_dir), last_cb, ckpt_cb]
    ckpt_path = args.ckpt_path
    if ckpt_path == "last" and save_dir is not None:
        ckpt_path = os.path.join(save_dir, "last.ckpt")
        if not os.path.exists(ckpt_path):
            raise SystemExit(f"--ckpt_path last: {ckpt_path} does not exist (nothing to resume)")
    try:
        lg = make_logger(args.logger, save_dir, name="logs") if save_dir is not None else False
        trainer = pl.Trainer(logger=lg, callbacks=callbacks, default_root_dir=save_dir,
                             enable_checkpointing=ckpt_cb is not None, **trainer_kwargs(args))
        if save_dir is not None and trainer.is_global_zero:
            atomic_write_json(os.path.join(save_dir, "hparams.json"), hparams)
        try:
            trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_out_of_memory(err):
                raise
            raise SystemExit(out_of_memory_message(args, err)) from None
    finally:
        if lock is not None:
            lock.release()
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    summary = {
        "path_save_model": save_dir,
        "best_checkpoint": ckpt_cb.best_model_path if ckpt_cb else None,
        "last_checkpoint": os.path.abspath(last_cb.path) if ckpt_cb else None,
        "epochs": trainer.current_epoch,
        "val_jacc": metrics.get("val/jacc"),
        "epoch_val_loss": metrics.get("epoch_val_loss"),
        "skipped_samples": _count_lines(os.path.join(save_dir, "skipped.csv")) if save_dir else 0,
    }
    if save_dir is not None and trainer.is_global_zero:
        atomic_write_json(os.path.join(save_dir, "train_summary.json"), summary)
    return summary


class LastCheckpoint(pl.Callback):
    """``last.ckpt`` after every training epoch (validation included), written then renamed.

    Lightning's ``save_last`` only refreshes it when a top-k checkpoint is saved, so a run whose
    last epochs did not improve the monitored loss lost them; and a crash mid-write must not
    leave a truncated file where the previous good one was.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        tmp = f"{self.path}.tmp"
        trainer.save_checkpoint(tmp, weights_only=False)  # every rank takes part; rank 0 writes
        trainer.strategy.barrier("last-checkpoint-written")
        if trainer.is_global_zero:
            os.replace(tmp, self.path)


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
