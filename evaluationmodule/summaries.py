"""Per-sequence and overall statistics of per-frame measures, shared by ``model_eval.py``, the benchmark
evaluation (``evaluationmodule.runner``) and the authors' ``ResultsLogger``.

- **summaries** (:func:`sequence_stats`, :func:`overall_summary`, :func:`summary_table`): per sequence
  (in order of first appearance) the mean, recall and decay of each measure over its scored frames,
  then the means over all frames and over sequences.

Column vocabulary. Per-frame measures are ``jacc`` (region Jaccard), ``boundary_f``, ``bbox_jacc``,
``score`` and ``loss``; the authors' per-frame results files (``results*.csv``: ``epoch, step_label,
file_name, losses, jaccs, masks_usages``) keep their names, which :func:`frame_value` reads as
``loss`` / ``jacc`` (:data:`AUTHORS_COLUMNS`). Statistics of a measure are ``{label}_mean``,
``{label}_recall``, ``{label}_decay`` per sequence and ``{label}_{stat}_frames`` /
``{label}_{stat}_sequences`` overall, with DAVIS's labels ``J`` (of ``jacc``) and ``F`` (of
``boundary_f``) in the benchmark's tables. A frame's sequence is :func:`evaluationmodule.naming.sequence_of`.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from evaluationmodule import davis_metrics
from evaluationmodule.naming import natural_key, sequence_of
from evaluationmodule.writers import guard_cell

#: the authors' names of per-frame columns (their results files), read as this vocabulary's
AUTHORS_COLUMNS = {"jacc": "jaccs", "loss": "losses", "Flow": "file_name"}
#: statistics of a measure over a sequence's frames (davis_metrics)
STATISTICS = ("mean", "recall", "decay")


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
    table = [["level", "name", "n_frames", *SUMMARY_MEASURES, "mean_over"]]
    for s in per:
        table.append(["sequence", s["sequence"], s["n_rows"], *(f"{s[f'{m}_mean']:.6f}" for m in SUMMARY_MEASURES),
                      "frames"])
    for name, over in (("all_frames", "frames"), ("all_sequences", "sequences")):
        table.append(["overall", name, len(rows), *(f"{overall[f'{m}_mean_{over}']:.6f}" for m in SUMMARY_MEASURES),
                      over])
    # quoted where a sequence's name holds a tab or a newline, guarded where a spreadsheet would run it
    buf = io.StringIO()
    csv.writer(buf, delimiter="\t", lineterminator="\n").writerows([[guard_cell(c) for c in r] for r in table])
    return buf.getvalue()
