"""The result files' writers, shared by every pipeline: strict JSON, CSV tables and rows, masks, arrays.

``model_eval.py`` (``emseg/app/evaluation_run.py``), the benchmark evaluation (``evaluationmodule``), the
training's results (``emseg/app/results.py``), the authors' callbacks (``utils/Callbacks.py``) and
``segment.py`` (``emseg/app/segmentation.py``) all write through these functions.

- Every file goes through ``emseg.core.atomic_io.atomic_write`` (written under a temporary name, then
  renamed), so an interrupted run never leaves a truncated file under the final name.
- JSON is strict (``allow_nan=False``): NaN and ±inf are written as ``null`` (:func:`json_safe`).
- Row tables (:func:`append_rows`, :func:`read_rows`, :func:`rewrite_rows`) are plain CSV (or TSV with
  ``delimiter='\\t'``) with a header line; appends are fsync'ed, so a crash keeps whole rows, and a
  torn last line is ignored on reading.

This module imports nothing of the project but ``emseg.core.atomic_io``, so every layer may use it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emseg.core.atomic_io import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["json_safe", "write_json", "write_csv", "append_rows", "read_rows", "rewrite_rows", "write_mask_png",
           "write_npy"]


def json_safe(obj: Any) -> Any:
    """``obj`` as strict JSON can hold it.

    NaN and ±inf → None (JSON has neither); NumPy arrays and multi-element tensors → (nested) lists;
    NumPy scalars and one-element tensors → Python numbers; tuples → lists; sets → lists sorted by
    ``str``; paths → ``str``; dict keys → ``str``; any other object → its ``str``.
    """
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return [json_safe(v) for v in sorted(obj, key=str)]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    elif type(obj).__module__.startswith("torch") and hasattr(obj, "numel"):  # a tensor, without importing torch
        return json_safe(obj.item() if obj.numel() == 1 else obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def write_json(obj: Any, path: str | os.PathLike, sort_keys: bool = False) -> Path:
    """Write ``obj`` as strict, indented JSON (through :func:`json_safe`), atomically and fsync'ed."""
    text = json.dumps(json_safe(obj), indent=2, sort_keys=sort_keys, allow_nan=False) + "\n"
    return atomic_write_text(path, text, fsync=True)


def write_csv(df, path: str | os.PathLike) -> Path:
    """Write a pandas DataFrame without its index, atomically (NaN written as empty cells)."""
    return atomic_write(Path(path), lambda p: df.to_csv(p, index=False))


def append_rows(path: str | os.PathLike, rows: Sequence[dict], columns: Sequence[str], delimiter: str = ",") -> None:
    """Append rows (header first if the file is new) and fsync, so a crash keeps whole rows.
    Keys not in ``columns`` are left out."""
    if not rows:
        return
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore", delimiter=delimiter)
        if new:
            writer.writeheader()
        writer.writerows(rows)
        fh.flush()
        os.fsync(fh.fileno())


def read_rows(path: str | os.PathLike, delimiter: str = ",") -> list[dict]:
    """Rows of a table written by :func:`append_rows` or :func:`rewrite_rows` (``[]`` if the file
    does not exist); a torn last line (power cut) is dropped with a warning, since it was never complete."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as fh:
        text = fh.read()
    complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
    if complete != text:
        logger.warning("%s: ignoring an incomplete last line (interrupted write)", path)
    return list(csv.DictReader(complete.splitlines(), delimiter=delimiter))


def rewrite_rows(path: str | os.PathLike, rows: Sequence[dict], columns: Sequence[str], delimiter: str = ",") -> Path:
    """Write the whole table (header and rows) atomically and fsync'ed; keys not in ``columns`` are left out."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", delimiter=delimiter)
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue(), fsync=True)


def write_mask_png(mask: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a binary mask (I, J) as an 8-bit PNG with values 0 / 255, atomically."""
    from PIL import Image

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a mask (I, J), got shape {mask.shape}")
    im = Image.fromarray(np.where(mask.astype(bool), 255, 0).astype(np.uint8), mode="L")
    return atomic_write(Path(path), lambda p: im.save(p, format="PNG"))


def write_npy(arr: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an array as ``.npy``, atomically."""
    def save(p: Path) -> None:
        with open(p, "wb") as fh:  # a handle: np.save on a name would append ".npy" to the temporary one
            np.save(fh, arr)

    return atomic_write(Path(path), save)
