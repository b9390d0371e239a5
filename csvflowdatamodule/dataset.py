"""File loaders and the DataSplit dataset (formats: docs/METHOD.md §3; flow files: emseg/core/flow_io.py).

The authors' path to these names is ``csvflowdatamodule.CsvDataset``, which re-exports this module.

A DataSplit CSV has one row per sample and columns among ``Flow`` (.flo or .npy), ``Image``
(RGB frame), ``GtMask`` (binary mask, any PNG) and ``FlowRGB`` (the flow's colour coding, as a
.png, or a .flo from which it is computed); paths are relative to ``base_dir``.

Tensors returned by :meth:`FilesLoaders.load_file`:

- ``Flow``    (2, H, W) float32, channel 0 = u (horizontal), channel 1 = v; vectors are never
  rescaled when the field is resized.
- ``Image``   (3, H, W) float32 in [-0.5, 0.5].
- ``GtMask``  (H, W) int64 in {0, 1}: every value > 0 is foreground.
- ``FlowRGB`` (3, H, W) float32 in [-0.5, 0.5].

Bad files raise :class:`DataFileError` (a ``ValueError``) whose message names the file and the
problem. :class:`CsvDataset` turns them into skipped samples (or errors with ``strict=True``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from torch import Tensor
from torch.utils.data import Dataset

# The flow files' reader, writer and colour coding live in emseg/core/flow_io.py (no project imports);
# they stay importable from here and from the authors' module.
from emseg.core.flow_io import (  # noqa: F401
    MAX_FLOW_MAGNITUDE,
    MAX_FLOW_SIDE,
    TAG_FLOAT,
    DataFileError,
    flow_to_rgb,
    read_flow,
    write_flow,
)
from emseg.core.masks import decode_mask
from emseg.core.skips import SkipRecord

logger = logging.getLogger(__name__)

FILE_TYPES: tuple[str, ...] = ("Flow", "Image", "GtMask", "FlowRGB")

__all__ = [
    "TAG_FLOAT",
    "FILE_TYPES",
    "DataFileError",
    "read_flow",
    "write_flow",
    "flow_to_rgb",
    "resize_tensor",
    "FilesLoaders",
    "CsvDataset",
]


# --------------------------------------------------------------------------------------------
# Images and masks
# --------------------------------------------------------------------------------------------
def _open_image(path: str) -> PILImage.Image:
    if not os.path.isfile(path):
        raise DataFileError(path, "missing file")
    try:
        im = PILImage.open(path)
        im.load()  # decode now, so corrupt or truncated data fails here
    except Exception as exc:
        raise DataFileError(path, f"unreadable image: {type(exc).__name__}: {exc}") from None
    return im


def _image_to_chw(path: str, im: PILImage.Image) -> np.ndarray:
    """PIL image of any common mode → float32 (3, H, W) in [-0.5, 0.5]."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        gray = np.asarray(im).astype(np.float32) / 65535.0
        arr = np.broadcast_to(gray[None], (3, *gray.shape))
    elif mode == "F":
        gray = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
        arr = np.broadcast_to(gray[None], (3, *gray.shape))
    else:
        try:
            # RGBA/LA drop alpha; L, 1, P, CMYK, YCbCr... convert to RGB.
            rgb = np.asarray(im if mode == "RGB" else im.convert("RGB"))
        except Exception as exc:
            raise DataFileError(path, f"cannot convert image mode {mode} to RGB: {exc}") from None
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise DataFileError(path, f"unexpected image shape {rgb.shape}")
        arr = rgb.transpose(2, 0, 1).astype(np.float32) / 255.0
    if arr.shape[1] < 1 or arr.shape[2] < 1:
        raise DataFileError(path, f"unexpected image shape {arr.shape}")
    return np.ascontiguousarray(arr - 0.5, dtype=np.float32)


def _mask_array(path: str, im: PILImage.Image) -> np.ndarray:
    """PIL mask of any mode (palette included) → bool (H, W), True where any value > 0: the
    evaluation's rule (``emseg.core.masks.decode_mask``), so training and scoring agree."""
    try:
        return decode_mask(im)
    except ValueError as exc:
        raise DataFileError(path, str(exc)) from None


# --------------------------------------------------------------------------------------------
# Resizing
# --------------------------------------------------------------------------------------------
def _check_img_size(img_size: Sequence[int] | None) -> tuple[int, int] | None:
    if img_size is None:
        return None
    size = tuple(int(s) for s in img_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"img_size must be two positive integers (H, W), got {img_size!r}")
    return size  # type: ignore[return-value]


