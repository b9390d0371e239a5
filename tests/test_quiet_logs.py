"""Training logs carry no library noise: no Lightning tips, no ``weights_only`` note, no ``LeafSpec``
deprecation, no ``hp_metric = -1`` placeholder, no "checkpoint directory exists" warning on a fresh run."""

from __future__ import annotations

import logging
import warnings

import pytest

from emseg.core.quiet_logs import LIGHTNING_INFO_LOGGER, allow_run_files_in_checkpoint_dir, quiet_library_logs
from tests.conftest import run_cli

NOISE = ("Tip:", "litlogger", "litmodels", "weights_only", "LeafSpec", "hp_metric", "exists and is not empty")
SMALL = ["--img_size", "64", "112", "--unet.num_layers", "3", "--unet.features_start", "8", "--batch_size", "4",
         "--num_workers", "0", "--accelerator", "cpu", "--max_epochs", "1", "--limit_train_batches", "2",
         "--limit_val_batches", "2", "--log_every_n_steps", "1"]


@pytest.mark.slow
def test_a_short_training_run_logs_no_library_noise(tiny_split, tmp_path):
    base, prefix = tiny_split
    run = tmp_path / "run"
    cmd = ["model_train.py", "--path_save_model", str(run), "--base_dir", base, "--data_file", prefix,
           "--logger", "tensorboard", *SMALL]
    proc = run_cli(cmd)
    log = proc.stderr + proc.stdout
    assert "best checkpoint" in proc.stdout and (run / "last.ckpt").is_file()
    assert [n for n in NOISE if n in log] == [], log[-4000:]
    events = list((run / "logs").rglob("events.out.tfevents.*"))
    assert events and not [e for e in events if b"hp_metric" in e.read_bytes()]


def test_filters_are_targeted():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_library_logs()
        quiet_library_logs()  # idempotent
        from pytorch_lightning.utilities._pytree import _tree_flatten

        _tree_flatten(1.0)  # builds a LeafSpec inside Lightning: the deprecation is dropped
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning, stacklevel=1)  # not Lightning's
    assert [str(w.message) for w in seen] == ["`isinstance(treespec, LeafSpec)` is deprecated"]
    lg = logging.getLogger(LIGHTNING_INFO_LOGGER)
    assert len(lg.filters) == 1
    tip = logging.LogRecord(lg.name, logging.INFO, __file__, 1, "💡 Tip: try installing something", None, None)
    other = logging.LogRecord(lg.name, logging.INFO, __file__, 1, "GPU available: False", None, None)
    assert not lg.filter(tip) and lg.filter(other)


def test_checkpoint_dir_warning_only_for_a_fresh_run(tmp_path):
    def warned(path) -> bool:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            silenced = allow_run_files_in_checkpoint_dir(path, resuming=resuming)
            warnings.warn(f"Checkpoint directory {path.resolve()} exists and is not empty.", UserWarning,
                          stacklevel=1)
            warnings.warn(f"Checkpoint directory {tmp_path.resolve()}/other exists and is not empty.", UserWarning,
                          stacklevel=1)
        assert len(seen) >= 1  # another folder's warning is never touched
        return silenced, len(seen) == 2

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "hparams.json").write_text("{}")
    resuming = False
    assert warned(fresh) == (True, False)
    (fresh / "epoch=0.ckpt").write_bytes(b"")
    assert warned(fresh) == (False, True)  # earlier checkpoints: the warning stays
    resuming = True
    assert warned(fresh) == (True, False)  # resuming this run: its own checkpoints
