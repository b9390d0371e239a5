"""Checks of a run's settings made before anything is allocated or written, and the one-line
errors the entry scripts print for bad input.

torch is imported only by the checks that need it, so that importing this module (every entry
script does, for ``run_cli``) leaves ``--help`` fast."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from typing import Any

from emseg.core.hparams import ConfigError

logger = logging.getLogger(__name__)

#: the largest network accepted: 4e9 parameters is 16 GB of float32 weights, 64 GB with Adam's
#: moments and the gradients, far beyond any U-Net this model needs (the paper's has 5e8)
MAX_PARAMETERS = 4_000_000_000


def min_input_side(num_layers: int) -> int:
    """Smallest image side the U-Net takes: it pools ``num_layers - 1`` times and its deepest
    level still needs 2 pixels per side (reflect padding, instance normalisation)."""
    return 2 ** int(num_layers)


def network_parameters(hp: Mapping[str, Any]) -> int:
    """Parameters of the U-Net these hyperparameters describe, counted on the meta device (no memory)."""
    import torch

    from Models.LitBackbone import Backbone

    with torch.device("meta"):
        net = Backbone(inputs=hp.get("inputs", ["Flow"]), features_backbone=int(hp.get("features_backbone", 32)),
                          num_layers=int(hp["unet.num_layers"]), features_start=int(hp["unet.features_start"]),
                          bilinear=bool(hp.get("bilinear", False)),
                          inner_normalisation=hp.get("inner_normalisation", "InstanceNorm"),
                          padding_mode=hp.get("padding_mode", "reflect"))
    return sum(p.numel() for p in net.parameters())


def check_positive(hp: Mapping[str, Any], names: Mapping[str, str]) -> None:
    """Every ``hp[key]`` (flag ``names[key]``) must be an integer >= 1."""
    for key, flag in names.items():
        if key in hp and hp[key] is not None and int(hp[key]) < 1:
            raise ConfigError(f"{flag} {hp[key]}: must be at least 1")


def check_img_size(img_size: Any, num_layers: int | None = None) -> None:
    if img_size is None:
        return
    h, w = (int(s) for s in img_size)
    if h < 1 or w < 1:
        raise ConfigError(f"--img_size {h} {w}: both sides must be positive (H W, e.g. 128 224)")
    if num_layers is not None:
        m = min_input_side(num_layers)
        if h < m or w < m:
            raise ConfigError(f"--img_size {h} {w}: a U-Net of {num_layers} levels (--unet.num_layers) needs both "
                              f"sides >= {m}; raise --img_size or lower --unet.num_layers")


def check_network(hp: Mapping[str, Any]) -> None:
    """Refuse a network too large to allocate, before allocating it."""
    check_positive(hp, {"unet.num_layers": "--unet.num_layers", "unet.features_start": "--unet.features_start",
                        "features_backbone": "--features_backbone", "nAffineMasks": "--nAffineMasks/-L"})
    if int(hp["unet.num_layers"]) > 12:
        raise ConfigError(f"--unet.num_layers {hp['unet.num_layers']}: at most 12 levels (the paper uses 7)")
    n = network_parameters(hp)
    if n > MAX_PARAMETERS:
        raise ConfigError(
            f"--unet.features_start {hp['unet.features_start']} with --unet.num_layers {hp['unet.num_layers']} "
            f"makes a network of {n:.3g} parameters ({4 * n / 1e9:.3g} GB of weights alone), above the "
            f"{MAX_PARAMETERS:.0e} accepted; the paper's is 64 with 7 levels")


def warn_single_mask(n_masks: int) -> None:
    if int(n_masks) == 1:
        logger.warning("-L 1: with a single mask the binary foreground (everything but the largest mask) is "
                       "always empty, so every Jaccard J is 0; use -L 2 or more to segment")


def check_writable_dir(path: str, flag: str) -> None:
    """Create ``path`` if needed and prove a file can be written there."""
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_probe.", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise ConfigError(f"{flag} {path}: cannot write there ({err.strerror or err})") from None


def check_track_frames(track_frames: int, min_motion: float) -> None:
    """``--track_frames N`` > 1 judges the significance test over tracks, so it needs ``--min_motion`` > 0."""
    if track_frames > 1 and not min_motion:
        raise ConfigError("--track_frames judges the significance test over tracks: it needs --min_motion > 0")


def check_cuda(accelerator: str | None) -> None:
    if str(accelerator).lower() not in ("gpu", "cuda"):
        return  # no need to import torch (2 s) to accept the CPU
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"--accelerator {accelerator}: no CUDA GPU is visible on this machine; "
                          "use --accelerator cpu (or auto)")


def input_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or settings (their messages name the file or flag), as opposed
    to bugs: the entry scripts print these as one line instead of a traceback."""
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    from emseg.app.results import RunLockError
    from Models.LitSegmentationModel import NonFiniteLossError

    return (ValueError, OSError, RunLockError, NonFiniteLossError, MisconfigurationException)


def one_line(err: BaseException) -> str:
    """The line of an error's message that says what is wrong."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    if len(lines) > 1 and "Original Traceback" in str(err):  # re-raised from a DataLoader worker
        return lines[-1]
    return lines[0]


def run_cli(body: Any) -> int:
    """Run ``body()`` (an entry script's work); bad input exits 2 with ``error: <one line>``."""
    import sys

    try:
        return body()
    except Exception as err:
        # input_error_types() imports Lightning and the models: only once an error is there to classify
        # (an ``except input_error_types()`` clause would be evaluated for the SystemExit of --help too)
        if not isinstance(err, input_error_types()):
            raise
        logger.debug("the error in full", exc_info=True)
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
