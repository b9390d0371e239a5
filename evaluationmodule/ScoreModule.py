"""Scoring saved probabilities against ground-truth masks, frame by frame and sequence by sequence.

Per frame: the probabilities (L, I, J) are resized to the ground truth's size (H, W) (bilinear,
align_corners=False), binarised with ``BinarisationModule`` and scored with

- ``jacc``: the region Jaccard J (``utils.evaluations.db_eval_iou``),
- ``bbox_jacc``: Jaccard of the ground truth's bounding box and the bounding box of the largest
  8-connected component of the prediction (MoCA's measure),
- ``boundary_f``: the DAVIS boundary measure F (``davis_metrics.db_eval_boundary``),
- ``score``: ``jacc`` or ``bbox_jacc`` according to ``scoring_method`` (``db_eval_iou`` | ``bbox_jacc``),

plus per-mask statistics. Per sequence: J and F mean, recall and decay, and J&F.

``evaluate(...)`` runs the whole evaluation of one DataSplit and writes its outputs (SaveModule).
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
import torch.nn.functional as F
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from evaluationmodule import davis_metrics
from evaluationmodule.BinarisationModule import BINARY_METHODS, BinarisationModule
from evaluationmodule.DataLoadingModule import (
    DataLoadingError,
    DataLoadingModule,
    check_proba_shape,
    natural_key,
    read_split,
    resolve_data_file,
    sequence_of,
    split_name,
    without_ext,
)
from evaluationmodule.SaveModule import SaveModule
from utils.evaluations import db_eval_iou

logger = logging.getLogger(__name__)

SCORING_METHODS = ("db_eval_iou", "bbox_jacc")
SCORE_COLUMNS = ("score", "jacc", "bbox_jacc", "boundary_f")


# ----------------------------------------------------------------------------------------------
# Per-frame primitives
# ----------------------------------------------------------------------------------------------

def default_scoring_method(name: str) -> str:
    """``bbox_jacc`` for MoCA splits (name containing 'moca', any case), ``db_eval_iou`` otherwise."""
    return "bbox_jacc" if "moca" in name.lower() else "db_eval_iou"


def resize_proba(proba: np.ndarray | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Probabilities (L, I, J) → float32 tensor (L, H, W), bilinear with align_corners=False."""
    t = torch.as_tensor(np.asarray(proba) if not isinstance(proba, torch.Tensor) else proba, dtype=torch.float32)
    if t.dim() != 3:
        raise ValueError(f"expected probabilities (L, I, J), got shape {tuple(t.shape)}")
    size = (int(size[0]), int(size[1]))
    if tuple(t.shape[1:]) == size:
        return t
    return F.interpolate(t[None], size=size, mode="bilinear", align_corners=False)[0]


def binarise(proba: torch.Tensor, gt: np.ndarray | None = None, binary_method: str = "exceptbiggest") -> np.ndarray:
    """Probabilities (L, H, W) → binary foreground (H, W) bool via ``BinarisationModule``.

    ``gt`` (H, W) is needed for ``fair`` only.
    """
    batch: dict[str, torch.Tensor] = {"Pred": torch.as_tensor(proba)[None]}
    if gt is not None:
        batch["GtMask"] = torch.as_tensor(np.asarray(gt, dtype=bool))[None]
    return BinarisationModule(binary_method).binarise(batch)["PredMask"][0].cpu().numpy().astype(bool)


