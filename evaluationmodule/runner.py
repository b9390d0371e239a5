"""The benchmark evaluation of one DataSplit: ``evaluate`` scores every row's saved probabilities
(``FrameScorer``), summarises them per sequence and overall (``evaluationmodule.summaries``) and writes
the outputs (``EvaluationSaver``). ``evaluationmodule.Evaluation`` is its command line.

Every DataSplit row leaves exactly one record in ``scores.csv``: ``status`` is ``ok``, ``missing``
(no prediction file) or ``error: <reason naming the file>``; unscored rows are counted, never dropped.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from evaluationmodule import davis_metrics, naming, summaries
from evaluationmodule.DataLoadingModule import (
    DataLoadingError,
    PredictionLoader,
    check_proba_shape,
    read_split,
)
from evaluationmodule.SaveModule import EvaluationSaver
from evaluationmodule.scoring import SCORE_COLUMNS, FrameScorer, default_scoring_method

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# Sequence statistics and summary
# ----------------------------------------------------------------------------------------------

PER_SEQUENCE_COLUMNS = ("sequence", "n_frames", "J_mean", "J_recall", "J_decay", "F_mean", "F_recall", "F_decay",
                        "JF", "score_mean", "n_rows", "n_unscored")
#: DAVIS's labels of the per-frame measures summarised per sequence
MEASURES = {"J": "jacc", "F": "boundary_f"}


def sequence_table(scores: pd.DataFrame, binning: str = "toolkit") -> pd.DataFrame:
    """Per-sequence statistics from a scores table (``summaries.sequence_stats``).

    ``scores`` needs ``jacc``, ``boundary_f``, ``score`` and the frames' ``Flow`` paths (or a
    ``sequence`` column and ``GtMask`` paths). Frames are in natural order of their path; rows
    without a ``jacc`` (missing or error) are left out of the statistics and counted in
    ``n_unscored``. Sequences keep their order of appearance.
    """
    records = scores.to_dict("records")
    per = summaries.sequence_stats(records, {**MEASURES, "score": "score"}, scored_by="jacc", binning=binning)
    for rec in per:
        rec["JF"] = (rec["J_mean"] + rec["F_mean"]) / 2
    return pd.DataFrame(per, columns=list(PER_SEQUENCE_COLUMNS))


def summarise(scores: pd.DataFrame, per_sequence: pd.DataFrame) -> dict[str, Any]:
    """Summary of an evaluation.

    - ``mean_score``: mean ``score`` over the scored frames (as the authors' summary), with
      ``missing_rows`` (no prediction file), ``error_rows`` (unusable prediction or GT),
      ``scored_rows`` and ``total_rows``; ``mean_score_missing_as_zero`` counts every unscored row as 0.
    - ``*_frames``: J / F mean and recall over all scored frames, ``JF_frames`` their J&F.
    - ``*_sequences``: the mean over sequences of each sequence's mean / recall / decay
      (DAVIS's "global" numbers), ``JF_sequences`` = (J_mean_sequences + F_mean_sequences) / 2.
    """
    status = scores["status"].astype(str)
    ok = scores[status == "ok"]
    s = ok["score"].to_numpy(float)
    total = len(scores)
    summary: dict[str, Any] = {
        "mean_score": davis_metrics.db_mean(s),
        "missing_rows": int((status == "missing").sum()),
        "error_rows": int(status.str.startswith("error").sum()),
        "scored_rows": len(ok),
        "total_rows": total,
        "mean_score_missing_as_zero": float(np.nansum(s) / total) if total else float("nan"),
    }
    overall = summaries.overall_summary(ok.to_dict("records"), per_sequence.to_dict("records"), MEASURES)
    for name in MEASURES:
        summary[f"{name}_mean_frames"] = overall[f"{name}_mean_frames"]
        summary[f"{name}_recall_frames"] = overall[f"{name}_recall_frames"]
    summary["JF_frames"] = (summary["J_mean_frames"] + summary["F_mean_frames"]) / 2
    summary["n_sequences"] = overall["n_sequences"]
    for name in MEASURES:
        for stat in summaries.STATISTICS:
            summary[f"{name}_{stat}_sequences"] = overall[f"{name}_{stat}_sequences"]
    summary["JF_sequences"] = (summary["J_mean_sequences"] + summary["F_mean_sequences"]) / 2
    return summary


# ----------------------------------------------------------------------------------------------
# The whole evaluation
# ----------------------------------------------------------------------------------------------

@dataclass
class EvaluationResult:
    """What ``evaluate`` produced: tables, summary, settings and the output folder."""

    out_dir: Path
    scores: pd.DataFrame
    per_sequence: pd.DataFrame
    summary: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)


def output_dir(model_base_dir: str | os.PathLike, model_id: str | None, name: str) -> Path:
    """``{model_base_dir}/Evaluation/{model_id or 'eval'}_{split name}``."""
    return Path(model_base_dir) / "Evaluation" / f"{model_id or 'eval'}_{name}"


def _short_reason(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    if not isinstance(e, (DataLoadingError, FileNotFoundError)):
        msg = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return msg[:300]


def evaluate(data_file: str | os.PathLike, model_base_dir: str | os.PathLike, data_base_dir: str | os.PathLike = ".",
             model_id: str | None = None, step: str = "test", scoring_method: str | None = None,
             binary_method: str = "exceptbiggest", bound_th: float = 0.008, fig_every: int = 10,
             decay_binning: str = "toolkit", out_dir: str | os.PathLike | None = None, save_masks: bool = True,
             progress: bool = True, extra_settings: dict[str, Any] | None = None) -> EvaluationResult:
    """Evaluate the ``*_proba.npy`` predictions of one DataSplit and write the outputs.

    Args:
        data_file: a DataSplit CSV, or a prefix completed as ``{data_file}_{step}.csv``.
        model_base_dir: folder of the predictions (``model_eval.py --save_npy``'s save_dir).
        data_base_dir: folder the DataSplit's paths are relative to.
        model_id: names the output folder (``'eval'`` when None).
        scoring_method: ``db_eval_iou`` | ``bbox_jacc``; None → ``bbox_jacc`` for MoCA splits.
        binary_method: ``exceptbiggest`` | ``fair``.
        bound_th: boundary-F tolerance (fraction of the diagonal, or pixels if ≥ 1).
        fig_every: a figure every ``fig_every`` scored frames (0: none).
        decay_binning: ``toolkit`` | ``array_split`` (see davis_metrics).
        out_dir: overrides ``{model_base_dir}/Evaluation/{model_id or 'eval'}_{split}``.
        save_masks: write the binary masks.
        progress: show a tqdm bar.
        extra_settings: merged into settings.json (the CLI passes its arguments).

    Returns:
        EvaluationResult; the same content is written to ``out_dir`` (see EvaluationSaver).
    """
    csv_path = naming.resolve_data_file(data_file, step)
    name = naming.split_name(csv_path)
    scoring_method = scoring_method or default_scoring_method(name)
    if decay_binning not in davis_metrics.DECAY_BINNINGS:
        raise ValueError(f"--decay_binning must be one of {list(davis_metrics.DECAY_BINNINGS)}, "
                         f"got {decay_binning!r}")
    if fig_every < 0:
        raise ValueError(f"--fig_every must be ≥ 0, got {fig_every}")
    scorer = FrameScorer(scoring_method, binary_method, bound_th)
    loader = PredictionLoader(data_base_dir, model_base_dir)
    split = read_split(csv_path)
    if split.empty:
        logger.warning("DataSplit %s has no rows", csv_path)
    out = Path(out_dir) if out_dir is not None else output_dir(model_base_dir, model_id, name)
    saver = EvaluationSaver(out)

    settings: dict[str, Any] = {
        **(extra_settings or {}),
        "data_file": str(data_file), "step": step, "model_base_dir": str(model_base_dir),
        "data_base_dir": str(data_base_dir), "model_id": model_id, "scoring_method": scoring_method,
        "binary_method": binary_method, "bound_th": bound_th, "fig_every": fig_every,
        "decay_binning": decay_binning, "out_dir": str(out), "csv_path": str(csv_path), "split_name": name,
        "save_masks": save_masks, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
                     "pandas": pd.__version__, "opencv": cv2.__version__},
    }
    saver.save_settings(settings)
    logger.info("evaluating %d rows of %s (predictions: %s, scoring: %s, binarisation: %s) → %s",
                len(split), csv_path, model_base_dir, scoring_method, binary_method, out)

    rows = _RowEvaluator(loader, scorer, saver, fig_every, save_masks)
    with logging_redirect_tqdm():
        for i, row in tqdm(split.iterrows(), total=len(split), desc=f"Evaluating {name}", disable=not progress,
                           unit="frame"):
            rows(i, row)

    scores = _merge(split, rows.records)
    per_sequence = sequence_table(scores, decay_binning)
    summary = {"split": name, "scoring_method": scoring_method, "binary_method": binary_method,
               **summarise(scores, per_sequence)}
    saver.save_scores(scores)
    saver.save_per_sequence(per_sequence, title=f"{model_id or 'eval'} on {name}: J&F per sequence")
    saver.save_summary(summary)
    _log_summary(summary, out)
    return EvaluationResult(out_dir=out, scores=scores, per_sequence=per_sequence, summary=summary,
                            settings=settings)


class _RowEvaluator:
    """Scores DataSplit rows one by one; every row leaves exactly one record (status 'ok', 'missing' or 'error: …')."""

    def __init__(self, loader: PredictionLoader, scorer: FrameScorer, saver: EvaluationSaver, fig_every: int,
                 save_masks: bool) -> None:
        self.loader, self.scorer, self.saver = loader, scorer, saver
        self.fig_every, self.save_masks = fig_every, save_masks
        self.records: list[dict[str, Any]] = []
        self.n_scored = 0

    def __call__(self, i: int, row: pd.Series) -> None:
        pred_path = self.loader.prediction_path(row)
        rec: dict[str, Any] = {"sequence": naming.sequence_of(row["Flow"]), "pred_file": str(pred_path)}
        self.records.append(rec)
        if not row["GtMask"]:
            rec["status"] = "error: empty GtMask cell"
            return
        if not pred_path.is_file():
            rec["status"] = "missing"
            return
        try:
            proba = self.loader.load_proba(row)
            gt = self.loader.load_gt(row)
            check_proba_shape(proba, gt.shape, pred_path)
            fs = self.scorer.score(proba, gt)
        except Exception as e:  # recorded and counted, never dropped; the reason names the file
            rec["status"] = f"error: {_short_reason(e)}"
            logger.warning("row %d (%s): %s", i, row["GtMask"], rec["status"])
            return
        rec.update(fs.row())
        rec["status"] = "ok"
        key = naming.without_ext(row["GtMask"])
        if self.save_masks:
            rec["binary_mask"] = str(self.saver.save_mask(fs.pred_mask, key).relative_to(self.saver.out_dir))
        if self.fig_every and self.n_scored % self.fig_every == 0:
            try:
                self.saver.save_figure(key, gt=gt, labels=fs.labels, pred_mask=fs.pred_mask,
                                       image=self.loader.load_image(row), jacc=fs.jacc,
                                       title=f"{row['GtMask']}  {self.scorer.scoring_method}={fs.score:.3f}  "
                                             f"J={fs.jacc:.3f}  F={fs.boundary_f:.3f}")
            except Exception as e:  # a figure must never stop an evaluation
                logger.warning("figure for %s failed: %s", row["GtMask"], e)
        self.n_scored += 1


def _merge(split: pd.DataFrame, records: list[dict[str, Any]]) -> pd.DataFrame:
    """The DataSplit's columns, then sequence/status/scores, then the per-mask statistics (one row per split row)."""
    extra = pd.DataFrame.from_records(records, index=split.index)
    for col in ("sequence", "status", "pred_file"):
        if col not in extra.columns:
            extra[col] = pd.Series(dtype=object)
    for col in SCORE_COLUMNS:
        if col not in extra.columns:
            extra[col] = np.nan
    clash = [c for c in extra.columns if c in split.columns]
    if clash:
        logger.warning("DataSplit columns %s are replaced by the evaluation's columns of the same name", clash)
    if "n_masks" in extra.columns:
        extra["n_masks"] = extra["n_masks"].astype("Int64")
    first = ["sequence", "status", *SCORE_COLUMNS, "pred_fg_size", "gt_fg_size", "n_masks"]
    first = [c for c in first if c in extra.columns]
    mask_cols = sorted((c for c in extra.columns if c.startswith("mask")),
                       key=lambda c: (int(c[4:].split("_")[0]), c.split("_", 1)[1] != "size"))
    rest = [c for c in extra.columns if c not in first and c not in mask_cols]
    extra = extra[first + mask_cols + rest]
    return pd.concat([split.drop(columns=clash), extra], axis=1)


def _log_summary(summary: dict[str, Any], out: Path) -> None:
    def f(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    logger.info("%s: mean %s = %s over %d/%d rows (%d missing, %d errors); J %s, F %s, J&F %s "
                "(means over %d sequences); results in %s", summary["split"], summary["scoring_method"],
                f(summary["mean_score"]), summary["scored_rows"], summary["total_rows"], summary["missing_rows"],
                summary["error_rows"], f(summary["J_mean_sequences"]), f(summary["F_mean_sequences"]),
                f(summary["JF_sequences"]), summary["n_sequences"], out)
    if summary["scored_rows"] == 0 and summary["total_rows"] > 0:
        logger.warning("no row could be scored: check --model_base_dir and --data_base_dir")
