"""Optical flow from a real video or a directory of frames, written as a DataSplit.

``python -m csvflowdatamodule.extract_flow (--video FILE | --frames DIR) --out DIR
[--method dis|farneback|raft] [--gap 1] [--masks DIR] [--data_file NAME]`` writes, under
``--out``:

- ``frames/00000.png`` ... every frame, as PNG (RGB);
- ``flows/00000.flo`` ... the flow from frame t to frame t + gap, named after frame t
  (Middlebury .flo, H × W × 2, u horizontal then v, in pixels);
- ``masks/00000.png`` ... with ``--masks``: the ground-truth mask whose file has the frame's
  name (its original name for ``--frames``, its index for ``--video``), copied;
- ``{data_file}_{train,val,test}.csv``: the same rows (one per flow) in all three files, since the
  method is unsupervised: training on a video and segmenting it are both legitimate. Columns
  Flow, Image and, when every flow's frame has a mask, GtMask; when only some do, those rows are
  also written to ``{data_file}_labelled_{train,val,test}.csv`` (with GtMask);
- ``manifest.json``: the source (video path, size and a hash of its first MiB; or the frames
  directory and a hash of its file names and sizes), method and gap. A rerun on the same source
  skips the flows already written; a rerun with another source, method or gap into the same
  directory is an error unless ``--overwrite``, which removes the previous extraction's outputs
  first: only the files extract_flow names (``frames/NNNNN.png``, ``flows/NNNNN.flo``,
  ``masks/NNNNN.png``), the CSVs and the manifest its manifest lists, never a file under one of its
  inputs or this run's, nor any other file (a folder of outputs without a manifest is not removed).

No run writes over its own input: an input (``--video``, ``--frames``, ``--masks``) inside one of
the places written (``OUT/frames``, ``OUT/flows``, ``OUT/masks``, the manifest, the CSVs) is refused
with one line naming both; ``--out`` may hold the inputs elsewhere (``--video OUT/clip.mp4``,
``--frames OUT/raw``, even ``--frames OUT``: the outputs go into its sub-folders).

Methods: ``dis`` (OpenCV DIS, the offline default), ``farneback`` (OpenCV) and ``raft``
(torchvision's RAFT-large; needs a local weights file passed with ``--raft_weights``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from emseg.core.atomic_io import atomic_write, atomic_write_image, atomic_write_text
from emseg.core.flow_io import TAG_FLOAT, write_flow
from emseg.core.video_io import fit_width, iter_frames, open_video

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("dis", "farneback", "raft")
IMAGE_EXTS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".webp")
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "test")
_HEAD_BYTES = 1 << 20

FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
#: (first frames, second frames), lists of RGB uint8 (H, W, 3) → one flow (H, W, 2) float32 per pair
BatchFlowFn = Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], list[np.ndarray]]


class SourceMismatchError(RuntimeError):
    """The output directory holds another source's (or method's, or gap's) outputs."""


class InputOverlapError(ValueError):
    """An input lies where the extraction writes (it would be overwritten or removed)."""


#: the sub-folders of --out the extraction writes, and the names it gives the files there
OUTPUT_DIRS: dict[str, re.Pattern] = {"frames": re.compile(r"\d{5}\.png"), "flows": re.compile(r"\d{5}\.flo"),
                                      "masks": re.compile(r"\d{5}\.png")}


def _inside(path: Path, place: Path) -> bool:
    return path == place or place in path.parents


def written_places(out: Path, data_file: str) -> list[Path]:
    """Where an extraction into ``out`` writes: its sub-folders, the manifest and the DataSplit CSVs."""
    names = [f"{name}_{split}.csv" for name in (data_file, f"{data_file}_labelled") for split in SPLITS]
    return [out / d for d in OUTPUT_DIRS] + [out / MANIFEST] + [out / n for n in names]


