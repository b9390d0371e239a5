"""Evaluate saved probabilities (``*_proba.npy``) of a DataSplit against its ground truth.

Usage (from the repository root)::

    python -m evaluationmodule.Evaluation --model_base_dir /path/save_dir --data_base_dir /path/data \\
        --data_file DataSplit/Exp6_Split --step test [--model_id M] [--scoring_method db_eval_iou|bbox_jacc] \\
        [--binary_method exceptbiggest|fair]

Results go to ``{model_base_dir}/Evaluation/{model_id or 'eval'}_{split}/`` (see ``evaluationmodule/README.md``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluationmodule.BinarisationModule import BINARY_METHODS  # noqa: E402
from evaluationmodule.davis_metrics import DECAY_BINNINGS  # noqa: E402
from evaluationmodule.ScoreModule import SCORING_METHODS, EvaluationResult, evaluate  # noqa: E402

__all__ = ["build_parser", "evaluate", "main"]

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data_file", required=True,
                   help="DataSplit CSV path, or a prefix completed as {data_file}_{step}.csv")
    p.add_argument("--step", default="test", help="split used with a --data_file prefix")
    p.add_argument("--model_base_dir", required=True,
                   help="folder holding the predictions {Flow without extension}_proba.npy "
                        "(model_eval.py --save_npy's save_dir); results go to its Evaluation/ subfolder")
    p.add_argument("--data_base_dir", default=".", help="folder the DataSplit's paths are relative to")
    p.add_argument("--model_id", default=None, help="names the output folder (default 'eval')")
    p.add_argument("--scoring_method", choices=SCORING_METHODS, default=None,
                   help="per-frame score; default bbox_jacc when the split's name contains 'Moca', "
                        "db_eval_iou otherwise")
    p.add_argument("--binary_method", choices=BINARY_METHODS, default="exceptbiggest",
                   help="how L masks become one foreground mask ('fair' uses the ground truth)")
    p.add_argument("--bound_th", type=float, default=0.008,
                   help="boundary F tolerance: fraction of the image diagonal (< 1) or pixels (≥ 1)")
    p.add_argument("--decay_binning", choices=DECAY_BINNINGS, default="toolkit",
                   help="frame bins of the decay: the DAVIS toolkit's, or np.array_split into 4")
    p.add_argument("--fig_every", type=int, default=10, help="a figure every N scored frames (0: none)")
    p.add_argument("--no_masks", action="store_true", help="do not write the binary masks")
    p.add_argument("--out_dir", default=None, help="override the output folder")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def _table(result: EvaluationResult) -> str:
    s = result.summary

    def f(v: object) -> str:
        return f"{v:.4f}" if isinstance(v, float) else ("nan" if v is None else str(v))

    lines = [f"{s['split']} — {s['scoring_method']} ({s['binary_method']})",
             f"  mean_score        {f(s['mean_score'])}   ({s['scored_rows']} scored / {s['total_rows']} rows, "
             f"{s['missing_rows']} missing, {s['error_rows']} errors)",
             f"  {'':16}{'mean':>8}{'recall':>8}{'decay':>8}"]
    for name in ("J", "F"):
        lines.append(f"  {name + ' (sequences)':16}" + "".join(
            f"{f(s[f'{name}_{stat}_sequences']):>8}" for stat in ("mean", "recall", "decay")))
    lines.append(f"  J&F (sequences)   {f(s['JF_sequences'])}   J&F (frames) {f(s['JF_frames'])}")
    lines.append(f"  results: {result.out_dir}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> EvaluationResult:
    """Parse the command line, run ``evaluate`` and print a short table of the summary."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=getattr(logging, args.log_level), format="%(levelname)s %(name)s: %(message)s")
    else:
        logging.getLogger("evaluationmodule").setLevel(getattr(logging, args.log_level))
    result = evaluate(data_file=args.data_file, model_base_dir=args.model_base_dir, data_base_dir=args.data_base_dir,
                      model_id=args.model_id, step=args.step, scoring_method=args.scoring_method,
                      binary_method=args.binary_method, bound_th=args.bound_th, fig_every=args.fig_every,
                      decay_binning=args.decay_binning, out_dir=args.out_dir, save_masks=not args.no_masks,
                      progress=not args.no_progress, extra_settings=vars(args))
    print(_table(result))
    return result


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as err:  # bad input: a one-line message naming the file/argument
        sys.exit(f"error: {err}")
