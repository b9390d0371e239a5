"""Per-frame results that survive crashes, resumes and several processes.

- ``results.csv`` gets one row per frame per epoch and split (``epoch, step_label, file_name,
  losses, jaccs, masks_usages``), appended and fsync'ed once per epoch, rows gathered from every
  DDP process and de-duplicated (the distributed sampler pads the last batch with repeats). The
  rows come from what each step returns (``outputs``); the model keeps nothing.
- On (re)start, rows of epochs that will be run again are dropped (atomic rewrite), so a run
  killed between writing rows and saving its checkpoint never duplicates them.
- ``RunLock`` keeps two runs from writing into the same directory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

# the run lock lives with the output-folder rules (no Lightning import there); importable from here as before
from emseg.app.run_folder import RunLock, RunLockError  # noqa: F401

# the writers of every results file are evaluationmodule.writers' (one json_safe, one CSV row writer)
from evaluationmodule.writers import append_rows, json_safe, read_rows, rewrite_rows, write_json  # noqa: F401

logger = logging.getLogger(__name__)

RESULT_COLUMNS = ["epoch", "step_label", "file_name", "losses", "jaccs", "masks_usages"]
SKIP_COLUMNS = ["step_label", "index", "file_name", "reason"]


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------
def atomic_write_json(path: str, obj: Any) -> None:
    """Strict JSON (a NaN is written as null), keys sorted, written then renamed (``evaluationmodule.writers``)."""
    write_json(obj, path, sort_keys=True)


# ------------------------------------------------------------------------------------------------
# Gathering across processes
# ------------------------------------------------------------------------------------------------
def gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj`` (a list of one item without torch.distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        out: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, obj)
        return out
    return [obj]


def unique_rows(rows: Iterable[dict], key: Sequence[str]) -> list[dict]:
    """Drop repeated rows (the distributed sampler's padding), keeping the first; rows without
    an index are all kept."""
    seen = set()
    out = []
    for row in rows:
        k = tuple(row.get(c) for c in key)
        if row.get("index") is not None and k in seen:
            continue
        seen.add(k)
        out.append(row)
    return out


# ------------------------------------------------------------------------------------------------
# Per-frame rows from a step's outputs
# ------------------------------------------------------------------------------------------------
#: what a step's outputs carry per frame for the rows (``SegmentationSteps._step``)
FRAME_KEYS = ("file_name", "losses", "jaccs", "masks_usages", "index")


def frame_rows(outputs: dict, epoch: int, step_label: str) -> list[dict]:
    """Rows ``epoch, step_label, file_name, losses, jaccs, masks_usages, index`` of one step's
    outputs: ``losses`` (B,), ``masks_usages`` (B, L), ``jaccs`` (B,) or absent (written empty),
    ``index`` (B,) or None, ``file_name`` (B strings). One host transfer per tensor."""
    losses = outputs["losses"].float().cpu().tolist()
    n = len(losses)
    jaccs = outputs["jaccs"].float().cpu().tolist() if outputs.get("jaccs") is not None else [""] * n
    usages = outputs["masks_usages"].float().cpu().tolist()
    index = outputs["index"].tolist() if isinstance(outputs.get("index"), Tensor) else [None] * n
    return [{"epoch": epoch, "step_label": step_label, "file_name": outputs["file_name"][i], "losses": losses[i],
             "jaccs": jaccs[i], "masks_usages": " ".join(f"{u:.4f}" for u in usages[i]), "index": index[i]}
            for i in range(n)]


def skipped_of(batch: Any) -> list[tuple]:
    """The ``(index, path, reason)`` of the samples the loader set aside from this batch."""
    return list(batch.get("Skipped") or []) if isinstance(batch, dict) else []


# ------------------------------------------------------------------------------------------------
# The callback
# ------------------------------------------------------------------------------------------------
class ResultsWriter(pl.Callback):
    """Writes per-frame rows and skipped samples to ``results.csv`` and ``skipped.csv`` in ``directory``.

    Each step's outputs (``losses``, ``jaccs``, ``masks_usages``, ``index``, ``file_name``) are kept
    as the step left them, on the device, until the epoch's end, when they become rows (one host
    transfer per batch then, none per step); skipped samples come from the batches' ``Skipped``.
    Steps of the stages in ``stages`` are recorded (sanity-check validation never is).
    """

    stages: tuple[str, ...] = ("train", "val")

    def __init__(self, directory: str, filename: str = "results.csv") -> None:
        self.directory = directory
        self.path = os.path.join(directory, filename)
        self.skip_path = os.path.join(directory, "skipped.csv")
        self.pending: list[tuple[int, str, dict]] = []  # (epoch, stage, per-frame outputs)
        self.skipped: list[tuple] = []  # (stage, index, path, reason)

    def record(self, trainer: pl.Trainer, stage: str, outputs: Any, batch: Any) -> None:
        if stage not in self.stages or trainer.sanity_checking:
            return
        self.skipped.extend((stage, *s) for s in skipped_of(batch))
        if isinstance(outputs, dict) and "losses" in outputs:
            self.pending.append((int(trainer.current_epoch), stage, {k: outputs.get(k) for k in FRAME_KEYS}))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.record(trainer, "train", outputs, batch)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self.record(trainer, "val", outputs, batch)

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self.record(trainer, "test", outputs, batch)

    # rows of epochs that the (re)started run will compute again are dropped first (on_train_start:
    # by then a resumed run's epoch counter is restored, on_fit_start is too early)
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and os.path.exists(self.path):
            start = trainer.current_epoch
            rows = read_rows(self.path)
            kept = [r for r in rows if int(r["epoch"]) < start]
            if len(kept) != len(rows):
                logger.info("results.csv: dropping %d rows of epochs >= %d that this run recomputes",
                            len(rows) - len(kept), start)
                rewrite_rows(self.path, kept, RESULT_COLUMNS)
        self.pending.clear()

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.pending.clear()
        self.skipped.clear()

    def take_rows(self) -> list[dict]:
        """The rows recorded since the last call, as plain dicts (then forgotten)."""
        rows = [r for epoch, stage, out in self.pending for r in frame_rows(out, epoch, stage)]
        self.pending.clear()
        return rows

    def flush(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[dict]:
        rows = [r for part in gather_objects(self.take_rows()) for r in part]
        skipped = [s for part in gather_objects(self.skipped) for s in part]
        self.skipped = []
        rows = unique_rows(rows, ("epoch", "step_label", "index"))
        if trainer.is_global_zero:
            os.makedirs(self.directory, exist_ok=True)
            append_rows(self.path, rows, RESULT_COLUMNS)
            if skipped:
                known = {(r["step_label"], r["index"]) for r in read_rows(self.skip_path)}
                new = [dict(zip(SKIP_COLUMNS, map(str, s))) for s in skipped]
                new = [r for r in unique_rows(new, ("step_label", "index"))
                       if (r["step_label"], r["index"]) not in known]
                append_rows(self.skip_path, new, SKIP_COLUMNS)
                if new:
                    logger.warning("%d sample(s) skipped so far this run; see %s", len(new), self.skip_path)
        return rows

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.flush(trainer, pl_module)
