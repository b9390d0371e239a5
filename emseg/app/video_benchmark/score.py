"""Scoring a run: per-frame J and boundary F of a run's masks against the benchmark's ground truth, their
flicker and regions (``measures.py``), per-sequence means, the split's summary (``per_frame.csv``,
``per_sequence.csv``, ``summary.json``), and the text table of a scored run.

A run folder holds ``{run}/{sequence}/{t:05d}_binary.png`` for t = 0 … N − 2 (N frames; frame N − 1
too when present). J is ``utils.evaluations.db_eval_iou`` (both empty → 1), F is
``evaluationmodule.davis_metrics.db_eval_boundary``. Masks are read with the core's ground-truth rule
(``emseg.core.masks.decode_mask``: foreground where > 0); the generator and ``segment.py`` write 0 / 255.
Flicker uses each frame's exact backward motion, rebuilt from the sequence's description
(``scenes.backward_motion``); the ground truth's own flicker is reported beside it as its floor.

The summary reports every mean three times: over the original seven roles (``groups.core7``, comparable
with runs scored before the new roles existed), over the new roles (``groups.new``) and over all the
split's sequences (``groups.all``, also the top-level keys).
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
from emseg.app.video_benchmark.measures import flicker_of, region_counts, warp_mask
from emseg.app.video_benchmark.scenes import CORE_ROLES, EMPTY_ROLES, NEW_ROLES, ROLES, SequenceSpec, backward_motion
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


FRAME_COLUMNS = ["frame", "J", "F", "gt_fg", "pred_fg", "flicker", "flicker_gt", "gt_regions", "gt_found",
                 "pred_regions", "pred_false"]


def score_sequence(gt_dir: Path, pred_dir: Path, n_frames: int, size: tuple[int, int],
                   bound_th: float = 0.008, spec: SequenceSpec | None = None) -> pd.DataFrame:
    """Per-frame J and F of ``pred_dir/{t:05d}_binary.png`` against ``gt_dir/{t:05d}.png``, and the
    frame's regions and flicker (``measures.py``).

    Frames 0 … N − 2 must all be there (the flow of the last frame needs a next one); frame N − 1 is
    scored when present. Columns: frame, J, F, gt_fg, pred_fg (fractions of the frame), flicker and
    flicker_gt (flicker_t of the prediction and of the ground truth from frame t − 1 to t, by the exact
    motion of ``spec``; NaN on frame 0 and without ``spec``), gt_regions, gt_found, pred_regions,
    pred_false (counts).
    """
    shape = (int(size[1]), int(size[0]))
    rows = []
    prev: tuple[np.ndarray, np.ndarray] | None = None  # the previous frame's (gt, pred)
    for t in range(n_frames):
        pred_path = pred_dir / f"{t:05d}_binary.png"
        if not pred_path.is_file():
            if t == n_frames - 1:
                continue
            raise BenchmarkError(f"{pred_path}: expected mask missing (the run must write "
                                 f"00000_binary.png … {n_frames - 2:05d}_binary.png)")
        gt = read_mask(gt_dir / f"{t:05d}.png", shape, "ground-truth mask")
        pred = read_mask(pred_path, shape, "predicted mask")
        flick = flick_gt = float("nan")
        if spec is not None and prev is not None:
            flow, valid = backward_motion(spec, t)
            w_gt, w_pred = warp_mask(np.stack(prev), flow)  # both carried in one sampling
            flick, flick_gt = flicker_of(w_pred, pred, valid), flicker_of(w_gt, gt, valid)
        prev = (gt, pred)
        rows.append({"frame": t, "J": float(db_eval_iou(gt, pred)), "F": db_eval_boundary(gt, pred, bound_th),
                     "gt_fg": float(gt.mean()), "pred_fg": float(pred.mean()), "flicker": flick,
                     "flicker_gt": flick_gt, **region_counts(gt, pred)})
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)


def _spec_of(entry: dict) -> SequenceSpec | None:
    """A manifest entry's sequence description as a spec (None when it lacks one: no flicker then)."""
    try:
        return SequenceSpec.from_json(entry)
    except (KeyError, TypeError, ValueError):
        logger.warning("%s: no usable sequence description in the manifest; flicker not measured",
                       entry.get("name"))
        return None


