"""The built-in synthetic dataset: optical flows of moving objects over a camera-like motion.

Every sample is a flow (I, J, 2) in which the background follows a random affine or quadratic
motion (camera-like: translation, zoom, rotation, shear, perspective-like quadratic terms) and
1 to 3 objects of varied irregular shapes (ellipses, smooth blobs, star-shaped polygons) move
with their own affine motion, distinct from the background's by 1.5 to 5.5 px (at 128 × 224;
magnitudes scale with the image size). Like the output of a real flow estimator, the flow is
fattened at the objects' boundaries (the foreground motion bleeds over 0 to 2 px), smoothed
(Gaussian, σ ≈ 0.7 to 1.5 px) and noisy (white noise plus a low-frequency component). The
ground-truth mask is the union of the objects.

Samples come in sequences of ``frames_per_sequence`` frames: the objects keep their shape and
move along their motion from frame to frame, and the background motion drifts slowly. The
parametric motions are built from ``emseg.core.coherence_math`` (centred coordinates in [-1, 1]).

``motion`` says how the motions evolve over a sequence:

- ``'constant'`` (the default, the built-in dataset): each object's motion relative to the
  background is constant (it bounces off the borders) and the background's parameters drift
  linearly, θ(t) = θ₀ + t·δ;
- ``'smooth'``: both also vary as one slow sinusoid each, θ(t) = θ₀ + t·δ + A ⊙ sin(2πt/P + φ)
  and, per object, Δ(t) = Δ + a·sin(2πt/P + φₖ) (A up to 3 px per coefficient at 128 × 224,
  none for a still camera; |a| = 0.2 to 0.5 |Δ|; the period P, drawn per sequence, 12 to 30 frames):
  over a few frames the flow then changes about linearly (quadratically over more), which
  space-time models of degree ≥ 1 in t follow and a model constant in t cannot (on 5-frame
  clips at 128 × 224 the background's residual to a per-pixel constant in t is about 2.5 times
  the noise's, to a linear one about the noise's). The scene (objects, shapes,
  placements, background model) is the same as with ``'constant'`` for the same seed; the extra
  random numbers are drawn after it (the per-frame noise then differs). The split's info file
  records ``"motion": "smooth"``; the default data, without the key, is unchanged.

Layout under ``out_dir`` (paths in the CSVs are relative to it)::

    Flows/train_seq_000/00000.flo   Images/train_seq_000/00000.png   Masks/train_seq_000/00000.png
    NAME_train.csv  NAME_val.csv  NAME_test.csv  NAME_info.json

CSV columns: Flow, Image (the flow's Middlebury colour coding), GtMask (0/255 PNG) and FlowRGB
(the same colour coding). Output is deterministic given the seed.

CLI: ``python -m csvflowdatamodule.synthetic --out DIR --name NAME --n_train N --n_val N
--n_test N --img_size H W --seed S``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from emseg.core import hparams as H
from emseg.core.cache import cache_root
from emseg.core.coherence_math import make_basis
from emseg.core.flow_io import flow_to_rgb, write_flow

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "test")
COLUMNS: tuple[str, ...] = ("Flow", "Image", "GtMask", "FlowRGB")
DEFAULT_NAME = "synthetic"
DEFAULT_SIZES = {"n_train": 600, "n_val": 100, "n_test": 100}
DEFAULT_IMG_SIZE: tuple[int, int] = tuple(H.default("img_size", H.InputHparams))  # the model's input size
DEFAULT_SEED = 0
MOTIONS: tuple[str, ...] = ("constant", "smooth")
FRAMES_PER_SEQUENCE = 10
CACHE_SUBDIR = f"synthetic_v{GENERATOR_VERSION}"
_REF_AREA = 128 * 224
_SHIFT = 4  # sub-pixel bits for cv2.fillPoly


# --------------------------------------------------------------------------------------------
# Motions and shapes
# --------------------------------------------------------------------------------------------
class _Bases:
    """Bases of emseg.core.coherence_math at one image size, as NumPy (I·J, ft) float64."""

    def __init__(self, img_size: tuple[int, int]):
        self.img_size = img_size
        self.affine = make_basis("Affine", img_size, centered=True).double().numpy()  # [i, j, 1]
        self.quadratic = make_basis("Quadratic", img_size, centered=True).double().numpy()  # [ij, i², j², i, j, 1]

    def field(self, theta: np.ndarray) -> np.ndarray:
        """θ (ft, 2) → flow (I, J, 2), channel 0 = u (horizontal), 1 = v."""
        X = self.affine if theta.shape[0] == 3 else self.quadratic
        return (X @ theta).reshape(self.img_size[0], self.img_size[1], 2)


def _to_centred(rc: np.ndarray, img_size: tuple[int, int]) -> np.ndarray:
    """Pixel (row, col) → centred coordinates in [-1, 1] (grid_coords' linspace convention)."""
    I, J = img_size
    return np.array([2.0 * rc[0] / max(I - 1, 1) - 1.0, 2.0 * rc[1] / max(J - 1, 1) - 1.0])


def _background_theta(rng: np.random.Generator, s: float) -> np.ndarray:
    """A camera-like motion θ (3, 2) (Affine) or (6, 2) (Quadratic); columns (u, v); px units."""
    quadratic = rng.random() < 0.5
    static = rng.random() < 0.15  # a still camera: only noise in the background
    trans = rng.uniform(-3.5, 3.5, size=2) * s * (0.0 if static else 1.0)
    # Linear part: zoom, rotation and shear, as displacement (px) at the image border.
    zoom, rot = rng.uniform(-1.5, 1.5) * s, rng.uniform(-1.0, 1.0) * s
    shear = rng.uniform(-0.5, 0.5, size=2) * s
    lin_i = np.array([-rot + shear[0], zoom])  # coefficient of i (row) for (u, v)
    lin_j = np.array([zoom, rot + shear[1]])  # coefficient of j (column) for (u, v)
    if static:
        lin_i, lin_j = lin_i * 0.0, lin_j * 0.0
    if not quadratic:
        return np.stack([lin_i, lin_j, trans])
    quad = rng.uniform(-1.0, 1.0, size=(3, 2)) * s * (0.0 if static else 1.0)  # ij, i², j²
    return np.concatenate([quad, np.stack([lin_i, lin_j, trans])])


def _object_theta(centre: np.ndarray, u_centre: np.ndarray, lin: np.ndarray) -> np.ndarray:
    """Affine θ (3, 2) with flow ``u_centre`` at ``centre`` (centred coords) and linear part ``lin``
    (2 × 2: rows ∂/∂i, ∂/∂j)."""
    const = u_centre - centre[0] * lin[0] - centre[1] * lin[1]
    return np.stack([lin[0], lin[1], const])


def _random_outline(rng: np.random.Generator, radius: float) -> np.ndarray:
    """A closed outline (K, 2) of (x, y) offsets in pixels around the origin."""
    kind = rng.choice(["ellipse", "blob", "polygon"])
    if kind == "polygon":
        k = int(rng.integers(3, 9))
        ang = np.sort(rng.uniform(0, 2 * np.pi, size=k))
        ang += np.linspace(0, 2 * np.pi, k, endpoint=False) - ang  # spread, then jitter
        ang += rng.uniform(-0.4, 0.4, size=k) * (2 * np.pi / k)
        r = rng.uniform(0.55, 1.0, size=k)
    else:
        ang = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        r = np.ones_like(ang)
        if kind == "blob":
            for h in range(2, 6):
                r += rng.uniform(0, 0.35 / h * 2) * np.cos(h * ang + rng.uniform(0, 2 * np.pi))
            r = np.clip(r, 0.35, None)
    stretch = rng.uniform(0.45, 1.0)  # anisotropy (an ellipse when kind == 'ellipse')
    x, y = r * np.cos(ang), r * np.sin(ang) * stretch
    phi = rng.uniform(0, np.pi)
    c, sn = np.cos(phi), np.sin(phi)
    pts = np.stack([c * x - sn * y, sn * x + c * y], axis=1)
    return pts * radius / max(np.sqrt(stretch), 1e-3)


@dataclass
class _Object:
    outline: np.ndarray  # (K, 2) x, y offsets (px)
    centre: np.ndarray  # (row, col) px
    delta: np.ndarray  # (u, v) px: motion relative to the background at the centre
    lin: np.ndarray  # (2, 2) linear part in centred coords
    spin: float  # outline rotation per frame (rad)

    def mask(self, img_size: tuple[int, int], angle: float) -> np.ndarray:
        c, s = np.cos(angle), np.sin(angle)
        rot = self.outline @ np.array([[c, s], [-s, c]])
        pts = rot + np.array([self.centre[1], self.centre[0]])
        canvas = np.zeros(img_size, np.uint8)
        cv2.fillPoly(canvas, [np.round(pts * (1 << _SHIFT)).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=_SHIFT)
        return canvas.astype(bool)


def _smooth_noise(rng: np.random.Generator, img_size: tuple[int, int], amplitude: float) -> np.ndarray:
    """Low-frequency noise (I, J, 2): a coarse random grid upsampled bicubically."""
    coarse = rng.normal(0.0, amplitude, size=(4, 6, 2)).astype(np.float32)
    return cv2.resize(coarse, (img_size[1], img_size[0]), interpolation=cv2.INTER_CUBIC)


@dataclass
class _SmoothMotion:
    """The ``'smooth'`` motions' slow sinusoids (module docstring)."""

    period: float  # frames
    bg_amp: np.ndarray  # like θ_bg (ft, 2), px
    bg_phase: np.ndarray  # like θ_bg
    obj_amp: list[np.ndarray]  # per object (u, v), px
    obj_phase: list[float]

    @classmethod
    def draw(cls, rng: np.random.Generator, theta_bg: np.ndarray, objects: list[_Object], s: float) -> _SmoothMotion:
        period = rng.uniform(12.0, 30.0)
        still = not np.any(theta_bg)  # a still camera stays still
        bg_amp = rng.uniform(-1.0, 1.0, size=theta_bg.shape) * 3.0 * s * (0.0 if still else 1.0)
        bg_phase = rng.uniform(0, 2 * np.pi, size=theta_bg.shape)
        obj_amp, obj_phase = [], []
        for obj in objects:
            ang = rng.uniform(0, 2 * np.pi)
            obj_amp.append(rng.uniform(0.2, 0.5) * float(np.linalg.norm(obj.delta)) * np.array([np.cos(ang),
                                                                                                np.sin(ang)]))
            obj_phase.append(float(rng.uniform(0, 2 * np.pi)))
        return cls(period, bg_amp, bg_phase, obj_amp, obj_phase)

    def background(self, t: int) -> np.ndarray:
        return self.bg_amp * np.sin(2 * np.pi * t / self.period + self.bg_phase)

    def object(self, k: int, t: int) -> np.ndarray:
        return self.obj_amp[k] * np.sin(2 * np.pi * t / self.period + self.obj_phase[k])


def generate_sequence(rng: np.random.Generator, img_size: tuple[int, int], n_frames: int,
                      bases: _Bases | None = None, with_support: bool = False,
                      motion: str = "constant") -> list[tuple[np.ndarray, ...]]:
    """One sequence of ``n_frames`` samples: [(flow (I, J, 2) float32, mask (I, J) bool), ...].

    With ``with_support``, each sample also has its motion support (I, J) bool: the pixels that
    carry an object's motion, i.e. the objects plus the 0-2 px their motion bleeds over (before
    blur and noise). The flows and masks are the same either way. ``motion``: ``'constant'`` or
    ``'smooth'`` (module docstring).
    """
    if motion not in MOTIONS:
        raise ValueError(f"motion must be one of {list(MOTIONS)}, got {motion!r}")
    I, J = img_size
    bases = bases or _Bases(img_size)
    s = float(np.sqrt(I * J / _REF_AREA))
    side = float(min(I, J))
    theta_bg = _background_theta(rng, s)
    drift = rng.normal(0.0, 0.04, size=theta_bg.shape) * s
    objects = []
    for _ in range(int(rng.integers(1, 4))):
        radius = rng.uniform(0.12, 0.26) * side
        outline = _random_outline(rng, radius)
        margin = np.array([0.25 * radius, 0.25 * radius])
        centre = rng.uniform(margin + 0.1 * side, np.array([I, J]) - margin - 0.1 * side)
        ang = rng.uniform(0, 2 * np.pi)
        delta = rng.uniform(1.5, 5.5) * s * np.array([np.cos(ang), np.sin(ang)])
        lin = rng.uniform(-2.5, 2.5, size=(2, 2)) * s
        objects.append(_Object(outline, centre, delta, lin, rng.uniform(-0.06, 0.06)))
    sigma_blur = rng.uniform(0.7, 1.5) * np.sqrt(s)
    sigma_white = rng.uniform(0.02, 0.12) * s
    sigma_smooth = rng.uniform(0.05, 0.3) * s
    fatten = int(rng.integers(0, 3))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * fatten + 1, 2 * fatten + 1)) if fatten else None
    smooth = _SmoothMotion.draw(rng, theta_bg, objects, s) if motion == "smooth" else None

    out = []
    for t in range(n_frames):
        theta_t = theta_bg + t * drift
        if smooth is not None:
            theta_t = theta_t + smooth.background(t)
        bg = bases.field(theta_t)
        flow = bg.copy()
        gt = np.zeros(img_size, bool)
        support = np.zeros(img_size, bool)
        for k, obj in enumerate(objects):
            m = obj.mask(img_size, obj.spin * t)
            cc = _to_centred(obj.centre, img_size)
            ri, ci = int(np.clip(round(obj.centre[0]), 0, I - 1)), int(np.clip(round(obj.centre[1]), 0, J - 1))
            u_centre = bg[ri, ci] + obj.delta
            if smooth is not None:
                u_centre = u_centre + smooth.object(k, t)
            fo = bases.field(_object_theta(cc, u_centre, obj.lin))
            spread = cv2.dilate(m.astype(np.uint8), kernel).astype(bool) if kernel is not None else m
            flow[spread] = fo[spread]
            gt |= m
            support |= spread
            # Move the object along its own motion (u → columns, v → rows); bounce off the borders.
            step = np.array([u_centre[1], u_centre[0]])
            new = obj.centre + step
            lo, hi = np.array([0.1 * side, 0.1 * side]), np.array([I, J]) - 0.1 * side
            for a in range(2):
                if new[a] < lo[a] or new[a] > hi[a]:
                    obj.delta[1 - a] = -obj.delta[1 - a]
                    new[a] = np.clip(new[a], lo[a], hi[a])
            obj.centre = new
        flow = flow.astype(np.float32)
        flow = cv2.GaussianBlur(flow, (0, 0), sigmaX=sigma_blur, sigmaY=sigma_blur, borderType=cv2.BORDER_REFLECT)
        flow += _smooth_noise(rng, img_size, sigma_smooth)
        flow += rng.normal(0.0, sigma_white, size=flow.shape).astype(np.float32)
        flow = np.ascontiguousarray(flow, dtype=np.float32)
        out.append((flow, gt, support) if with_support else (flow, gt))
    return out