def jaccard(gt: np.ndarray, pred: np.ndarray) -> float:
    """Region Jaccard J of two binary masks (H, W); 1 when both are empty."""
    return float(db_eval_iou(np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)))


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box (row0, col0, row1, col1), inclusive, of a mask's non-zero pixels (H, W); None if empty."""
    rows = np.flatnonzero(np.asarray(mask).any(1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(np.asarray(mask).any(0))
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def largest_component_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive bounding box (row0, col0, row1, col1) of the largest 8-connected component of (H, W).

    The largest is the one with the most pixels (ties: the first in raster order); None if empty.
    """
    m = np.ascontiguousarray(np.asarray(mask, dtype=bool), dtype=np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return None
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(stats[k, c]) for c in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH,
                                              cv2.CC_STAT_HEIGHT))
    return y, x, y + h - 1, x + w - 1


def box_iou(a: tuple[int, int, int, int] | None, b: tuple[int, int, int, int] | None) -> float:
    """IoU of two inclusive pixel boxes (row0, col0, row1, col1): 1 if both are None, 0 if one is."""
    if a is None and b is None:
        return 1.0
    if a is None or b is None:
        return 0.0

    def area(r: tuple[int, int, int, int]) -> int:
        return max(0, r[2] - r[0] + 1) * max(0, r[3] - r[1] + 1)

    inter = area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    return inter / float(area(a) + area(b) - inter)


def bbox_jaccard(gt: np.ndarray, pred: np.ndarray) -> float:
    """MoCA's measure: IoU of the GT's bounding box (all pixels > 0) and the prediction's largest-component box.

    gt, pred (H, W). Empty prediction → 0 unless the ground truth is empty too (→ 1).
    """
    return box_iou(mask_bbox(np.asarray(gt) > 0), largest_component_bbox(pred))


def mask_stats(labels: np.ndarray, n_masks: int, gt: np.ndarray, pred_mask: np.ndarray) -> dict[str, float]:
    """Per-mask size and overlap statistics of one frame.

    labels (H, W) argmax of the probabilities, gt and pred_mask (H, W) bool. Returns
    ``n_masks``, ``mask{k}_size`` (fraction of pixels whose argmax is k), ``mask{k}_overlap``
    (fraction of the GT's pixels whose argmax is k; NaN for an empty GT), ``pred_fg_size`` and
    ``gt_fg_size`` (foreground fractions).
    """
    n_pix = labels.size
    gt = np.asarray(gt, dtype=bool)
    n_gt = int(gt.sum())
    size = np.bincount(labels.ravel(), minlength=n_masks)[:n_masks] / n_pix
    inside = np.bincount(labels[gt].ravel(), minlength=n_masks)[:n_masks]
    out: dict[str, float] = {"n_masks": n_masks}
    for k in range(n_masks):
        out[f"mask{k}_size"] = float(size[k])
        out[f"mask{k}_overlap"] = float(inside[k] / n_gt) if n_gt else float("nan")
    out["pred_fg_size"] = float(np.asarray(pred_mask, dtype=bool).mean())
    out["gt_fg_size"] = n_gt / n_pix
    return out


@dataclass
class FrameScore:
    """Scores of one frame; ``pred_mask`` and ``labels`` are (H, W) at the ground truth's size."""

    score: float
    jacc: float
    bbox_jacc: float
    boundary_f: float
    stats: dict[str, float]
    pred_mask: np.ndarray
    labels: np.ndarray

    def row(self) -> dict[str, float]:
        return {"score": self.score, "jacc": self.jacc, "bbox_jacc": self.bbox_jacc,
                "boundary_f": self.boundary_f, **self.stats}


class ScoreModule:
    """Scores one frame: resize → binarise → J, bbox Jaccard, boundary F and mask statistics.

    Args:
        scoring_method: ``db_eval_iou`` (region Jaccard) or ``bbox_jacc`` (MoCA); picks ``score``.
        binary_method: ``exceptbiggest`` or ``fair`` (see BinarisationModule).
        bound_th: boundary tolerance, fraction of the image diagonal (< 1) or pixels (≥ 1).
    """

    def __init__(self, scoring_method: str = "db_eval_iou", binary_method: str = "exceptbiggest",
                 bound_th: float = 0.008) -> None:
        if scoring_method not in SCORING_METHODS:
            raise ValueError(f"--scoring_method must be one of {list(SCORING_METHODS)}, got {scoring_method!r}")
        if binary_method not in BINARY_METHODS:
            raise ValueError(f"--binary_method must be one of {list(BINARY_METHODS)}, got {binary_method!r}")
        if not bound_th >= 0:
            raise ValueError(f"--bound_th must be ≥ 0, got {bound_th}")
        self.scoring_method = scoring_method
        self.binary_method = binary_method
        self.bound_th = bound_th

    def score(self, proba: np.ndarray | torch.Tensor, gt: np.ndarray) -> FrameScore:
        """proba (L, I, J) at any size, gt (H, W) bool → FrameScore at (H, W)."""
        gt = np.asarray(gt, dtype=bool)
        if gt.ndim != 2:
            raise ValueError(f"expected a ground truth (H, W), got shape {gt.shape}")
        p = resize_proba(proba, gt.shape)
        pred = binarise(p, gt if self.binary_method == "fair" else None, self.binary_method)
        labels = p.argmax(0).cpu().numpy()
        jacc = jaccard(gt, pred)
        bbox = bbox_jaccard(gt, pred)
        bf = davis_metrics.db_eval_boundary(gt, pred, self.bound_th)
        return FrameScore(score=bbox if self.scoring_method == "bbox_jacc" else jacc, jacc=jacc, bbox_jacc=bbox,
                          boundary_f=bf, stats=mask_stats(labels, p.shape[0], gt, pred), pred_mask=pred,
                          labels=labels)


# ----------------------------------------------------------------------------------------------
# Sequence statistics and summary
# ----------------------------------------------------------------------------------------------

PER_SEQUENCE_COLUMNS = ("sequence", "n_frames", "J_mean", "J_recall", "J_decay", "F_mean", "F_recall", "F_decay",
                        "JF", "score_mean", "n_rows", "n_unscored")


def sequence_table(scores: pd.DataFrame, binning: str = "toolkit") -> pd.DataFrame:
    """Per-sequence statistics from a scores table.

    ``scores`` needs ``sequence``, ``GtMask``, ``jacc``, ``boundary_f`` and ``score``. Frames are
    ordered by their GtMask path (natural order); rows without a score (missing or error) are left
    out of the statistics and counted in ``n_unscored``. Sequences keep their order of appearance.
    """
    rows = []
    for seq, g in scores.groupby("sequence", sort=False):
        g = g.iloc[sorted(range(len(g)), key=lambda i: natural_key(g["GtMask"].iloc[i]))]
        ok = g[g["jacc"].notna()]
        jm, jr, jd = davis_metrics.db_statistics(ok["jacc"].to_numpy(float), binning)
        fm, fr, fd = davis_metrics.db_statistics(ok["boundary_f"].to_numpy(float), binning)
        rows.append({"sequence": seq, "n_frames": len(ok), "J_mean": jm, "J_recall": jr, "J_decay": jd,
                     "F_mean": fm, "F_recall": fr, "F_decay": fd, "JF": (jm + fm) / 2,
                     "score_mean": davis_metrics.db_mean(ok["score"].to_numpy(float)),
                     "n_rows": len(g), "n_unscored": len(g) - len(ok)})
    return pd.DataFrame(rows, columns=list(PER_SEQUENCE_COLUMNS))


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
    for name, col in (("J", "jacc"), ("F", "boundary_f")):
        v = ok[col].to_numpy(float)
        summary[f"{name}_mean_frames"] = davis_metrics.db_mean(v)
        summary[f"{name}_recall_frames"] = davis_metrics.db_recall(v)
    summary["JF_frames"] = (summary["J_mean_frames"] + summary["F_mean_frames"]) / 2
    seq = per_sequence[per_sequence["n_frames"] > 0]
    summary["n_sequences"] = len(seq)
    for name in ("J", "F"):
        for stat in ("mean", "recall", "decay"):
            summary[f"{name}_{stat}_sequences"] = davis_metrics.db_mean(seq[f"{name}_{stat}"].to_numpy(float))
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
        EvaluationResult; the same content is written to ``out_dir`` (see SaveModule).
    """
    csv_path = resolve_data_file(data_file, step)
    name = split_name(csv_path)
    scoring_method = scoring_method or default_scoring_method(name)
    if decay_binning not in davis_metrics.DECAY_BINNINGS:
        raise ValueError(f"--decay_binning must be one of {list(davis_metrics.DECAY_BINNINGS)}, "
                         f"got {decay_binning!r}")
    if fig_every < 0:
        raise ValueError(f"--fig_every must be ≥ 0, got {fig_every}")
    scorer = ScoreModule(scoring_method, binary_method, bound_th)
    loader = DataLoadingModule(data_base_dir, model_base_dir)
    split = read_split(csv_path)
    if split.empty:
        logger.warning("DataSplit %s has no rows", csv_path)
    out = Path(out_dir) if out_dir is not None else output_dir(model_base_dir, model_id, name)
    saver = SaveModule(out)

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

    def __init__(self, loader: DataLoadingModule, scorer: ScoreModule, saver: SaveModule, fig_every: int,
                 save_masks: bool) -> None:
        self.loader, self.scorer, self.saver = loader, scorer, saver
        self.fig_every, self.save_masks = fig_every, save_masks
        self.records: list[dict[str, Any]] = []
        self.n_scored = 0

    def __call__(self, i: int, row: pd.Series) -> None:
        pred_path = self.loader.prediction_path(row)
        rec: dict[str, Any] = {"sequence": sequence_of(row["GtMask"]), "pred_file": str(pred_path)}
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
        key = without_ext(row["GtMask"])
        if self.save_masks:
            rec["binary_mask"] = str(self.saver.save_mask(fs.pred_mask, key).relative_to(self.saver.out_dir))
        if self.fig_every and self.n_scored % self.fig_every == 0:
            try:
                self.saver.save_figure(key, gt=gt, labels=fs.labels, pred_mask=fs.pred_mask,
                                       image=self.loader.load_image(row),
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