def _is_empty(role: str, gt_fg_mean: float) -> bool:
    """A sequence without objects: the roles that have none; for a role the generator does not know, an
    empty ground truth."""
    return role in EMPTY_ROLES if role in ROLES else not gt_fg_mean > 0


def _mean(x: pd.Series) -> float | None:
    x = x.dropna()
    return float(x.mean()) if len(x) else None


def group_summary(per_seq: pd.DataFrame) -> dict:
    """The means of a group of sequences (rows of ``per_sequence``): J, F, J&F, J over sequences with
    objects and over empty ones, predicted foreground on empty ones, flicker (and the ground truth's
    floor), region recall (found / ground-truth regions, pooled over the frames), false regions (count
    and per frame). Means over sequences, each counting once, like J."""
    empty = np.array([_is_empty(r, g) for r, g in zip(per_seq["role"], per_seq["gt_fg_mean"])], bool)
    n_gt, n_found = int(per_seq["gt_regions"].sum()), int(per_seq["gt_found"].sum())
    n_false, n_frames = int(per_seq["pred_false"].sum()), int(per_seq["n_scored"].sum())
    return {
        "n_sequences": len(per_seq), "sequences": list(per_seq["sequence"]), "n_frames_scored": n_frames,
        "J_mean": _mean(per_seq["J_mean"]), "F_mean": _mean(per_seq["F_mean"]), "JF": _mean(per_seq["JF"]),
        "J_mean_objects": _mean(per_seq.loc[~empty, "J_mean"]), "J_mean_empty": _mean(per_seq.loc[empty, "J_mean"]),
        "pred_fg_mean_empty": _mean(per_seq.loc[empty, "pred_fg_mean"]),
        "flicker": _mean(per_seq["flicker"]), "flicker_gt": _mean(per_seq["flicker_gt"]),
        "region_recall": n_found / n_gt if n_gt else None, "gt_regions": n_gt, "gt_found": n_found,
        "false_regions": n_false, "false_per_frame": n_false / n_frames if n_frames else None,
    }


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
                            tuple(s["size"]), bound_th, spec=_spec_of(s))
        df.insert(0, "sequence", name)
        frames.append(df)
        tm = (timings or {}).get(name, {})
        sec = tm.get("seconds")
        n_gt, n_found, n_false = (int(df[c].sum()) for c in ("gt_regions", "gt_found", "pred_false"))
        rows.append({"sequence": name, "role": s.get("role", ""), "n_frames": int(s["n_frames"]), "n_scored": len(df),
                     "J_mean": df["J"].mean(), "F_mean": df["F"].mean(), "JF": (df["J"].mean() + df["F"].mean()) / 2,
                     "J_recall": float((df["J"] > 0.5).mean()), "F_recall": float((df["F"] > 0.5).mean()),
                     "gt_fg_mean": df["gt_fg"].mean(), "pred_fg_mean": df["pred_fg"].mean(),
                     "flicker": df["flicker"].mean(), "flicker_gt": df["flicker_gt"].mean(),
                     "gt_regions": n_gt, "gt_found": n_found, "region_recall": n_found / n_gt if n_gt else None,
                     "pred_false": n_false, "false_per_frame": n_false / max(1, len(df)),
                     "seconds": sec, "fps": (tm.get("n_masks", len(df)) / sec) if sec else None})
        logger.info("%s: J %.3f F %.3f over %d frames", name, rows[-1]["J_mean"], rows[-1]["F_mean"], len(df))
    per_frame = pd.concat(frames, ignore_index=True)
    per_seq = pd.DataFrame(rows)
    groups = {"core7": per_seq["role"].isin(CORE_ROLES), "new": per_seq["role"].isin(NEW_ROLES),
              "all": pd.Series(True, index=per_seq.index)}
    total_s = sum((timings or {}).get(n, {}).get("seconds") or 0 for n in per_seq["sequence"])
    total_masks = sum((timings or {}).get(n, {}).get("n_masks") or 0 for n in per_seq["sequence"])
    summary = {
        "label": label or run_dir.name, "split": split, "bench": str(bench),
        "generator_version": manifest.get("generator_version"), "seed": manifest.get("seed"),
        # the top-level means are the whole split's (groups["all"]); groups["core7"] compares with older runs
        **{k: v for k, v in group_summary(per_seq).items() if k != "sequences"},
        "groups": {g: group_summary(per_seq[sel]) for g, sel in groups.items() if sel.any()},
        "seconds": total_s or None, "fps": (total_masks / total_s) if total_s else None,
        "bound_th": bound_th, **(extra or {}),
    }
    if write:
        write_csv(per_frame, run_dir / "per_frame.csv")
        write_csv(per_seq, run_dir / "per_sequence.csv")
        write_json(summary, run_dir / "summary.json")
    return BenchScores(per_frame, per_seq, summary)


