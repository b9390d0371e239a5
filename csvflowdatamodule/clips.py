"""Clips of T consecutive flows of one sequence, from a DataSplit CSV (the frames' format:
``csvflowdatamodule.dataset``).

A **sequence** is the folder of a row's ``Flow`` file, as written in the CSV (``Flows/seq_003`` for
``Flows/seq_003/00007.flo``; the first loaded column's folder when ``Flow`` is not loaded).
Sequences come in the order of their first row in the CSV; inside a sequence the frames are sorted
by file name, numbers compared as numbers (``f_2`` before ``f_10``; equal names keep the CSV's
order). *Consecutive* means consecutive in that order: the frame numbers themselves are not
checked for gaps (a CSV listing every 20th frame gives clips of every 20th frame).

Clips of a sequence of N frames, for ``clip_length`` T and ``clip_stride`` S: they start at frames
0, S, 2S, … while a whole clip fits (start + T ≤ N), i.e. ``(N - T) // S + 1`` clips. A clip never
crosses a sequence boundary and is never shortened.

- **Tail**: with S > 1 the last ``(N - T) % S`` frames may be in no clip. By default they stay
  uncovered (every clip is on the stride's grid); ``cover_tail=True`` adds one last clip aligned
  to the sequence's end (start N - T), which overlaps the previous one.
- **Short sequences** (N < T) give no clip: they are logged (one warning) and recorded in
  :meth:`CsvClipDataset.skipped_report` under ``'left_out'`` — never served shortened.
- A row whose ``Flow`` cell is empty cannot be placed in a sequence, and a row that repeats a
  ``Flow`` file of its sequence would put one frame twice in a clip: both are left out of the
  clips and recorded under ``'left_out'`` too (an empty cell raises with ``strict=True``).

An item (``clip_length`` T, ``img_size`` (I, J)) — time is the axis after the channels, so that a
batch from :func:`csvflowdatamodule.CsvDataModule.collate_skipping` is (B, C, T, I, J):

- ``'Flow'``    (2, T, I, J) float32 (channel 0 = u, 1 = v),
- ``'Image'``   (3, T, I, J) float32, ``'FlowRGB'`` (3, T, I, J) float32,
- ``'GtMask'``  (T, I, J) int64 (batch (B, T, I, J)),
- ``'FlowPath'``, ``'ImagePath'``, … lists of T paths (as written in the CSV), one per loaded column,
- ``'Index'``   int: the clip's number among all the clips of the CSV (before ``subsample``),
- ``'Sequence'`` str: the sequence (folder) name,
- ``'FrameIndices'`` (T,) int64: the frames' positions in their sequence (start, start + 1, …),
- ``'RowIndices'`` (T,) int64: the frames' row indices in the CSV.

A clip one of whose files is bad (missing, corrupt, an empty cell, columns or frames of different
sizes) is skipped whole: the item is ``{'Skipped': (index, path, reason)}`` (``index`` the clip's
``'Index'``, ``path`` the bad file, ``reason`` the loader's words), logged once per file and
recorded in :attr:`CsvClipDataset.skipped`, exactly as :class:`CsvDataset` does for frames.

Transforms: a transform with a ``clip`` method (``TransformsComposer``) is applied through it, with
one random draw per clip (the same global motion on all T frames, normalisation by the clip's
statistics: ``csvflowdatamodule.Transforms``); any other callable gets the clip item as it is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from csvflowdatamodule.dataset import CsvDataset, DataFileError
from emseg.core.datasplit import frame_order_key, sequence_folder
from emseg.core.skips import SkipRecord

logger = logging.getLogger(__name__)

__all__ = ["ClipSpec", "CsvClipDataset", "clip_starts", "sequence_of"]


@dataclass(frozen=True)
class ClipSpec:
    """One clip: its sequence and, per frame, the position in the frame dataset, the CSV row and
    the position in the sequence."""

    index: int  # the clip's number among all the clips of the CSV
    sequence: str
    positions: tuple[int, ...]  # into CsvDataset.rows
    rows: tuple[int, ...]  # CSV row indices
    frames: tuple[int, ...]  # positions in the sequence


def clip_starts(n_frames: int, clip_length: int, clip_stride: int = 1, cover_tail: bool = False) -> list[int]:
    """The first frames of the clips of a sequence of ``n_frames`` frames: 0, S, 2S, … while
    start + T ≤ N, plus N − T when ``cover_tail`` and the tail is uncovered; [] when N < T."""
    if int(clip_length) < 1:
        raise ValueError(f"clip_length must be >= 1, got {clip_length}")
    if int(clip_stride) < 1:
        raise ValueError(f"clip_stride must be >= 1, got {clip_stride}")
    n, t, s = int(n_frames), int(clip_length), int(clip_stride)
    starts = list(range(0, n - t + 1, s))
    if cover_tail and starts and starts[-1] + t < n:
        starts.append(n - t)
    return starts


#: the sequence of a CSV path: its folder (``emseg.core.datasplit.sequence_folder``)
sequence_of = sequence_folder


class CsvClipDataset(Dataset):
    """One split of a DataSplit served as clips of ``clip_length`` consecutive frames (module
    docstring: sequences, order, tail, item keys and shapes, skips).

    Parameters
    ----------
    data_path, base_dir, img_size, request, optional, strict: as :class:`CsvDataset` (which loads
        the frames; its :meth:`CsvDataset.load_row` is reused, so files are read and checked alike).
    clip_length: T, frames per clip (>= 1).
    clip_stride: S, frames between the starts of two clips of a sequence (>= 1).
    subsample: keep every ``subsample``-th clip (clips 0, s, 2s, … of the CSV's clip list).
    transform: applied to every good clip item: ``transform.clip(item)`` when it has that method
        (``TransformsComposer``: one draw per clip), else ``transform(item)``.
    cover_tail: add a last clip aligned to each sequence's end when the stride leaves its last
        frames uncovered (default: no).
    """

    def __init__(self, data_path: str | os.PathLike, base_dir: str | os.PathLike, img_size: Sequence[int] | None,
                 request: Iterable[str], clip_length: int, clip_stride: int = 1, subsample: int = 1,
                 transform: Callable[[dict], dict] | None = None, optional: Iterable[str] = ("GtMask", "Image"),
                 strict: bool = False, cover_tail: bool = False) -> None:
        super().__init__()
        for name, value in (("clip_length", clip_length), ("clip_stride", clip_stride), ("subsample", subsample)):
            if isinstance(value, bool) or int(value) != value or int(value) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.clip_length = int(clip_length)
        self.clip_stride = int(clip_stride)
        self.subsample = int(subsample)
        self.cover_tail = bool(cover_tail)
        self.transform = transform
        self.strict = bool(strict)
        self.frames = CsvDataset(data_path, base_dir, img_size, request, subsample=1, transform=None,
                                 optional=optional, strict=strict)
        self.data_path = self.frames.data_path
        self.base_dir = self.frames.base_dir
        self.img_size = self.frames.img_size
        self.columns = self.frames.columns
        self.request = self.frames.request
        self.key_column = "Flow" if "Flow" in self.columns else self.columns[0]
        #: (CSV row index, path, reason) of what gives no clip (module docstring)
        self.left_out: list[tuple[int, str, str]] = []
        self.sequences: dict[str, list[int]] = self._group()
        self.all_clips: list[ClipSpec] = []
        for seq, positions in self.sequences.items():
            starts = clip_starts(len(positions), self.clip_length, self.clip_stride, self.cover_tail)
            if not starts:
                first = self.frames.indices[positions[0]]
                reason = f"sequence of {len(positions)} frame(s), shorter than clip_length {self.clip_length}"
                self.left_out.append((first, seq + "/" if seq else "./", reason))
                logger.warning("%s: no clip from sequence %r: %s", self.data_path, seq, reason)
            for s in starts:
                pos = tuple(positions[s: s + self.clip_length])
                self.all_clips.append(ClipSpec(len(self.all_clips), seq, pos,
                                               tuple(self.frames.indices[p] for p in pos),
                                               tuple(range(s, s + self.clip_length))))
        self.clips: list[ClipSpec] = self.all_clips[:: self.subsample]
        if not self.clips:
            logger.warning("%s gives no clip of %d frames (%d sequence(s))", self.data_path, self.clip_length,
                           len(self.sequences))
        self._skips = SkipRecord(logger)
        self.skipped = self._skips.skipped  #: clip index → (clip index, path, reason), this process's

    # ----------------------------------------------------------------------------------------
    def _group(self) -> dict[str, list[int]]:
        """Sequence → positions into ``self.frames.rows``, sorted by file name."""
        col = self.key_column
        groups: dict[str, list[int]] = {}
        for pos, row in enumerate(self.frames.rows):
            rel = str(row[col]).strip()
            if not rel:
                index = self.frames.indices[pos]
                path, reason = f"<empty {col} cell, row {index}>", f"empty path in column {col}"
                if self.strict:
                    raise DataFileError(path, f"{reason} (row {index} of {self.data_path}; strict data mode)")
                self.left_out.append((index, path, reason))
                logger.warning("%s: row %d left out of the clips: %s", self.data_path, index, reason)
                continue
            groups.setdefault(sequence_of(rel), []).append(pos)
        out: dict[str, list[int]] = {}
        for seq, positions in groups.items():
            positions = sorted(positions, key=lambda p: frame_order_key(self.frames.rows[p][col]))
            kept: list[int] = []
            seen: dict[str, int] = {}
            for p in positions:
                rel = str(self.frames.rows[p][col]).strip()
                if rel in seen:
                    index = self.frames.indices[p]
                    reason = f"repeats row {seen[rel]} in sequence {seq!r}"
                    self.left_out.append((index, rel, reason))
                    logger.warning("%s: row %d left out of the clips: %s", self.data_path, index, reason)
                    continue
                seen[rel] = self.frames.indices[p]
                kept.append(p)
            out[seq] = kept
        return out

    def __len__(self) -> int:
        return len(self.clips)

    def _skip(self, clip: ClipSpec, path: str, reason: str) -> dict[str, Any]:
        if self.strict:
            raise DataFileError(path, f"{reason} (clip {clip.index}, rows {list(clip.rows)} of {self.data_path}; "
                                      "strict data mode)")
        return self._skips.skip(clip.index, path, reason, "skipping clip %d (sequence %r, rows %s) of %s: %s: %s",
                                clip.index, clip.sequence, list(clip.rows), self.data_path, path, reason)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        clip = self.clips[idx]
        frames: list[dict[str, Any]] = []
        for pos in clip.positions:
            try:
                frames.append(self.frames.load_row(pos))
            except DataFileError as err:
                return self._skip(clip, err.path, err.reason)
        for t, frame in enumerate(frames[1:], start=1):
            for col in self.columns:
                if frame[col].shape != frames[0][col].shape:
                    sizes = {frames[k][f"{col}Path"]: tuple(frames[k][col].shape[-2:]) for k in (0, t)}
                    return self._skip(clip, frame[f"{col}Path"], f"frames of the clip disagree in size {sizes}")
        item: dict[str, Any] = {}
        for col in self.columns:
            # (C, T, I, J) for Flow/Image/FlowRGB; (T, I, J) for GtMask
            item[col] = torch.stack([f[col] for f in frames], dim=0 if col == "GtMask" else 1)
            item[f"{col}Path"] = [f[f"{col}Path"] for f in frames]
        item["Index"] = clip.index
        item["Sequence"] = clip.sequence
        item["FrameIndices"] = torch.tensor(clip.frames, dtype=torch.long)
        item["RowIndices"] = torch.tensor(clip.rows, dtype=torch.long)
        if self.transform is not None:
            clip_transform = getattr(self.transform, "clip", None)
            item = clip_transform(item) if callable(clip_transform) else self.transform(item)
        return item

    def skipped_report(self) -> dict[str, Any]:
        """``{'count': n, 'samples': [(clip index, path, reason), ...], 'left_out': [(CSV row,
        path, reason), ...]}`` for this process: ``count``/``samples`` as :class:`CsvDataset`'s
        (clips skipped when loaded), ``left_out`` what gave no clip when the dataset was built
        (short sequences, with their folder and first row; empty or repeated ``Flow`` cells)."""
        return {**self._skips.report(), "left_out": list(self.left_out)}

    def __repr__(self) -> str:
        return (f"CsvClipDataset({self.data_path!r}, {len(self)} clips of {self.clip_length} frames "
                f"(stride {self.clip_stride}) from {len(self.sequences)} sequence(s), columns={self.columns}, "
                f"img_size={self.img_size}, subsample={self.subsample})")
