"""Safe checkpoint reading.

Every checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain Python values
only, never code. The authors' PyTorch Lightning 1.2 checkpoints also hold class *references*
(``callbacks`` is keyed by the ``ModelCheckpoint`` class); those few names are on an explicit
allow-list (:data:`LEGACY_GLOBALS`) and are read as inert stand-ins that cannot be called, so the
authors' files load without arbitrary unpickling. A file that references anything else is
refused with the names it references, unless the caller opts in (``trust=True``,
``--trust_checkpoint`` on the command lines), which unpickles it in full.

Safe checkpoint writing: :func:`save_checkpoint_file` writes a temporary file beside the target, then
renames it (``emseg.core.atomic_io``), so a crash or a full disk leaves the previous file or none,
never a truncated one; a full disk is one line naming the file (``DiskFullError``), not torch's
``unexpected pos 704 vs 598``. :class:`AtomicCheckpointIO` is the same as Lightning's CheckpointIO
plugin, which ``emseg/app/training.py`` gives the Trainer: every checkpoint Lightning saves (the best
ones of ``ModelCheckpoint``, ``last.ckpt``) goes through it.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from typing import Any

import torch

from emseg.core.atomic_io import atomic_write

logger = logging.getLogger(__name__)

TRUST_HINT = (
    "Only if you trust where it came from, load it with --trust_checkpoint (in Python: "
    "load_from_checkpoint(path, weights_only=False)), which runs whatever code it holds; "
    "`python -m Models.convert_checkpoint --trust_checkpoint OLD.ckpt NEW.ckpt` does so once and writes "
    "a checkpoint that loads safely ever after."
)

#: the pickle stream of torch's legacy (non-zip) format starts with this number
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class CheckpointError(ValueError):
    """The file is not a usable checkpoint for this model; the message says why."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint references Python objects outside the allow-list and the caller did not
    allow arbitrary unpickling."""


class LegacyClassReference:
    """Stands for a class object that a legacy checkpoint pickles by name (PL 1.2 keys its
    ``callbacks`` dict by the callback's class). Only the name is kept; it can never be
    instantiated, so a crafted file cannot make the unpickler call it."""

    qualified_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any):  # REDUCE / NEWOBJ on a stand-in
        raise pickle.UnpicklingError(f"{cls.qualified_name} is only allowed as a class reference in a "
                                     "checkpoint, never called")


def _stand_in(qualified_name: str) -> type:
    return type(qualified_name.rsplit(".", 1)[-1], (LegacyClassReference,), {"qualified_name": qualified_name})


#: the class references PyTorch Lightning 1.2.x writes into its checkpoints (the callbacks keys)
LEGACY_GLOBALS: tuple[str, ...] = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
)
_STAND_INS = {name: _stand_in(name) for name in LEGACY_GLOBALS}


def _plain_keys(obj: Any) -> Any:
    """Replace stand-in class keys by their qualified names (strings)."""
    if isinstance(obj, dict):
        return type(obj)((k.qualified_name if isinstance(k, type) and issubclass(k, LegacyClassReference) else k,
                          _plain_keys(v)) for k, v in obj.items())
    return obj


def file_kind(path: str) -> str:
    """'zip' (torch.save's format), 'legacy' (torch's pre-1.6 format) or a short description of
    what else the file looks like."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    if not head:
        return "an empty file"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if any(n.endswith("data.pkl") for n in z.namelist()):
                return "zip"
        return "a zip archive that is not a torch.save file (no data.pkl)"
    if head.startswith(b"\x80") and _LEGACY_MAGIC.to_bytes(10, "little") in head[:16]:
        return "legacy"
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy .npy array"
    if head.startswith(b"\x80"):
        return "a plain Python pickle, not a torch.save file"
    if head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8"):
        return "an image"
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return f"unrecognised binary data (starts with {head[:8]!r})"


def unsafe_globals(path: str) -> list[str]:
    """Names the checkpoint's pickle references that neither torch's weights-only loader nor
    :data:`LEGACY_GLOBALS` allows (read without unpickling)."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # legacy format or damaged archive: the load itself reports it
        return []
    return [g for g in found if g not in _STAND_INS]


def _safe_load(path: str, map_location: Any) -> Any:
    with torch.serialization.safe_globals([(cls, name) for name, cls in _STAND_INS.items()]):
        return torch.load(path, map_location=map_location, weights_only=True)


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", trust: bool = False) -> dict:
    """Read a checkpoint dict, weights-only with the legacy allow-list; ``trust=True`` also
    allows arbitrary unpickling for files that reference other Python objects."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist or is not a file")
    kind = file_kind(path)
    if kind not in ("zip", "legacy"):
        raise CheckpointError(f"{path!r} is not a PyTorch checkpoint: it is {kind}")
    others = unsafe_globals(path)
    if others and not trust:
        shown = ", ".join(others[:8]) + (f" and {len(others) - 8} more" if len(others) > 8 else "")
        raise UnsafeCheckpointError(
            f"checkpoint {path!r} references Python objects outside the allow-list of a safe load: {shown}. "
            f"{TRUST_HINT}")
    try:
        ckpt = None if others else _safe_load(path, map_location)
    except Exception as err:  # torch raises many kinds on damaged files
        text = str(err)
        unsupported = isinstance(err, pickle.UnpicklingError) and "Unsupported global" in text
        if unsupported and not trust:
            found = [ln.strip() for ln in text.splitlines() if "GLOBAL" in ln][:1]
            what = f": {found[0][:200]}" if found else ""
            raise UnsafeCheckpointError(f"checkpoint {path!r} references Python objects outside the allow-list "
                                        f"of a safe load{what}. {TRUST_HINT}") from None
        if not trust:
            lines = [ln for ln in text.splitlines() if ln.strip()]
            # torch's weights-only errors put the cause on their last line
            cause = (lines[-1] if "Weights only load failed" in text and lines else (lines or [""])[0])[:200]
            raise CheckpointError(f"{path!r} is not a readable PyTorch checkpoint: "
                                  f"{type(err).__name__}: {cause}") from None
        ckpt = None
    if ckpt is None or others:
        logger.warning("loading %s with arbitrary unpickling, as explicitly allowed (--trust_checkpoint)", path)
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as err:
            first = (str(err).splitlines() or [""])[0][:200]
            raise CheckpointError(f"{path!r} is not a readable PyTorch checkpoint: "
                                  f"{type(err).__name__}: {first}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        keys = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path!r} is not a model checkpoint: no 'state_dict' (found {keys})")
    return _plain_keys(ckpt)


