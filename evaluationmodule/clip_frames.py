"""Every frame of a split with its clip: how a temporal model (``clip_length`` T > 1) is evaluated per frame.

``model_eval.py`` scores frames: one row, one ``_proba.npy``, one mask and one figure per frame of the
DataSplit, in CSV order, each exactly once. A temporal model predicts clips. :class:`FrameClipDataset`
serves each frame of a frame dataset (``csvflowdatamodule.dataset.CsvDataset``, read through its
``rows``, ``indices``, ``load_row`` and ``transform``) with the clip it is predicted from:

- **the clip** of frame p of a sequence of N frames is centred on it: frames p − ⌊(T − 1)/2⌋ … p + ⌈(T − 1)/2⌉,
  each clamped into 0 … N − 1, so at a sequence's ends (and in a sequence shorter than T) its first or last
  frame is repeated and the frame stays at the clip's centre. Every frame gets exactly one prediction: none
  lost, none duplicated. Why centred: the clip's off-centre outputs are the weaker ones; on the synthetic
  validation split (seed 1) the bundled temporal model scored J 0.845 with the window shifted inward at the
  ends (the previous rule) and 0.864 with it centred, the sequences' first and last frames making the
  difference (docs/METHOD.md §5).
- **sequences and order** are ``csvflowdatamodule/clips.py``'s (``emseg.core.datasplit``'s
  ``sequence_folder`` and ``frame_order_key``): a sequence is the folder of the row's ``Flow`` path as
  written in the CSV, frames sorted by file name with numbers compared as numbers
  (``tests/test_temporal_model.py`` checks that both give the same clips).
- **the item** is the frame's own (``Flow`` (2, I, J), ``Image``, ``GtMask`` (I, J), ``FlowPath`` …,
  ``Index`` its CSV row), plus ``ClipFlow`` (2, T, I, J) (``ClipImage``, ``ClipFlowRGB`` (3, T, I, J) when
  loaded), ``ClipFrame`` (the frame's place in its clip) and ``ClipRows`` (T,) (the clip's CSV rows). The
  transform is applied to the clip (``transform.clip``: normalisation by the clip's statistics, as in
  training) and the frame's own tensors are its slice of the transformed clip, so they are what the
  network saw.
- **a bad file** in a frame's clip skips that frame (``{'Skipped': (row, path, reason)}``, recorded in
  :attr:`FrameClipDataset.skipped`, as the frame dataset records its own), with the clip's frame named.

Each frame reads its T frames' files (T times the frame evaluation's reading); the network runs once per
frame on its clip.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from emseg.core.datasplit import frame_order_key, sequence_folder
from emseg.core.flow_io import DataFileError
from emseg.core.skips import SkipRecord

logger = logging.getLogger(__name__)

#: the frame columns that get a clip (``Clip<name>``, (C, T, I, J)); ground truth stays the frame's
CLIP_COLUMNS = ("Flow", "Image", "FlowRGB")


def clip_window(position: int, n_frames: int, clip_length: int) -> tuple[list[int], int]:
    """The clip of frame ``position`` of a sequence of ``n_frames``: (its T positions in the sequence,
    the frame's place among them); the module docstring's rule."""
    if n_frames < 1 or not 0 <= position < n_frames or clip_length < 1:
        raise ValueError(f"clip_window: frame {position} of {n_frames}, clip_length {clip_length}")
    T = int(clip_length)
    before = (T - 1) // 2
    return [min(max(position + k - before, 0), n_frames - 1) for k in range(T)], before


class FrameClipDataset(torch.utils.data.Dataset):
    """The frames of ``frames`` (a ``CsvDataset``), each with its clip of ``clip_length`` frames
    (module docstring). ``rows``, ``indices``, ``data_path`` and ``len`` are the frame dataset's."""

    def __init__(self, frames: Any, clip_length: int) -> None:
        super().__init__()
        if isinstance(clip_length, bool) or int(clip_length) != clip_length or int(clip_length) < 2:
            raise ValueError(f"clip_length must be an integer >= 2, got {clip_length!r}")
        self.frames = frames
        self.T = int(clip_length)
        self.rows = frames.rows
        self.indices = frames.indices
        self.data_path = frames.data_path
        self.transform = getattr(frames, "transform", None)
        self._skips = SkipRecord(logger)
        self.skipped = self._skips.skipped  #: row → (row, path, reason), this process's
        key = "Flow" if "Flow" in frames.columns else frames.columns[0]
        groups: dict[str, list[int]] = {}
        for pos, row in enumerate(frames.rows):
            rel = str(row[key]).strip()
            # an empty cell is its own sequence of one frame: loading it reports the bad cell
            groups.setdefault(sequence_folder(rel) if rel else f"<row {frames.indices[pos]}>", []).append(pos)
        #: position → (the positions of its clip in the frame dataset, the frame's place in it)
        self.windows: list[tuple[tuple[int, ...], int]] = [((), 0)] * len(frames.rows)
        for positions in groups.values():
            positions = sorted(positions, key=lambda p: frame_order_key(frames.rows[p][key]))
            for k, pos in enumerate(positions):
                window, at = clip_window(k, len(positions), self.T)
                self.windows[pos] = (tuple(positions[w] for w in window), at)
        self.sequences = len(groups)

    def __len__(self) -> int:
        return len(self.rows)

    def _skip(self, idx: int, path: str, reason: str) -> dict[str, Any]:
        index = self.indices[idx]
        if getattr(self.frames, "strict", False):
            raise DataFileError(path, f"{reason} (in the clip of row {index} of {self.data_path}; strict data mode)")
        return self._skips.skip(index, path, reason, "skipping frame %d of %s: its clip's %s: %s", index,
                                self.data_path, path, reason)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        window, at = self.windows[idx]
        loaded: dict[int, dict[str, Any]] = {}
        try:
            for pos in window:
                if pos not in loaded:
                    loaded[pos] = self.frames.load_row(pos)
        except DataFileError as err:
            return self._skip(idx, err.path, err.reason)
        items = [loaded[pos] for pos in window]
        columns = [c for c in self.frames.columns if c in items[0]]
        for col in columns:
            if any(it[col].shape != items[0][col].shape for it in items):
                sizes = sorted({tuple(it[col].shape[-2:]) for it in items})
                return self._skip(idx, items[at][f"{col}Path"], f"frames of its clip disagree in size {sizes}")
        clip_transform = getattr(self.transform, "clip", None)
        if self.transform is not None and not callable(clip_transform):
            items = [self.transform(dict(it)) for it in items]
        clip: dict[str, Any] = {col: torch.stack([it[col] for it in items], dim=0 if col == "GtMask" else 1)
                                for col in set(items[0]) & ({*columns, "LossFlow"})}
        if callable(clip_transform):
            clip = clip_transform(clip)
        own = items[at]
        out: dict[str, Any] = {k: v for k, v in own.items() if not isinstance(v, torch.Tensor)}
        for col, value in clip.items():
            out[col] = value[at] if col == "GtMask" else value[:, at]
            if col in CLIP_COLUMNS:
                out["Clip" + col] = value
        out["Index"] = self.indices[idx]
        out["ClipFrame"] = at
        out["ClipRows"] = torch.tensor([self.indices[p] for p in window], dtype=torch.long)
        return out

    def skipped_report(self) -> dict[str, Any]:
        """``{'count': n, 'samples': [(row, path, reason), ...]}`` for this process."""
        return self._skips.report()

    def __repr__(self) -> str:
        return (f"FrameClipDataset({self.data_path!r}, {len(self)} frames from {self.sequences} sequence(s), "
                f"each with its clip of {self.T})")
