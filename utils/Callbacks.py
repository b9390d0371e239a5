"""The authors' callbacks, on this design's results writers.

- :class:`ResultsLogger` ``(filepath)``: per-frame rows ``epoch, step_label, file_name, losses,
  jaccs, masks_usages`` of training, validation and test into one CSV (``emseg.app.results.ResultsWriter``:
  crash-safe, resumable, DDP-aware), and after a test the per-sequence means in ``*_summary.tsv``.
- :class:`SaveResultsFig` ``(save_dir)``: for every test frame, the figure, the binary mask and the
  probabilities, at ``save_dir/{Flow path without extension}`` + ``_fig.png`` / ``_binary.png`` /
  ``_proba.npy`` (the names ``model_eval.py`` writes and ``evaluationmodule`` reads).
- :class:`ValidationFigure`: each epoch, the first validation frames (image, flow, masks, binary
  mask, ground truth, parametric flow) sent to the run's loggers as ``val/frames``.

All of them record what the steps return (``outputs``) and the batches; the model keeps nothing.

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
from torch import Tensor

from emseg.app.results import ResultsWriter, frame_rows
from emseg.core.atomic_io import atomic_write_text
from evaluationmodule.frame_outputs import with_parametric_flow, write_frame_outputs
from evaluationmodule.naming import output_stem, sequence_of
from evaluationmodule.summaries import as_number, frame_value, summary_table

logger = logging.getLogger(__name__)

#: the per-frame values a step returns for the rows (``SegmentationSteps._step``)
RECORDED_KEYS = ("losses", "jaccs", "masks_usages")


class ResultsLogger(ResultsWriter):
    """Per-frame results of every epoch (and of a test) in ``filepath``; ``skipped.csv`` beside it.

    ``keys`` are the authors' argument: the values written per frame. This design always records
    the three of :data:`RECORDED_KEYS`, so any other set is refused rather than silently ignored.
    """

    stages = ("train", "val", "test")

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

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if not isinstance(outputs, dict) or "losses" not in outputs:
            return  # every sample of the batch was skipped (recorded by ResultsLogger)
        if self.save_figure:
            outputs = with_parametric_flow(outputs)
        for i, row in enumerate(frame_rows(outputs, int(trainer.current_epoch), "test")):
            write_frame_outputs(outputs, i, output_stem(self.save_dir, row["file_name"]), row["file_name"],
                                as_number(frame_value(row, "jacc")), self.save_figure, self.save_mask, self.save_npy)


class ValidationFigure(pl.Callback):
    """Each epoch, the first ``n_frames`` frames of the first validation batch, drawn by
    ``emseg.core.figures.frames_figure`` (image, flow, masks, binary mask, ground truth, parametric flow)
    and sent to every logger of the run as ``val/frames`` (rank 0; never during the sanity check)."""

    def __init__(self, n_frames: int = 4) -> None:
        self.n_frames = int(n_frames)
        self.frames: dict[str, Any] | None = None

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.frames = None

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.frames is not None or trainer.sanity_checking or not trainer.is_global_zero or not trainer.loggers:
            return
        if not isinstance(outputs, dict) or "Pred" not in outputs or not isinstance(batch, dict):
            return
        n = self.n_frames
        merged = with_parametric_flow({**batch, **{k: outputs[k] for k in ("Pred", "PredMask", "theta")
                                                   if k in outputs}})
        # on the host now: the figure is drawn at the epoch's end, after the device moved on
        self.frames = {k: v[:n].detach().cpu() for k, v in merged.items() if isinstance(v, Tensor) and v.dim() >= 3}
        for k in ("FlowPath", "ImagePath"):
            if k in batch:
                self.frames[k] = list(batch[k][:n])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.frames is None or trainer.sanity_checking or not trainer.is_global_zero or not trainer.loggers:
            return
        import matplotlib.pyplot as plt

        from emseg.core.figures import frames_figure, log_figure

        fig = frames_figure(self.frames, title=f"validation, epoch {trainer.current_epoch}")
        for lg in trainer.loggers:
            log_figure(lg, fig, "val/frames", int(trainer.current_epoch))
        plt.close(fig)
