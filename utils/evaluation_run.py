"""Evaluation of a model on DataSplit steps: the logic behind model_eval.py.

Per step (``test``, ``val``) it writes under ``--save_dir``:

- ``results_{step}.csv``: one row per frame (``epoch, step_label, file_name, losses, jaccs,
  masks_usages``, plus ``index`` and ``sequence``), every frame exactly once, in CSV order;
- ``results_{step}_summary.tsv``: means per sequence (the frame's parent folder), then the
  overall means over frames and over sequences, each row labelled;
- with ``--save_npy`` ``{Flow path without extension}_proba.npy`` (L × I × J float32), with
  ``--save_mask`` ``..._binary.png`` (0/255), with ``--draw_figs`` ``..._fig.png``, mirroring
  the DataSplit's relative paths.

Rows are appended (and fsync'ed) per batch to one part file per process, so a crash loses at
most the batch in flight; ``--resume`` skips frames whose row and files are complete. The part
files are merged and de-duplicated at the end (the distributed sampler pads with repeats).
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
from typing import Any

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader, Subset

from csvflowdatamodule.CsvDataModule import CsvDataModule, collate_skipping
from evaluationmodule.SaveModule import write_mask_png, write_npy
from Models.checkpoint_io import CheckpointError
from Models.CoherenceNets.ClassicalEM import ClassicalEM
from Models.CoherenceNets.MethodeB import MethodeB
from utils.atomic_io import atomic_write_text
from utils.figures import frame_figure, save_figure
from utils.quiet_logs import quiet_library_logs
from utils.results import RESULT_COLUMNS, RunLock, append_rows, atomic_write_json, read_rows, rewrite_rows
from utils.trainer_args import add_trainer_args, make_logger, trainer_kwargs
from utils.training import explicit_flags

logger = logging.getLogger(__name__)

EVAL_COLUMNS = RESULT_COLUMNS + ["index", "sequence"]
MODELS = {"MethodeB": MethodeB, "ClassicalEM": ClassicalEM}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Evaluate a trained model (or ClassicalEM) on DataSplit steps.")
    p.add_argument("--ckpt", default=None, help="checkpoint (.ckpt) of a trained MethodeB")
    p.add_argument("--model", default="MethodeB", choices=list(MODELS),
                   help="ClassicalEM needs no checkpoint (the non-learned EM baseline)")
    p.add_argument("--trust_checkpoint", action="store_true",
                   help="allow a checkpoint that needs arbitrary unpickling (the authors' legacy files); "
                        "only for files you trust")
    p.add_argument("--save_dir", required=True, help="where results and per-frame outputs go")
    p.add_argument("--steps", nargs="+", default=["test"], choices=["train", "val", "test"])
    p.add_argument("--draw_figs", action="store_true", help="a figure per frame")
    p.add_argument("--save_npy", action="store_true", help="probabilities per frame (L × I × J .npy)")
    p.add_argument("--save_mask", action="store_true", help="binary mask per frame (.png)")
    p.add_argument("--binary_method_gen", default=None, choices=["exceptbiggest", "fair"],
                   help="binarisation of the generated masks (default: the model's)")
    p.add_argument("--resume", action="store_true", help="skip frames whose outputs are already complete")
    g = p.add_argument_group("ClassicalEM (with --model ClassicalEM)")
    g.add_argument("--nAffineMasks", "-L", type=int, default=2)
    g.add_argument("--param_model", default="Quadratic", choices=["Affine", "Quadratic"])
    g.add_argument("--v_distance", default="l1", choices=["squared", "l1", "l2"])
    g.add_argument("--em_iterations", type=int, default=20)
    CsvDataModule.add_specific_args(p)
    add_trainer_args(p, training=False)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.explicit = explicit_flags(parser, argv)
    if args.model == "MethodeB" and args.ckpt is None:
        parser.error("--ckpt is required for MethodeB (or use --model ClassicalEM)")
    return args


def load_model(args: argparse.Namespace) -> pl.LightningModule:
    if args.model == "ClassicalEM":
        hp = {k: getattr(args, k) for k in ("nAffineMasks", "param_model", "v_distance", "em_iterations", "img_size")}
        return ClassicalEM(**hp)
    try:
        return MethodeB.load_from_checkpoint(args.ckpt, trust_checkpoint=args.trust_checkpoint)
    except CheckpointError as err:
        raise SystemExit(f"--ckpt: {err}") from None


def sequence_of(path: str) -> str:
    return os.path.basename(os.path.dirname(path)) or "."


def output_stem(save_dir: str, flow_rel: str) -> str:
    """``save_dir/{flow path without extension}``; absolute CSV paths lose their leading '/'."""
    return os.path.join(save_dir, os.path.splitext(flow_rel.lstrip("/\\"))[0])


class FrameOutputWriter(pl.Callback):
    """Writes each test batch's per-frame files and appends its rows to this process's part file."""

    def __init__(self, save_dir: str, step: str, draw_figs: bool, save_npy: bool, save_mask: bool) -> None:
        self.save_dir, self.step = save_dir, step
        self.draw_figs, self.save_npy, self.save_mask = draw_figs, save_npy, save_mask

    def part_path(self, rank: int) -> str:
        return os.path.join(self.save_dir, f"results_{self.step}.part{rank}.csv")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not isinstance(outputs, dict) or "FrameRows" not in outputs:
            return  # every sample of the batch was skipped (recorded by the model)
        rows = outputs["FrameRows"]
        pred = outputs["Pred"].detach().float().cpu()
        mask = outputs["PredMask"].detach().cpu()
        for i, row in enumerate(rows):
            stem = output_stem(self.save_dir, row["file_name"])
            os.makedirs(os.path.dirname(stem), exist_ok=True)
            if self.save_npy:
                write_npy(pred[i].numpy().astype(np.float32), f"{stem}_proba.npy")
            if self.save_mask:
                write_mask_png(mask[i].numpy(), f"{stem}_binary.png")
            if self.draw_figs:
                sample = {k: outputs[k][i] for k in ("Image", "Flow", "Pred", "PredMask", "GtMask", "ParametricFlow")
                          if k in outputs}
                jacc = row["jaccs"] if row["jaccs"] != "" else None
                save_figure(frame_figure(sample, title=row["file_name"], jacc=jacc, argmax=True), f"{stem}_fig.png")
            row["sequence"] = sequence_of(row["file_name"])
        append_rows(self.part_path(trainer.global_rank), rows, EVAL_COLUMNS)


def frame_complete(row: dict, save_dir: str, args: argparse.Namespace) -> bool:
    stem = output_stem(save_dir, row["file_name"])
    needed = [f"{stem}_proba.npy"] * args.save_npy + [f"{stem}_binary.png"] * args.save_mask + \
             [f"{stem}_fig.png"] * args.draw_figs
    return all(os.path.exists(p) for p in needed)


def collect_rows(save_dir: str, step: str) -> list[dict]:
    """Rows of the final file and of every part file, one per frame index (the first seen)."""
    rows = read_rows(os.path.join(save_dir, f"results_{step}.csv"))
    for part in sorted(glob.glob(os.path.join(save_dir, f"results_{step}.part*.csv"))):
        rows += read_rows(part)
    seen: dict[int, dict] = {}
    for row in rows:
        seen.setdefault(int(row["index"]), row)
    return [seen[k] for k in sorted(seen)]


def summary_table(rows: list[dict]) -> str:
    """TSV: one line per sequence (mean over its frames), then overall means over frames and
    over sequences."""
    def mean(vals: list[float]) -> float:
        vals = [v for v in vals if v == v]
        return float(np.mean(vals)) if vals else float("nan")

    def num(v: Any) -> float:
        return float(v) if v not in ("", None) else float("nan")

    by_seq: dict[str, list[dict]] = {}
    for r in rows:
        by_seq.setdefault(r["sequence"], []).append(r)
    lines = ["level\tname\tn_frames\tlosses\tjaccs\tmean_over"]
    seq_means = []
    for seq in sorted(by_seq):
        rs = by_seq[seq]
        lm, jm = mean([num(r["losses"]) for r in rs]), mean([num(r["jaccs"]) for r in rs])
        seq_means.append((lm, jm))
        lines.append(f"sequence\t{seq}\t{len(rs)}\t{lm:.6f}\t{jm:.6f}\tframes")
    lines.append(f"overall\tall_frames\t{len(rows)}\t{mean([num(r['losses']) for r in rows]):.6f}\t"
                 f"{mean([num(r['jaccs']) for r in rows]):.6f}\tframes")
    lines.append(f"overall\tall_sequences\t{len(rows)}\t{mean([m[0] for m in seq_means]):.6f}\t"
                 f"{mean([m[1] for m in seq_means]):.6f}\tsequences")
    return "\n".join(lines) + "\n"


def evaluate_step(model: pl.LightningModule, dm: CsvDataModule, step: str, args: argparse.Namespace) -> dict:
    save_dir = args.save_dir
    dataset = dm.setup_dataset(step)
    n_total = len(dataset)
    final_path = os.path.join(save_dir, f"results_{step}.csv")
    done: set[int] = set()
    if args.resume:
        done = {int(r["index"]) for r in collect_rows(save_dir, step) if frame_complete(r, save_dir, args)}
        logger.info("%s: resuming, %d of %d frames already complete", step, len(done), n_total)
    elif os.path.exists(final_path) or glob.glob(os.path.join(save_dir, f"results_{step}.part*.csv")):
        for old in [final_path, *glob.glob(os.path.join(save_dir, f"results_{step}.part*.csv"))]:
            os.remove(old)  # a fresh evaluation replaces the old one (use --resume to continue it)
    todo = [i for i in range(n_total) if i not in done]
    writer = FrameOutputWriter(save_dir, step, args.draw_figs, args.save_npy, args.save_mask)
    if todo:
        loader = DataLoader(Subset(dataset, todo), batch_size=dm.batch_size, shuffle=False,
                            num_workers=dm.num_workers, collate_fn=collate_skipping,
                            persistent_workers=False)
        lg = make_logger(args.logger, save_dir, name=f"logs_{step}") if args.logger != "csv" else False
        # inference_mode off: the Optim θ solver needs autograd even when evaluating
        trainer = pl.Trainer(logger=lg, callbacks=[writer], enable_checkpointing=False, inference_mode=False,
                             default_root_dir=save_dir, **trainer_kwargs(args))
        trainer.test(model, dataloaders=loader, verbose=False)
        trainer.strategy.barrier("eval-parts-written")
        if not trainer.is_global_zero:
            return {}
    rows = collect_rows(save_dir, step)
    for r in rows:
        r["step_label"] = step
    rewrite_rows(final_path, rows, EVAL_COLUMNS)
    for part in glob.glob(os.path.join(save_dir, f"results_{step}.part*.csv")):
        os.remove(part)
    atomic_write_text(os.path.join(save_dir, f"results_{step}_summary.tsv"), summary_table(rows), fsync=True)
    skipped = sorted({s[1:] for s in model.skipped_samples if s[0] == "test"})
    if skipped:
        atomic_write_text(os.path.join(save_dir, f"skipped_{step}.tsv"),
                          "index\tfile_name\treason\n" + "".join(f"{i}\t{p}\t{r}\n" for i, p, r in skipped))
    model.skipped_samples.clear()
    jaccs = [float(r["jaccs"]) for r in rows if r["jaccs"] not in ("", None)]
    return {"step": step, "frames": len(rows), "frames_in_split": n_total, "skipped": len(skipped),
            "mean_jacc_frames": float(np.mean(jaccs)) if jaccs else None,
            "mean_loss_frames": float(np.mean([float(r["losses"]) for r in rows])) if rows else None}


def run_evaluation(args: argparse.Namespace) -> dict[str, dict]:
    quiet_library_logs()
    pl.seed_everything(args.seed, workers=True)
    model = load_model(args)
    if args.binary_method_gen:
        from evaluationmodule.BinarisationModule import BinarisationModule

        model.binary_method = args.binary_method_gen
        model.binariser = BinarisationModule(args.binary_method_gen)
    model.test_outputs_need_parametric_flow = bool(args.draw_figs)
    img_size = args.img_size if "img_size" in args.explicit else model.hparams["img_size"]
    inputs = list(model.hparams.get("inputs", ["Flow"]))
    dm = CsvDataModule.from_args(args, img_size=img_size, request=sorted(set(inputs) | {"Flow", "GtMask", "Image"}),
                                 optional_columns=tuple({"GtMask", "Image"} - set(inputs)),
                                 flow_augmentation="none", shuffle_fit=False)
    os.makedirs(args.save_dir, exist_ok=True)
    is_main = os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"
    lock = RunLock(args.save_dir).acquire() if is_main else None
    try:
        if is_main:
            atomic_write_json(os.path.join(args.save_dir, "eval_settings.json"),
                              {k: v for k, v in vars(args).items() if k != "explicit"})
        return {step: evaluate_step(model, dm, step, args) for step in args.steps}
    finally:
        if lock is not None:
            lock.release()
