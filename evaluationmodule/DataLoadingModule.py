"""Reading a DataSplit, locating the saved probabilities and loading ground-truth masks.

Conventions (shared with ``model_eval.py --save_npy``):

- A DataSplit CSV has one row per frame; paths are relative to the data base directory. The
  evaluation needs the ``Flow`` column (to find the prediction) and the ``GtMask`` column.
- The probabilities of a row are stored as ``{model_base_dir}/{Flow without extension}_proba.npy``:
  float32 (L, I, J), softmax over L, at the model's size. Flow ``DAVIS/Flows/bear/00000.flo`` →
  ``{model_base_dir}/DAVIS/Flows/bear/00000_proba.npy``.
- Ground truth: foreground is every value > 0, whatever the image mode (palette PNGs included; for
  multi-channel masks any colour channel > 0).
- Paths never leave ``model_base_dir``: a leading ``/`` is dropped and a ``..`` component becomes
  ``_up_`` (``../Flows/a/0.flo`` → ``{model_base_dir}/_up_/Flows/a/0_proba.npy``).
- ``model_eval.py --save_npy`` records each prediction in ``predictions_{step}.tsv`` (the
  *manifest*): the file, the SHA-256 of its bytes, of the flow it was computed from and of the
  model, and its shape. Where a manifest exists, a prediction it does not list, or whose bytes,
  flow, model or shape disagree with it, is refused as not belonging to this evaluation.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

# the mask rule is the core's; the naming and split rules shared with model_eval.py are evaluationmodule.naming's
from emseg.core.masks import decode_mask
from evaluationmodule.naming import (  # noqa: F401
    UP,
    natural_key,
    relative_key,
    resolve_data_file,
    sequence_of,
    split_name,
    without_ext,
)
from evaluationmodule.writers import read_rows

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("Flow", "GtMask")


class DataLoadingError(ValueError):
    """An input (file or row) that cannot be used; the message names the file."""


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


def prediction_path(model_base_dir: str | os.PathLike, flow_path: str) -> Path:
    """``{model_base_dir}/{flow_path without extension}_proba.npy``."""
    stem = without_ext(flow_path)
    return Path(model_base_dir) / stem.parent / f"{stem.name}_proba.npy"


def load_proba(path: str | os.PathLike) -> np.ndarray:
    """Load saved probabilities → float32 (L, I, J).

    Raises DataLoadingError (naming the file) when it cannot be read, is not a floating-point
    array (integer masks are not probabilities), has the wrong number of dimensions, or holds
    non-finite values or values outside [0, 1].
    """
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # corrupt headers raise ValueError, truncated data OSError/EOFError, ...
        raise DataLoadingError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    if not isinstance(arr, np.ndarray):  # an .npz archive
        raise DataLoadingError(f"{path} is not a single .npy array")
    if arr.ndim != 3:
        raise DataLoadingError(f"{path} has shape {arr.shape}; expected probabilities (L, I, J)")
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataLoadingError(f"{path} has dtype {arr.dtype}; expected floating-point probabilities")
    if min(arr.shape) == 0:
        raise DataLoadingError(f"{path} has an empty shape {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise DataLoadingError(f"{path} holds non-finite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -PROBA_TOLERANCE or hi > 1 + PROBA_TOLERANCE:
        raise DataLoadingError(f"{path} holds values in [{lo:.4g}, {hi:.4g}]; expected probabilities in [0, 1]")
    return arr


#: slack on [0, 1] (float16 files round to about 1e-3)
PROBA_TOLERANCE = 1e-2


def check_proba_shape(proba: np.ndarray, gt_shape: tuple[int, int], path: str | os.PathLike) -> None:
    """Refuse probabilities (L, I, J) laid out (L, J, I): their I/J is the ground truth's (H, W)
    aspect inverted. Any other size is resized to the ground truth when scored."""
    _, i, j = proba.shape
    h, w = gt_shape
    if (i, j) == (h, w) or i == j or h == w:
        return
    straight = abs(np.log(i / j) - np.log(h / w))
    swapped = abs(np.log(j / i) - np.log(h / w))
    if swapped < straight:
        raise DataLoadingError(f"{path} has shape {proba.shape}, transposed against the ground truth {gt_shape}: "
                               "expected (L, I, J) with I/J the frame's height/width")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


MANIFEST_COLUMNS = ("proba_file", "flow_file", "proba_sha256", "flow_sha256", "model_sha256", "shape")
MANIFEST_PATTERN = "predictions_*.tsv"


@dataclass(frozen=True)
class ManifestEntry:
    proba_file: str
    flow_file: str
    proba_sha256: str
    flow_sha256: str
    model_sha256: str
    shape: tuple[int, ...]


def read_manifest(model_base_dir: str | os.PathLike) -> dict[str, ManifestEntry] | None:
    """Every manifest of ``model_base_dir`` (``predictions_*.tsv``, per-process parts included) as
    ``{proba_file: entry}``, later lines winning; None when there is none. A torn last line
    (an interrupted write) is ignored."""
    paths = sorted(glob.glob(os.path.join(os.fspath(model_base_dir), MANIFEST_PATTERN)))
    if not paths:
        return None
    entries: dict[str, ManifestEntry] = {}
    for path in paths:
        for rec in read_rows(path, delimiter="\t"):  # CSV-aware: names may hold tabs, newlines, U+2028
            try:
                shape = tuple(int(x) for x in rec["shape"].split("x"))
                entries[rec["proba_file"]] = ManifestEntry(rec["proba_file"], rec["flow_file"], rec["proba_sha256"],
                                                           rec["flow_sha256"], rec["model_sha256"], shape)
            except (KeyError, ValueError, AttributeError):
                logger.warning("%s: ignoring a malformed line %s", path, rec)
    return entries


def recorded_model(model_base_dir: str | os.PathLike) -> str | None:
    """The model hash of the last ``model_eval.py`` run into ``model_base_dir`` (its eval_settings.json)."""
    path = os.path.join(os.fspath(model_base_dir), "eval_settings.json")
    try:
        with open(path) as fh:
            return json.load(fh).get("identity", {}).get("model_sha256")
    except (OSError, ValueError, AttributeError):
        return None


def load_gt(path: str | os.PathLike) -> np.ndarray:
    """Load a ground-truth mask → bool (I, J): every value > 0 is foreground.

    Any PIL mode (``emseg.core.masks.decode_mask``, the rule the training data loader uses too):
    palette images give their indices, multi-channel images are foreground where any colour channel
    is > 0 (an alpha channel is ignored). Raises FileNotFoundError / DataLoadingError
    naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GtMask not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return decode_mask(im)
    except ValueError as e:
        raise DataLoadingError(f"GtMask {path}: {e}") from e
    except Exception as e:
        raise DataLoadingError(f"cannot read GtMask {path}: {type(e).__name__}: {e}") from e


