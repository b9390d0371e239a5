"""The best J a segmentation of the flow can reach on a synthetic split (its motion-support ceiling).

In the built-in synthetic data, as in a real flow estimator's output, an object's motion bleeds
0-2 px over its boundary. A perfect motion segmentation returns the region that moves with an
object (the *motion support*), not the object: the Jaccard index of the support with the ground
truth is therefore the ceiling of every method that segments the flow, learned or not. This
command regenerates the split (the generator is deterministic), checks it against the masks on
disk, and scores the support frame by frame, like ``model_eval.py`` scores a model.

Usage (from the repository root)::

    python -m evaluationmodule.motion_ceiling --data_file data/synthetic/synthetic --steps test \\
        [--save_dir DIR]

With ``--save_dir`` it writes ``ceiling_{step}.csv`` (file_name, sequence, jaccs).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from csvflowdatamodule.synthetic import SPLITS, motion_support  # noqa: E402
from evaluationmodule.DataLoadingModule import sequence_of  # noqa: E402
from evaluationmodule.SaveModule import write_csv  # noqa: E402
from evaluationmodule.ScoreModule import jaccard  # noqa: E402

logger = logging.getLogger(__name__)


def ceiling_scores(data_file: str | os.PathLike, step: str = "test") -> pd.DataFrame:
    """Per-frame J of the motion support against the ground truth, for split ``step`` of the
    synthetic DataSplit whose prefix is ``data_file`` (``DIR/NAME``: ``DIR/NAME_info.json``).

    Returns a frame per row: ``file_name`` (the CSV's Flow path), ``sequence``, ``jaccs``.
    """
    prefix = Path(data_file)
    rows = [{"file_name": flow, "sequence": sequence_of(flow), "jaccs": jaccard(gt, support)}
            for flow, gt, support in motion_support(prefix.parent, prefix.name, step)]
    return pd.DataFrame(rows, columns=["file_name", "sequence", "jaccs"])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluationmodule.motion_ceiling",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--data_file", required=True,
                   help="prefix DIR/NAME of a split written by csvflowdatamodule.synthetic")
    p.add_argument("--steps", nargs="+", default=["test"], choices=list(SPLITS))
    p.add_argument("--save_dir", help="write ceiling_{step}.csv here")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
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
    return means


if __name__ == "__main__":
    main()
