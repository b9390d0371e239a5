"""Reading a DataSplit, locating the saved probabilities and loading ground-truth masks.

Conventions (shared with ``model_eval.py --save_npy``):

- A DataSplit CSV has one row per frame; paths are relative to the data base directory. The
  evaluation needs the ``Flow`` column (to find the prediction) and the ``GtMask`` column.
- The probabilities of a row are stored as ``{model_base_dir}/{Flow without extension}_proba.npy``:
  float32 (L, I, J), softmax over L, at the model's size. Flow ``DAVIS/Flows/bear/00000.flo`` →
  ``{model_base_dir}/DAVIS/Flows/bear/00000_proba.npy``.
- Ground truth: foreground is every value > 0, whatever the image mode (palette PNGs included; for
  multi-channel masks any colour channel > 0).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path, PurePath

import numpy as np
import pandas as pd
from PIL import Image

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("Flow", "GtMask")


class DataLoadingError(ValueError):
    """An input (file or row) that cannot be used; the message names the file."""


def relative_key(path: str | os.PathLike) -> PurePath:
    """A path as written in a DataSplit, made relative (an absolute path loses its anchor)."""
    p = PurePath(str(path))
    if p.anchor:
        p = PurePath(*p.parts[1:])
    return p


def without_ext(path: str | os.PathLike) -> PurePath:
    """``a/b/c.flo`` → ``a/b/c`` (relative, last suffix removed)."""
    p = relative_key(path)
    return p.with_suffix("") if p.suffix else p


def resolve_data_file(data_file: str | os.PathLike, step: str = "test") -> Path:
    """The DataSplit CSV: ``data_file`` itself if it names a ``.csv``, else ``{data_file}_{step}.csv``.

    Raises FileNotFoundError naming the path(s) tried.
    """
    data_file = str(data_file)
    if data_file.lower().endswith(".csv"):
        path = Path(data_file)
        if not path.is_file():
            raise FileNotFoundError(f"--data_file: DataSplit CSV not found: {path}")
        return path
    path = Path(f"{data_file}_{step}.csv")
    if not path.is_file():
        raise FileNotFoundError(f"--data_file {data_file!r} with --step {step!r}: DataSplit CSV not found: {path}")
    return path


def split_name(csv_path: str | os.PathLike) -> str:
    """The split's name: the CSV file's stem (``DataSplit/X_test.csv`` → ``X_test``)."""
    return Path(csv_path).stem


def read_split(csv_path: str | os.PathLike, required: tuple[str, ...] = REQUIRED_COLUMNS) -> pd.DataFrame:
    """Read a DataSplit CSV as strings (empty cells stay ``''``); the index is reset to 0..n-1.

    Raises FileNotFoundError for a missing file and DataLoadingError naming the CSV and the
    column when a required column is absent.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"DataSplit CSV not found: {csv_path}")
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataLoadingError(f"cannot parse DataSplit CSV {csv_path}: {e}") from e
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataLoadingError(f"DataSplit CSV {csv_path} has no column {', '.join(map(repr, missing))} "
                               f"(columns: {list(df.columns)})")
    return df.reset_index(drop=True)


def sequence_of(gt_path: str) -> str:
    """The sequence of a frame: the name of the GtMask's parent folder (``''`` when there is none)."""
    return relative_key(gt_path).parent.name


_DIGITS = re.compile(r"(\d+)")


def natural_key(path: str) -> list:
    """Sort key putting ``frame2.png`` before ``frame10.png``."""
    return [int(t) if t.isdigit() else t for t in _DIGITS.split(str(path))]


def prediction_path(model_base_dir: str | os.PathLike, flow_path: str) -> Path:
    """``{model_base_dir}/{flow_path without extension}_proba.npy``."""
    stem = without_ext(flow_path)
    return Path(model_base_dir) / stem.parent / f"{stem.name}_proba.npy"


def load_proba(path: str | os.PathLike) -> np.ndarray:
    """Load saved probabilities → float32 (L, I, J).

    Raises DataLoadingError (naming the file) when it cannot be read, is not numeric, has the
    wrong number of dimensions or holds non-finite values.
    """
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # corrupt headers raise ValueError, truncated data OSError/EOFError, ...
        raise DataLoadingError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    if not isinstance(arr, np.ndarray):  # an .npz archive
        raise DataLoadingError(f"{path} is not a single .npy array")
    if arr.ndim != 3:
        raise DataLoadingError(f"{path} has shape {arr.shape}; expected probabilities (L, I, J)")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise DataLoadingError(f"{path} has dtype {arr.dtype}; expected real probabilities")
    if min(arr.shape) == 0:
        raise DataLoadingError(f"{path} has an empty shape {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise DataLoadingError(f"{path} holds non-finite values")
    return arr


def load_gt(path: str | os.PathLike) -> np.ndarray:
    """Load a ground-truth mask → bool (I, J): every value > 0 is foreground.

    Any PIL mode: palette images give their indices, multi-channel images are foreground where any
    colour channel is > 0 (an alpha channel is ignored). Raises FileNotFoundError / DataLoadingError
    naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GtMask not found: {path}")
    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.array(im)
    except Exception as e:
        raise DataLoadingError(f"cannot read GtMask {path}: {type(e).__name__}: {e}") from e
    if arr.ndim == 3:
        if mode in ("RGBA", "LA", "PA"):
            arr = arr[..., :-1]
        arr = (arr > 0).any(-1)
    elif arr.ndim != 2:
        raise DataLoadingError(f"GtMask {path} has shape {arr.shape}; expected an (I, J) mask")
    return arr > 0


def load_image(path: str | os.PathLike) -> np.ndarray | None:
    """Load an RGB frame (for figures only) → uint8 (I, J, 3), or None (logged) if it cannot be read."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except Exception as e:
        logger.debug("image %s not readable for figures: %s", path, e)
        return None


class DataLoadingModule:
    """Loads the pieces of one DataSplit row.

    Args:
        data_base_dir: folder the DataSplit's paths are relative to.
        model_base_dir: folder holding the ``*_proba.npy`` files (``model_eval.py``'s save_dir).
    """

    def __init__(self, data_base_dir: str | os.PathLike, model_base_dir: str | os.PathLike) -> None:
        self.data_base_dir = Path(data_base_dir)
        self.model_base_dir = Path(model_base_dir)
        if not self.data_base_dir.is_dir():
            raise FileNotFoundError(f"--data_base_dir is not a directory: {self.data_base_dir}")
        if not self.model_base_dir.is_dir():
            raise FileNotFoundError(f"--model_base_dir is not a directory: {self.model_base_dir}")

    def data_path(self, rel: str) -> Path:
        """A DataSplit path resolved against the data base directory (absolute paths are kept)."""
        return self.data_base_dir / rel

    def prediction_path(self, row: pd.Series | dict) -> Path:
        return prediction_path(self.model_base_dir, row["Flow"])

    def load_proba(self, row: pd.Series | dict) -> np.ndarray:
        """The row's probabilities, float32 (L, I, J)."""
        return load_proba(self.prediction_path(row))

    def load_gt(self, row: pd.Series | dict) -> np.ndarray:
        """The row's ground truth, bool (H, W)."""
        return load_gt(self.data_path(row["GtMask"]))

    def load_image(self, row: pd.Series | dict) -> np.ndarray | None:
        """The row's RGB frame (H, W, 3) uint8 when an ``Image`` column exists and is readable."""
        rel = row.get("Image", "") if hasattr(row, "get") else ""
        if not rel:
            return None
        return load_image(self.data_path(rel))
