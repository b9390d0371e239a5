"""Writing the evaluation's outputs: CSV, JSON, binary masks, figures and the per-sequence plot.

Every file is written to a temporary name in the same folder and then renamed over the target
(``os.replace``), so an interrupted run never leaves a truncated CSV, JSON or PNG behind.
Figures use matplotlib's object API with the Agg canvas (no pyplot, no global backend change).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from utils.atomic_io import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)


def _json_safe(obj: Any) -> Any:
    """NaN/inf → None, numpy scalars/arrays → Python, paths → str (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def write_json(obj: dict, path: str | os.PathLike) -> Path:
    """Write strict JSON (NaN written as null), atomically."""
    return atomic_write_text(path, json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n")


def write_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a DataFrame without its index, atomically (NaN written as empty cells)."""
    return atomic_write(Path(path), lambda p: df.to_csv(p, index=False))


def write_mask_png(mask: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a binary mask (I, J) as an 8-bit PNG with values 0 / 255, atomically."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a mask (I, J), got shape {mask.shape}")
    im = Image.fromarray(np.where(mask.astype(bool), 255, 0).astype(np.uint8), mode="L")
    return atomic_write(Path(path), lambda p: im.save(p, format="PNG"))


def write_npy(arr: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an array as ``.npy``, atomically."""
    def save(p: Path) -> None:
        with open(p, "wb") as fh:  # a handle: np.save on a name would append ".npy" to the temporary one
            np.save(fh, arr)

    return atomic_write(Path(path), save)


def _save_figure(fig: Figure, path: Path, dpi: int = 100) -> Path:
    FigureCanvasAgg(fig)
    return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=dpi, bbox_inches="tight"))


def write_frame_figure(path: str | os.PathLike, gt: np.ndarray, labels: np.ndarray, pred_mask: np.ndarray,
                       title: str, image: np.ndarray | None = None) -> Path:
    """Figure of one frame: [image (I, J, 3)], ground truth (I, J), argmax labels (I, J), binary mask (I, J)."""
    panels: list[tuple[str, np.ndarray, dict]] = []
    if image is not None:
        panels.append(("Image", image, {}))
    panels.append(("Ground truth", gt, {"cmap": "gray", "vmin": 0, "vmax": 1}))
    panels.append(("Argmax of the masks", labels, {"cmap": "tab10", "vmin": 0, "vmax": 9, "interpolation": "nearest"}))
    panels.append(("Binary prediction", pred_mask, {"cmap": "gray", "vmin": 0, "vmax": 1}))
    h, w = gt.shape
    fig = Figure(figsize=(3.2 * len(panels), 3.2 * h / max(w, 1) + 0.6))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, arr, kw) in zip(axes, panels, strict=True):
        ax.imshow(np.asarray(arr, dtype=float) if arr.dtype == bool else arr, **kw)
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    return _save_figure(fig, Path(path))


def write_grouped_bars(sequences: Sequence[str], series: dict[str, np.ndarray], path: str | os.PathLike,
                       title: str, ylabel: str = "score") -> Path:
    """Bar plot with one group per sequence and one bar per series (label → values (n_sequences,));
    a dashed line marks each series' mean over sequences. NaN values draw as 0 and are left out of means."""
    seqs = [str(s) if s != "" else "(root)" for s in sequences]
    n, k = len(seqs), max(len(series), 1)
    x = np.arange(n)
    fig = Figure(figsize=(max(6.0, 0.175 * k * n + 2.0), 4.0))
    ax = fig.subplots()
    width = 0.8 / k
    for i, (label, values) in enumerate(series.items()):
        v = np.asarray(values, dtype=float)
        if v.shape != (n,):
            raise ValueError(f"series {label!r}: expected {n} values (one per sequence), got shape {v.shape}")
        color = f"C{i}"
        ax.bar(x + (i - (k - 1) / 2) * width, np.nan_to_num(v), width, label=label, color=color)
        if n and np.isfinite(v).any():
            ax.axhline(np.nanmean(v), color=color, ls="--", lw=1)
    ax.set_xticks(x)
    ax.set_xticklabels(seqs, rotation=70, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return _save_figure(fig, Path(path))


def write_per_sequence_plot(per_sequence: pd.DataFrame, path: str | os.PathLike, title: str = "") -> Path:
    """Grouped bar plot of J mean and F mean per sequence (columns ``sequence``, ``J_mean``, ``F_mean``)."""
    return write_grouped_bars(per_sequence["sequence"].tolist(),
                              {"J (region)": per_sequence["J_mean"].to_numpy(dtype=float),
                               "F (boundary)": per_sequence["F_mean"].to_numpy(dtype=float)},
                              path, title or "Per-sequence J and F (dashed: mean over sequences)")


class SaveModule:
    """Writes one evaluation's outputs under ``out_dir``.

    Layout: ``scores.csv``, ``per_sequence.csv``, ``per_sequence.png``, ``settings.json``,
    ``summary.json``, ``binary/{GtMask path without extension}.png`` and
    ``figures/{GtMask path without extension}.png``.
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def binary_path(self, gt_rel_without_ext: os.PathLike | str) -> Path:
        return self.out_dir / "binary" / f"{gt_rel_without_ext}.png"

    def figure_path(self, gt_rel_without_ext: os.PathLike | str) -> Path:
        return self.out_dir / "figures" / f"{gt_rel_without_ext}.png"

    def save_mask(self, mask: np.ndarray, gt_rel_without_ext: os.PathLike | str) -> Path:
        return write_mask_png(mask, self.binary_path(gt_rel_without_ext))

    def save_figure(self, gt_rel_without_ext: os.PathLike | str, **kwargs: Any) -> Path:
        return write_frame_figure(self.figure_path(gt_rel_without_ext), **kwargs)

    def save_scores(self, scores: pd.DataFrame) -> Path:
        return write_csv(scores, self.out_dir / "scores.csv")

    def save_per_sequence(self, per_sequence: pd.DataFrame, title: str = "") -> tuple[Path, Path]:
        csv = write_csv(per_sequence, self.out_dir / "per_sequence.csv")
        png = write_per_sequence_plot(per_sequence, self.out_dir / "per_sequence.png", title)
        return csv, png

    def save_settings(self, settings: dict) -> Path:
        return write_json(settings, self.out_dir / "settings.json")

    def save_summary(self, summary: dict) -> Path:
        return write_json(summary, self.out_dir / "summary.json")