def check_resume_checkpoint(path: str | os.PathLike) -> None:
    """Refuse, before Lightning reads it, a resume file that is not a checkpoint or that references
    Python objects a weights-only load refuses (Lightning resumes with ``weights_only=True``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"--ckpt_path {path!r} does not exist or is not a file")
    kind = file_kind(path)
    if kind != "zip":
        raise CheckpointError(f"--ckpt_path {path!r} is not a checkpoint this version can resume: it is "
                              f"{'a legacy-format torch file' if kind == 'legacy' else kind}")
    found = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path)]
    if found:
        raise UnsafeCheckpointError(
            f"--ckpt_path {path!r} references Python objects a weights-only load refuses: {', '.join(found[:8])}. "
            "Resuming reads only tensors and plain data; fine-tune from its weights with --init_ckpt instead "
            "(add --trust_checkpoint only for a file you trust)")


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
        elif key == "callbacks":
            logger.info("dropping checkpoint entry 'callbacks' (another Lightning version's callback states)")
        elif plain(value):
            out[key] = value
        else:
            logger.info("dropping checkpoint entry %r (%s): not plain data", key, type(value).__name__)
    return out


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------
class _RecordingWriter:
    """A file object for ``torch.save`` that remembers the ``OSError`` its file raised: torch's zip
    writer turns it into a RuntimeError that no longer says why (``unexpected pos 704 vs 598``)."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.error = fh, None

    def write(self, data: bytes) -> int:
        try:
            return self.fh.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        try:
            self.fh.flush()
        except OSError as err:
            self.error = err
            raise


def torch_save_to(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, streamed (no copy in memory), raising the file's own ``OSError``
    (a full disk: ENOSPC) where torch would raise a RuntimeError that hides it."""
    with open(path, "wb") as fh:
        writer = _RecordingWriter(fh)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


def save_checkpoint_file(obj: Any, path: str | os.PathLike, verify: bool = False) -> None:
    """Write ``obj`` to ``path`` through a temporary name and a rename (fsync'ed first): readers and a
    resumed run see the previous file or the new one. ``verify`` also proves that the written file
    loads weights-only before it is published. A full disk raises ``DiskFullError`` naming ``path``."""

    def write(tmp: os.PathLike) -> None:
        torch_save_to(obj, tmp)
        if verify:
            torch.load(tmp, map_location="cpu", weights_only=True)  # loads safely, or is never published

    atomic_write(path, write, fsync=True)


def _atomic_checkpoint_io_class() -> type:
    # Lightning's plugin base costs 2 s to import: only when a Trainer is being built
    from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        """Lightning's ``TorchCheckpointIO`` writing through :func:`save_checkpoint_file` (temporary name,
        fsync, rename) for local paths; remote paths (``s3://``) keep Lightning's own writer."""

        def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
            if storage_options is not None or "://" in str(path):
                return super().save_checkpoint(checkpoint, path, storage_options)
            save_checkpoint_file(checkpoint, path)

    AtomicCheckpointIO.__module__ = __name__
    return AtomicCheckpointIO


_LAZY: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    """``AtomicCheckpointIO``, built on first use (see :func:`_atomic_checkpoint_io_class`)."""
    if name == "AtomicCheckpointIO":
        if name not in _LAZY:
            _LAZY[name] = _atomic_checkpoint_io_class()
        return _LAZY[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
