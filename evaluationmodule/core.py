"""The evaluation core that ``model_eval.py``, ``evaluationmodule.Evaluation`` and ``segment.py`` share.

One definition each of what their outputs must agree on:

- **paths** (:func:`relative_key`, :func:`without_ext`, :func:`output_stem`): a DataSplit path is made
  relative and kept below the folder it is joined to (a leading ``/`` is dropped, ``.`` components
  go, ``..`` becomes ``_up_``); a frame's outputs are ``{save_dir}/{Flow path without extension}``
  + ``_proba.npy`` / ``_binary.png`` / ``_fig.png``;
- **sequences** (:func:`sequence_of`): a frame's sequence is the name of the folder holding its
  **Flow** file, after that normalisation (``DAVIS/Flows/bear/00000.flo`` → ``bear``), and
  :data:`ROOT_SEQUENCE` (``'.'``) for a file with no folder. The Flow path is the one every row of
  both pipelines has (model_eval's ``file_name`` is it; a GtMask is optional there) and the one the
  predictions are named after. Within a sequence, frames are in natural order of their Flow path
  (:func:`natural_key`: ``2.flo`` before ``10.flo``);
- **splits** (:func:`resolve_data_file`, :func:`split_name`): ``NAME`` + step → ``NAME_{step}.csv``,
  a ``'{}'`` pattern is filled with the step, a ``.csv`` is taken as it is; the split's name is the
  CSV's stem (``DataSplit/X_test.csv`` → ``X_test``);
- **ground-truth masks**: ``decode_mask`` is ``emseg.core.masks.decode_mask`` (every value > 0 is
  foreground), re-exported here for the evaluation's callers;
- **summaries** (:func:`sequence_stats`, :func:`overall_summary`, :func:`summary_table`): per sequence
  (in order of first appearance) the mean, recall and decay of each measure over its scored frames,
  then the means over all frames and over sequences.

Column vocabulary. Per-frame measures are ``jacc`` (region Jaccard), ``boundary_f``, ``bbox_jacc``,
``score`` and ``loss``; the authors' per-frame results files (``results*.csv``: ``epoch, step_label,
file_name, losses, jaccs, masks_usages``) keep their names, which :func:`frame_value` reads as
``loss`` / ``jacc`` (:data:`AUTHORS_COLUMNS`). Statistics of a measure are ``{label}_mean``,
``{label}_recall``, ``{label}_decay`` per sequence and ``{label}_{stat}_frames`` /
``{label}_{stat}_sequences`` overall, with DAVIS's labels ``J`` (of ``jacc``) and ``F`` (of
``boundary_f``) in the benchmark's tables.

The writers of the result files are :mod:`evaluationmodule.writers`; the per-frame figure is
``emseg.core.figures.frame_figure``. This module imports nothing of the project but
``evaluationmodule.davis_metrics``, so every layer may use it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from emseg.core.datasplit import split_csv
from emseg.core.masks import decode_mask  # noqa: F401  (the ground-truth rule, re-exported)
from evaluationmodule import davis_metrics

UP = "_up_"
#: the sequence of a frame whose Flow file has no folder
ROOT_SEQUENCE = "."
#: the authors' names of per-frame columns (their results files), read as this vocabulary's
AUTHORS_COLUMNS = {"jacc": "jaccs", "loss": "losses", "Flow": "file_name"}
#: statistics of a measure over a sequence's frames (davis_metrics)
STATISTICS = ("mean", "recall", "decay")


# ----------------------------------------------------------------------------------------------
# Paths and sequences
# ----------------------------------------------------------------------------------------------
def relative_key(path: str | os.PathLike) -> PurePath:
    """A path as written in a DataSplit, made relative and kept below the folder it is joined to:
    an absolute path loses its anchor, ``.`` components go and ``..`` ones become ``_up_``."""
    p = PurePath(str(path))
    parts = p.parts[1:] if p.anchor else p.parts
    return PurePath(*[UP if part == ".." else part for part in parts if part not in (".", "")])


def without_ext(path: str | os.PathLike) -> PurePath:
    """``a/b/c.flo`` → ``a/b/c`` (relative, last suffix removed)."""
    p = relative_key(path)
    return p.with_suffix("") if p.suffix else p


#: the per-frame files of ``model_eval.py`` / ``SaveResultsFig``: ``{output_stem}{suffix}``
FRAME_SUFFIXES = {"proba": "_proba.npy", "mask": "_binary.png", "figure": "_fig.png"}


def output_stem(save_dir: str | os.PathLike, flow_rel: str) -> str:
    """``save_dir/{flow path without extension}``, always inside ``save_dir`` (the names
    ``model_eval.py`` and ``SaveResultsFig`` write and ``evaluationmodule`` reads back)."""
    return os.path.join(os.fspath(save_dir), str(without_ext(flow_rel)))


def sequence_of(flow_path: str | os.PathLike) -> str:
    """The sequence of a frame: the name of the folder holding its Flow file (normalised as
    :func:`relative_key`), :data:`ROOT_SEQUENCE` when there is none."""
    return relative_key(flow_path).parent.name or ROOT_SEQUENCE


_DIGITS = re.compile(r"(\d+)")


def natural_key(path: str) -> list:
    """Sort key putting ``frame2.png`` before ``frame10.png``."""
    return [int(t) if t.isdigit() else t for t in _DIGITS.split(str(path))]


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------
#: the CSV of one step of ``--data_file`` (``emseg.core.datasplit``, the one rule)
resolve_data_file = split_csv


def split_name(csv_path: str | os.PathLike) -> str:
    """The split's name: the CSV file's stem (``DataSplit/X_test.csv`` → ``X_test``)."""
    return Path(csv_path).stem


# ----------------------------------------------------------------------------------------------
# Summaries
# ----------------------------------------------------------------------------------------------
def frame_value(row: Mapping[str, Any], column: str) -> Any:
    """``row[column]``, or the authors' name of that column (:data:`AUTHORS_COLUMNS`); None if neither."""
    if column in row:
        return row[column]
    return row.get(AUTHORS_COLUMNS.get(column, column))


