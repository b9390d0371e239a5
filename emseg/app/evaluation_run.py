"""Evaluation of a model on DataSplit steps: the logic behind model_eval.py.

Per step (``test``, ``val``) it writes under ``--save_dir``:

- ``results_{step}.csv``: one row per frame (``epoch, step_label, file_name, losses, jaccs,
  masks_usages``, plus ``index`` and ``sequence``), every frame exactly once, in CSV order;
- ``results_{step}_summary.tsv`` (``evaluationmodule.summaries.summary_table``): columns ``level, name,
  n_frames, loss, jacc, mean_over``: the means per sequence (the folder of the frame's Flow file,
  ``core.sequence_of``, the rule ``evaluationmodule.Evaluation`` uses), then the overall means over
  frames and over sequences, each row labelled;
- with ``--save_npy`` ``{Flow path without extension}_proba.npy`` (L × I × J float32), with
  ``--save_mask`` ``..._binary.png`` (0/255), with ``--draw_figs`` ``..._fig.png``, mirroring
  the DataSplit's relative paths, always inside ``--save_dir`` (``..`` → ``_up_``); two rows whose
  outputs would share a name are refused;
- with ``--save_npy`` the manifest ``predictions_{step}.tsv``: per prediction the SHA-256 of its
  bytes, of its flow file and of the model, which ``evaluationmodule.Evaluation`` checks;
- ``eval_settings.json``: the settings, and the identity of the model (checkpoint SHA-256).

Rows are appended (and fsync'ed) per batch to one part file per process, so a crash loses at
most the batch in flight; ``--resume`` skips frames whose row and files are complete, after
checking that the model is the one that wrote them and that each row is still the same frame of
the CSV. The part files are merged and de-duplicated at the end (the distributed sampler pads
with repeats). A run without ``--resume`` into a ``--save_dir`` holding an earlier evaluation first
moves that evaluation's files aside to ``SAVE_DIR.previous-<UTC time>``, or removes them with
``--overwrite`` (``emseg/app/run_folder.py`` says which files), so no earlier prediction survives
to be scored as if it came from this run.

The command line (parser, checks) is ``emseg/app/evaluation_cli.py``, which imports neither torch nor
Lightning so that ``--help`` is fast; its names are importable from here too.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
from typing import Any

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader, Subset

from csvflowdatamodule.CsvDataModule import CsvDataModule, collate_skipping
from emseg.app.evaluation_cli import build_parser, parse_args  # noqa: F401  (the command line, also from here)
from emseg.app.results import (
    RESULT_COLUMNS,
    RunLock,
    append_rows,
    atomic_write_json,
    frame_rows,
    read_rows,
    rewrite_rows,
    skipped_of,
)
from emseg.app.run_checks import (
    ConfigError,
    check_img_size,
    check_track_frames,
    check_writable_dir,
    warn_single_mask,
)
from emseg.app.run_folder import EVALUATION, prepare_run_folder
from emseg.app.trainer_args import make_logger, trainer_kwargs
from emseg.app.training import OutOfMemoryConfigError, is_out_of_memory
from emseg.core.atomic_io import atomic_write_text
from emseg.core.quiet_logs import quiet_library_logs
from emseg.core.significance import check_min_motion
from evaluationmodule.DataLoadingModule import MANIFEST_COLUMNS, file_sha256
from evaluationmodule.frame_outputs import with_parametric_flow, write_frame_outputs
from evaluationmodule.naming import FRAME_SUFFIXES, output_stem, sequence_of, split_name  # noqa: F401
from evaluationmodule.summaries import as_number, frame_value, summary_table  # noqa: F401  (also importable here)
from Models.checkpoint_io import CheckpointError
from Models.CoherenceNets.ClassicalEM import ClassicalEM
from Models.CoherenceNets.MethodeB import MethodeB
from Models.LitSegmentationModel import LitPredictor

logger = logging.getLogger(__name__)

EVAL_COLUMNS = RESULT_COLUMNS + ["index", "sequence"]
SKIPPED_COLUMNS = ["index", "file_name", "reason"]
MODELS = {"MethodeB": MethodeB, "ClassicalEM": ClassicalEM}


def load_model(args: argparse.Namespace) -> pl.LightningModule | ClassicalEM:
    """ClassicalEM built from its flags (and --img_size), or MethodeB from ``--ckpt``; binarisation
    from ``--binary_method_gen``, ``--min_motion`` and ``--track_frames``."""
    check_min_motion(args.min_motion, "--min_motion")
    binarisation = {"binary_method": args.binary_method_gen} if args.binary_method_gen else {}
    if args.min_motion:
        binarisation["min_motion"] = args.min_motion
    track_frames = int(getattr(args, "track_frames", 1) or 1)
    check_track_frames(track_frames, args.min_motion)
    if track_frames > 1:
        binarisation["track_frames"] = track_frames
    if args.model == "ClassicalEM":
        return ClassicalEM(**{**ClassicalEM.own_hparams(vars(args)), **binarisation})
    try:
        return MethodeB.load_from_checkpoint(args.ckpt, trust_checkpoint=args.trust_checkpoint, **binarisation)
    except CheckpointError as err:
        raise ConfigError(f"--ckpt: {err}") from None


def model_identity(args: argparse.Namespace, model: pl.LightningModule) -> dict[str, Any]:
    """What makes two evaluations' per-frame outputs comparable: the model (its checkpoint's
    SHA-256, or ClassicalEM's settings), the input size and the binarisation."""
    import hashlib
    import json

    if args.model == "ClassicalEM":
        hp = {k: model.hparams.get(k) for k in ClassicalEM.CLI_FLAGS}  # every flag that changes its output
        digest = hashlib.sha256(("ClassicalEM" + json.dumps(hp, sort_keys=True)).encode()).hexdigest()
    else:
        digest = file_sha256(args.ckpt)
    identity = {"model": args.model, "model_sha256": digest,
                "img_size": [int(s) for s in model.hparams["img_size"]], "binary_method": model.binary_method,
                "min_motion": float(getattr(args, "min_motion", 0.0)), "flow_normalisation": args.flow_normalisation}
    track_frames = int(getattr(args, "track_frames", 1) or 1)
    if track_frames > 1:  # absent for the default, so evaluations written before the flag still resume
        identity["track_frames"] = track_frames
    return identity


