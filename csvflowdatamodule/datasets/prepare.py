"""``prepare``: flows, merged ground truth and DataSplit CSVs for a benchmark read by ``layouts``.

For each sequence, frame t gets the flow from frame t to frame t + gap (the paper's direction and
gap); the last ``gap`` frames, which have no frame t + gap, get the negated flow from t to t − gap,
so that every frame of the authors' DataSplits has its file. Flows are written as Middlebury
``.flo`` beside their colour coding ``.flo.png`` (the FlowRGB column), through a temporary name.

Resumable: ``{flow_root}/prepare_manifest.json`` records the settings (method, gap, RAFT weights'
SHA-1 and iterations) and, per sequence, a signature of its frames (names and sizes) and the
flows' shape. A rerun skips a complete sequence whose signature is unchanged and whose ``.flo``
files all have the expected size and header (and whose ``.flo.png`` exist); otherwise it computes
only the missing or damaged flows. Merged masks are checked by their SHA-1. Another method, gap or
weights in the same folder is refused (:class:`PreparationMismatchError`) unless ``overwrite``.

An unreadable frame (or a pair of frames of different sizes) is skipped and recorded in
``{out}/{NAME}_skipped.csv`` (``sequence, file, reason``), as is a frame without ground truth where
the dataset annotates every frame; its rows are left out of the CSVs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from csvflowdatamodule.datasets.layouts import (
    DATASETS,
    DAVIS_FLOW_DIR,
    FLOW_DIR,
    Layout,
    LayoutError,
    SequenceEntry,
)
from csvflowdatamodule.extract_flow import METHODS, flo_is_complete, make_batch_estimator
from emseg.core.atomic_io import atomic_write, atomic_write_image, atomic_write_text
from emseg.core.flow_io import flow_to_rgb, write_flow

logger = logging.getLogger(__name__)

MANIFEST = "prepare_manifest.json"
MANIFEST_VERSION = 1
STEPS = ("train", "val", "test")


class PreparationMismatchError(ValueError):
    """The flow folder holds flows made with other settings (method, gap or weights)."""


def _sha1_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _signature(root: Path, seq: SequenceEntry, gt: bool = True) -> str:
    """SHA-1 of the sequence's frame (and, with ``gt``, ground-truth) file names and sizes: what its
    flows (masks) depend on."""
    h = hashlib.sha1()
    for f in seq.frames:
        for rel in (f.image, *(f.gt if gt else ())):
            try:
                size = (root / rel).stat().st_size
            except OSError:
                size = -1
            h.update(f"{rel}:{size}\n".encode())
    return h.hexdigest()


def _read_rgb(path: Path) -> np.ndarray:
    im = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if im is None or im.size == 0:
        raise ValueError("unreadable image")
    return cv2.cvtColor(im, cv2.COLOR_BGR2RGB)


def _read_gt_plane(path: Path) -> np.ndarray:
    """A ground-truth file (png, bmp, pgm, ppm) → array (H, W) or (H, W, C), alpha dropped."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode == "P":
            return np.asarray(im)
        arr = np.asarray(im.convert("RGB") if im.mode in ("RGBA", "LA", "PA", "CMYK", "YCbCr") else im)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return arr


def background_colour(arr: np.ndarray) -> np.ndarray:
    """The most frequent value (colour) of a mask's border pixels: FBMS's background.

    arr (H, W) or (H, W, C) → (C,) (or (1,)); ties go to the lowest value.
    """
    a = arr.reshape(arr.shape[0], arr.shape[1], -1)
    border = np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]], axis=0)
    values, counts = np.unique(border, axis=0, return_counts=True)
    return values[int(np.argmax(counts))]


def merge_gt(paths: Sequence[Path], rule: str) -> np.ndarray:
    """The benchmark's binary foreground of one frame (H, W) bool.

    ``union`` (SegTrackV2): every pixel > 0 (any channel) in any of the objects' masks;
    ``fbms`` (FBMS-59): every pixel whose colour differs from the background colour (the most
    frequent colour of the border); ``as_is``: every pixel > 0 of the one mask.
    """
    out: np.ndarray | None = None
    for p in paths:
        arr = _read_gt_plane(Path(p))
        if rule == "fbms":
            bg = background_colour(arr)
            fg = (arr.reshape(arr.shape[0], arr.shape[1], -1) != bg).any(-1)
        else:
            fg = arr > 0 if arr.ndim == 2 else (arr > 0).any(-1)
        if out is not None and out.shape != fg.shape:
            raise ValueError(f"{p}: mask of size {fg.shape}, the frame's other masks are {out.shape}")
        out = fg if out is None else (out | fg)
    if out is None:
        raise ValueError("no ground-truth file")
    return out