def as_number(value: Any) -> float:
    """A table cell as a float: NaN for an empty cell, None or NaN."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return float("nan")
    return float(value)


def frame_path(row: Mapping[str, Any]) -> str:
    """The path a frame is named and ordered by: its Flow (model_eval's ``file_name``); a table with
    neither orders by its ``GtMask``."""
    path = frame_value(row, "Flow")
    if path is None:
        path = row.get("GtMask")
    return "" if path is None else str(path)


def frame_sequence(row: Mapping[str, Any]) -> str:
    """A row's ``sequence`` (as written by either pipeline), else :func:`sequence_of` its Flow path."""
    seq = row.get("sequence")
    if seq is None or (isinstance(seq, float) and math.isnan(seq)):
        return sequence_of(frame_path(row))
    return str(seq)


def _statistic(values: np.ndarray, stat: str, binning: str) -> float:
    if stat == "mean":
        return davis_metrics.db_mean(values)
    if stat == "recall":
        return davis_metrics.db_recall(values)
    if stat == "decay":
        return davis_metrics.db_decay(values, binning)
    raise ValueError(f"unknown statistic {stat!r}; expected one of {list(STATISTICS)}")


def sequence_stats(rows: Iterable[Mapping[str, Any]], measures: Mapping[str, str], stats: Sequence[str] = STATISTICS,
                   scored_by: str | None = None, binning: str = "toolkit") -> list[dict[str, Any]]:
    """Per-sequence statistics of per-frame rows, one dict per sequence in order of first appearance.

    Args:
        rows: mappings with a Flow path (``Flow`` or the authors' ``file_name``) or a ``sequence``,
            and the measures' columns (empty cells are NaN).
        measures: label → column, e.g. ``{"J": "jacc", "F": "boundary_f"}``.
        stats: among ``mean`` (NaN ignored), ``recall`` (fraction > 0.5), ``decay`` (first quarter −
            last quarter, ``binning`` as ``davis_metrics.decay_bins``).
        scored_by: the column whose value makes a row scored (rows without it are left out of the
            statistics); None: every row is scored.

    Returns ``{"sequence", "n_frames" (scored rows), "n_rows", "n_unscored", "{label}_{stat}"...}``;
    frames are in natural order of their Flow path (which the decay depends on).
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(frame_sequence(row), []).append(row)
    out = []
    for seq, group in groups.items():
        group = sorted(group, key=lambda r: natural_key(frame_path(r)))
        scored = [r for r in group if scored_by is None or not math.isnan(as_number(frame_value(r, scored_by)))]
        rec: dict[str, Any] = {"sequence": seq, "n_frames": len(scored), "n_rows": len(group),
                               "n_unscored": len(group) - len(scored)}
        for label, column in measures.items():
            values = np.array([as_number(frame_value(r, column)) for r in scored], dtype=float)
            for stat in stats:
                rec[f"{label}_{stat}"] = _statistic(values, stat, binning)
        out.append(rec)
    return out


def overall_summary(rows: Iterable[Mapping[str, Any]], per_sequence: Sequence[Mapping[str, Any]],
                    measures: Mapping[str, str], stats: Sequence[str] = STATISTICS,
                    scored_by: str | None = None) -> dict[str, Any]:
    """Overall statistics: ``{label}_mean_frames`` (and ``_recall_frames`` when ``recall`` is among
    ``stats``) over all scored frames; ``{label}_{stat}_sequences``, the mean over the sequences with
    a scored frame of each one's statistic (DAVIS's "global" numbers); ``n_sequences``."""
    scored = [r for r in rows if scored_by is None or not math.isnan(as_number(frame_value(r, scored_by)))]
    out: dict[str, Any] = {}
    for label, column in measures.items():
        values = np.array([as_number(frame_value(r, column)) for r in scored], dtype=float)
        for stat in ("mean", "recall"):
            if stat in stats:
                out[f"{label}_{stat}_frames"] = _statistic(values, stat, "toolkit")
    seqs = [s for s in per_sequence if s["n_frames"] > 0]
    out["n_sequences"] = len(seqs)
    for label in measures:
        for stat in stats:
            out[f"{label}_{stat}_sequences"] = davis_metrics.db_mean([s[f"{label}_{stat}"] for s in seqs])
    return out


#: model_eval's summary TSV: the label of each mean and the per-frame column it averages
SUMMARY_MEASURES = {"loss": "loss", "jacc": "jacc"}


def summary_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """``results_{step}_summary.tsv`` (model_eval, ``ResultsLogger``): one line per sequence (the
    means over its frames), then the overall means over frames and over sequences.

    Columns ``level, name, n_frames, loss, jacc, mean_over``; NaN where a sequence has no Jaccard
    (no ground truth).
    """
    per = sequence_stats(rows, SUMMARY_MEASURES, stats=("mean",))
    overall = overall_summary(rows, per, SUMMARY_MEASURES, stats=("mean",))
    lines = ["level\tname\tn_frames\t" + "\t".join(SUMMARY_MEASURES) + "\tmean_over"]
    for s in per:
        lines.append(f"sequence\t{s['sequence']}\t{s['n_rows']}\t"
                     + "\t".join(f"{s[f'{m}_mean']:.6f}" for m in SUMMARY_MEASURES) + "\tframes")
    for name, over in (("all_frames", "frames"), ("all_sequences", "sequences")):
        lines.append(f"overall\t{name}\t{len(rows)}\t"
                     + "\t".join(f"{overall[f'{m}_mean_{over}']:.6f}" for m in SUMMARY_MEASURES) + f"\t{over}")
    return "\n".join(lines) + "\n"
