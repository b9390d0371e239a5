"""The one rule that turns ``--data_file`` into a DataSplit's CSV files.

A DataSplit ``NAME`` is three files ``NAME_train.csv``, ``NAME_val.csv``, ``NAME_test.csv``
(docs/METHOD.md). ``--data_file`` may be ``NAME`` (the authors' spelling), a pattern with ``{}`` for
the step, or one step's CSV (``NAME_val.csv``); training reads all three steps through
:func:`split_pattern`, and evaluation one step through :func:`split_csv`, which also takes any
``.csv`` as it is (the authors' ``Evaluation.py`` scores one CSV).
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

STEPS: tuple[str, ...] = ("train", "val", "test")


def sequence_folder(path: str | os.PathLike) -> str:
    """The sequence of a frame, from its Flow path as written in the CSV: the path's folder
    (``'Flows/seq_003/00007.flo'`` → ``'Flows/seq_003'``; ``''`` at the base directory's root). The clips of
    the temporal model (training and evaluation) and the track rule of the binariser all group frames so."""
    return posixpath.dirname(str(path).strip().replace("\\", "/"))


def frame_order_key(path: str | os.PathLike) -> tuple:
    """Sort key of a sequence's frames: the file name with its numbers compared as numbers
    (``f_2`` before ``f_10``), then the name itself."""
    name = posixpath.basename(str(path).strip().replace("\\", "/"))
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p)
    return parts, name


def split_pattern(data_file: str | os.PathLike) -> str:
    """``'X'`` → ``'X_{}.csv'``; a ``'{}'`` pattern is kept; ``'X_val.csv'`` (one step's file) →
    ``'X_{}.csv'``. Raises ValueError for another ``.csv`` name."""
    data_file = os.fspath(data_file)
    if "{}" in data_file:
        return data_file
    if data_file.endswith(".csv"):
        stem = data_file[: -len(".csv")]
        for step in STEPS:
            if stem.endswith("_" + step):
                return stem[: -len(step)] + "{}.csv"
        raise ValueError(
            f"cannot make a DataSplit pattern from {data_file!r}: give 'NAME' (files NAME_train.csv, "
            "NAME_val.csv, NAME_test.csv) or a pattern with '{}'"
        )
    return data_file + "_{}.csv"


def split_csv(data_file: str | os.PathLike, step: str = "test") -> Path:
    """The CSV of ``step``: any ``.csv`` as it is, else :func:`split_pattern` filled with ``step``.
    Raises FileNotFoundError naming the path tried."""
    data_file = os.fspath(data_file)
    if "{}" not in data_file and data_file.lower().endswith(".csv"):
        path = Path(data_file)
        if not path.is_file():
            raise FileNotFoundError(f"--data_file: DataSplit CSV not found: {path}")
        return path
    path = Path(split_pattern(data_file).format(step))
    if not path.is_file():
        raise FileNotFoundError(f"--data_file {data_file!r} with --step {step!r}: DataSplit CSV not found: {path}")
    return path