def _png_bytes(mask: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", mask.astype(np.uint8) * 255)
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 plane
        raise OSError("cannot encode a mask")
    return buf.tobytes()


def _flow_dir_name(dataset: str, flow_dir: str | None, gap: int) -> str:
    if flow_dir:
        return flow_dir
    base = DAVIS_FLOW_DIR if dataset.startswith("davis") else FLOW_DIR
    return base if gap == 1 else f"{base}_gap{gap}"


class _Manifest:
    def __init__(self, path: Path, settings: dict[str, Any], overwrite: bool, root: Path) -> None:
        self.path = path
        old: dict[str, Any] | None = None
        if path.is_file():
            try:
                old = json.loads(path.read_text())
            except ValueError:
                old = {"settings": "<unreadable manifest>"}
        if old is not None and old.get("settings") != settings:
            diffs = [k for k in settings if not isinstance(old.get("settings"), dict)
                     or old["settings"].get(k) != settings[k]]
            msg = (f"{path.parent} holds flows made with other settings (differs in {diffs}: was "
                   f"{[old['settings'].get(k) for k in diffs] if isinstance(old.get('settings'), dict) else '?'}, "
                   f"now {[settings[k] for k in diffs]})")
            if not overwrite:
                raise PreparationMismatchError(msg + ": use --flow_dir NAME for another folder, or --overwrite")
            logger.warning("%s: overwriting", msg)
            for seq, rec in (old.get("sequences") or {}).items():
                for stem in rec.get("flows", []):
                    for suffix in (".flo", ".flo.png"):
                        (path.parent / seq / f"{stem}{suffix}").unlink(missing_ok=True)
            old = None
        self.data: dict[str, Any] = {"version": MANIFEST_VERSION, "settings": settings,
                                     "sequences": {}, "masks": {}}
        if old:
            self.data["sequences"] = dict(old.get("sequences") or {})
            self.data["masks"] = dict(old.get("masks") or {})

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=1, sort_keys=True) + "\n")


