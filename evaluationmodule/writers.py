"""The result files' writers, shared by every pipeline: strict JSON, CSV tables and rows, masks, arrays.

``model_eval.py`` (``emseg/app/evaluation_run.py``), the benchmark evaluation (``evaluationmodule``), the
training's results (``emseg/app/results.py``), the authors' callbacks (``utils/Callbacks.py``) and
``segment.py`` (``emseg/app/segmentation.py``) all write through these functions.

- Every file goes through ``emseg.core.atomic_io.atomic_write`` (written under a temporary name, then
  renamed), so an interrupted run never leaves a truncated file under the final name.
- JSON is strict (``allow_nan=False``): NaN and ±inf are written as ``null`` (:func:`json_safe`).
- Row tables (:func:`append_rows`, :func:`read_rows`, :func:`rewrite_rows`) are plain CSV (or TSV with
  ``delimiter='\\t'``) with a header line; appends are fsync'ed, so a crash keeps whole rows, and a
  torn last record is ignored on reading.
- Any name round-trips: a cell holding the delimiter, a quote, a newline, a tab or U+2028 is quoted
  (the ``csv`` module's minimal quoting) and read back by a CSV-aware reader, never split on lines.
  A text cell starting with ``=``, ``+``, ``-`` or ``@`` (what a spreadsheet would run as a formula)
  is written with a leading ``'`` (:func:`guard_cell`), as is one already starting with ``'``; the
  readers here (:func:`read_rows`, :func:`unguard_frame`) remove it, so the value comes back exact.
  Numbers are never guarded (``-0.5`` stays a number).

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
           "write_npy", "guard_cell", "unguard_cell", "unguard_frame", "read_records"]

#: a text cell starting with one of these is a formula to a spreadsheet
FORMULA_STARTS = ("=", "+", "-", "@")
#: the guard put before such a cell (and before a cell already starting with it, so reading is exact)
GUARD = "'"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def guard_cell(value: Any) -> Any:
    """A cell as written: a text starting with ``=``, ``+``, ``-``, ``@`` or ``'`` (and not a number)
    gets a leading ``'``, so a spreadsheet shows it instead of running it; anything else is unchanged."""
    if isinstance(value, str) and value[:1] and value[0] in (*FORMULA_STARTS, GUARD) and not _is_number(value):
        return GUARD + value
    return value


def unguard_cell(value: Any) -> Any:
    """The inverse of :func:`guard_cell` on a cell as read."""
    if isinstance(value, str) and value[:1] == GUARD and value[1:2] and value[1] in (*FORMULA_STARTS, GUARD):
        return value[1:]
    return value


def unguard_frame(df):
    """A pandas DataFrame read from a table written here, with its text cells unguarded (in place; returned)."""
    for col in df.columns:
        if df[col].dtype == object:
            df[col] = df[col].map(unguard_cell)
    return df


def _guarded(rows: Sequence[dict]) -> list[dict]:
    return [{k: guard_cell(v) for k, v in r.items()} for r in rows]


def read_records(text: str, delimiter: str = ",", what: str = "table") -> tuple[list[list[str]], bool]:
    """The complete records of a CSV/TSV ``text`` (quoted fields may hold newlines) and whether a torn
    last record (an interrupted append) was dropped. Cells are unguarded (:func:`unguard_cell`)."""
    records: list[list[str]] = []
    torn = False
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        for rec in reader:
            records.append([unguard_cell(c) for c in rec])
    except csv.Error:  # the text ends inside a quoted field: the last record was never complete
        torn = True
    if not torn and text and not text.endswith("\n") and records:
        records.pop()  # a record is complete once its line terminator is written
        torn = True
    return records, torn


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
    """Write a pandas DataFrame without its index, atomically (NaN written as empty cells; text cells
    guarded, :func:`guard_cell`; read it back with ``unguard_frame(pd.read_csv(path))``)."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].map(guard_cell)
    return atomic_write(Path(path), lambda p: out.to_csv(p, index=False))


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
        writer.writerows(_guarded(rows))
        fh.flush()
        os.fsync(fh.fileno())


def read_rows(path: str | os.PathLike, delimiter: str = ",") -> list[dict]:
    """Rows of a table written by :func:`append_rows` or :func:`rewrite_rows` (``[]`` if the file
    does not exist); a torn last line (power cut) is dropped with a warning, since it was never complete."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as fh:
        text = fh.read()
    records, torn = read_records(text, delimiter)
    if torn:
        logger.warning("%s: ignoring an incomplete last record (interrupted write)", path)
    if not records:
        return []
    header, body = records[0], [rec for rec in records[1:] if rec]  # blank lines are no rows (as DictReader)
    return [dict(zip(header, rec + [None] * (len(header) - len(rec)))) for rec in body]


def rewrite_rows(path: str | os.PathLike, rows: Sequence[dict], columns: Sequence[str], delimiter: str = ",") -> Path:
    """Write the whole table (header and rows) atomically and fsync'ed; keys not in ``columns`` are left out."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", delimiter=delimiter)
    writer.writeheader()
    writer.writerows(_guarded(rows))
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
