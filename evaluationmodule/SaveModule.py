"""Writing the evaluation's outputs: CSV, JSON, binary masks, figures and the per-sequence plot.

The file writers are ``evaluationmodule.writers``' and the per-frame figure ``emseg.core.figures``' (the
same as ``model_eval.py``'s); they stay importable from here.

Every file is written to a temporary name in the same folder and then renamed over the target
(``os.replace``), so an interrupted run never leaves a truncated CSV, JSON or PNG behind. The
per-sequence plot uses matplotlib's object API with the Agg canvas (no pyplot).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from emseg.core.atomic_io import atomic_write
from evaluationmodule.writers import json_safe, write_csv, write_json, write_mask_png, write_npy  # noqa: F401


def write_figure(fig: Figure, path: Path, dpi: int = 100) -> Path:
    """Save a matplotlib ``Figure`` (not pyplot's: nothing to close) as PNG, atomically; returns ``path``."""
    FigureCanvasAgg(fig)
    return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=dpi, bbox_inches="tight"))


def write_frame_figure(path: str | os.PathLike, gt: np.ndarray, labels: np.ndarray, pred_mask: np.ndarray,
                       title: str, image: np.ndarray | None = None, jacc: float | None = None) -> Path:
    """The per-frame figure (``emseg.core.figures.frame_figure``, the one model_eval draws) at the ground
    truth's size: [image (I, J, 3) uint8], argmax labels (I, J), binary mask (I, J) and ground truth
    (I, J) [with its ``jacc``]."""
    import torch

    from emseg.core.figures import frame_figure, save_figure

    sample = {"Labels": torch.as_tensor(np.asarray(labels)), "PredMask": torch.as_tensor(np.asarray(pred_mask)),
              "GtMask": torch.as_tensor(np.asarray(gt, dtype=bool))}
    if image is not None:  # the loaders' layout: (3, I, J) in [-0.5, 0.5]
        sample["Image"] = torch.from_numpy(np.asarray(image).transpose(2, 0, 1).astype(np.float32) / 255.0 - 0.5)
    save_figure(frame_figure(sample, title=title, jacc=jacc), os.fspath(path))
    return Path(path)


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
    return write_figure(fig, Path(path))


def write_per_sequence_plot(per_sequence: pd.DataFrame, path: str | os.PathLike, title: str = "") -> Path:
    """Grouped bar plot of J mean and F mean per sequence (columns ``sequence``, ``J_mean``, ``F_mean``)."""
    return write_grouped_bars(per_sequence["sequence"].tolist(),
                              {"J (region)": per_sequence["J_mean"].to_numpy(dtype=float),
                               "F (boundary)": per_sequence["F_mean"].to_numpy(dtype=float)},
                              path, title or "Per-sequence J and F (dashed: mean over sequences)")


class EvaluationSaver:
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


#: the authors' name for it (their scripts and snippets import it)
SaveModule = EvaluationSaver