def check_resume_identity(save_dir: str, identity: dict[str, Any]) -> None:
    """``--resume`` continues only the evaluation of the same model at the same settings."""
    import json

    path = os.path.join(save_dir, "eval_settings.json")
    try:
        with open(path) as fh:
            old = json.load(fh).get("identity")
    except FileNotFoundError:
        return  # nothing evaluated yet: --resume starts from the beginning
    except (OSError, ValueError) as err:
        raise ConfigError(f"--resume: cannot read {path} ({err}); drop --resume to evaluate afresh") from None
    if old is None:
        raise ConfigError(f"--resume: {path} does not record which model wrote {save_dir}; drop --resume to "
                          "evaluate afresh")
    differ = [k for k in identity if old.get(k) != identity[k]]
    if differ:
        shown = "; ".join(f"{k}: {str(old.get(k))[:16]} then, {str(identity[k])[:16]} now" for k in differ)
        raise ConfigError(f"--resume: {save_dir} was evaluated with another model or settings ({shown}); drop "
                          "--resume to evaluate afresh, or choose another --save_dir")


def check_output_names(dataset, save_dir: str) -> None:
    """Two rows whose flows differ but whose outputs would share a name (``a/0.flo`` and ``a/0.npy``)
    would overwrite each other: refused, naming both."""
    seen: dict[str, tuple[int, str]] = {}
    for index, row in zip(dataset.indices, dataset.rows):
        flow = str(row["Flow"]).strip()
        stem = output_stem(save_dir, flow)
        if stem in seen and seen[stem][1] != flow:
            i, other = seen[stem]
            raise ConfigError(f"{dataset.data_path}: rows {i} ({other}) and {index} ({flow}) would both write "
                              f"{stem}_proba.npy/_binary.png/_fig.png; rename one of the flow files")
        seen.setdefault(stem, (index, flow))


class FrameOutputWriter(pl.Callback):
    """Writes each test batch's per-frame files and appends its rows to this process's part file."""

    def __init__(self, save_dir: str, step: str, draw_figs: bool, save_npy: bool, save_mask: bool,
                 base_dir: str = "", model_sha256: str = "") -> None:
        self.save_dir, self.step = save_dir, step
        self.draw_figs, self.save_npy, self.save_mask = draw_figs, save_npy, save_mask
        self.base_dir, self.model_sha256 = base_dir, model_sha256
        self.skipped: list[tuple] = []  # (index, path, reason) of the samples the loader set aside

    def part_path(self, rank: int) -> str:
        return os.path.join(self.save_dir, f"results_{self.step}.part{rank}.csv")

    def manifest_part(self, rank: int) -> str:
        return os.path.join(self.save_dir, f"predictions_{self.step}.part{rank}.tsv")

    def manifest_entry(self, path: str, flow_rel: str, shape: tuple[int, ...]) -> dict:
        """The manifest line of a written .npy: the hashes of its bytes, of its flow and of the model."""
        return {"proba_file": os.path.relpath(path, self.save_dir).replace(os.sep, "/"), "flow_file": flow_rel,
                "proba_sha256": file_sha256(path), "flow_sha256": file_sha256(os.path.join(self.base_dir, flow_rel)),
                "model_sha256": self.model_sha256, "shape": "x".join(map(str, shape))}

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.skipped.extend(tuple(s) for s in skipped_of(batch))
        if not isinstance(outputs, dict) or "losses" not in outputs:
            return  # every sample of the batch was skipped
        rows = frame_rows(outputs, int(trainer.current_epoch), "test")
        if self.draw_figs:
            outputs = with_parametric_flow(outputs)
        manifest = []
        for i, row in enumerate(rows):
            stem = output_stem(self.save_dir, row["file_name"])
            # the same per-frame files as the authors' SaveResultsFig callback
            write_frame_outputs(outputs, i, stem, row["file_name"], as_number(frame_value(row, "jacc")),
                                self.draw_figs, self.save_mask, self.save_npy)
            if self.save_npy:
                manifest.append(self.manifest_entry(stem + FRAME_SUFFIXES["proba"], row["file_name"],
                                                    tuple(outputs["Pred"][i].shape)))
            row["sequence"] = sequence_of(row["file_name"])
        # the manifest first: a row on disk always has its prediction recorded
        append_tsv(self.manifest_part(trainer.global_rank), manifest, MANIFEST_COLUMNS)
        append_rows(self.part_path(trainer.global_rank), rows, EVAL_COLUMNS)


