"""The authors' callbacks, on this design's results writers.

- :class:`ResultsLogger` ``(filepath)``: per-frame rows ``epoch, step_label, file_name, losses,
  jaccs, masks_usages`` of training, validation and test into one CSV (``utils.results.ResultsWriter``:
  crash-safe, resumable, DDP-aware), and after a test the per-sequence means in ``*_summary.tsv``.
- :class:`SaveResultsFig` ``(save_dir)``: for every test frame, the figure, the binary mask and the
  probabilities, at ``save_dir/{Flow path without extension}`` + ``_fig.png`` / ``_binary.png`` /
  ``_proba.npy`` (the names ``model_eval.py`` writes and ``evaluationmodule`` reads).

Use them with ``trainer.test(model, ...)`` (and ``ResultsLogger`` with ``trainer.fit``)::

    trainer = pl.Trainer(callbacks=[ResultsLogger("out/results.csv"), SaveResultsFig("out", save_npy=True)],
                         inference_mode=False)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl

from evaluationmodule.core import as_number, frame_value, output_stem
from evaluationmodule.frame_outputs import write_frame_outputs  # noqa: F401  (also importable from here)
from utils.atomic_io import atomic_write_text
from utils.results import ResultsWriter

logger = logging.getLogger(__name__)

#: the per-frame values the model records (CoherenceNet.collect_frame_rows)
RECORDED_KEYS = ("losses", "jaccs", "masks_usages")


class ResultsLogger(ResultsWriter):
    """Per-frame results of every epoch (and of a test) in ``filepath``; ``skipped.csv`` beside it.

    ``keys`` are the authors' argument: the values written per frame. This design always records
    the three of :data:`RECORDED_KEYS`, so any other set is refused rather than silently ignored.
    """

    def __init__(self, filepath: str | os.PathLike, keys: Sequence[str] = RECORDED_KEYS) -> None:
        if tuple(keys) != RECORDED_KEYS:
            raise ValueError(f"ResultsLogger keys: this model records exactly {list(RECORDED_KEYS)}, got {list(keys)}")
        filepath = os.fspath(filepath)
        if not filepath.endswith(".csv"):
            raise ValueError(f"ResultsLogger filepath must name a .csv file, got {filepath!r}")
        super().__init__(os.path.dirname(filepath) or ".", os.path.basename(filepath))
        self.fp = self.path  # the authors' attribute name
        self.keys = list(keys)
        self.summary_path = self.path[: -len(".csv")] + "_summary.tsv"

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rows = self.flush(trainer, pl_module)
        if trainer.is_global_zero:
            from utils.evaluation_run import sequence_of, summary_table

            for row in rows:
                row["sequence"] = sequence_of(row["file_name"])
            atomic_write_text(self.summary_path, summary_table(rows), fsync=True)
            logger.info("test summary (%d frames) saved at %s", len(rows), self.summary_path)


class SaveResultsFig(pl.Callback):
    """Per test frame: ``_fig.png`` (image, flow, argmax of the masks, binary mask, ground truth with
    its Jaccard, parametric flow), ``_binary.png`` (0/255) and, with ``save_npy``, ``_proba.npy``
    (L × I × J float32), under ``save_dir`` at the DataSplit's relative paths."""

    def __init__(self, save_dir: str | os.PathLike, save_figure: bool = True, save_mask: bool = True,
                 save_npy: bool = False) -> None:
        self.save_dir = os.fspath(save_dir)
        self.save_figure, self.save_mask, self.save_npy = save_figure, save_mask, save_npy

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "test" and self.save_figure and hasattr(pl_module, "test_outputs_need_parametric_flow"):
            pl_module.test_outputs_need_parametric_flow = True  # the figure's last panel

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if not isinstance(outputs, dict) or "FrameRows" not in outputs:
            return  # every sample of the batch was skipped (recorded by the model)
        for i, row in enumerate(outputs["FrameRows"]):
            write_frame_outputs(outputs, i, output_stem(self.save_dir, row["file_name"]), row["file_name"],
                                as_number(frame_value(row, "jacc")), self.save_figure, self.save_mask, self.save_npy)
