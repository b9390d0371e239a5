"""Scoring a run: per-frame J and boundary F of a run's masks against the benchmark's ground truth,
per-sequence means, the split's summary (``per_frame.csv``, ``per_sequence.csv``, ``summary.json``),
and the text table of a scored run.

A run folder holds ``{run}/{sequence}/{t:05d}_binary.png`` for t = 0 … N − 2 (N frames; frame N − 1
too when present). J is ``utils.evaluations.db_eval_iou`` (both empty → 1), F is
``evaluationmodule.davis_metrics.db_eval_boundary``. Masks are read with the core's ground-truth rule
(``emseg.core.masks.decode_mask``: foreground where > 0); the generator and ``segment.py`` write 0 / 255.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from emseg.app.video_benchmark.layout import BenchmarkError, load_manifest, split_sequences
from emseg.core.masks import decode_mask
from evaluationmodule.davis_metrics import db_eval_boundary
from evaluationmodule.writers import unguard_frame, write_csv, write_json
from utils.evaluations import db_eval_iou

logger = logging.getLogger(__name__)


def read_mask(path: Path, shape: tuple[int, int], what: str) -> np.ndarray:
    """A mask PNG → bool (H, W), foreground where > 0 (the core's rule); ``shape`` (H, W) must match.

    ``what`` names the file in errors ("ground-truth mask", "predicted mask").
    """
    try:
        with Image.open(path) as im:
            mask = decode_mask(im)
    except (OSError, ValueError) as err:
        raise BenchmarkError(f"{path}: unreadable {what} ({err})") from None
    if mask.shape != shape:
        raise BenchmarkError(f"{path}: {what} is {mask.shape[1]}x{mask.shape[0]}, expected the video's "
                             f"{shape[1]}x{shape[0]}")
    return mask


def score_sequence(gt_dir: Path, pred_dir: Path, n_frames: int, size: tuple[int, int],
                   bound_th: float = 0.008) -> pd.DataFrame:
    """Per-frame J and F of ``pred_dir/{t:05d}_binary.png`` against ``gt_dir/{t:05d}.png``.

    Frames 0 … N − 2 must all be there (the flow of the last frame needs a next one); frame N − 1 is
    scored when present. Columns: frame, J, F, gt_fg, pred_fg (fractions of the frame).
    """
    shape = (int(size[1]), int(size[0]))
    rows = []
    for t in range(n_frames):
        pred_path = pred_dir / f"{t:05d}_binary.png"
        if not pred_path.is_file():
            if t == n_frames - 1:
                continue
            raise BenchmarkError(f"{pred_path}: expected mask missing (the run must write "
                                 f"00000_binary.png … {n_frames - 2:05d}_binary.png)")
        gt = read_mask(gt_dir / f"{t:05d}.png", shape, "ground-truth mask")
        pred = read_mask(pred_path, shape, "predicted mask")
        rows.append({"frame": t, "J": float(db_eval_iou(gt, pred)), "F": db_eval_boundary(gt, pred, bound_th),
                     "gt_fg": float(gt.mean()), "pred_fg": float(pred.mean())})
    return pd.DataFrame(rows, columns=["frame", "J", "F", "gt_fg", "pred_fg"])


@dataclass
class BenchScores:
    """A scored run: ``per_frame`` (one row per scored frame: sequence, frame, J, F, gt_fg, pred_fg),
    ``per_sequence`` (one row per sequence: means, recalls, run time, frames/s) and ``summary``
    (the split's means, as written to ``summary.json``)."""

    per_frame: pd.DataFrame
    per_sequence: pd.DataFrame
    summary: dict


def score_run(bench: str | os.PathLike, split: str, run_dir: str | os.PathLike,
              timings: dict[str, dict] | None = None, label: str | None = None, bound_th: float = 0.008,
              extra: dict | None = None, write: bool = True) -> BenchScores:
    """Score a run folder (``run_dir/{sequence}/{t:05d}_binary.png``) on a split; write the tables.

    Writes ``per_frame.csv``, ``per_sequence.csv`` and ``summary.json`` into ``run_dir`` (atomic).
    ``timings`` (sequence → {"seconds", "n_masks"}) adds the run time and frames/s per sequence.
    Summary means are over sequences (each counts once); ``J_mean_objects`` / ``J_mean_empty`` split
    them by whether the ground truth has any foreground.
    """
    bench, run_dir = Path(bench), Path(run_dir)
    manifest = load_manifest(bench)
    seqs = split_sequences(manifest, split, bench)
    frames, rows = [], []
    for s in seqs:
        name = s["name"]
        df = score_sequence(bench / s["path"] / s.get("masks", "masks"), run_dir / name, int(s["n_frames"]),
                            tuple(s["size"]), bound_th)
        df.insert(0, "sequence", name)
        frames.append(df)
        tm = (timings or {}).get(name, {})
        sec = tm.get("seconds")
        rows.append({"sequence": name, "role": s.get("role", ""), "n_frames": int(s["n_frames"]), "n_scored": len(df),
                     "J_mean": df["J"].mean(), "F_mean": df["F"].mean(), "JF": (df["J"].mean() + df["F"].mean()) / 2,
                     "J_recall": float((df["J"] > 0.5).mean()), "F_recall": float((df["F"] > 0.5).mean()),
                     "gt_fg_mean": df["gt_fg"].mean(), "pred_fg_mean": df["pred_fg"].mean(),
                     "seconds": sec, "fps": (tm.get("n_masks", len(df)) / sec) if sec else None})
        logger.info("%s: J %.3f F %.3f over %d frames", name, rows[-1]["J_mean"], rows[-1]["F_mean"], len(df))
    per_frame = pd.concat(frames, ignore_index=True)
    per_seq = pd.DataFrame(rows)
    has_obj = per_seq["gt_fg_mean"] > 0
    total_s = sum((timings or {}).get(n, {}).get("seconds") or 0 for n in per_seq["sequence"])
    total_masks = sum((timings or {}).get(n, {}).get("n_masks") or 0 for n in per_seq["sequence"])
    summary = {
        "label": label or run_dir.name, "split": split, "bench": str(bench),
        "generator_version": manifest.get("generator_version"), "seed": manifest.get("seed"),
        "n_sequences": len(per_seq), "n_frames_scored": len(per_frame),
        "J_mean": float(per_seq["J_mean"].mean()), "F_mean": float(per_seq["F_mean"].mean()),
        "JF": float(per_seq["JF"].mean()),
        "J_mean_objects": float(per_seq.loc[has_obj, "J_mean"].mean()) if has_obj.any() else None,
        "J_mean_empty": float(per_seq.loc[~has_obj, "J_mean"].mean()) if (~has_obj).any() else None,
        "pred_fg_mean_empty": float(per_seq.loc[~has_obj, "pred_fg_mean"].mean()) if (~has_obj).any() else None,
        "seconds": total_s or None, "fps": (total_masks / total_s) if total_s else None,
        "bound_th": bound_th, **(extra or {}),
    }
    if write:
        write_csv(per_frame, run_dir / "per_frame.csv")
        write_csv(per_seq, run_dir / "per_sequence.csv")
        write_json(summary, run_dir / "summary.json")
    return BenchScores(per_frame, per_seq, summary)


def _fmt(x: Any, spec: str = "6.2f") -> str:
    return format(float(x), spec) if x is not None and np.isfinite(float(x)) else f"{'-':>6}"


def format_table(per_seq: pd.DataFrame, summary: dict) -> str:
    """The per-sequence J, F, J&F, foreground fractions and frames/s, and the split's means, as text."""
    lines = [f"{'sequence':<14} {'J':>6} {'F':>6} {'J&F':>6} {'pred fg':>8} {'gt fg':>6} {'fps':>6}"]
    for r in per_seq.itertuples():
        lines.append(f"{r.sequence:<14} {r.J_mean:6.3f} {r.F_mean:6.3f} {r.JF:6.3f} {r.pred_fg_mean:8.3f} "
                     f"{r.gt_fg_mean:6.3f} {_fmt(r.fps)}")
    fps = _fmt(summary.get("fps"))
    lines.append(f"{'mean':<14} {summary['J_mean']:6.3f} {summary['F_mean']:6.3f} {summary['JF']:6.3f} "
                 f"{'':>8} {'':>6} {fps}")
    if summary.get("J_mean_objects") is not None and summary.get("J_mean_empty") is not None:
        lines.append(f"J over sequences with objects {summary['J_mean_objects']:.3f}; without: J "
                     f"{summary['J_mean_empty']:.3f}, predicted foreground {100 * summary['pred_fg_mean_empty']:.1f} %")
    return "\n".join(lines)


def load_scored_run(run_dir: str | os.PathLike) -> tuple[str, pd.DataFrame, dict]:
    """(label, per-sequence table, summary) of a run folder that ``score`` wrote."""
    d = Path(run_dir)
    ps, sm = d / "per_sequence.csv", d / "summary.json"
    if not ps.is_file() or not sm.is_file():
        raise BenchmarkError(f"{d}: not a scored run (no per_sequence.csv / summary.json)")
    summary = json.loads(sm.read_text())
    return summary.get("label") or d.name, unguard_frame(pd.read_csv(ps)), summary
