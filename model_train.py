"""Train MethodeB (EM-driven unsupervised motion segmentation).

    python model_train.py                                   # built-in synthetic demo, CPU-sized
    python model_train.py --path_save_model runs/exp1 --base_dir /data --data_file DataSplit/DAVIS_D16Split \
        --flow_augmentation globalmotionfullquadlight --gpus 1
    emseg-train ...                                         # the same, once installed (pip install -e .)

(``DataSplit/DAVIS_D16Split`` has the train and val lists training reads; ``--base_dir`` is where
their DAVIS paths live.)

``--config RUN/hparams.json`` replays a run's settings (the flags given with it override them).
All logic lives in emseg/app/training.py; see `python model_train.py --help` for every flag.
"""

import logging
import sys

from emseg.app.run_checks import run_cli
from emseg.app.training_cli import parse_args


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def body() -> int:
        # inside run_cli: a setting that cannot work (ConfigError) is a one-line error, exit code 2
        args = parse_args(argv)
        # the run's module imports torch and Lightning (5-7 s): only once the flags are parsed, so that
        # --help and a mistyped flag answer at once
        from emseg.app.training import run_training

        summary = run_training(args)
        if summary["path_save_model"]:
            jacc = summary["val_jacc"]
            print(f"\nbest checkpoint: {summary['best_checkpoint']}\nlast checkpoint: {summary['last_checkpoint']}"
                  f"\nvalidation Jaccard (last epoch): {'n/a' if jacc is None else f'{jacc:.4f}'}"
                  f"\nper-frame results: {summary['path_save_model']}/results.csv")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