def append_tsv(path: str, rows: list[dict], columns) -> None:
    """Append tab-separated rows (header first if new), quoted where a name needs it, fsync'ed like the results."""
    append_rows(path, rows, columns, delimiter="\t")


def merge_manifest(save_dir: str, step: str) -> None:
    """Fold the per-process manifest parts into ``predictions_{step}.tsv`` (later lines win)."""
    final = os.path.join(save_dir, f"predictions_{step}.tsv")
    parts = sorted(glob.glob(os.path.join(save_dir, f"predictions_{step}.part*.tsv")))
    if not parts:
        return
    entries: dict[str, dict] = {}
    for path in ([final] if os.path.exists(final) else []) + parts:
        for rec in read_rows(path, delimiter="\t"):
            entries[rec[MANIFEST_COLUMNS[0]]] = rec
    rewrite_rows(final, list(entries.values()), MANIFEST_COLUMNS, delimiter="\t")
    for path in parts:
        os.remove(path)


def frame_complete(row: dict, save_dir: str, args: argparse.Namespace) -> bool:
    stem = output_stem(save_dir, row["file_name"])
    needed = [stem + FRAME_SUFFIXES[k] for k, on in (("proba", args.save_npy), ("mask", args.save_mask),
                                                      ("figure", args.draw_figs)) if on]
    return all(os.path.exists(p) for p in needed)


def collect_rows(save_dir: str, step: str, flow_at: dict[int, str] | None = None) -> list[dict]:
    """Rows of the final file and of every part file, one per frame index (the first seen); with
    ``flow_at`` (row index → the CSV's Flow there now) only rows that are still that frame."""
    rows = read_rows(os.path.join(save_dir, f"results_{step}.csv"))
    for part in sorted(glob.glob(os.path.join(save_dir, f"results_{step}.part*.csv"))):
        rows += read_rows(part)
    seen: dict[int, dict] = {}
    for row in rows:
        if flow_at is None or flow_at.get(int(row["index"])) == row["file_name"]:
            seen.setdefault(int(row["index"]), row)
    return [seen[k] for k in sorted(seen)]


def read_manifest_file(path: str) -> list[str]:
    """The prediction files a manifest lists (its first column)."""
    return [rec[MANIFEST_COLUMNS[0]] for rec in read_rows(path, delimiter="\t")]


