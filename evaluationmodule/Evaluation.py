"""Evaluate saved probabilities (``*_proba.npy``) of a DataSplit against its ground truth.

As the authors' Readme says, from ``evaluationmodule/``::

    python Evaluation.py -sm db_eval_iou -bm exceptbiggest -mi MyModelV8 --model_base_dir /path/to/dir \
        -df ../DataSplit/MySuperSplit_val.csv --data_base_dir /path/to/data

or from the repository root ``python -m evaluationmodule.Evaluation ...`` with the same flags. The
predictions are read from ``{model_base_dir}/{model_id}/`` (``{model_base_dir}/`` without ``--model_id``)
and the results go to ``{that folder}/evaluation_{datetime}/`` (``--out_dir`` overrides it; the
evaluation itself is ``evaluationmodule.runner.evaluate``). A run
that scores no row exits with status 1. Details: ``evaluationmodule/README.md``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The parser's choices come from modules that import neither torch nor pandas nor matplotlib, so that
# --help (and a mistyped flag) answers at once; the evaluation (evaluationmodule.runner, which imports
# them all) is imported by main.
from emseg.core.hparams import BINARY_METHODS  # noqa: E402  (= BinarisationModule.BINARY_METHODS, tested)
from evaluationmodule.davis_metrics import DECAY_BINNINGS  # noqa: E402

if TYPE_CHECKING:
    from evaluationmodule.runner import EvaluationResult

__all__ = ["build_parser", "cli", "evaluate", "main", "new_output_dir", "prediction_dir"]  # noqa: F822 (__getattr__)

#: ``ScoreModule.SCORING_METHODS``, spelt here because ScoreModule imports torch (2 s); tests/test_startup.py
#: checks that the two agree
SCORING_METHODS: tuple[str, ...] = ("db_eval_iou", "bbox_jacc")


def __getattr__(name: str) -> Any:
    """``evaluate`` and ``EvaluationResult`` (the runner's, importable from here as before) on first use."""
    if name in ("evaluate", "EvaluationResult"):
        from evaluationmodule import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data_file", "-df", required=True,
                   help="DataSplit CSV path, or a prefix completed as {data_file}_{step}.csv")
    p.add_argument("--step", default="test", help="split used with a --data_file prefix")
    p.add_argument("--model_base_dir", required=True,
                   help="folder of the models' predictions: {model_base_dir}/{model_id}/ holds the "
                        "{Flow without extension}_proba.npy files (model_eval.py --save_npy's save_dir)")
    p.add_argument("--data_base_dir", default=".", help="folder the DataSplit's paths are relative to")
    p.add_argument("--model_id", "-mi", default=None,
                   help="the model's folder under --model_base_dir (default: the predictions are in "
                        "--model_base_dir itself)")
    p.add_argument("--scoring_method", "-sm", choices=SCORING_METHODS, default=None,
                   help="per-frame score; default bbox_jacc when the split's name contains 'Moca', "
                        "db_eval_iou otherwise")
    p.add_argument("--binary_method", "-bm", choices=BINARY_METHODS, default="exceptbiggest",
                   help="how L masks become one foreground mask ('fair' uses the ground truth)")
    p.add_argument("--bound_th", type=float, default=0.008,
                   help="boundary F tolerance: fraction of the image diagonal (< 1) or pixels (≥ 1)")
    p.add_argument("--decay_binning", choices=DECAY_BINNINGS, default="toolkit",
                   help="frame bins of the decay: the DAVIS toolkit's, or np.array_split into 4")
    p.add_argument("--fig_every", type=int, default=10, help="a figure every N scored frames (0: none)")
    p.add_argument("--no_masks", action="store_true", help="do not write the binary masks")
    p.add_argument("--out_dir", default=None,
                   help="output folder (default: {predictions}/evaluation_{YYYY-mm-dd_HH-MM-SS}/)")
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


def prediction_dir(model_base_dir: str | Path, model_id: str | None) -> Path:
    """``{model_base_dir}/{model_id}/`` (the authors' layout), or ``model_base_dir`` without an id."""
    return Path(model_base_dir) / model_id if model_id else Path(model_base_dir)


def new_output_dir(pred_dir: Path) -> Path:
    """``{pred_dir}/evaluation_{datetime}/``; a second run in the same second gets a ``_2`` suffix."""
    stem = pred_dir / f"evaluation_{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    out, k = stem, 1
    while out.exists():
        k += 1
        out = stem.with_name(f"{stem.name}_{k}")
    return out


def main(argv: Sequence[str] | None = None) -> EvaluationResult:
    """Parse the command line, run ``evaluate`` and print a short table of the summary."""
    args = build_parser().parse_args(argv)
    from evaluationmodule.runner import evaluate  # torch, pandas, matplotlib: only for a real run

    if not logging.getLogger().handlers:
        logging.basicConfig(level=getattr(logging, args.log_level), format="%(levelname)s %(name)s: %(message)s")
    else:
        logging.getLogger("evaluationmodule").setLevel(getattr(logging, args.log_level))
    pred_dir = prediction_dir(args.model_base_dir, args.model_id)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"--model_base_dir/--model_id: no prediction folder {pred_dir}")
    out_dir = Path(args.out_dir) if args.out_dir is not None else new_output_dir(pred_dir)
    result = evaluate(data_file=args.data_file, model_base_dir=pred_dir, data_base_dir=args.data_base_dir,
                      model_id=args.model_id, step=args.step, scoring_method=args.scoring_method,
                      binary_method=args.binary_method, bound_th=args.bound_th, fig_every=args.fig_every,
                      decay_binning=args.decay_binning, out_dir=out_dir, save_masks=not args.no_masks,
                      progress=not args.no_progress,
                      extra_settings={**vars(args), "prediction_dir": str(pred_dir)})
    print(_table(result))
    return result


def cli(argv: Sequence[str] | None = None) -> int:
    """The command line's exit status: 0, or 1 with a one-line message when nothing could be scored
    (bad input, or no row with a usable prediction)."""
    try:
        result = main(argv)
    except (FileNotFoundError, ValueError) as err:  # bad input: a one-line message naming the file/argument
        print(f"error: {err}", file=sys.stderr)
        return 1
    s = result.summary
    if s["scored_rows"] == 0:
        print(f"error: scored 0 of {s['total_rows']} rows ({s['missing_rows']} without a prediction, "
              f"{s['error_rows']} unusable) — are the *_proba.npy files under {result.settings['model_base_dir']}? "
              f"Results: {result.out_dir}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