def _fmt(x: Any, spec: str = "6.2f") -> str:
    """``x`` formatted by ``spec``; a missing or non-finite value as a dash of the same width."""
    if x is not None and np.isfinite(float(x)):
        return format(float(x), spec)
    return "-".rjust(int(spec.split(".")[0] or 0))


def format_table(per_seq: pd.DataFrame, summary: dict) -> str:
    """The per-sequence J, F, J&F, flicker (the ground truth's floor in brackets), regions found / in the
    ground truth, false regions, foreground fractions and frames/s; then the means of each group (core7,
    new, all), as text."""
    lines = [f"{'sequence':<14} {'J':>6} {'F':>6} {'J&F':>6} {'flicker':>7} {'(gt)':>6} {'found':>9} "
             f"{'false':>6} {'pred fg':>8} {'gt fg':>6} {'fps':>6}"]
    for r in per_seq.itertuples():
        found = f"{int(getattr(r, 'gt_found', 0))}/{int(getattr(r, 'gt_regions', 0))}"
        lines.append(f"{r.sequence:<14} {r.J_mean:6.3f} {r.F_mean:6.3f} {r.JF:6.3f} "
                     f"{_fmt(getattr(r, 'flicker', None), '7.3f')} {_fmt(getattr(r, 'flicker_gt', None), '6.3f')} "
                     f"{found:>9} {int(getattr(r, 'pred_false', 0)):6d} {r.pred_fg_mean:8.3f} {r.gt_fg_mean:6.3f} "
                     f"{_fmt(r.fps)}")
    groups = summary.get("groups") or {"all": summary}
    lines += ["", f"{'group':<7} {'seqs':>4} {'J':>6} {'F':>6} {'J&F':>6} {'J obj':>6} {'J empty':>7} "
                  f"{'flicker':>7} {'(gt)':>6} {'recall':>6} {'found':>9} {'false':>5} {'/frame':>6}"]
    for g, sm in groups.items():
        found = f"{sm.get('gt_found', 0)}/{sm.get('gt_regions', 0)}"
        lines.append(f"{g:<7} {sm['n_sequences']:>4} {_fmt(sm['J_mean'], '6.3f')} {_fmt(sm['F_mean'], '6.3f')} "
                     f"{_fmt(sm['JF'], '6.3f')} "
                     f"{_fmt(sm.get('J_mean_objects'), '6.3f')} {_fmt(sm.get('J_mean_empty'), '7.3f')} "
                     f"{_fmt(sm.get('flicker'), '7.3f')} {_fmt(sm.get('flicker_gt'), '6.3f')} "
                     f"{_fmt(sm.get('region_recall'), '6.3f')} {found:>9} {sm.get('false_regions', 0):5d} "
                     f"{_fmt(sm.get('false_per_frame'), '6.2f')}")
    if summary.get("pred_fg_mean_empty") is not None:
        lines.append(f"predicted foreground on the empty sequences: {100 * summary['pred_fg_mean_empty']:.1f} %")
    lines.append(f"frames/s: {_fmt(summary.get('fps')).strip()}")
    return "\n".join(lines)


def load_scored_run(run_dir: str | os.PathLike) -> tuple[str, pd.DataFrame, dict]:
    """(label, per-sequence table, summary) of a run folder that ``score`` wrote."""
    d = Path(run_dir)
    ps, sm = d / "per_sequence.csv", d / "summary.json"
    if not ps.is_file() or not sm.is_file():
        raise BenchmarkError(f"{d}: not a scored run (no per_sequence.csv / summary.json)")
    summary = json.loads(sm.read_text())
    return summary.get("label") or d.name, unguard_frame(pd.read_csv(ps)), summary