# --------------------------------------------------------------------------------------------
# Writing a DataSplit
# --------------------------------------------------------------------------------------------
def _sequence_rng(seed: int, split: str, k: int) -> np.random.Generator:
    """The generator of sequence ``k`` of ``split``: it depends on (seed, split, k) only."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS.index(split), k, GENERATOR_VERSION]))


def _check_size(img_size: Sequence[int]) -> tuple[int, int]:
    size = tuple(int(v) for v in img_size)
    if len(size) != 2 or min(size) < 8:
        raise ValueError(f"img_size must be two integers >= 8 (H, W), got {img_size!r}")
    return size  # type: ignore[return-value]


def _info_path(out_dir: str | os.PathLike, name: str) -> Path:
    return Path(out_dir) / f"{name}_info.json"


def make_synthetic_split(out_dir: str | os.PathLike, name: str, n_train: int, n_val: int, n_test: int,
                         img_size: Sequence[int] = DEFAULT_IMG_SIZE, seed: int = DEFAULT_SEED,
                         frames_per_sequence: int = FRAMES_PER_SEQUENCE, motion: str = "constant") -> str:
    """Write a synthetic DataSplit under ``out_dir``; return the data_file prefix ``out_dir/name``.

    Files: ``Flows/{split}_seq_{k:03d}/{t:05d}.flo`` (I × J × 2), ``Images/...png`` (colour
    coding, RGB), ``Masks/...png`` (0/255), ``{name}_{split}.csv`` and ``{name}_info.json``.
    Sequence k of split ``split`` depends only on (seed, split, k) (and ``motion``: ``'constant'``
    or ``'smooth'``, module docstring): outputs are deterministic.
    """
    if motion not in MOTIONS:
        raise ValueError(f"motion must be one of {list(MOTIONS)}, got {motion!r}")
    size = _check_size(img_size)
    counts = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}
    if min(counts.values()) < 0:
        raise ValueError(f"sample counts must be >= 0, got {counts}")
    if int(frames_per_sequence) < 1:
        raise ValueError(f"frames_per_sequence must be >= 1, got {frames_per_sequence}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bases = _Bases(size)
    png = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    t0 = time.perf_counter()
    for split in SPLITS:
        rows = []
        n = counts[split]
        for k in range(-(-n // frames_per_sequence)):
            n_frames = min(frames_per_sequence, n - k * frames_per_sequence)
            rng = _sequence_rng(seed, split, k)
            seq = f"{split}_seq_{k:03d}"
            for sub in ("Flows", "Images", "Masks"):
                (out / sub / seq).mkdir(parents=True, exist_ok=True)
            for t, (flow, mask) in enumerate(generate_sequence(rng, size, n_frames, bases, motion=motion)):
                rel = {c: f"{d}/{seq}/{t:05d}.{e}" for c, d, e in
                       (("Flow", "Flows", "flo"), ("Image", "Images", "png"), ("GtMask", "Masks", "png"))}
                write_flow(out / rel["Flow"], flow)
                cv2.imwrite(str(out / rel["Image"]), flow_to_rgb(flow)[:, :, ::-1], png)
                cv2.imwrite(str(out / rel["GtMask"]), mask.astype(np.uint8) * 255, png)
                rows.append([rel["Flow"], rel["Image"], rel["GtMask"], rel["Image"]])
        with open(out / f"{name}_{split}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(COLUMNS)
            w.writerows(rows)
    info = {"generator_version": GENERATOR_VERSION, "name": name, **{f"n_{k}": v for k, v in counts.items()},
            "img_size": list(size), "seed": int(seed), "frames_per_sequence": int(frames_per_sequence),
            "columns": list(COLUMNS)}
    if motion != "constant":  # the default's info file stays as it was
        info["motion"] = motion
    _info_path(out, name).write_text(json.dumps(info, indent=2) + "\n")
    logger.info("synthetic split %s: %s samples in %.1f s", out / name, counts, time.perf_counter() - t0)
    return str(out / name)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/em_motion_segmentation/synthetic_v{version}``."""
    return cache_root() / CACHE_SUBDIR