def resize_tensor(t: Tensor, img_size: Sequence[int] | None, mode: str = "bilinear") -> Tensor:
    """Resize (C, H, W) or (H, W) to ``img_size`` (H', W').

    ``bilinear``: align_corners=False, no antialiasing (what the authors' torchvision 0.9 did);
    ``nearest`` for label maps. Values (e.g. flow vectors) are not rescaled. Keeps the dtype.
    """
    size = _check_img_size(img_size)
    if size is None or tuple(t.shape[-2:]) == size:
        return t
    squeeze = t.dim() == 2
    x = t[None, None] if squeeze else t[None]
    dtype = x.dtype
    x = x.float()
    if mode == "bilinear":
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
    elif mode == "nearest":
        x = F.interpolate(x, size=size, mode="nearest")
    else:
        raise ValueError(f"resize mode must be 'bilinear' or 'nearest', got {mode!r}")
    x = x[0, 0] if squeeze else x[0]
    return x.to(dtype)


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------
class FilesLoaders:
    """Load one file of a DataSplit column as a tensor (shapes in the module docstring).

    ``FilesLoaders().load_file(path, 'Flow', img_size=(128, 224))`` → (2, 128, 224) float32.
    """

    def __init__(self) -> None:
        self.loaders: dict[str, Callable[[str], Tensor]] = {
            "Flow": self.load_flow,
            "Image": self.load_image,
            "GtMask": self.load_mask,
            "FlowRGB": self.load_flow_rgb,
        }

    def load_file(self, path: str | os.PathLike, type: str, img_size: Sequence[int] | None = None) -> Tensor:
        """Load ``path`` as column ``type`` ('Flow', 'Image', 'GtMask' or 'FlowRGB'), resized to
        ``img_size`` (H, W) if given (bilinear; GtMask nearest); ``None`` keeps the file's size.
        """
        if type not in self.loaders:
            raise ValueError(f"unknown file type {type!r}; expected one of {list(self.loaders)}")
        size = _check_img_size(img_size)
        t = self.loaders[type](os.fspath(path))
        return resize_tensor(t, size, mode="nearest" if type == "GtMask" else "bilinear")

    @staticmethod
    def load_flow(path: str) -> Tensor:
        """.flo / .npy → (2, H, W) float32."""
        return torch.from_numpy(np.ascontiguousarray(read_flow(path).transpose(2, 0, 1)))

    @staticmethod
    def load_image(path: str) -> Tensor:
        """jpg/png (RGB, grayscale, RGBA, palette, 16-bit) → (3, H, W) float32 in [-0.5, 0.5]."""
        return torch.from_numpy(_image_to_chw(path, _open_image(path)))

    @staticmethod
    def load_mask(path: str) -> Tensor:
        """Any PNG (palette included) → (H, W) int64, 1 where the value is > 0."""
        return torch.from_numpy(_mask_array(path, _open_image(path)).astype(np.int64))

    @staticmethod
    def load_flow_rgb(path: str) -> Tensor:
        """Colour-coded flow: an image file, or a .flo/.npy coded with flowiz → (3, H, W) in [-0.5, 0.5]."""
        low = path.lower()
        if low.endswith(".flo") or low.endswith(".npy"):
            rgb = flow_to_rgb(read_flow(path)).transpose(2, 0, 1).astype(np.float32) / 255.0 - 0.5
            return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32))
        return FilesLoaders.load_image(path)


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------
def _read_csv(data_path: str) -> pd.DataFrame:
    if not os.path.isfile(data_path):
        raise FileNotFoundError(f"DataSplit CSV not found: {data_path}")
    try:
        df = pd.read_csv(data_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise ValueError(f"DataSplit CSV {data_path} is empty (no header row)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(f"DataSplit CSV {data_path} cannot be parsed: {' '.join(str(err).split())[:200]}") from None
    named = [c for c in df.columns if str(c).strip() in FILE_TYPES]
    looks_like_paths = [c for c in df.columns if os.path.splitext(str(c).strip())[1].lower()
                        in (".flo", ".npy", ".png", ".jpg", ".jpeg")]
    if not named and looks_like_paths:
        first_line = ",".join(map(str, df.columns))[:120]
        raise ValueError(f"DataSplit CSV {data_path} has no header row: its first line ({first_line}) holds paths; "
                         f"add a first line naming the columns, e.g. {','.join(FILE_TYPES[:3])}")
    return df


class CsvDataset(Dataset):
    """One split of a DataSplit: each item is a dict of tensors loaded from a CSV row.

    Parameters
    ----------
    data_path: the CSV file.
    base_dir: the directory the CSV's paths are relative to.
    img_size: (H, W) every tensor is resized to, or None to keep each file's size.
    request: the columns to load, e.g. ``('Flow', 'Image', 'GtMask')``.
    subsample: keep every ``subsample``-th row (rows 0, s, 2s, ...).
    transform: callable applied to every good item (e.g. a ``TransformsComposer``).
    optional: requested columns that may be absent from the CSV (they are then not loaded);
        any other requested column missing from the CSV is an error here.
    strict: raise :class:`DataFileError` on the first bad file instead of skipping the sample.

    An item is ``{'Flow': (2, H, W), ..., 'FlowPath': str, ..., 'Index': int}`` with a
    ``'{Type}Path'`` (the path as written in the CSV) per loaded column and ``'Index'`` the row
    index in the CSV. A sample with a bad file is ``{'Skipped': (index, path, reason)}``; it is
    logged once per file and recorded in :attr:`skipped` (per process: with DataLoader workers
    each worker keeps its own record, so batches carry the authoritative one).
    """

    def __init__(self, data_path: str | os.PathLike, base_dir: str | os.PathLike, img_size: Sequence[int] | None,
                 request: Iterable[str], subsample: int = 1, transform: Callable[[dict], dict] | None = None,
                 optional: Iterable[str] = ("GtMask", "Image"), strict: bool = False) -> None:
        super().__init__()
        self.data_path = os.fspath(data_path)
        self.base_dir = os.fspath(base_dir) if base_dir is not None else ""
        self.img_size = _check_img_size(img_size)
        request = list(dict.fromkeys(request))
        unknown = [r for r in request if r not in FILE_TYPES]
        if unknown:
            raise ValueError(f"unknown requested column(s) {unknown}; expected among {list(FILE_TYPES)}")
        if int(subsample) < 1:
            raise ValueError(f"subsample must be >= 1, got {subsample}")
        self.subsample = int(subsample)
        self.transform = transform
        self.strict = bool(strict)
        self.loaders = FilesLoaders()

        df = _read_csv(self.data_path)
        df.columns = [str(c).strip() for c in df.columns]
        optional = set(optional)
        missing = [r for r in request if r not in df.columns and r not in optional]
        if missing:
            raise ValueError(
                f"DataSplit CSV {self.data_path} lacks the requested column(s) {missing} "
                f"(it has {list(df.columns)})"
            )
        absent = [r for r in request if r not in df.columns]
        if absent:
            logger.info("%s has no column(s) %s: not loaded", self.data_path, absent)
        self.request = request
        self.columns: list[str] = [r for r in request if r in df.columns]
        if not self.columns:
            raise ValueError(f"none of the requested columns {request} is in {self.data_path}")
        dup = df[self.columns].duplicated(keep="first")
        if dup.any():
            first = df[self.columns].drop_duplicates(keep="first")
            shown = [f"row {i} repeats row {first.index[(first == df.loc[i, self.columns]).all(axis=1)][0]}"
                     for i in df.index[dup][:3]]
            logger.warning("DataSplit CSV %s has %d duplicate row(s) (%s%s): each copy is used as a separate "
                           "sample", self.data_path, int(dup.sum()), "; ".join(shown), " …" if dup.sum() > 3 else "")
        self.duplicate_rows = [int(i) for i in df.index[dup]]
        rows = df[self.columns].iloc[:: self.subsample]
        self.indices: list[int] = [int(i) for i in rows.index]
        self.rows: list[dict[str, str]] = rows.to_dict("records")
        if not self.rows:
            logger.warning("DataSplit CSV %s has no rows", self.data_path)
        self._skips = SkipRecord(logger)
        self.skipped = self._skips.skipped  #: index → (index, path, reason), this process's

    def __len__(self) -> int:
        return len(self.rows)

    def _skip(self, index: int, path: str, reason: str) -> dict[str, Any]:
        if self.strict:
            raise DataFileError(path, f"{reason} (row {index} of {self.data_path}; strict data mode)")
        return self._skips.skip(index, path, reason, "skipping sample %d of %s: %s: %s", index, self.data_path,
                                path, reason)

    def load_row(self, idx: int) -> dict[str, Any]:
        """The untransformed item of position ``idx`` (``{'Flow': (2, H, W), ..., 'FlowPath': str,
        ..., 'Index': int}``); a bad file (missing, corrupt, an empty cell, columns of different
        sizes) raises :class:`DataFileError` naming it, and nothing is recorded here (callers such
        as :meth:`__getitem__` and ``csvflowdatamodule.clips.CsvClipDataset`` record the skip)."""
        row = self.rows[idx]
        index = self.indices[idx]
        item: dict[str, Any] = {}
        for col in self.columns:
            rel = str(row[col]).strip()
            if not rel:
                raise DataFileError(f"<empty {col} cell, row {index}>", f"empty path in column {col}")
            full = os.path.join(self.base_dir, rel)
            item[col] = self.loaders.load_file(full, col, self.img_size)
            item[f"{col}Path"] = rel
        sizes = {col: tuple(item[col].shape[-2:]) for col in self.columns}
        if len(set(sizes.values())) > 1:
            raise DataFileError(str(row[self.columns[0]]), f"columns disagree in size {sizes}")
        item["Index"] = index
        return item

    def __getitem__(self, idx: int) -> dict[str, Any]:
        try:
            item = self.load_row(idx)
        except DataFileError as err:
            return self._skip(self.indices[idx], err.path, err.reason)
        if self.transform is not None:
            item = self.transform(item)
        return item

    def skipped_report(self) -> dict[str, Any]:
        """``{'count': n, 'samples': [(index, path, reason), ...]}`` for this process."""
        return self._skips.report()

    def __repr__(self) -> str:
        return (f"CsvDataset({self.data_path!r}, {len(self)} samples, columns={self.columns}, "
                f"img_size={self.img_size}, subsample={self.subsample})")
