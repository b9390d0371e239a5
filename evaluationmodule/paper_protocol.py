"""The paper's evaluation protocol, and its table beside the published row.

The published numbers (Meunier, Badoual, Bouthemy, TPAMI 2022; the authors' model trained on
FlyingThings3D flows) are Jaccard J in %: DAVIS2016 69.3, SegTrackV2 55.5, FBMS59 57.8. They come
from this protocol, which :func:`run_protocol` applies exactly:

1. the predicted probabilities (``model_eval.py --save_npy``) are resized to each ground truth's size
   (bilinear, align_corners=False), then binarised with ``exceptbiggest`` (every pixel whose argmax is
   not the frame's most frequent label) and scored with the region Jaccard (``db_eval_iou``) —
   ``evaluationmodule.runner.evaluate`` does this, frame by frame;
2. the ground truth is the benchmark's: SegTrackV2's objects merged into one foreground, FBMS59 on its
   annotated frames only (the DataSplits ``python -m csvflowdatamodule.datasets prepare`` writes);
3. J is averaged as the paper did (:data:`PROTOCOLS`, each with its source):

   - **DAVIS2016**: the authors' README sends DAVIS scores to the official DAVIS evaluation, which
     leaves out the first and last frame of each sequence and reports the **mean over sequences** of
     each sequence's mean J;
   - **SegTrackV2, FBMS59**: the authors' evaluation module (``SaveModule.summarise_csv``) reports the
     **mean over frames** of the per-frame J (every annotated frame of the split).

The other convention is computed beside it and labelled, because the two differ by several points
(per-frame and per-sequence means weigh long sequences differently): a "62.8 instead of 68.3" is
usually this. Rows without a prediction are counted (``missing_rows``) and flagged in the table,
never silently dropped.

Command line::

    python -m evaluationmodule.paper_protocol evaluate --dataset davis2016 --predictions DIR \\
        --data_base_dir ROOT --data_file ROOT/DataSplit/DAVIS16 --step val --out OUT [--label NAME]
    python -m evaluationmodule.paper_protocol table OUT1/paper_protocol.json OUT2/paper_protocol.json ...

``evaluate`` writes ``OUT/`` (the evaluation module's files: ``scores.csv``, ``per_sequence.csv``, …)
and ``OUT/paper_protocol.json``, and prints the dataset's row; ``--scores FILE`` recomputes the
protocol from an existing ``scores.csv`` instead. ``table`` prints the Table of several datasets.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from emseg.core.datasplit import split_csv

logger = logging.getLogger(__name__)

RESULT_FILE = "paper_protocol.json"


@dataclass(frozen=True)
class Protocol:
    """How one benchmark's J is averaged in the paper.

    ``averaging``: ``sequences`` (mean over sequences of each sequence's mean) or ``frames`` (mean over
    all frames); ``exclude_ends``: leave out each sequence's first and last frame (the DAVIS toolkit);
    ``published``: the paper's J (%), None where it reports none; ``source``: where the rule comes from.
    """

    dataset: str
    column: str
    averaging: str
    exclude_ends: bool
    published: float | None
    source: str


PROTOCOLS: dict[str, Protocol] = {
    "davis2016": Protocol("davis2016", "DAVIS2016", "sequences", True, 69.3,
                          "the authors' README: DAVIS scores from the official DAVIS evaluation (first and last "
                          "frame of each sequence left out, J mean over sequences)"),
    "segtrackv2": Protocol("segtrackv2", "SegTrackV2", "frames", False, 55.5,
                           "the authors' evaluation module (SaveModule.summarise_csv): mean of the per-frame J"),
    "fbms59": Protocol("fbms59", "FBMS59", "frames", False, 57.8,
                       "the authors' evaluation module (SaveModule.summarise_csv): mean of the per-frame J "
                       "over the annotated frames"),
    "davis2017": Protocol("davis2017", "DAVIS2017", "sequences", True, None,
                          "the official DAVIS evaluation's convention (not in the paper)"),
}
#: the paper's Table, in its column order
TABLE_DATASETS = ("davis2016", "segtrackv2", "fbms59")
LABELS = {"frames": "per-frame mean", "sequences": "per-sequence mean"}


class ProtocolError(ValueError):
    """Input the protocol cannot use (the message names the file or argument)."""


def _mean(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def _natural_key(path: str) -> list:
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", path)]


def _path(row: Mapping[str, Any]) -> str:
    for col in ("Flow", "GtMask", "file_name"):
        v = row.get(col)
        if isinstance(v, str) and v:
            return v
    return ""


def _sequence(row: Mapping[str, Any]) -> str:
    """The row's ``sequence`` (the evaluation's), else the folder of its Flow file (``.`` without one)."""
    seq = row.get("sequence")
    if isinstance(seq, str) and seq:
        return seq
    parent = PurePosixPath(_path(row).replace("\\", "/")).parent.name
    return parent or "."


def _number(v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return x


def protocol_scores(rows: Iterable[Mapping[str, Any]], dataset: str) -> dict[str, Any]:
    """The paper's J of one benchmark from per-frame rows (``scores.csv`` of ``runner.evaluate``).

    Args:
        rows: mappings with ``Flow`` (or ``sequence``), ``status`` (``ok`` for a scored frame) and
            ``jacc`` (J in [0, 1]).
        dataset: a key of :data:`PROTOCOLS`.

    Returns a dict: ``J`` (%, the paper's averaging), ``J_other`` (%, the other one) with
    ``averaging`` / ``other_averaging`` (``per-frame mean`` | ``per-sequence mean``), ``J_frames`` and
    ``J_sequences`` (%), ``J_frames_all`` (% over every scored frame, ends included), ``n_frames``,
    ``n_sequences``, ``n_excluded_ends``, ``scored_rows``, ``missing_rows``, ``error_rows``,
    ``total_rows``, ``published``, ``delta`` (J − published), ``source``.
    """
    if dataset not in PROTOCOLS:
        raise ProtocolError(f"--dataset must be one of {list(PROTOCOLS)}, got {dataset!r}")
    proto = PROTOCOLS[dataset]
    rows = list(rows)
    by_seq: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_seq.setdefault(_sequence(r), []).append(r)
    status = [str(r.get("status", "")) for r in rows]
    kept: dict[str, list[float]] = {}
    all_scored: list[float] = []
    n_excluded = 0
    for seq, group in by_seq.items():
        group = sorted(group, key=lambda r: _natural_key(_path(r)))
        ends = {0, len(group) - 1} if proto.exclude_ends else set()
        for i, r in enumerate(group):
            if str(r.get("status", "")) != "ok":
                continue
            j = _number(r.get("jacc"))
            if math.isnan(j):
                continue
            all_scored.append(j)
            if i in ends:
                n_excluded += 1
                continue
            kept.setdefault(seq, []).append(j)
    frames = [j for js in kept.values() for j in js]
    j_frames = 100 * _mean(frames)
    j_sequences = 100 * _mean([_mean(js) for js in kept.values()])
    paper, other = ("sequences", "frames") if proto.averaging == "sequences" else ("frames", "sequences")
    value = {"frames": j_frames, "sequences": j_sequences}
    out = {
        "dataset": dataset, "column": proto.column, "J": value[paper], "averaging": LABELS[paper],
        "J_other": value[other], "other_averaging": LABELS[other], "J_frames": j_frames, "J_sequences": j_sequences,
        "J_frames_all": 100 * _mean(all_scored), "exclude_ends": proto.exclude_ends, "n_excluded_ends": n_excluded,
        "n_frames": len(frames), "n_sequences": len(kept), "scored_rows": len(all_scored),
        "missing_rows": sum(s == "missing" for s in status), "error_rows": sum(s.startswith("error") for s in status),
        "total_rows": len(rows), "published": proto.published,
        "delta": None if proto.published is None or math.isnan(value[paper]) else value[paper] - proto.published,
        "source": proto.source,
    }
    return out


def _fmt(v: float | None) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


def format_table(results: Sequence[Mapping[str, Any]], label: str = "this run") -> str:
    """The paper's Table (J %, one column per benchmark) with the published row above ours.

    ``results``: :func:`protocol_scores` dicts (optionally with a ``label``). Rows: the published
    numbers, ours with the paper's averaging, ours with the other averaging (labelled in the cell).
    A value over an incomplete split (rows without a prediction or unusable) is marked ``*``.
    """
    by_ds = {r["dataset"]: r for r in results}
    datasets = [d for d in TABLE_DATASETS if d in by_ds] + [d for d in by_ds if d not in TABLE_DATASETS]
    label = next((r["label"] for r in results if r.get("label")), label)
    head = "| J (%) | " + " | ".join(PROTOCOLS[d].column for d in datasets) + " |"
    sep = "|---|" + "---|" * len(datasets)
    pub = "| EM, published (TPAMI 2022) | " + " | ".join(_fmt(PROTOCOLS[d].published) for d in datasets) + " |"

    def flag(r: Mapping[str, Any]) -> str:
        return "*" if r["missing_rows"] or r["error_rows"] else ""

    ours = f"| {label} (paper's averaging) | " + " | ".join(
        f"{_fmt(by_ds[d]['J'])}{flag(by_ds[d])} ({by_ds[d]['averaging']})" for d in datasets) + " |"
    other = f"| {label} (other averaging) | " + " | ".join(
        f"{_fmt(by_ds[d]['J_other'])}{flag(by_ds[d])} ({by_ds[d]['other_averaging']})" for d in datasets) + " |"
    lines = [head, sep, pub, ours, other]
    notes = []
    for d in datasets:
        r = by_ds[d]
        ends = f", first/last frame of each sequence left out ({r['n_excluded_ends']} frames)" if r["exclude_ends"] \
            else ""
        notes.append(f"{PROTOCOLS[d].column}: {r['n_frames']} frames, {r['n_sequences']} sequences{ends}; "
                     f"{r['missing_rows']} missing and {r['error_rows']} unusable of {r['total_rows']} rows.")
    if any(flag(by_ds[d]) for d in datasets):
        notes.append("* the split is incomplete: the mean is over the scored frames only.")
    return "\n".join(lines) + "\n\n" + "\n".join(notes)


def run_protocol(dataset: str, predictions: str | os.PathLike, data_file: str | os.PathLike,
                 data_base_dir: str | os.PathLike, out: str | os.PathLike, step: str = "test",
                 label: str | None = None, save_masks: bool = False, progress: bool = True) -> dict[str, Any]:
    """Score the predictions of one benchmark with the protocol and write ``out/paper_protocol.json``.

    ``predictions``: the folder of ``*_proba.npy`` files (``model_eval.py --save_dir`` of the split);
    ``data_file``: the DataSplit (prefix or CSV). Returns :func:`protocol_scores`'s dict (plus
    ``label``, ``out_dir``, ``data_file``).
    """
    from evaluationmodule.runner import evaluate

    if dataset not in PROTOCOLS:
        raise ProtocolError(f"--dataset must be one of {list(PROTOCOLS)}, got {dataset!r}")
    if not Path(predictions).is_dir():
        raise ProtocolError(f"--predictions: no folder {predictions}")
    result = evaluate(data_file, predictions, data_base_dir, model_id=label, step=step,
                      scoring_method="db_eval_iou", binary_method="exceptbiggest", fig_every=0, out_dir=out,
                      save_masks=save_masks, progress=progress,
                      extra_settings={"protocol": asdict(PROTOCOLS[dataset])})
    return _finish(result.scores.to_dict("records"), dataset, out, label,
                   str(split_csv(data_file, step)))


def _finish(rows: list[dict[str, Any]], dataset: str, out: str | os.PathLike, label: str | None,
            data_file: str) -> dict[str, Any]:
    from evaluationmodule.writers import write_json

    res = protocol_scores(rows, dataset)
    res.update(label=label, out_dir=str(out), data_file=data_file)
    write_json(res, Path(out) / RESULT_FILE)
    return res


def load_results(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            p = p / RESULT_FILE
        if not p.is_file():
            raise ProtocolError(f"no protocol result {p} (run `paper_protocol evaluate` first)")
        try:
            out.append(json.loads(p.read_text()))
        except ValueError as e:
            raise ProtocolError(f"{p}: not a protocol result ({e})") from e
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluationmodule.paper_protocol",
                                description="The paper's evaluation protocol and its Table.")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("evaluate", help="score one benchmark's predictions with the paper's protocol")
    e.add_argument("--dataset", required=True, choices=list(PROTOCOLS))
    e.add_argument("--predictions", help="folder of the *_proba.npy files (model_eval.py --save_dir)")
    e.add_argument("--data_file", help="the DataSplit (prefix or CSV)")
    e.add_argument("--data_base_dir", default=".", help="folder the DataSplit's paths are relative to")
    e.add_argument("--step", default="test", help="split used with a prefix (default test)")
    e.add_argument("--out", required=True, help="output folder (the evaluation's files and paper_protocol.json)")
    e.add_argument("--scores", help="recompute from this scores.csv instead of evaluating again")
    e.add_argument("--label", help="the run's name in the table")
    e.add_argument("--save_masks", action="store_true", help="write the binary masks")
    e.add_argument("--no_progress", action="store_true")
    t = sub.add_parser("table", help="print the Table of several protocol results")
    t.add_argument("results", nargs="+", help="paper_protocol.json files (or their folders)")
    t.add_argument("--label", default="this run", help="our rows' name when the results have none")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: 0, or 2 with a one-line message on bad input."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "table":
            print(format_table(load_results(args.results), args.label))
            return 0
        if args.scores:
            import pandas as pd

            from evaluationmodule.writers import unguard_frame

            if not Path(args.scores).is_file():
                raise ProtocolError(f"--scores: no file {args.scores}")
            rows = unguard_frame(pd.read_csv(args.scores)).to_dict("records")
            res = _finish(rows, args.dataset, args.out, args.label, str(args.scores))
        else:
            if not args.predictions or not args.data_file:
                raise ProtocolError("evaluate needs --predictions and --data_file (or --scores)")
            res = run_protocol(args.dataset, args.predictions, args.data_file, args.data_base_dir, args.out,
                               args.step, args.label, args.save_masks, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as err:
        print(f"paper_protocol: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(format_table([res], args.label or "this run"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