def _is_complete(out_dir: Path, name: str, expected: dict) -> bool:
    try:
        info = json.loads(_info_path(out_dir, name).read_text())
    except (OSError, ValueError):
        return False
    if any(info.get(k) != v for k, v in expected.items()) or info.get("motion", "constant") != "constant":
        return False
    for split in SPLITS:
        try:
            with open(out_dir / f"{name}_{split}.csv", newline="") as fh:
                rows = list(csv.reader(fh))
        except OSError:
            return False
        if len(rows) - 1 != info[f"n_{split}"]:
            return False
        for row in rows[1:]:
            if not all((out_dir / p).is_file() for p in row):
                return False
    return True


def default_synthetic_split(cache_dir: str | os.PathLike | None = None) -> tuple[str, str]:
    """The default synthetic dataset (600 / 100 / 100 samples at 128 × 224, seed 0).

    Generated once into ``cache_dir`` (default :func:`default_cache_dir`) and reused; it is
    regenerated if any file is missing. Generation goes to a temporary directory renamed at
    the end, so an interrupted run leaves no half dataset. Returns ``(base_dir, data_file)``.
    """
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    expected = {"generator_version": GENERATOR_VERSION, **DEFAULT_SIZES, "img_size": list(DEFAULT_IMG_SIZE),
                "seed": DEFAULT_SEED, "frames_per_sequence": FRAMES_PER_SEQUENCE}
    if _is_complete(target, DEFAULT_NAME, expected):
        return str(target), str(target / DEFAULT_NAME)
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.warning("generating the built-in synthetic dataset in %s (once; about 20 s)", target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        make_synthetic_split(tmp, DEFAULT_NAME, img_size=DEFAULT_IMG_SIZE, seed=DEFAULT_SEED, **DEFAULT_SIZES)
        tmp.chmod(0o755)  # mkdtemp made it private
        if target.exists() and not _is_complete(target, DEFAULT_NAME, expected):
            shutil.rmtree(target)  # an incomplete or outdated dataset
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target, DEFAULT_NAME, expected):  # not another process's finished copy
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target), str(target / DEFAULT_NAME)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m csvflowdatamodule.synthetic",
                                description="Write a synthetic motion-segmentation DataSplit (flows, masks, images).")
    p.add_argument("--out", required=True, help="output directory (the DataSplit's base_dir)")
    p.add_argument("--name", default=DEFAULT_NAME, help="DataSplit name: OUT/NAME_{train,val,test}.csv")
    p.add_argument("--n_train", type=int, default=DEFAULT_SIZES["n_train"])
    p.add_argument("--n_val", type=int, default=DEFAULT_SIZES["n_val"])
    p.add_argument("--n_test", type=int, default=DEFAULT_SIZES["n_test"])
    p.add_argument("--img_size", "--image_size", dest="img_size", type=int, nargs=2, default=list(DEFAULT_IMG_SIZE),
                   metavar=("H", "W"))
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--frames_per_sequence", type=int, default=FRAMES_PER_SEQUENCE)
    p.add_argument("--motion", choices=MOTIONS, default=MOTIONS[0],
                   help="constant: constant object motion, linear background drift (the built-in data's); "
                        "smooth: both also vary slowly (sinusoids in t)")
    return p


def main(argv: Sequence[str] | None = None) -> str:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    prefix = make_synthetic_split(args.out, args.name, args.n_train, args.n_val, args.n_test,
                                  img_size=args.img_size, seed=args.seed, frames_per_sequence=args.frames_per_sequence,
                                  motion=args.motion)
    n = args.n_train + args.n_val + args.n_test
    print(f"wrote {n} samples in {time.perf_counter() - t0:.1f} s: --base_dir {args.out} --data_file {prefix}")
    return prefix


if __name__ == "__main__":
    main()
