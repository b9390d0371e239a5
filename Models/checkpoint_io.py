"""Safe checkpoint reading.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain Python values
only, never code. A file that needs arbitrary unpickling (the authors' PyTorch Lightning 1.2
checkpoints pickle class objects) is refused unless the caller opts in explicitly, and
``python -m Models.convert_checkpoint OLD NEW`` turns it into one that loads safely.
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import Any

import torch

logger = logging.getLogger(__name__)

TRUST_HINT = (
    "Only if you trust where it came from, load it with --trust_checkpoint (in Python: "
    "load_from_checkpoint(path, weights_only=False)), or convert it once with "
    "`python -m Models.convert_checkpoint OLD.ckpt NEW.ckpt`, which writes a checkpoint that loads safely."
)


class CheckpointError(ValueError):
    """The file is not a usable checkpoint for this model; the message says why."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint needs arbitrary unpickling and the caller did not allow it."""


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", trust: bool = False) -> dict:
    """Read a checkpoint dict; ``trust=True`` allows arbitrary unpickling (legacy files)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist or is not a file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many kinds on junk; all mean "not loadable as is"
        text = str(err)
        needs_unpickling = isinstance(err, pickle.UnpicklingError) and (
            "Weights only load failed" in text or "Unsupported global" in text)
        if not needs_unpickling:
            first = (text.splitlines() or [""])[0][:200]
            raise CheckpointError(f"{path!r} is not a readable PyTorch checkpoint: "
                                  f"{type(err).__name__}: {first}") from None
        if not trust:
            found = [ln.strip() for ln in text.splitlines() if "GLOBAL" in ln][:1]
            what = f" ({found[0][:200]})" if found else ""
            raise UnsafeCheckpointError(
                f"checkpoint {path!r} holds pickled Python objects that a safe (weights-only) load refuses"
                f"{what}. {TRUST_HINT}") from None
        logger.warning("loading %s with arbitrary unpickling, as explicitly allowed", path)
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        keys = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path!r} is not a model checkpoint: no 'state_dict' (found {keys})")
    return ckpt


def sanitise_for_safe_load(ckpt: dict) -> dict:
    """Keep what a weights-only load accepts: drop callback states keyed by class objects and any
    value that is not a tensor or plain data; the weights, hyperparameters, optimiser states,
    epoch and step are kept."""

    def plain(x: Any) -> bool:
        if isinstance(x, (torch.Tensor, str, int, float, bool, type(None))):
            return True
        if isinstance(x, (list, tuple)):
            return all(plain(v) for v in x)
        if isinstance(x, dict):
            return all(isinstance(k, (str, int)) and plain(v) for k, v in x.items())
        return False

    out: dict = {}
    for key, value in ckpt.items():
        if key == "state_dict":
            out[key] = {k: v for k, v in value.items()}  # OrderedDict → dict
        elif key == "hyper_parameters":
            out[key] = {k: v for k, v in dict(value).items() if plain(v)}
        elif plain(value):
            out[key] = value
        else:
            logger.info("dropping checkpoint entry %r (%s): not plain data", key, type(value).__name__)
    return out
