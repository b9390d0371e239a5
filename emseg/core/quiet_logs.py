"""Targeted silencing of library noise in training and evaluation logs.

Each filter names one message from one library and says why it is noise here; nothing else is
hidden (no global ``warnings`` switch-off, no logger raised to ERROR). The other sources of noise are
fixed where they arise: ``LastCheckpoint`` passes ``weights_only`` to ``save_checkpoint`` (Lightning
logs a note when it is left unset), and the TensorBoard logger is built with
``default_hp_metric=False`` (no placeholder ``hp_metric = -1``).
"""

from __future__ import annotations

import glob
import logging
import os
import re
import warnings

#: Lightning advertises its cloud products through its rank-zero info logger ("💡 Tip: ...").
LIGHTNING_TIP_PREFIX = "💡 Tip:"
LIGHTNING_INFO_LOGGER = "pytorch_lightning.utilities.rank_zero"
#: torch deprecates ``LeafSpec``; Lightning 2.6's own pytree helper still builds one on every step.
LEAFSPEC_MESSAGE = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
LEAFSPEC_MODULE = r"pytorch_lightning\.utilities\._pytree"


class _DropLightningTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_TIP_PREFIX)


def quiet_library_logs() -> None:
    """Drop Lightning's product tips and the ``LeafSpec`` deprecation raised inside Lightning.

    Idempotent: calling it again installs nothing new.
    """
    lg = logging.getLogger(LIGHTNING_INFO_LOGGER)
    if not any(isinstance(f, _DropLightningTips) for f in lg.filters):
        lg.addFilter(_DropLightningTips())
    warnings.filterwarnings("ignore", message=LEAFSPEC_MESSAGE, category=FutureWarning, module=LEAFSPEC_MODULE)


def allow_run_files_in_checkpoint_dir(save_dir: str | os.PathLike, resuming: bool = False) -> bool:
    """Silence Lightning's "Checkpoint directory ... exists and is not empty" for this run's folder.

    The warning protects another run's checkpoints from being mixed with this one's. A run folder
    here always holds its lock file, ``hparams.json`` and logs before the first checkpoint, so the
    warning is dropped when the folder has no ``*.ckpt`` yet (a fresh run) or when this run resumes
    from it; a fresh run into a folder holding earlier checkpoints keeps it. Returns whether the
    warning is silenced.
    """
    path = os.path.realpath(os.path.expanduser(os.fspath(save_dir)))
    if not resuming and glob.glob(os.path.join(glob.escape(path), "*.ckpt")):
        return False
    warnings.filterwarnings("ignore", message=rf"Checkpoint directory {re.escape(path)} exists and is not empty")
    return True
