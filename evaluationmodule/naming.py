"""Names that ``model_eval.py``, ``evaluationmodule.Evaluation`` and ``segment.py`` must agree on.

- **paths** (:func:`relative_key`, :func:`without_ext`, :func:`output_stem`): a DataSplit path is made
  relative and kept below the folder it is joined to (a leading ``/`` is dropped, ``.`` components
  go, ``..`` becomes ``_up_``); a frame's outputs are ``{save_dir}/{Flow path without extension}``
  + ``_proba.npy`` / ``_binary.png`` / ``_fig.png``;
- **sequences** (:func:`sequence_of`): a frame's sequence is the name of the folder holding its
  **Flow** file, after that normalisation (``DAVIS/Flows/bear/00000.flo`` → ``bear``), and
  :data:`ROOT_SEQUENCE` (``'.'``) for a file with no folder. The Flow path is the one every row of
  both pipelines has (model_eval's ``file_name`` is it; a GtMask is optional there) and the one the
  predictions are named after. Within a sequence, frames are in natural order of their Flow path
  (:func:`natural_key`: ``2.flo`` before ``10.flo``);
- **splits** (:func:`resolve_data_file`, :func:`split_name`): ``NAME`` + step → ``NAME_{step}.csv``,
  a ``'{}'`` pattern is filled with the step, a ``.csv`` is taken as it is; the split's name is the
  CSV's stem (``DataSplit/X_test.csv`` → ``X_test``).

The ground-truth rule is ``emseg.core.masks.decode_mask``; summaries are :mod:`evaluationmodule.summaries`.
"""


from __future__ import annotations

import os
import re
from pathlib import Path, PurePath

from emseg.core.datasplit import split_csv

UP = "_up_"
#: the sequence of a frame whose Flow file has no folder
ROOT_SEQUENCE = "."


# ----------------------------------------------------------------------------------------------
# Paths and sequences
# ----------------------------------------------------------------------------------------------
def relative_key(path: str | os.PathLike) -> PurePath:
    """A path as written in a DataSplit, made relative and kept below the folder it is joined to:
    an absolute path loses its anchor, ``.`` components go and ``..`` ones become ``_up_``."""
    p = PurePath(str(path))
    parts = p.parts[1:] if p.anchor else p.parts
    return PurePath(*[UP if part == ".." else part for part in parts if part not in (".", "")])


def without_ext(path: str | os.PathLike) -> PurePath:
    """``a/b/c.flo`` → ``a/b/c`` (relative, last suffix removed)."""
    p = relative_key(path)
    return p.with_suffix("") if p.suffix else p


#: the per-frame files of ``model_eval.py`` / ``SaveResultsFig``: ``{output_stem}{suffix}``
FRAME_SUFFIXES = {"proba": "_proba.npy", "mask": "_binary.png", "figure": "_fig.png"}


def output_stem(save_dir: str | os.PathLike, flow_rel: str) -> str:
    """``save_dir/{flow path without extension}``, always inside ``save_dir`` (the names
    ``model_eval.py`` and ``SaveResultsFig`` write and ``evaluationmodule`` reads back)."""
    return os.path.join(os.fspath(save_dir), str(without_ext(flow_rel)))


def sequence_of(flow_path: str | os.PathLike) -> str:
    """The sequence of a frame: the name of the folder holding its Flow file (normalised as
    :func:`relative_key`), :data:`ROOT_SEQUENCE` when there is none."""
    return relative_key(flow_path).parent.name or ROOT_SEQUENCE


_DIGITS = re.compile(r"(\d+)")


def natural_key(path: str) -> list:
    """Sort key putting ``frame2.png`` before ``frame10.png``."""
    return [int(t) if t.isdigit() else t for t in _DIGITS.split(str(path))]


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------
#: the CSV of one step of ``--data_file`` (``emseg.core.datasplit``, the one rule)
resolve_data_file = split_csv


def split_name(csv_path: str | os.PathLike) -> str:
    """The split's name: the CSV file's stem (``DataSplit/X_test.csv`` → ``X_test``)."""
    return Path(csv_path).stem