def load_image(path: str | os.PathLike) -> np.ndarray | None:
    """Load an RGB frame (for figures only) → uint8 (I, J, 3), or None (logged) if it cannot be read."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except Exception as e:
        logger.debug("image %s not readable for figures: %s", path, e)
        return None


class PredictionLoader:
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
        self.manifest = read_manifest(self.model_base_dir)
        self.model_sha256 = recorded_model(self.model_base_dir)
        if self.manifest is None:
            logger.warning("%s has no predictions manifest (%s, written by model_eval.py --save_npy): cannot "
                           "check that its predictions come from this model and these flows", self.model_base_dir,
                           MANIFEST_PATTERN)

    def data_path(self, rel: str) -> Path:
        """A DataSplit path resolved against the data base directory (absolute paths are kept)."""
        return self.data_base_dir / rel

    def prediction_path(self, row: pd.Series | dict) -> Path:
        return prediction_path(self.model_base_dir, row["Flow"])

    def load_proba(self, row: pd.Series | dict) -> np.ndarray:
        """The row's probabilities, float32 (L, I, J), checked against the manifest when there is one."""
        path = self.prediction_path(row)
        proba = load_proba(path)
        if self.manifest is not None:
            self.check_belongs(row, path, proba)
        return proba

    def check_belongs(self, row: pd.Series | dict, path: Path, proba: np.ndarray) -> None:
        """Raise DataLoadingError unless the manifest records ``path`` as computed by this model
        from this row's flow, with these bytes and this shape."""
        rel = path.relative_to(self.model_base_dir).as_posix()
        entry = self.manifest.get(rel) if self.manifest is not None else None
        if entry is None:
            raise DataLoadingError(f"{path} is not in the predictions manifest of {self.model_base_dir} "
                                   "(left by an earlier run?): not scored")
        if file_sha256(path) != entry.proba_sha256:
            raise DataLoadingError(f"{path} changed after model_eval.py wrote it (its SHA-256 is not the manifest's)")
        if self.model_sha256 is not None and entry.model_sha256 != self.model_sha256:
            raise DataLoadingError(f"{path} was written by another model ({entry.model_sha256[:12]}) than the last "
                                   f"run's ({self.model_sha256[:12]}, eval_settings.json): stale")
        flow = self.data_path(row["Flow"])
        if not flow.is_file() or file_sha256(flow) != entry.flow_sha256:
            raise DataLoadingError(f"{path} was computed from another flow than {flow} (SHA-256 differs): stale")
        if tuple(proba.shape) != entry.shape:
            raise DataLoadingError(f"{path} has shape {proba.shape}; the manifest records {entry.shape}")

    def load_gt(self, row: pd.Series | dict) -> np.ndarray:
        """The row's ground truth, bool (H, W)."""
        return load_gt(self.data_path(row["GtMask"]))

    def load_image(self, row: pd.Series | dict) -> np.ndarray | None:
        """The row's RGB frame (H, W, 3) uint8 when an ``Image`` column exists and is readable."""
        rel = row.get("Image", "") if hasattr(row, "get") else ""
        if not rel:
            return None
        return load_image(self.data_path(rel))


#: the authors' name for it (their scripts and snippets import it)
DataLoadingModule = PredictionLoader