def evaluate_step(model: pl.LightningModule, dm: CsvDataModule, step: str, args: argparse.Namespace,
                  model_sha256: str = "") -> dict:
    save_dir = args.save_dir
    dataset = dm.setup_dataset(step)
    if int(getattr(model, "clip_length", 1)) > 1:  # a temporal model: each frame with its clip, once
        from evaluationmodule.clip_frames import FrameClipDataset

        dataset = FrameClipDataset(dataset, int(model.clip_length))
    n_total = len(dataset)
    if args.save_npy or args.save_mask or args.draw_figs:
        check_output_names(dataset, save_dir)
    # the CSV's frame at each row index now; a row on disk counts only if it is still that frame
    flow_at = {index: str(row["Flow"]).strip() for index, row in zip(dataset.indices, dataset.rows)}
    position = {index: i for i, index in enumerate(dataset.indices)}
    final_path = os.path.join(save_dir, f"results_{step}.csv")
    done: set[int] = set()
    if args.resume:
        rows = collect_rows(save_dir, step)
        same = [r for r in rows if flow_at.get(int(r["index"])) == r["file_name"]]
        if len(same) != len(rows):
            logger.warning("%s: %d rows on disk no longer match the CSV's frame at their index (rows inserted or "
                           "removed?): evaluated again", step, len(rows) - len(same))
        done = {position[int(r["index"])] for r in same if frame_complete(r, save_dir, args)}
        logger.info("%s: resuming, %d of %d frames already complete", step, len(done), n_total)
    todo = [i for i in range(n_total) if i not in done]
    writer = FrameOutputWriter(save_dir, step, args.draw_figs, args.save_npy, args.save_mask,
                               base_dir=dm.base_dir, model_sha256=model_sha256)
    if todo:
        loader = DataLoader(Subset(dataset, todo), batch_size=dm.batch_size, shuffle=False,
                            num_workers=dm.num_workers, collate_fn=collate_skipping,
                            persistent_workers=False)
        lg = make_logger(args.logger, save_dir, name=f"logs_{step}") if args.logger != "csv" else False
        # inference_mode off: the Optim θ solver needs autograd even when evaluating
        trainer = pl.Trainer(logger=lg, callbacks=[writer], enable_checkpointing=False, inference_mode=False,
                             default_root_dir=save_dir, **trainer_kwargs(args))
        try:
            trainer.test(model if isinstance(model, pl.LightningModule) else LitPredictor(model),
                         dataloaders=loader, verbose=False)
        except (MemoryError, RuntimeError) as err:
            if not (isinstance(err, MemoryError) or is_out_of_memory(err)):
                raise
            raise OutOfMemoryConfigError(
                f"ran out of memory evaluating {step} with --batch_size {dm.batch_size}: lower --batch_size (then "
                f"--img_size); --resume continues from the frames already written. "
                f"({(str(err).splitlines() or [''])[0][:160]})") from None
        trainer.strategy.barrier("eval-parts-written")
        if not trainer.is_global_zero:
            return {}
    rows = collect_rows(save_dir, step, flow_at)
    for r in rows:
        r["step_label"] = step
    merge_manifest(save_dir, step)
    rewrite_rows(final_path, rows, EVAL_COLUMNS)
    for part in glob.glob(os.path.join(save_dir, f"results_{step}.part*.csv")):
        os.remove(part)
    atomic_write_text(os.path.join(save_dir, f"results_{step}_summary.tsv"), summary_table(rows), fsync=True)
    skipped = sorted(set(writer.skipped))
    if skipped:
        rewrite_rows(os.path.join(save_dir, f"skipped_{step}.tsv"),
                     [dict(zip(SKIPPED_COLUMNS, s)) for s in skipped], SKIPPED_COLUMNS, delimiter="\t")
    jaccs = [float(r["jaccs"]) for r in rows if r["jaccs"] not in ("", None)]
    return {"step": step, "split": split_name(dataset.data_path), "frames": len(rows), "frames_in_split": n_total,
            "skipped": len(skipped),
            "mean_jacc_frames": float(np.mean(jaccs)) if jaccs else None,
            "mean_loss_frames": float(np.mean([float(r["losses"]) for r in rows])) if rows else None}


def run_evaluation(args: argparse.Namespace) -> dict[str, dict]:
    quiet_library_logs()
    pl.seed_everything(args.seed, workers=True)
    model = load_model(args)
    img_size = args.img_size if "img_size" in args.explicit else model.hparams["img_size"]
    if args.model == "MethodeB":
        check_img_size(img_size, int(model.hparams["unet.num_layers"]))
        warn_single_mask(model.L)
    inputs = list(model.hparams.get("inputs", ["Flow"]))
    dm = CsvDataModule.from_args(args, img_size=img_size, request=sorted(set(inputs) | {"Flow", "GtMask", "Image"}),
                                 optional_columns=tuple({"GtMask", "Image"} - set(inputs)),
                                 flow_augmentation="none", shuffle_fit=False)
    for step in args.steps:  # bad CSVs fail now, before anything is written
        dm.setup_dataset(step)
    args.is_main = os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"
    identity = model_identity(args, model)
    if args.resume:
        check_resume_identity(args.save_dir, identity)
    if args.is_main:
        check_writable_dir(args.save_dir, "--save_dir")
    lock = RunLock(args.save_dir).acquire() if args.is_main else None
    try:
        if args.is_main and not args.resume:
            # one evaluation per folder: an earlier one is moved aside (or removed with --overwrite), never mixed
            inputs = [args.ckpt, *(dm.split_path(step) for step in args.steps)]
            prepare_run_folder(args.save_dir, EVALUATION, overwrite=bool(getattr(args, "overwrite", False)),
                               keep=inputs)
        if args.is_main:
            settings = {k: v for k, v in vars(args).items() if k not in ("explicit", "is_main")}
            atomic_write_json(os.path.join(args.save_dir, "eval_settings.json"), {**settings, "identity": identity})
        return {step: evaluate_step(model, dm, step, args, identity["model_sha256"]) for step in args.steps}
    finally:
        if lock is not None:
            lock.release()
