"""Evaluate a trained model on DataSplit steps: per-frame CSVs, summaries, figures, .npy, masks.

    python model_eval.py --ckpt runs/exp1/last.ckpt --save_dir runs/exp1/eval --base_dir /data \
        --data_file DataSplit/Exp6_Split --steps val test --draw_figs --save_npy --save_mask
    python model_eval.py --model ClassicalEM --save_dir runs/em --data_file ...   # the EM baseline
    emseg-eval ...                                                              # once installed

All logic lives in emseg/app/evaluation_run.py; see `python model_eval.py --help`.
"""

import logging
import sys

from emseg.app.evaluation_cli import parse_args
from emseg.app.run_checks import run_cli


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def body() -> int:
        # inside run_cli: a setting that cannot work (ConfigError) is a one-line error, exit code 2
        args = parse_args(argv)
        # the evaluation's module imports torch and Lightning (5-7 s): only once the flags are parsed, so
        # that --help and a mistyped flag answer at once
        from emseg.app.evaluation_run import run_evaluation

        results = run_evaluation(args)
        for step, res in results.items():
            if res:
                jacc = res["mean_jacc_frames"]
                print(f"{step}: {res['frames']}/{res['frames_in_split']} frames, skipped {res['skipped']}, "
                      f"mean J over frames {'n/a' if jacc is None else f'{jacc:.4f}'} → "
                      f"{args.save_dir}/results_{step}.csv")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