def prepare(dataset: str, root: str | os.PathLike, out: str | os.PathLike | None = None, method: str = "dis",
            gap: int = 1, raft_weights: str | os.PathLike | None = None, raft_iters: int = 12,
            device: str | None = None, batch_size: int = 8, flow_dir: str | None = None, fbms_set: str = "test",
            all_frames: bool = False, flow_rgb: bool = True, sequences: Sequence[str] | None = None,
            overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Prepare one benchmark under ``root`` (see the module docstring and ``layouts``).

    Args:
        dataset: ``davis2016`` | ``davis2017`` | ``segtrackv2`` | ``fbms59``.
        root: the folder holding the dataset's folder; the CSVs' paths are relative to it (``--base_dir``).
        out: where the DataSplit CSVs go (default ``root/DataSplit``).
        method, gap, raft_weights, raft_iters, device: the flow (``extract_flow``'s estimators).
        batch_size: pairs per estimator call (one RAFT forward pass on the GPU).
        flow_dir: the flow folder's name (default ``OpticalFlow020321`` for DAVIS, ``OpticalFlow`` otherwise,
            ``_gap{g}`` appended for a gap other than 1).
        fbms_set: ``test`` (FBMS's Testset, the evaluation set) | ``train`` | ``all``.
        all_frames: FBMS: a flow for every frame (for training), not only the annotated ones.
        flow_rgb: write ``.flo.png`` and the FlowRGB column.
        sequences: prepare only these sequences (the CSVs keep the rows an earlier run prepared for the others).

    Returns a summary: ``dataset``, ``data_file`` (the CSV prefix), ``csv_files``, ``n_sequences``,
    ``n_rows`` (per step), ``computed`` / ``reused`` flows, ``masks_written``, ``skipped`` (list of
    (sequence, file, reason)), ``missing_sequences``, ``seconds``.
    """
    t0 = time.perf_counter()
    if dataset not in DATASETS:
        raise LayoutError(f"unknown dataset {dataset!r}; expected one of {list(DATASETS)}")
    if method not in METHODS:
        raise ValueError(f"--method must be one of {list(METHODS)}, got {method!r}")
    if int(gap) < 1:
        raise ValueError(f"--gap must be >= 1, got {gap}")
    if int(batch_size) < 1:
        raise ValueError(f"--batch_size must be >= 1, got {batch_size}")
    gap = int(gap)
    root = Path(root)
    fdir = _flow_dir_name(dataset, flow_dir, gap)
    kwargs: dict[str, Any] = {"fbms_set": fbms_set, "all_frames": all_frames} if dataset == "fbms59" else {}
    layout = DATASETS[dataset](root, fdir, **kwargs)
    if sequences:
        unknown = sorted(set(sequences) - {s.name for s in layout.sequences})
        if unknown:
            raise LayoutError(f"{dataset}: --sequences {unknown} not found under {root}")
    todo_seqs = [s for s in layout.sequences if not sequences or s.name in set(sequences)]
    if gap != 1:
        layout.split_name = f"{layout.split_name}_gap{gap}"
    out_dir = Path(out) if out is not None else root / "DataSplit"

    settings: dict[str, Any] = {"dataset": dataset, "method": method, "gap": gap}
    if method == "raft":
        if raft_weights is None or not Path(raft_weights).is_file():
            make_batch_estimator(method, raft_weights, device, raft_iters)  # raises the explanatory error
        settings.update(raft_weights_sha1=_sha1_file(Path(raft_weights)), raft_iters=int(raft_iters))
    flow_root = root / layout.flow_root
    flow_root.mkdir(parents=True, exist_ok=True)
    manifest = _Manifest(flow_root / MANIFEST, settings, overwrite, root)
    estimator = None

    def get_estimator():
        nonlocal estimator
        if estimator is None:
            estimator = make_batch_estimator(method, raft_weights, device, raft_iters)
        return estimator

    skipped: list[tuple[str, str, str]] = []
    computed = reused = masks_written = 0
    rows_by_seq: dict[str, list[dict[str, str]]] = {}
    seq_bar = tqdm(todo_seqs, desc=dataset, unit="seq", disable=None if progress else True)
    for seq in seq_bar:
        seq_bar.set_postfix_str(seq.name)
        c, r, flows, seq_skipped = _sequence_flows(layout, seq, gap, batch_size, flow_rgb, manifest, get_estimator,
                                                   progress)
        computed, reused = computed + c, reused + r
        skipped += seq_skipped
        m, gts, gt_skipped = _sequence_masks(layout, seq, manifest)
        masks_written += m
        skipped += gt_skipped
        rows_by_seq[seq.name] = _rows(layout, seq, flows, gts, flow_rgb)
        manifest.save()
    seq_bar.close()
    for seq in layout.sequences:  # not asked for this time: the rows of what an earlier run prepared
        if seq.name not in rows_by_seq:
            rows_by_seq[seq.name] = _rows(layout, seq, *_prepared(layout, seq, manifest), flow_rgb)

    csv_files, n_rows = _write_splits(layout, out_dir, rows_by_seq, flow_rgb)
    skipped_csv = out_dir / f"{layout.split_name}_skipped.csv"
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["sequence", "file", "reason"])
    w.writerows(skipped)
    atomic_write_text(skipped_csv, buf.getvalue())
    if skipped:
        logger.warning("%s: %d file(s) skipped, listed in %s", dataset, len(skipped), skipped_csv)
    return {"dataset": dataset, "data_file": str(out_dir / layout.split_name), "base_dir": str(root),
            "csv_files": csv_files, "n_sequences": len(todo_seqs), "n_rows": n_rows, "computed": computed,
            "reused": reused, "masks_written": masks_written, "skipped": skipped, "skipped_csv": str(skipped_csv),
            "missing_sequences": layout.missing, "flow_root": str(flow_root), "seconds": time.perf_counter() - t0}


def flow_pairs(n: int, gap: int) -> list[tuple[int, int, bool]]:
    """(t, partner, backward) for frames 0..n−1: partner t + gap, or t − gap (backward, negated) for
    the last ``gap`` frames; frames with neither are left out."""
    out = []
    for t in range(n):
        if t + gap < n:
            out.append((t, t + gap, False))
        elif t - gap >= 0:
            out.append((t, t - gap, True))
    return out


def _sequence_flows(layout: Layout, seq: SequenceEntry, gap: int, batch_size: int, flow_rgb: bool,
                    manifest: _Manifest, get_estimator, progress: bool
                    ) -> tuple[int, int, set[str], list[tuple[str, str, str]]]:
    """Compute the sequence's missing flows; return (computed, reused, stems with a flow, skipped)."""
    root = layout.root
    sdir = root / layout.flow_root / seq.name
    wanted = {i for i, f in enumerate(seq.frames) if layout.flow_frames == "all" or f.gt}
    pairs = [p for p in flow_pairs(len(seq.frames), gap) if p[0] in wanted]
    sig = _signature(root, seq, gt=False)
    rec = manifest.data["sequences"].get(seq.name) or {}
    if rec and rec.get("signature") != sig:  # the frames changed: their old flows are not reused
        rec = {"changed": True}
    shape = tuple(rec["shape"]) if rec.get("shape") else None

    def complete(stem: str, shp: tuple[int, int] | None) -> bool:
        return (shp is not None and flo_is_complete(sdir / f"{stem}.flo", shp)
                and (not flow_rgb or (sdir / f"{stem}.flo.png").is_file()))

    stems = [seq.frames[t].stem for t, _, _ in pairs]
    if rec.get("complete") and rec.get("signature") == sig and set(rec.get("flows", [])) >= set(stems) \
            and all(complete(s, shape) for s in stems):
        return 0, len(stems), set(rec["flows"]) & set(stems), [tuple(x) for x in rec.get("skipped", [])]

    cache: dict[int, np.ndarray | str] = {}

    def frame(t: int) -> np.ndarray | str:
        if t not in cache:
            try:
                cache[t] = _read_rgb(root / seq.frames[t].image)
            except ValueError as e:
                cache[t] = str(e)
        return cache[t]

    skipped: list[tuple[str, str, str]] = []
    done: set[str] = set()
    todo: list[tuple[int, int, bool]] = []
    reused = 0
    if shape is None and not rec.get("changed"):  # no record: flows already there are reused if they fit
        shape = next((x.shape[:2] for x in (frame(t) for t, _, _ in pairs) if not isinstance(x, str)), None)
    for t, p, back in pairs:
        stem = seq.frames[t].stem
        if shape is not None and complete(stem, shape):
            done.add(stem)
            reused += 1
        else:
            todo.append((t, p, back))
    computed = 0
    bar = tqdm(total=len(todo), desc=seq.name, unit="flow", leave=False, disable=None if progress else True)
    for k in range(0, len(todo), batch_size):
        batch = []
        for t, p, back in todo[k:k + batch_size]:
            a, b = frame(t), frame(p)
            bad = next(((i, x) for i, x in ((t, a), (p, b)) if isinstance(x, str)), None)
            if bad is not None:
                skipped.append((seq.name, seq.frames[bad[0]].image, bad[1]))
            elif a.shape != b.shape:
                skipped.append((seq.name, seq.frames[t].image,
                                f"size {a.shape[:2]} differs from {seq.frames[p].image}'s {b.shape[:2]}"))
            else:
                batch.append((t, a, b, back))
        if batch:
            flows = get_estimator()([x[1] for x in batch], [x[2] for x in batch])
            for (t, a, _, back), flow in zip(batch, flows):
                flow = np.asarray(flow, dtype=np.float32)
                if back:
                    flow = -flow
                stem = seq.frames[t].stem
                atomic_write(sdir / f"{stem}.flo", lambda q, f=flow: write_flow(q, f))
                if flow_rgb:
                    atomic_write_image(sdir / f"{stem}.flo.png", cv2.cvtColor(flow_to_rgb(flow), cv2.COLOR_RGB2BGR))
                shape = tuple(a.shape[:2])
                done.add(stem)
                computed += 1
        bar.update(len(todo[k:k + batch_size]))
        for key in [key for key in cache if key < todo[min(k + batch_size, len(todo) - 1)][0] - gap]:
            del cache[key]
    bar.close()
    skipped = list(dict.fromkeys(skipped))
    manifest.data["sequences"][seq.name] = {
        "signature": sig, "shape": list(shape) if shape else None, "flows": sorted(done),
        "complete": len(done) == len(pairs), "skipped": [list(x) for x in skipped]}
    return computed, reused, done, skipped


def _sequence_masks(layout: Layout, seq: SequenceEntry, manifest: _Manifest
                    ) -> tuple[int, dict[str, str], list[tuple[str, str, str]]]:
    """The ground truth of each annotated frame: (masks written, stem → GtMask path, skipped)."""
    skipped: list[tuple[str, str, str]] = []
    gts: dict[str, str] = {}
    if layout.gt_rule == "as_is":
        for f in seq.frames:
            if f.gt:
                gts[f.stem] = f.gt[0]
            else:
                skipped.append((seq.name, f.image, "no ground-truth mask"))
        return 0, gts, skipped
    root = layout.root
    rec = manifest.data["masks"].get(seq.name) or {}
    old_hash: dict[str, str] = rec.get("sha1", {}) if rec.get("signature") == _signature(root, seq) else {}
    hashes: dict[str, str] = {}
    written = 0
    for f in seq.frames:
        if not f.gt:
            if layout.flow_frames == "all" and layout.gt_rule == "union":
                skipped.append((seq.name, f.image, "no ground-truth mask"))
            continue
        rel = f"{layout.mask_root}/{seq.name}/{f.stem}.png"
        dst = root / rel
        if f.stem in old_hash and dst.is_file() and _sha1_file(dst) == old_hash[f.stem]:
            hashes[f.stem] = old_hash[f.stem]
            gts[f.stem] = rel
            continue
        try:
            data = _png_bytes(merge_gt([root / g for g in f.gt], layout.gt_rule))
        except (OSError, ValueError) as e:
            skipped.append((seq.name, f.gt[0], f"unreadable ground truth: {' '.join(str(e).split())}"))
            continue
        atomic_write(dst, lambda q, d=data: q.write_bytes(d))
        hashes[f.stem] = hashlib.sha1(data).hexdigest()
        gts[f.stem] = rel
        written += 1
    manifest.data["masks"][seq.name] = {"signature": _signature(root, seq), "sha1": hashes}
    return written, gts, skipped


def _prepared(layout: Layout, seq: SequenceEntry, manifest: _Manifest) -> tuple[set[str], dict[str, str]]:
    """What an earlier run prepared for a sequence (per the manifest): (stems with a flow, stem → GtMask)."""
    flows = set((manifest.data["sequences"].get(seq.name) or {}).get("flows", []))
    if layout.gt_rule == "as_is":
        gts = {f.stem: f.gt[0] for f in seq.frames if f.gt}
    else:
        done = (manifest.data["masks"].get(seq.name) or {}).get("sha1", {})
        gts = {f.stem: f"{layout.mask_root}/{seq.name}/{f.stem}.png" for f in seq.frames if f.stem in done}
    return flows, gts


def _rows(layout: Layout, seq: SequenceEntry, flows: set[str], gts: dict[str, str], flow_rgb: bool
          ) -> list[dict[str, str]]:
    rows = []
    for f in seq.frames:
        if f.stem not in flows or f.stem not in gts:
            continue
        flow = f"{layout.flow_root}/{seq.name}/{f.stem}.flo"
        row = {"Image": f.image, "GtMask": gts[f.stem], "Flow": flow}
        if flow_rgb:
            row["FlowRGB"] = flow + ".png"
        rows.append(row)
    return rows


def _write_splits(layout: Layout, out_dir: Path, rows_by_seq: dict[str, list[dict[str, str]]], flow_rgb: bool
                  ) -> tuple[list[str], dict[str, int]]:
    cols = [c for c in layout.columns if flow_rgb or c != "FlowRGB"]
    files, counts = [], {}
    for step in STEPS:
        rows = [r for name in layout.splits[step] for r in rows_by_seq.get(name, [])]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        w.writerows([[r[c] for c in cols] for r in rows])
        path = out_dir / f"{layout.split_name}_{step}.csv"
        atomic_write_text(path, buf.getvalue())
        files.append(str(path))
        counts[step] = len(rows)
        if not rows:
            logger.warning("%s: no row (no frame with both a flow and a ground truth)", path)
    return files, counts