def check_inputs_outside_outputs(out: str | os.PathLike, data_file: str, **inputs: str | os.PathLike | None) -> None:
    """Refuse an input (``video=…``, ``frames=…``, ``masks=…``) that equals or lies inside a place the
    extraction writes: it would be overwritten, or removed by ``--overwrite``."""
    out_dir = Path(os.path.realpath(out))
    places = written_places(out_dir, data_file)
    for flag, value in inputs.items():
        if value is None:
            continue
        path = Path(os.path.realpath(value))
        # only inside: an input folder holding --out's places is left untouched (its own files are not
        # listed again, the outputs go into sub-folders or are not images)
        hit = next((place for place in places if _inside(path, place)), None)
        if hit is not None:
            raise InputOverlapError(
                f"--{flag} {value} is where --out {out} writes ({hit}): the extraction would write over its own "
                f"input; choose another --out (the input may be elsewhere inside it, e.g. {out_dir / 'raw'})")


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------
def _natural_key(name: str) -> list:
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def list_frames(frames_dir: str | os.PathLike) -> list[Path]:
    """The image files of ``frames_dir``, in natural order (``2.png`` before ``10.png``)."""
    d = Path(frames_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"frames directory not found: {d}")
    files = [p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
    return sorted(files, key=lambda p: _natural_key(p.name))


def source_signature(video: str | os.PathLike | None = None,
                     frames: str | os.PathLike | None = None) -> dict:
    """What identifies a source in the manifest (see the module docstring)."""
    if (video is None) == (frames is None):
        raise ValueError("give exactly one of video and frames")
    if video is not None:
        p = Path(video).resolve()
        if not p.is_file():
            raise FileNotFoundError(f"video not found: {p}")
        with open(p, "rb") as fh:
            head = hashlib.sha1(fh.read(_HEAD_BYTES)).hexdigest()
        return {"type": "video", "path": str(p), "size_bytes": p.stat().st_size, "head_sha1": head}
    d = Path(frames).resolve()
    files = list_frames(d)
    h = hashlib.sha1("".join(f"{f.name}:{f.stat().st_size}\n" for f in files).encode()).hexdigest()
    return {"type": "frames", "path": str(d), "n_files": len(files), "files_sha1": h}


def iter_video_frames(video: str | os.PathLike) -> Iterator[np.ndarray]:
    """Decoded frames of a video, BGR uint8 (H, W, 3) (``emseg.core.video_io``, shared with segment.py)."""
    cap, _ = open_video(video)
    yield from iter_frames(cap)


def _read_bgr(path: Path) -> np.ndarray:
    im = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if im is None:
        raise ValueError(f"cannot read image {path}")
    return im


# --------------------------------------------------------------------------------------------
# Flow estimators: (rgb1 (H, W, 3) uint8, rgb2) → flow (H, W, 2) float32, u then v
# --------------------------------------------------------------------------------------------
def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


DIS_PRESETS: dict[str, int] = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
                               "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST, "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


def dis_estimator(preset: str = "medium", finest_scale: int = 0, variational: bool = True) -> FlowFn:
    """OpenCV DIS with ``preset`` (default MEDIUM), refined down to pyramid level ``finest_scale``
    (0: the full resolution); ``variational=False`` drops the variational refinement."""
    if preset not in DIS_PRESETS:
        raise ValueError(f"DIS preset must be one of {list(DIS_PRESETS)}, got {preset!r}")
    dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
    dis.setFinestScale(int(finest_scale))
    if not variational:
        dis.setVariationalRefinementIterations(0)

    def fn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return dis.calc(_gray(a), _gray(b), None)

    return fn


def farneback_estimator() -> FlowFn:
    """OpenCV Farneback (5 levels, 15-px window, Gaussian weighting)."""

    def fn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return cv2.calcOpticalFlowFarneback(_gray(a), _gray(b), None, pyr_scale=0.5, levels=5, winsize=15,
                                            iterations=5, poly_n=5, poly_sigma=1.1,
                                            flags=cv2.OPTFLOW_FARNEBACK_GAUSSIAN)

    return fn


def raft_missing_weights_message() -> str:
    try:
        from torchvision.models.optical_flow import Raft_Large_Weights

        url = Raft_Large_Weights.DEFAULT.url
    except Exception:  # pragma: no cover - very old torchvision
        url = "https://download.pytorch.org/models/raft_large_C_T_SKHT_V2-ff5fadd5.pth"
    return (
        "--method raft needs the RAFT-large weights as a local file: download torchvision's "
        f"Raft_Large_Weights file ({url}) on a machine with internet access and pass "
        "--raft_weights /path/to/raft_large_C_T_SKHT_V2-ff5fadd5.pth (or use --method dis, which needs no weights)"
    )


def _load_raft(weights: str | os.PathLike | None, device: str | None = None):
    """torchvision RAFT-large in eval mode on ``device`` (default: cuda if available), weights from a local file."""
    import torch
    from torchvision.models.optical_flow import raft_large

    if weights is None:
        raise ValueError(raft_missing_weights_message())
    if not Path(weights).is_file():
        raise FileNotFoundError(f"RAFT weights file not found: {weights}. {raft_missing_weights_message()}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    model = raft_large(weights=None, progress=False)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval().to(dev), dev


def raft_batch_estimator(weights: str | os.PathLike | None, device: str | None = None,
                         iters: int = 12) -> BatchFlowFn:
    """torchvision RAFT-large on batches of frame pairs (one forward pass per group of same-sized pairs).

    The returned function takes two lists of RGB uint8 frames (H, W, 3) and returns one flow
    (H, W, 2) float32 per pair; RAFT's encoders normalise per sample (instance norm, batch norm in
    eval mode), so a pair's flow does not depend on the rest of its batch.
    """
    import torch

    model, dev = _load_raft(weights, device)

    def to_input(rgbs: Sequence[np.ndarray]) -> torch.Tensor:
        t = torch.from_numpy(np.stack([np.ascontiguousarray(x) for x in rgbs])).permute(0, 3, 1, 2)
        return t.float().to(dev) / 127.5 - 1.0  # [-1, 1], what torchvision's Raft transforms produce

    def run(firsts: Sequence[np.ndarray], seconds: Sequence[np.ndarray]) -> list[np.ndarray]:
        H, W = firsts[0].shape[:2]
        # RAFT needs sides divisible by 8 and at least 128 (its correlation pyramid): pad (replicate).
        ph, pw = max(128, H + (-H) % 8) - H, max(128, W + (-W) % 8) - W
        x1, x2 = to_input(firsts), to_input(seconds)
        if ph or pw:
            pad = (0, pw, 0, ph)
            x1 = torch.nn.functional.pad(x1, pad, mode="replicate")
            x2 = torch.nn.functional.pad(x2, pad, mode="replicate")
        with torch.inference_mode():
            flow = model(x1, x2, num_flow_updates=iters)[-1][:, :, :H, :W]
        return list(flow.permute(0, 2, 3, 1).float().cpu().numpy())

    def fn(firsts: Sequence[np.ndarray], seconds: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(firsts) != len(seconds):
            raise ValueError(f"{len(firsts)} first frames for {len(seconds)} second frames")
        out: list[np.ndarray | None] = [None] * len(firsts)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (a, b) in enumerate(zip(firsts, seconds)):
            if a.shape != b.shape:
                raise ValueError(f"pair {i}: frames of different sizes {a.shape[:2]} and {b.shape[:2]}")
            groups.setdefault(a.shape, []).append(i)
        for idx in groups.values():
            for i, f in zip(idx, run([firsts[i] for i in idx], [seconds[i] for i in idx])):
                out[i] = f
        return out  # type: ignore[return-value]

    return fn


def raft_estimator(weights: str | os.PathLike | None, device: str | None = None, iters: int = 12) -> FlowFn:
    """torchvision RAFT-large with weights loaded from a local state-dict file."""
    batch = raft_batch_estimator(weights, device, iters)

    def fn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return batch([a], [b])[0]

    return fn


def make_estimator(method: str, raft_weights: str | os.PathLike | None = None, device: str | None = None,
                   raft_iters: int = 12) -> FlowFn:
    if method == "dis":
        return dis_estimator()
    if method == "farneback":
        return farneback_estimator()
    if method == "raft":
        return raft_estimator(raft_weights, device, raft_iters)
    raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")


def make_batch_estimator(method: str, raft_weights: str | os.PathLike | None = None, device: str | None = None,
                         raft_iters: int = 12) -> BatchFlowFn:
    """A :data:`BatchFlowFn` for ``method``: RAFT runs each batch in one forward pass (GPU), DIS and
    Farneback pair by pair."""
    if method == "raft":
        return raft_batch_estimator(raft_weights, device, raft_iters)
    single = make_estimator(method, raft_weights, device, raft_iters)

    def fn(firsts: Sequence[np.ndarray], seconds: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [single(a, b) for a, b in zip(firsts, seconds)]

    return fn


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------
def _flo_is_complete(path: Path, shape: tuple[int, int]) -> bool:
    """A .flo of the expected size with a valid header (cheap check for reruns)."""
    try:
        if path.stat().st_size != 12 + 8 * shape[0] * shape[1]:
            return False
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError:
        return False
    tag = np.frombuffer(head, "<f4", count=1)[0]
    w, h = np.frombuffer(head, "<i4", count=2, offset=4)
    return bool(tag == TAG_FLOAT and (h, w) == shape)


#: the rerun check of a written .flo (size and header), shared with ``csvflowdatamodule.datasets``
flo_is_complete = _flo_is_complete


def _check_manifest(out: Path, expected: dict, overwrite: bool,
                    inputs: Sequence[str | os.PathLike] = ()) -> dict | None:
    """Raise on another source's outputs (unless overwrite, then remove the files the earlier
    extraction wrote, never one under ``inputs``); return the old manifest."""
    mpath = out / MANIFEST
    old = None
    if mpath.is_file():
        try:
            old = json.loads(mpath.read_text())
        except ValueError:
            old = {"source": "<unreadable manifest>"}
    conflict = None
    if old is not None:
        diffs = [k for k in ("source", "method", "gap", "max_width") if old.get(k) != expected.get(k)]
        if diffs:
            conflict = (f"{out} holds the outputs of another extraction (differs in {diffs}: "
                        f"was {[old.get(k) for k in diffs]}, now {[expected[k] for k in diffs]})")
    elif any((out / d).is_dir() and any((out / d).iterdir()) for d in OUTPUT_DIRS):
        raise SourceMismatchError(
            f"{out} already holds frames/flows/masks without a {MANIFEST}: they are not an extraction's outputs "
            "this tool can account for, so even --overwrite leaves them; use another --out, or move them")
    if conflict is None:
        return old
    if not overwrite:
        raise SourceMismatchError(conflict + ": use another --out, or --overwrite to replace them")
    # the earlier extraction's inputs are protected too (it may have been run before inputs were checked)
    protected = [Path(os.path.realpath(p)) for p in inputs if p is not None]
    for key in ("source", "masks"):
        value = old.get(key)
        earlier = value.get("path") if isinstance(value, dict) else value
        if isinstance(earlier, str) and earlier:
            protected.append(Path(os.path.realpath(earlier)))
    # an earlier input inside a place written (a run from before inputs were checked): its files and this
    # run's would mix, and removing them would destroy it
    places = [Path(os.path.realpath(place)) for place in (out / d for d in OUTPUT_DIRS)]
    mixed = next((p for p in protected if any(_inside(p, place) for place in places)), None)
    if mixed is not None:
        raise SourceMismatchError(f"{conflict}, and its input {mixed} lies in {out}'s outputs: --overwrite "
                                  "would remove it; move it out of --out first, or use another --out")
    removed = _remove_earlier_outputs(out, old, protected)
    logger.warning("%s: --overwrite: removed its %d files", conflict, removed)
    return None


def _remove_earlier_outputs(out: Path, old: dict, protected: Sequence[Path]) -> int:
    """Remove what the earlier extraction (manifest ``old``) wrote in ``out``: the files named as
    extract_flow names them in its sub-folders, the CSVs its manifest lists and the manifest; never a
    file under ``protected``. A sub-folder left empty goes too. Returns how many files went."""
    candidates = [f for d, pattern in OUTPUT_DIRS.items() if (out / d).is_dir()
                  for f in (out / d).iterdir() if f.is_file() and pattern.fullmatch(f.name)]
    csv_names = old.get("csv_files") if isinstance(old.get("csv_files"), list) else []
    candidates += [out / name for name in csv_names
                   if isinstance(name, str) and "/" not in name and os.sep not in name and (out / name).is_file()]
    candidates.append(out / MANIFEST)
    n = 0
    for f in candidates:
        real = Path(os.path.realpath(f))
        if any(_inside(real, p) for p in protected):
            logger.warning("--overwrite: keeping %s, an input of an extraction", f)
            continue
        if f.exists():
            f.unlink()
            n += 1
    for d in OUTPUT_DIRS:
        try:
            (out / d).rmdir()
        except OSError:  # not empty (files extract_flow does not name live there) or absent
            pass
    return n


def _fit_width(frame: np.ndarray, max_width: int | None) -> np.ndarray:
    """Downscale (area interpolation) a frame wider than ``max_width``, keeping its aspect ratio: the
    one rule of ``emseg.core.video_io.fit_width``, which segment.py --video applies too."""
    return fit_width(frame, max_width)


def _write_frames(out: Path, video, frames, old: dict | None, progress: bool,
                  max_width: int | None = None) -> tuple[int, list[str]]:
    """Write frames/NNNNN.png; return (number of frames, their source names without extension)."""
    fdir = out / "frames"
    fdir.mkdir(parents=True, exist_ok=True)
    if frames is not None:
        files = list_frames(frames)
        for t, src in enumerate(tqdm(files, desc="frames", disable=None if progress else True, leave=False)):
            dst = fdir / f"{t:05d}.png"
            if not dst.is_file():
                atomic_write_image(dst, _fit_width(_read_bgr(src), max_width))
        return len(files), [f.stem for f in files]
    n_old = old.get("n_frames") if old else None
    if isinstance(n_old, int) and all((fdir / f"{t:05d}.png").is_file() for t in range(n_old)):
        return n_old, [f"{t:05d}" for t in range(n_old)]
    n = 0
    bar = tqdm(iter_video_frames(video), desc="frames", disable=None if progress else True, leave=False)
    for t, frame in enumerate(bar):
        dst = fdir / f"{t:05d}.png"
        if not dst.is_file():
            atomic_write_image(dst, _fit_width(frame, max_width))
        n = t + 1
    return n, [f"{t:05d}" for t in range(n)]


def _mask_index(masks_dir: str | os.PathLike) -> dict:
    """Mask files by stem, and by integer value for numeric stems."""
    index: dict = {}
    for p in list_frames(masks_dir):
        index.setdefault(p.stem, p)
        if p.stem.isdigit():
            index.setdefault(int(p.stem), p)
    return index


def _copy_mask(src: Path, dst: Path) -> None:
    if src.suffix.lower() == ".png":
        shutil.copyfile(src, dst)  # keeps palettes and bit depth as they are
    else:
        from PIL import Image

        with Image.open(src) as im:
            im.save(dst)


def extract_flow(out: str | os.PathLike, video: str | os.PathLike | None = None,
                 frames: str | os.PathLike | None = None, method: str = "dis", gap: int = 1,
                 masks: str | os.PathLike | None = None, data_file: str = "flow",
                 raft_weights: str | os.PathLike | None = None, overwrite: bool = False, device: str | None = None,
                 raft_iters: int = 12, progress: bool = True, max_width: int | None = None) -> dict:
    """Extract the flows of a video (or frames directory) into ``out``; see the module docstring.

    Returns a summary: ``n_frames``, ``n_flows``, ``computed`` (flows computed now),
    ``reused`` (flows already there), ``n_masks``, ``data_file`` (``out/data_file``, the
    ``--data_file`` to train on), ``csv_files`` and ``seconds``.
    """
    t0 = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if int(gap) < 1:
        raise ValueError(f"gap must be >= 1, got {gap}")
    if max_width is not None and int(max_width) < 8:
        raise ValueError(f"--max_width must be at least 8 pixels, got {max_width}")
    gap = int(gap)
    if not data_file or os.sep in data_file or (os.altsep and os.altsep in data_file):
        raise ValueError(f"data_file must be a plain name (the CSVs go in --out), got {data_file!r}")
    # before anything is read or written: no run writes over (or removes) its own input
    check_inputs_outside_outputs(out, data_file, video=video, frames=frames, masks=masks)
    estimator = make_estimator(method, raft_weights, device, raft_iters)  # fail early (RAFT weights)
    source = source_signature(video, frames)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    expected = {"source": source, "method": method, "gap": gap}
    if max_width:  # recorded only when used, so manifests written before the option stay valid
        expected["max_width"] = int(max_width)
    old = _check_manifest(out_dir, expected, overwrite, inputs=[p for p in (video, frames, masks) if p is not None])
    manifest = {"version": MANIFEST_VERSION, **expected, "status": "in progress",
                "masks": str(Path(masks).resolve()) if masks is not None else None,
                "n_frames": old.get("n_frames") if old else None,
                "csv_files": sorted(set((old or {}).get("csv_files") or []))}
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")

    n_frames, names = _write_frames(out_dir, video, frames, old, progress, max_width)
    if n_frames <= gap:
        raise ValueError(f"{source['path']}: {n_frames} frame(s), need at least gap + 1 = {gap + 1}")
    manifest["n_frames"] = n_frames
    first = _read_bgr(out_dir / "frames" / "00000.png")
    shape = first.shape[:2]

    fl_dir = out_dir / "flows"
    fl_dir.mkdir(exist_ok=True)
    n_flows = n_frames - gap
    cache: dict[int, np.ndarray] = {}

    def rgb(t: int) -> np.ndarray:
        if t not in cache:
            im = _read_bgr(out_dir / "frames" / f"{t:05d}.png")
            if im.shape[:2] != shape:
                raise ValueError(f"frame {names[t]} is {im.shape[:2]}, the first frame is {shape}")
            cache[t] = cv2.cvtColor(im, cv2.COLOR_BGR2RGB)
            for k in [k for k in cache if k < t - gap]:
                del cache[k]
        return cache[t]

    computed = reused = 0
    for t in tqdm(range(n_flows), desc=f"flow ({method})", disable=None if progress else True):
        dst = fl_dir / f"{t:05d}.flo"
        if _flo_is_complete(dst, shape):
            reused += 1
            continue
        flow = np.asarray(estimator(rgb(t), rgb(t + gap)), dtype=np.float32)
        atomic_write(dst, lambda p, f=flow: write_flow(p, f))  # never a truncated .flo under the final name
        computed += 1

    # Masks and DataSplit CSVs.
    mask_rel: dict[int, str] = {}
    if masks is not None:
        index = _mask_index(masks)
        mdir = out_dir / "masks"
        mdir.mkdir(exist_ok=True)
        # the masks of an earlier run (extract_flow's names only: any other file there is not ours)
        for f in mdir.iterdir():
            if f.is_file() and OUTPUT_DIRS["masks"].fullmatch(f.name):
                f.unlink()
        for t in range(n_flows):
            src = index.get(names[t])
            if src is None and names[t].isdigit():
                src = index.get(int(names[t]))
            if src is not None:
                rel = f"masks/{t:05d}.png"
                _copy_mask(src, out_dir / rel)
                mask_rel[t] = rel
        if not mask_rel:
            logger.warning("no mask in %s has a frame's name: no GtMask column", masks)
    rows = [{"Flow": f"flows/{t:05d}.flo", "Image": f"frames/{t:05d}.png", "GtMask": mask_rel.get(t)}
            for t in range(n_flows)]
    all_labelled = bool(mask_rel) and len(mask_rel) == n_flows
    written = _write_split(out_dir, data_file, rows, with_mask=all_labelled)
    if mask_rel and not all_labelled:
        written += _write_split(out_dir, f"{data_file}_labelled", [r for r in rows if r["GtMask"]], with_mask=True)
        logger.info("%d of %d frames have a mask: %s_labelled_*.csv holds them", len(mask_rel), n_flows, data_file)

    manifest.update(status="complete", n_flows=n_flows, n_masks=len(mask_rel),
                    csv_files=sorted(set(manifest["csv_files"]) | set(written)))
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return {"n_frames": n_frames, "n_flows": n_flows, "computed": computed, "reused": reused,
            "n_masks": len(mask_rel), "data_file": str(out_dir / data_file), "csv_files": written,
            "seconds": time.perf_counter() - t0}


def _write_split(out: Path, name: str, rows: list[dict], with_mask: bool) -> list[str]:
    cols = ["Flow", "Image"] + (["GtMask"] if with_mask else [])
    written = []
    for split in SPLITS:
        fname = f"{name}_{split}.csv"
        with open(out / fname, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(cols)
            w.writerows([[r[c] for c in cols] for r in rows])
        written.append(fname)
    return written


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m csvflowdatamodule.extract_flow",
        description="Compute optical flows of a video or frames directory and write a DataSplit.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", help="a video file OpenCV can read")
    src.add_argument("--frames", help="a directory of frames (sorted by name)")
    p.add_argument("--out", required=True, help="output directory (the DataSplit's base_dir)")
    p.add_argument("--method", choices=list(METHODS), default="dis", help="flow method (default dis, offline)")
    p.add_argument("--gap", type=int, default=1, help="flow from frame t to frame t + gap (default 1)")
    p.add_argument("--masks", help="directory of ground-truth masks named like the frames")
    p.add_argument("--data_file", default="flow", help="DataSplit name: OUT/NAME_{train,val,test}.csv")
    p.add_argument("--raft_weights", help="torchvision RAFT-large state-dict file (for --method raft)")
    p.add_argument("--raft_iters", type=int, default=12, help="RAFT refinement iterations (default 12)")
    p.add_argument("--device", help="torch device for RAFT (default: cuda if available)")
    p.add_argument("--overwrite", action="store_true", help="replace another source's outputs in --out")
    p.add_argument("--max_width", type=int, default=None,
                   help="downscale wider frames to this width first (flow vectors then shrink with them)")
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = extract_flow(args.out, video=args.video, frames=args.frames, method=args.method, gap=args.gap,
                               masks=args.masks, data_file=args.data_file, raft_weights=args.raft_weights,
                               overwrite=args.overwrite, device=args.device, raft_iters=args.raft_iters,
                               max_width=args.max_width)
    except (ValueError, FileNotFoundError, SourceMismatchError) as exc:
        raise SystemExit(f"extract_flow: error: {exc}") from exc
    print(f"{summary['n_flows']} flows ({summary['computed']} computed, {summary['reused']} already there), "
          f"{summary['n_masks']} masks, {summary['seconds']:.1f} s. Train with: "
          f"--base_dir {args.out} --data_file {summary['data_file']}")
    return summary


if __name__ == "__main__":
    main()
