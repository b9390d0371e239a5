"""The best J a segmentation of the flow can reach on a synthetic split (its motion-support ceiling).

In the built-in synthetic data, as in a real flow estimator's output, an object's motion bleeds
0-2 px over its boundary. A perfect motion segmentation returns the region that moves with an
object (the *motion support*), not the object: the Jaccard index of the support with the ground
truth is therefore the ceiling of every method that segments the flow, learned or not. This
command regenerates the split (the generator is deterministic), checks it against the masks on
disk, and scores the support frame by frame, like ``model_eval.py`` scores a model.

Usage (from the repository root)::

    python -m emseg.app.motion_ceiling --data_file data/synthetic/synthetic --steps test \\
        [--compare model=runs/m/eval/results_test.csv em=runs/em/results_test.csv] [--save_dir DIR]

``--compare`` puts methods' per-frame results (``model_eval.py``'s ``results_{step}.csv``; every
frame of the split must be there) beside the ceiling: mean J, gap to the ceiling, frames above it.
With ``--save_dir`` it writes ``ceiling_{step}.csv`` (file_name, sequence, jaccs) and, with
``--compare``, ``ceiling_{step}_per_sequence.csv`` and a bar plot ``ceiling_{step}_per_sequence.png``.

``python -m evaluationmodule.motion_ceiling`` (the module's former path) runs the same command. An
application module: it combines the synthetic data (``csvflowdatamodule``) with the evaluation's scores.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from csvflowdatamodule import synthetic
from emseg.core.masks import is_foreground
from evaluationmodule.naming import sequence_of
from evaluationmodule.SaveModule import write_grouped_bars
from evaluationmodule.scoring import jaccard
from evaluationmodule.summaries import sequence_stats
from evaluationmodule.writers import unguard_frame, write_csv

logger = logging.getLogger(__name__)
SPLITS = synthetic.SPLITS


def motion_support(out_dir: str | os.PathLike, name: str,
                   split: str = "test") -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Regenerate one split of a synthetic DataSplit with each frame's motion support.

    Returns [(Flow path as in the CSV, ground-truth mask (I, J) bool, motion support (I, J) bool)]
    in CSV order. The support is the best a segmentation of the flow can do: the region that moves
    with an object (``synthetic.generate_sequence(..., with_support=True)``). Raises ``ValueError``
    if the files on disk are not what the generator makes from the split's ``NAME_info.json``
    (another version or seed, or edited masks).
    """
    if split not in synthetic.SPLITS:
        raise ValueError(f"split must be one of {synthetic.SPLITS}, got {split!r}")
    out = Path(out_dir)
    info_path = synthetic._info_path(out, name)
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{info_path}: not a synthetic DataSplit's info file ({exc})") from None
    if info.get("generator_version") != synthetic.GENERATOR_VERSION:
        raise ValueError(f"{info_path}: generator version {info.get('generator_version')!r}, this code makes "
                         f"version {synthetic.GENERATOR_VERSION}; regenerate the split")
    size, fps, n = tuple(info["img_size"]), int(info["frames_per_sequence"]), int(info[f"n_{split}"])
    with open(out / f"{name}_{split}.csv", newline="") as fh:
        flows = [row["Flow"] for row in csv.DictReader(fh)]
    if len(flows) != n:
        raise ValueError(f"{out / f'{name}_{split}.csv'}: {len(flows)} rows, {n} expected from the info file")
    bases = synthetic._Bases(size)
    result = []
    for k in range(-(-n // fps)):
        n_frames = min(fps, n - k * fps)
        rng = synthetic._sequence_rng(info["seed"], split, k)
        for t, (_, gt, support) in enumerate(synthetic.generate_sequence(rng, size, n_frames, bases,
                                                                         with_support=True)):
            flow_path = flows[k * fps + t]
            mask_path = out / f"Masks/{split}_seq_{k:03d}/{t:05d}.png"
            stored = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
            if stored is None or stored.shape != gt.shape or not np.array_equal(is_foreground(stored), gt):
                raise ValueError(f"{mask_path}: differs from the regenerated mask (another seed or generator, "
                                 f"or an edited file); cannot give its motion support")
            result.append((flow_path, gt, support))
    return result


def ceiling_scores(data_file: str | os.PathLike, step: str = "test") -> pd.DataFrame:
    """Per-frame J of the motion support against the ground truth, for split ``step`` of the
    synthetic DataSplit whose prefix is ``data_file`` (``DIR/NAME``: ``DIR/NAME_info.json``).

    Returns a frame per row: ``file_name`` (the CSV's Flow path), ``sequence``, ``jaccs``.
    """
    prefix = Path(data_file)
    rows = [{"file_name": flow, "sequence": sequence_of(flow), "jaccs": jaccard(gt, support)}
            for flow, gt, support in motion_support(prefix.parent, prefix.name, step)]
    return pd.DataFrame(rows, columns=["file_name", "sequence", "jaccs"])


def compare_to_ceiling(ceiling: pd.DataFrame, results: dict[str, str | os.PathLike]) -> pd.DataFrame:
    """Per-frame J of the ceiling and of each method, aligned on ``file_name``.

    ``ceiling`` is :func:`ceiling_scores`' table; ``results`` maps a label to a per-frame CSV with
    columns ``file_name`` and ``jaccs`` (``model_eval.py``'s ``results_{step}.csv``). Returns columns
    ``file_name``, ``sequence``, ``ceiling`` and one per label. Raises ``ValueError`` naming the CSV
    if it lacks a frame of the split or holds a frame twice.
    """
    table = ceiling.rename(columns={"jaccs": "ceiling"})
    for label, path in results.items():
        if label in table.columns:
            raise ValueError(f"--compare label {label!r} is used twice or is reserved")
        try:
            res = unguard_frame(pd.read_csv(path, usecols=["file_name", "jaccs"]))
        except (OSError, ValueError) as exc:
            raise ValueError(f"--compare {label}={path}: not a per-frame results CSV with file_name and jaccs "
                             f"({exc})") from None
        if res["file_name"].duplicated().any():
            dup = res.loc[res["file_name"].duplicated(), "file_name"].iloc[0]
            raise ValueError(f"--compare {label}={path}: frame {dup} appears more than once")
        missing = sorted(set(table["file_name"]) - set(res["file_name"]))
        if missing:
            raise ValueError(f"--compare {label}={path}: {len(missing)} frame(s) of the split have no result, "
                             f"e.g. {missing[0]}")
        table = table.merge(res.rename(columns={"jaccs": label}), on="file_name", how="left", validate="1:1")
    return table


def _parse_compare(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"motion_ceiling: --compare expects LABEL=CSV, got {item!r}")
        out[label] = path
    return out


PROG = "python -m emseg.app.motion_ceiling"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The command line's parser; ``prog`` is the command its help shows (the old module path passes its own)."""
    p = argparse.ArgumentParser(prog=prog,
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--data_file", required=True,
                   help="prefix DIR/NAME of a split written by csvflowdatamodule.synthetic")
    p.add_argument("--steps", nargs="+", default=["test"], choices=list(SPLITS))
    p.add_argument("--compare", nargs="+", default=[], metavar="LABEL=CSV",
                   help="methods' per-frame results to set beside the ceiling (one step at a time)")
    p.add_argument("--save_dir", help="write ceiling_{step}.csv (and the comparison table and plot) here")
    return p


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> dict[str, float]:
    """Score the ceiling of each ``--steps`` split (and ``--compare``'s methods beside it); print the
    table; return the means (``{step: J}``, and ``{"step/label": J}`` per compared method)."""
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    compare = _parse_compare(args.compare)
    if compare and len(args.steps) != 1:
        raise SystemExit("motion_ceiling: --compare takes one --steps at a time (results files are per split)")
    means = {}
    for step in args.steps:
        try:
            scores = ceiling_scores(args.data_file, step)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"motion_ceiling: --data_file {args.data_file}: {exc}") from None
        means[step] = float(scores["jaccs"].mean())
        bleed = int((scores["jaccs"] < 1).sum())
        print(f"{step}: {len(scores)} frames, motion-support ceiling J = {means[step]:.4f} "
              f"({bleed} frames where the motion bleeds over the object boundary)")
        if args.save_dir:
            path = write_csv(scores, Path(args.save_dir) / f"ceiling_{step}.csv")
            logger.info("per-frame ceiling: %s", path)
        if not compare:
            continue
        try:
            table = compare_to_ceiling(scores, compare)
        except ValueError as exc:
            raise SystemExit(f"motion_ceiling: {exc}") from None
        print(f"{'method':<16} {'mean J':>8} {'ceiling - J':>12} {'frames above ceiling':>21}")
        for label in compare:
            means[f"{step}/{label}"] = float(table[label].mean())
            above = int((table[label] > table["ceiling"]).sum())
            print(f"{label:<16} {means[f'{step}/{label}']:>8.4f} {means[step] - means[f'{step}/{label}']:>12.4f} "
                  f"{above:>21d}")
        if args.save_dir:
            methods = ["ceiling", *compare]
            per = sequence_stats(table.to_dict("records"), {c: c for c in methods}, stats=("mean",))
            per_seq = pd.DataFrame([{"sequence": r["sequence"], **{c: r[f"{c}_mean"] for c in methods}} for r in per])
            write_csv(per_seq, Path(args.save_dir) / f"ceiling_{step}_per_sequence.csv")
            png = write_grouped_bars(per_seq["sequence"].tolist(),
                                     {c: per_seq[c].to_numpy() for c in methods},
                                     Path(args.save_dir) / f"ceiling_{step}_per_sequence.png",
                                     f"{step}: J per sequence against the motion-support ceiling "
                                     "(dashed: mean over sequences)", ylabel="J")
            logger.info("per-sequence comparison: %s", png)
    return means


if __name__ == "__main__":
    main()
