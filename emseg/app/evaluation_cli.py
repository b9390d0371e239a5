"""The command line of model_eval.py: its parser and the checks of its settings, apart from the
evaluation itself (``emseg/app/evaluation_run.py``, which re-exports these).

Importing this imports neither torch nor Lightning (every flag is declared from
``emseg/core/hparams.py`` through ``emseg/app/trainer_args.py``), so ``model_eval.py --help`` and a
command line's mistakes answer in a fraction of a second.
"""

from __future__ import annotations

import argparse
import sys

from emseg.app.run_checks import (
    ConfigError,
    check_cuda,
    check_img_size,
    check_positive,
    check_track_frames,
    warn_single_mask,
)
from emseg.app.trainer_args import add_classical_em_args, add_data_args, add_trainer_args
from emseg.app.training_cli import explicit_flags
from emseg.core import hparams as H

#: the models ``--model`` names (``evaluation_run.MODELS`` maps them to their classes)
MODEL_NAMES: tuple[str, ...] = ("MethodeB", "ClassicalEM")


def build_parser() -> argparse.ArgumentParser:
    """The evaluation flags; ClassicalEM's, the data's and the Trainer's come from ``emseg/core/hparams.py``."""
    p = argparse.ArgumentParser(description="Evaluate a trained model (or ClassicalEM) on DataSplit steps.")
    p.add_argument("--ckpt", default=None, help="checkpoint (.ckpt) of a trained MethodeB")
    p.add_argument("--model", default="MethodeB", choices=list(MODEL_NAMES),
                   help="ClassicalEM needs no checkpoint (the non-learned EM baseline) (default: %(default)s)")
    p.add_argument("--trust_checkpoint", action="store_true",
                   help="allow a checkpoint that needs arbitrary unpickling (the authors' legacy files); "
                        "only for files you trust")
    p.add_argument("--save_dir", required=True, help="where results and per-frame outputs go")
    p.add_argument("--steps", nargs="+", default=["test"], choices=["train", "val", "test"],
                   help="the DataSplit steps to evaluate (default: test)")
    p.add_argument("--draw_figs", action="store_true", help="a figure per frame")
    p.add_argument("--save_npy", action="store_true", help="probabilities per frame (L × I × J .npy)")
    p.add_argument("--save_mask", action="store_true", help="binary mask per frame (.png)")
    p.add_argument("--binary_method_gen", default=None, choices=list(H.BINARY_METHODS),
                   help="binarisation of the generated masks (default: the model's)")
    p.add_argument("--min_motion", type=H.flag_type(H.Bounded(float, low=0), "--min_motion"), default=0.0,
                   help="keep a foreground region only if it moves unlike the background's fitted motion by "
                        "more than this many times the flow's noise (segment.py's default is 2); default 0: "
                        "the paper's plain binarisation, comparable with published numbers")
    p.add_argument("--track_frames", type=H.flag_type(H.Bounded(int, low=1, high=7), "--track_frames"), default=1,
                   help="with --min_motion: judge each foreground region over its track, kept only if the track "
                        "lives in at least this many of the region's last 7 frames and its median score passes "
                        "(causal: frames of a sequence in order, one device; segment.py's default is 3); default "
                        "1: each frame alone")
    p.add_argument("--resume", action="store_true", help="skip frames whose outputs are already complete")
    p.add_argument("--overwrite", action="store_true",
                   help="a new evaluation into a --save_dir holding an earlier one removes that evaluation's files "
                        "first (default: they are moved aside to SAVE_DIR.previous-<UTC time>)")
    add_classical_em_args(p)  # ClassicalEM.add_specific_args, without importing the model
    add_data_args(p)  # CsvDataModule.add_specific_args, likewise
    add_trainer_args(p, training=False)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The evaluation settings; raises ConfigError (one line naming the flag) for settings that cannot work."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.explicit = explicit_flags(parser, argv)
    if args.overwrite and args.resume:
        raise ConfigError("--overwrite removes the earlier evaluation and --resume continues it: give one of them")
    if args.model == "MethodeB" and args.ckpt is None:
        raise ConfigError("--ckpt is required for MethodeB (or use --model ClassicalEM)")
    check_positive(vars(args), {"batch_size": "--batch_size", "nAffineMasks": "--nAffineMasks/-L",
                                "em_iterations": "--em_iterations"})
    if args.num_workers is not None and args.num_workers < 0:
        raise ConfigError(f"--num_workers {args.num_workers}: must be 0 or more")
    if args.clip_length != H.default("clip_length") or args.clip_stride != H.default("clip_stride"):
        raise ConfigError("--clip_length/--clip_stride: model_eval.py evaluates every frame once; a temporal "
                          "checkpoint's clips follow from its own clip length (each frame from the clip it is most "
                          "central in: evaluationmodule/clip_frames.py), so leave them out")
    check_track_frames(args.track_frames, args.min_motion)
    if args.track_frames > 1:
        if args.resume:
            raise ConfigError("--track_frames judges each frame with its sequence's previous ones, which a resumed "
                              "evaluation has not seen: run it whole, without --resume")
        if args.gpus and (len(args.gpus) > 1 or str(args.gpus[0]) not in ("0", "1")) or \
                str(args.devices) not in ("auto", "1"):
            raise ConfigError("--track_frames needs a sequence's frames in order on one device: "
                              "leave out --gpus/--devices > 1")
    check_img_size(args.img_size)
    check_cuda(args.accelerator)
    if args.model == "ClassicalEM":
        warn_single_mask(args.nAffineMasks)
    return args
