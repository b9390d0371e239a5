"""Comparing scored runs: a side-by-side per-sequence J / F table with a bar plot of J, and a figure of
chosen real frames with every run's foreground outline beside the ground truth's.

Runs are folders that ``score`` wrote (``per_sequence.csv``, ``summary.json``); the frames' figure also
reads the benchmark the runs were scored on (their ``summary.json`` names it and the split).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from emseg.app.video_benchmark.layout import BenchmarkError, load_manifest, split_sequences
from emseg.app.video_benchmark.scenes import CORE_ROLES
from emseg.app.video_benchmark.score import load_scored_run, read_mask
from emseg.core.video_io import iter_frames, open_video
from evaluationmodule.SaveModule import write_figure, write_grouped_bars
from utils.evaluations import db_eval_iou


def compare_runs(run_dirs: Sequence[str | os.PathLike], plot: str | os.PathLike | None = None) -> str:
    """Side-by-side per-sequence J / F table of several scored runs; optional bar plot of J."""
    runs = [load_scored_run(d) for d in run_dirs]
    seqs = list(dict.fromkeys(s for _, df, _ in runs for s in df["sequence"]))
    width = max(13, *(len(lb) for lb, _, _ in runs))  # a cell reads "0.000 / 0.000"
    head = f"{'sequence':<14}" + "".join(f" {lb[:width]:>{width}}" for lb, _, _ in runs)
    sub = f"{'':<14}" + "".join(f" {'J / F':>{width}}" for _ in runs)
    lines = [head, sub]
    # the groups' means too (core7: the original seven sequences, comparable with runs scored before the
    # new roles; new), where a run's summary has them (runs scored earlier have only "mean")
    groups = list(dict.fromkeys(g for _, _, sm in runs for g in (sm.get("groups") or {}) if g != "all"))
    for s in seqs + ["mean"] + [f"mean {g}" for g in groups]:
        cells = []
        for _, df, sm in runs:
            if s.startswith("mean"):
                g = (sm.get("groups") or {}).get(s[5:]) if s != "mean" else sm
                if g is None and s == "mean core7" and "groups" not in sm and set(df["role"]) <= set(CORE_ROLES):
                    g = sm  # a run scored before the groups, on the seven original sequences only
                cells.append(f"{g['J_mean']:.3f} / {g['F_mean']:.3f}" if g and g.get("J_mean") is not None else "-")
                continue
            r = df[df["sequence"] == s]
            cells.append(f"{r['J_mean'].iloc[0]:.3f} / {r['F_mean'].iloc[0]:.3f}" if len(r) else "-")
        lines.append(f"{s:<14}" + "".join(f" {c:>{width}}" for c in cells))
    if plot is not None:
        series = {}
        for lb, df, _ in runs:
            j = df.set_index("sequence")["J_mean"]
            series[lb] = np.array([j.get(s, np.nan) for s in seqs], dtype=float)
        write_grouped_bars(seqs, series, plot, "Video benchmark: J per sequence (dashed: means)", ylabel="J")
    return "\n".join(lines)


def _read_video_frame(video: Path, t: int) -> np.ndarray:
    """Frame ``t`` of ``video`` as RGB uint8 (H, W, 3); decoded in order, as seeking in MP4 is inexact."""
    try:
        cap, _ = open_video(video, flag="benchmark video")
    except (OSError, ValueError) as err:  # missing, empty, or not a video OpenCV can open
        raise BenchmarkError(str(err)) from None
    frames = iter_frames(cap)
    try:
        frame = next(itertools.islice(frames, t, None), None)
    finally:
        frames.close()  # releases the capture without decoding the rest
    if frame is None:
        raise BenchmarkError(f"{video}: has no frame {t}")
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def _outlined(frame: np.ndarray, masks: Sequence[tuple[np.ndarray, tuple[int, int, int]]]) -> np.ndarray:
    """frame (H, W, 3) uint8 with each mask's (H, W) outline drawn 2 px wide in its colour (a copy)."""
    out = frame.copy()
    for mask, colour in masks:
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, colour, 2)
    return out


def parse_frame_spec(spec: str) -> tuple[str, int]:
    """``'zoom_rotate:30'`` → ('zoom_rotate', 30)."""
    name, sep, t = spec.rpartition(":")
    if not sep or not name or not t.isdigit():
        raise BenchmarkError(f"--frames {spec!r}: expected SEQUENCE:FRAME, e.g. zoom_rotate:30")
    return name, int(t)


def compare_frames(run_dirs: Sequence[str | os.PathLike], frames: Sequence[str], path: str | os.PathLike) -> Path:
    """A figure of real frames: one row per ``SEQUENCE:FRAME`` in ``frames``, one column per scored run,
    each panel the video's frame with the run's foreground outline (white) and the ground truth's
    (green), titled with the run's label and the frame's J. The runs must be on one benchmark split
    (their ``summary.json`` names it)."""
    from matplotlib.figure import Figure

    runs = []
    for d in run_dirs:
        label, _, summary = load_scored_run(d)
        runs.append((label, Path(d), summary))
    where = {(summary.get("bench"), summary.get("split")) for _, _, summary in runs}
    if len(where) != 1:
        raise BenchmarkError(f"the runs were scored on different benchmarks or splits: {sorted(map(str, where))}")
    bench_s, split = where.pop()
    bench = Path(bench_s)
    seqs = {s["name"]: s for s in split_sequences(load_manifest(bench), split, bench)}
    specs = [parse_frame_spec(f) for f in frames]
    fig = Figure(figsize=(3.2 * len(runs), 2.2 * len(specs) + 0.3))
    axes = np.asarray(fig.subplots(len(specs), len(runs), squeeze=False))
    for row, (name, t) in enumerate(specs):
        if name not in seqs:
            raise BenchmarkError(f"--frames {name}:{t}: no sequence {name!r} in the {split} split "
                                 f"(has {', '.join(seqs)})")
        seq = seqs[name]
        if not 0 <= t < int(seq["n_frames"]):
            raise BenchmarkError(f"--frames {name}:{t}: the sequence has frames 0 … {int(seq['n_frames']) - 1}")
        folder = bench / seq["path"]
        image = _read_video_frame(folder / seq["video"], t)
        shape = image.shape[:2]
        gt = read_mask(folder / seq.get("masks", "masks") / f"{t:05d}.png", shape, "ground-truth mask")
        for col, (label, d, _) in enumerate(runs):
            pred = read_mask(d / name / f"{t:05d}_binary.png", shape, "predicted mask")
            ax = axes[row, col]
            ax.imshow(_outlined(image, [(gt, (0, 255, 0)), (pred, (255, 255, 255))]))
            ax.set_title(f"{label} · {name} {t} · J {float(db_eval_iou(gt, pred)):.2f}", fontsize=7)
            ax.set_axis_off()
    fig.suptitle("white: the run's foreground; green: the ground truth", fontsize=8)
    fig.tight_layout()
    return write_figure(fig, Path(path))
