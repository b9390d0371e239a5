"""A real-footage video benchmark with exact ground truth: real photographs composited into videos.

Each sequence is rendered: the background is a real photograph seen by a moving camera (a smooth,
bounded affine path — translation, zoom, small rotation — whose window always lies inside the
photograph, so no border ever comes into view), and 0–2 foreground objects are smooth irregular
blobs (Fourier-perturbed ellipses) textured from other real photographs, each with its own smooth
motion relative to the scene. Objects are composited with an anti-aliased alpha; the ground truth
is exact: a pixel is foreground where its centre lies inside an object's analytic shape (the
object's alpha > 0.5; the union of the objects). Mild sensor noise is added and each sequence is
written as an MP4 video (25 fps) with its masks.

    python -m evaluationmodule.video_benchmark make --out data/videobench [--textures DIR] [--seed 0]
    python -m evaluationmodule.video_benchmark score --bench data/videobench --split test \\
        --out runs/videobench/NAME [--label NAME] [-- <extra segment.py args>]
    python -m evaluationmodule.video_benchmark compare runs/videobench/A runs/videobench/B ...

Layout written by ``make``: ``{out}/manifest.json``, ``{out}/{split}/{sequence}/video.mp4``,
``{out}/{split}/{sequence}/masks/00000.png`` ... (0 / 255, the video's size) and
``{out}/{split}/{sequence}/sequence.json`` (its description).

``score`` runs ``segment.py --video {video} --out {out}/{sequence} <extra args>`` per sequence and
scores ``{out}/{sequence}/{t:05d}_binary.png`` for t = 0 … N − 2 (N frames; frame N − 1 too when
present) against the ground truth: per-frame J (``utils.evaluations.db_eval_iou``, both empty → 1)
and boundary F (``evaluationmodule.davis_metrics``), means per sequence and over the split.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from csvflowdatamodule.extract_flow import iter_video_frames
from emseg.core.atomic_io import atomic_write_text
from evaluationmodule.davis_metrics import db_eval_boundary
from evaluationmodule.SaveModule import write_csv, write_figure, write_grouped_bars, write_json, write_mask_png
from utils.evaluations import db_eval_iou

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
MANIFEST = "manifest.json"
SEQUENCE_JSON = "sequence.json"
DEFAULT_TEXTURES = Path("/usr/share/doc/opencv-doc/examples/data")
REPO_ROOT = Path(__file__).resolve().parent.parent
FPS = 25
SPLITS = ("dev", "test")
ROLES = ("static_empty", "pan_empty", "one_textured", "one_lowtex", "two_crossing", "slow_object", "zoom_rotate")
ROLE_TEXT = {
    "static_empty": "static camera, no object (empty ground truth)",
    "pan_empty": "moving camera (pan, slight zoom and rotation), no object (empty ground truth)",
    "one_textured": "panning camera, one object on a textured background",
    "one_lowtex": "slow pan over the photo's least textured region, one object over it",
    "two_crossing": "swaying camera, two objects crossing (the first occludes the second)",
    "slow_object": "fast pan, one object moving slowly relative to the scene (motion close to the camera's)",
    "zoom_rotate": "camera zoom and rotation, one rotating and scaling object",
}
# Backgrounds are disjoint between the splits; the role order of ROLES.
DEFAULT_BACKGROUNDS = {
    "dev": ["leuvenA.jpg", "graf1.png", "board.jpg", "stuff.jpg", "aero3.jpg", "Blender_Suzanne1.jpg", "left01.jpg"],
    "test": ["building.jpg", "starry_night.jpg", "aloeL.jpg", "home.jpg", "aero1.jpg", "ela_original.jpg",
             "licenseplate_motion.jpg"],
}
DEFAULT_OBJECTS = {
    "dev": ["fruits.jpg", "baboon.jpg", "orange.jpg", "HappyFish.jpg", "smarties.png", "box.png"],
    "test": ["messi5.jpg", "apple.jpg", "butterfly.jpg", "chicky_512.png", "squirrel_cls.jpg", "rubberwhale1.png"],
}
DEFAULT_SIZES = ((640, 360), (672, 480), (720, 404), (640, 480))
NOISE_SIGMA = 2.0  # grey levels (of 255): mild sensor noise, before the codec's own


class BenchmarkError(ValueError):
    """Bad benchmark input or output (one clear line naming the file)."""


# ------------------------------------------------------------------------------------------ geometry
def _affine(tx: float = 0.0, ty: float = 0.0, scale: float = 1.0, angle: float = 0.0) -> np.ndarray:
    """3 × 3 matrix of x ↦ T(tx, ty) · R(angle) · S(scale) · x (angle in radians)."""
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    return np.array([[c, -s, tx], [s, c, ty], [0.0, 0.0, 1.0]])


def _translate(tx: float, ty: float) -> np.ndarray:
    return _affine(tx, ty)


@dataclass
class CameraPath:
    """Frame → scene map per frame: scene = centre + drift(t) + R(θ(t)) · zoom(t) · (x − frame centre).

    Units: scene pixels (the background photo after its resize by ``photo_scale``). ``drift(t) =
    velocity · t + sway ⊙ (sin, cos)(2π t / period + phase)`` (an elliptic sway); ``zoom(t) = 1 +
    zoom_ramp · t / (N − 1) + zoom_wave · sin(2π t / period + phase)`` (scene pixels per frame pixel);
    ``θ(t) = rot_amp · sin(2π t / period + phase)`` in degrees.
    """

    center: tuple[float, float] = (0.0, 0.0)
    velocity: tuple[float, float] = (0.0, 0.0)
    sway: tuple[float, float] = (0.0, 0.0)
    period: float = 48.0
    phase: float = 0.0
    zoom_ramp: float = 0.0
    zoom_wave: float = 0.0
    rot_amp_deg: float = 0.0
    base_zoom: float = 1.0

    def relative(self, t: float, size: tuple[int, int], n_frames: int) -> np.ndarray:
        """Frame → scene map (3, 3) without the centre (the window's position relative to it)."""
        w, h = size
        wave = math.sin(2 * math.pi * t / self.period + self.phase)
        dx = self.velocity[0] * t + self.sway[0] * wave
        dy = self.velocity[1] * t + self.sway[1] * math.cos(2 * math.pi * t / self.period + self.phase)
        ramp = t / max(n_frames - 1, 1)
        zoom = self.base_zoom * (1.0 + self.zoom_ramp * ramp + self.zoom_wave * wave)
        angle = math.radians(self.rot_amp_deg * wave)
        return _affine(dx, dy, zoom, angle) @ _translate(-(w - 1) / 2, -(h - 1) / 2)

    def matrix(self, t: float, size: tuple[int, int], n_frames: int) -> np.ndarray:
        """Frame → scene map (3, 3) at frame t (frame pixel (x, y) ↦ scene pixel)."""
        return _translate(*self.center) @ self.relative(t, size, n_frames)


def window_corners(camera: CameraPath, t: float, size: tuple[int, int], n_frames: int) -> np.ndarray:
    """Scene coordinates (4, 2) of the frame's four corner pixel centres at frame t."""
    w, h = size
    pts = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], dtype=float).T
    return (camera.matrix(t, size, n_frames) @ pts)[:2].T


@dataclass
class BlobObject:
    """A smooth irregular blob: a Fourier-perturbed ellipse, textured, with its own smooth motion.

    Local shape: radius r(ψ) = r_ellipse(ψ; a, b) · (1 + Σ_k c_k cos(k ψ + p_k)) around the origin.
    Pose (local → "scene at t = 0" coordinates, i.e. frame pixels of the first frame's camera):
    centre q(t) = start + velocity · t + wobble · sin(2π t / period), angle φ0 + spin · t (degrees),
    scale 1 + scale_wave · sin(2π t / period). The motion is thus relative to the background.
    """

    texture: str
    a: float
    b: float
    coeffs: list[float] = field(default_factory=list)
    phases: list[float] = field(default_factory=list)
    start: tuple[float, float] = (0.0, 0.0)
    velocity: tuple[float, float] = (0.0, 0.0)
    wobble: tuple[float, float] = (0.0, 0.0)
    period: float = 48.0
    angle0_deg: float = 0.0
    spin_deg: float = 0.0
    scale_wave: float = 0.0
    texture_scale: float = 1.0  # texture pixels per local unit

    def radius(self, psi: np.ndarray) -> np.ndarray:
        """Shape radius r(ψ) (local units) at angles ψ (radians), any shape."""
        r = self.a * self.b / np.sqrt((self.b * np.cos(psi)) ** 2 + (self.a * np.sin(psi)) ** 2)
        pert = np.ones_like(psi)
        for k, (c, p) in enumerate(zip(self.coeffs, self.phases), start=2):
            pert = pert + c * np.cos(k * psi + p)
        return r * pert

    def max_radius(self) -> float:
        return float(self.radius(np.linspace(0, 2 * np.pi, 720, endpoint=False)).max())

    def area(self) -> float:
        psi = np.linspace(0, 2 * np.pi, 4096, endpoint=False)
        return float(0.5 * np.mean(self.radius(psi) ** 2) * 2 * np.pi)

    def pose(self, t: float) -> np.ndarray:
        """Local → scene-at-t=0 map (3, 3) at frame t."""
        wave = math.sin(2 * math.pi * t / self.period)
        cx = self.start[0] + self.velocity[0] * t + self.wobble[0] * wave
        cy = self.start[1] + self.velocity[1] * t + self.wobble[1] * math.cos(2 * math.pi * t / self.period)
        return _affine(cx, cy, 1.0 + self.scale_wave * wave, math.radians(self.angle0_deg + self.spin_deg * t))


def object_to_frame(obj: BlobObject, camera: CameraPath, t: int, size: tuple[int, int], n_frames: int) -> np.ndarray:
    """Local → frame map (3, 3) of an object at frame t: Cam(t)⁻¹ · Cam(0) · pose(t)."""
    return np.linalg.inv(camera.matrix(t, size, n_frames)) @ camera.matrix(0, size, n_frames) @ obj.pose(t)


def object_signed_distance(obj: BlobObject, frame_from_local: np.ndarray, size: tuple[int, int],
                           box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Approximate signed distance (H, W) in frame pixels to the object's outline, > 0 inside.

    Radial: (r(ψ) − ρ) in local units times the map's scale. Its sign is exact (inside ⇔ ρ < r(ψ) at
    the pixel's centre), so the ground truth ``d > 0`` is the analytic shape's support; its magnitude
    only shapes the ≈ 1-pixel anti-aliased edge of the alpha. ``box`` (x0, y0, x1, y1) restricts the
    computation to those pixels (the result is then (y1 − y0, x1 − x0)).
    """
    w, h = size
    x0, y0, x1, y1 = box if box is not None else (0, 0, w, h)
    inv = np.linalg.inv(frame_from_local)
    xs, ys = np.meshgrid(np.arange(x0, x1, dtype=float), np.arange(y0, y1, dtype=float))
    u = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    v = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    rho = np.hypot(u, v)
    gain = math.sqrt(abs(np.linalg.det(frame_from_local[:2, :2])))
    return (obj.radius(np.arctan2(v, u)) - rho) * gain


def _object_box(obj: BlobObject, frame_from_local: np.ndarray,
                size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Pixel box (x0, y0, x1, y1) holding the object's disk (its alpha included), clipped; None if empty."""
    c = frame_from_local[:2, 2]
    gain = math.sqrt(abs(np.linalg.det(frame_from_local[:2, :2])))
    r = obj.max_radius() * gain + 3
    x0, y0 = max(0, int(math.floor(c[0] - r))), max(0, int(math.floor(c[1] - r)))
    x1, y1 = min(size[0], int(math.ceil(c[0] + r)) + 1), min(size[1], int(math.ceil(c[1] + r)) + 1)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _keep_in_view(objs: list[BlobObject], camera: CameraPath, size: tuple[int, int], n_frames: int,
                  keep: float = 0.6) -> None:
    """Shift the objects' paths (together) so their centres stay in view despite the camera's drift."""
    if not objs:
        return
    pts = np.array([(object_to_frame(o, camera, t, size, n_frames) @ np.array([0.0, 0.0, 1.0]))[:2]
                    for o in objs for t in range(n_frames)])
    r = max(o.max_radius() for o in objs) * keep
    lo_allowed = np.minimum(np.array([r, r]), np.array(size) * 0.4)
    hi_allowed = np.array(size, float) - lo_allowed
    lo, hi = pts.min(0), pts.max(0)
    shift = np.zeros(2)
    for k in range(2):
        if hi[k] - lo[k] > hi_allowed[k] - lo_allowed[k]:
            shift[k] = (lo_allowed[k] + hi_allowed[k]) / 2 - (lo[k] + hi[k]) / 2
        elif lo[k] < lo_allowed[k]:
            shift[k] = lo_allowed[k] - lo[k]
        elif hi[k] > hi_allowed[k]:
            shift[k] = hi_allowed[k] - hi[k]
    # frame and t = 0 scene coordinates differ by the camera's zoom and rotation only slightly
    for o in objs:
        o.start = (float(o.start[0] + shift[0]), float(o.start[1] + shift[1]))


# ------------------------------------------------------------------------------------------ specs
@dataclass
class SequenceSpec:
    """Everything needed to render one sequence (deterministic)."""

    name: str
    split: str
    role: str
    description: str
    size: tuple[int, int]  # (W, H)
    n_frames: int
    background: str
    photo_scale: float
    camera: CameraPath
    objects: list[BlobObject]
    seed: int
    noise_sigma: float = NOISE_SIGMA

    def to_json(self) -> dict:
        d = asdict(self)
        d["generator_version"] = GENERATOR_VERSION
        return d


def _read_image(path: Path) -> np.ndarray:
    im = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if im is None:
        raise BenchmarkError(f"{path}: not a readable image")
    return im


def trim_border(img: np.ndarray, tol: float = 12.0, max_frac: float = 0.1, extra_frac: float = 0.01) -> np.ndarray:
    """Crop a photo's own uniform border (a frame painted around it), then ``extra_frac`` more per side.

    A row or column belongs to the border while its grey levels span less than ``tol`` (at most
    ``max_frac`` of the size per side); the extra margin drops the JPEG halo along the border.
    """
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32) if img.ndim == 3 else img.astype(np.float32)
    h, w = g.shape

    def count(lines: np.ndarray, limit: int) -> int:
        k = 0
        while k < limit and float(lines[k].max() - lines[k].min()) < tol:
            k += 1
        return k

    top, bottom = count(g, int(h * max_frac)), count(g[::-1], int(h * max_frac))
    left, right = count(g.T, int(w * max_frac)), count(g.T[::-1], int(w * max_frac))
    ey, ex = int(round(h * extra_frac)), int(round(w * extra_frac))
    return img[top + ey:h - bottom - ey, left + ex:w - right - ex]


def _texture_map(gray: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """Mean gradient magnitude (H, W) over a box of ``window`` (w, h): low = sky, wall."""
    g = gray.astype(np.float32)
    mag = np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))
    return cv2.blur(mag, (max(1, window[0] | 1), max(1, window[1] | 1)))


def _place_camera(camera: CameraPath, photo_hw: tuple[int, int], size: tuple[int, int], n_frames: int,
                  rng: np.random.Generator, photo: np.ndarray | None = None, margin: float = 2.0,
                  min_scale: float = 1.0) -> float:
    """Choose the photo's scale and the camera's centre so every frame's window lies inside the photo.

    Returns the photo scale (≥ ``min_scale``) and sets ``camera.center``. With ``photo`` given, the
    centre is the least textured feasible position (the ``one_lowtex`` role), otherwise random.
    """
    rel = np.concatenate([(camera.relative(t, size, n_frames) @ np.array(
        [[0, size[0] - 1, 0, size[0] - 1], [0, 0, size[1] - 1, size[1] - 1], [1, 1, 1, 1]], float))[:2].T
        for t in range(n_frames)])
    lo, hi = rel.min(0), rel.max(0)  # window extent relative to the centre (x, y)
    ph, pw = photo_hw
    need = (hi - lo + 2 * margin + 1) / np.array([pw - 1, ph - 1], float)
    scale = float(max(min_scale, need.max() * 1.0001))
    span_lo = margin - lo
    span_hi = np.array([(pw - 1) * scale, (ph - 1) * scale]) - margin - hi
    if photo is None:
        u = rng.uniform(0.15, 0.85, size=2)
        c = span_lo + u * (span_hi - span_lo)
    else:
        scaled = _scene(photo, scale)
        tex = _texture_map(cv2.cvtColor(scaled, cv2.COLOR_BGR2GRAY), size)
        ys, xs = np.mgrid[0:tex.shape[0], 0:tex.shape[1]]
        ok = (xs >= span_lo[0]) & (xs <= span_hi[0]) & (ys >= span_lo[1]) & (ys <= span_hi[1])
        tex = np.where(ok, tex, np.inf)
        iy, ix = np.unravel_index(int(np.argmin(tex)), tex.shape)
        c = np.array([ix, iy], float)
    camera.center = (float(c[0]), float(c[1]))
    return scale


def _scene(photo: np.ndarray, scale: float) -> np.ndarray:
    """The photo (border trimmed) resized by ``scale``: the scene the camera films."""
    return cv2.resize(photo, (round(photo.shape[1] * scale), round(photo.shape[0] * scale)),
                      interpolation=cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA)


def _first_frame(photo: np.ndarray, scale: float, camera: CameraPath, size: tuple[int, int],
                 n_frames: int) -> np.ndarray:
    cam = camera.matrix(0, size, n_frames)
    return cv2.warpAffine(_scene(photo, scale), cam[:2], size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def _make_blob(rng: np.random.Generator, texture: str, size: tuple[int, int], tex_hw: tuple[int, int],
               area_frac: tuple[float, float] = (0.03, 0.15)) -> BlobObject:
    w, h = size
    target = rng.uniform(*area_frac) * w * h
    ratio = rng.uniform(0.55, 1.0)
    coeffs = list(rng.uniform(-1, 1, 4) * np.array([0.12, 0.07, 0.04, 0.025]))
    obj = BlobObject(texture=texture, a=1.0, b=ratio, coeffs=[float(c) for c in coeffs],
                     phases=[float(p) for p in rng.uniform(0, 2 * np.pi, 4)], angle0_deg=float(rng.uniform(0, 360)))
    k = math.sqrt(target / obj.area())
    obj.a, obj.b = k * obj.a, k * obj.b
    # the texture covers the blob's largest disk (its rotation included), zoomed in on the photo's middle
    obj.texture_scale = float(0.9 * min(tex_hw) / (2 * obj.max_radius() * 1.1))
    return obj


def _linear_path(rng: np.random.Generator, obj: BlobObject, size: tuple[int, int], n_frames: int,
                 speed: float, keep: float = 0.75, texture: np.ndarray | None = None) -> None:
    """A straight path at ``speed`` px/frame whose ends keep the blob's centre inside the frame's middle.

    With ``texture`` (a texture map (H, W) of the first frame), the path's midpoint is the least
    textured feasible one, so the object crosses that region (the ``one_lowtex`` role).
    """
    w, h = size
    ang = rng.uniform(0, 2 * np.pi)
    r = obj.max_radius()
    box_lo = np.array([max(r * keep, 0.12 * w), max(r * keep, 0.12 * h)])
    box_hi = np.array([w - box_lo[0], h - box_lo[1]])
    d = np.array([math.cos(ang), math.sin(ang)]) * speed * (n_frames - 1)
    room = box_hi - box_lo
    shrink = min(1.0, *(room / np.maximum(np.abs(d), 1e-9)))
    d *= shrink * 0.999
    mid_lo, mid_hi = box_lo + np.abs(d) / 2, box_hi - np.abs(d) / 2
    mid = mid_lo + rng.uniform(0, 1, 2) * (mid_hi - mid_lo)
    if texture is not None:
        ys, xs = np.mgrid[0:h, 0:w]
        ok = (xs >= mid_lo[0]) & (xs <= mid_hi[0]) & (ys >= mid_lo[1]) & (ys <= mid_hi[1])
        iy, ix = np.unravel_index(int(np.argmin(np.where(ok, texture, np.inf))), texture.shape)
        mid = np.array([ix, iy], float)
    obj.start = (float(mid[0] - d[0] / 2), float(mid[1] - d[1] / 2))
    obj.velocity = (float(d[0] / (n_frames - 1)), float(d[1] / (n_frames - 1)))
    obj.wobble = tuple(float(x) for x in rng.uniform(-3, 3, 2) * w / 640)
    obj.period = float(rng.uniform(24, 60))


def plan_split(split: str, textures: Path, seed: int, n_frames: int = 48,
               backgrounds: Sequence[str] | None = None, objects: Sequence[str] | None = None,
               sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES, roles: Sequence[str] = ROLES) -> list[SequenceSpec]:
    """The specs of a split's sequences, one per role (backgrounds taken in role order)."""
    if split not in SPLITS:
        raise BenchmarkError(f"split must be one of {list(SPLITS)}, got {split!r}")
    backgrounds = list(backgrounds if backgrounds is not None else DEFAULT_BACKGROUNDS[split])
    objects = list(objects if objects is not None else DEFAULT_OBJECTS[split])
    if len(backgrounds) < len(roles):
        raise BenchmarkError(f"split {split}: {len(roles)} roles need as many backgrounds, got {len(backgrounds)}")
    if not objects:
        raise BenchmarkError(f"split {split}: no object textures")
    for name in [*backgrounds, *objects]:
        if not (textures / name).is_file():
            raise BenchmarkError(f"{textures / name}: texture missing (the default textures come from Debian's "
                                 "opencv-doc package: apt-get install opencv-doc, or pass --textures DIR)")
    specs = []
    obj_order = list(np.random.default_rng([seed, SPLITS.index(split), 99]).permutation(len(objects)))
    obj_iter = iter(obj_order * 4)
    for i, role in enumerate(roles):
        if role not in ROLES:
            raise BenchmarkError(f"unknown role {role!r} (known: {list(ROLES)})")
        sseed = int(np.random.SeedSequence([seed, SPLITS.index(split), i]).generate_state(1)[0])
        rng = np.random.default_rng(sseed)
        size = tuple(int(v) for v in sizes[int(rng.integers(len(sizes)))])
        w = size[0]
        px = w / 640  # speeds are given at 640 px width
        cam = CameraPath(period=float(rng.uniform(30, 70)), phase=float(rng.uniform(0, 2 * np.pi)))

        def direction(speed: float, _rng=rng) -> tuple[float, float]:
            a = _rng.uniform(0, 2 * np.pi)
            return (float(speed * math.cos(a)), float(speed * math.sin(a) * 0.5))

        n_obj = 0
        if role == "pan_empty":
            cam.velocity = direction(rng.uniform(1.5, 3.0) * px)
            cam.sway = tuple(float(x) for x in rng.uniform(5, 15, 2) * px)
            cam.zoom_wave, cam.rot_amp_deg = float(rng.uniform(0.01, 0.03)), float(rng.uniform(0.3, 1.0))
        elif role in ("one_textured", "one_lowtex", "slow_object", "zoom_rotate"):
            n_obj = 1
            if role == "one_textured":
                cam.velocity = direction(rng.uniform(1.0, 2.0) * px)
                cam.sway = tuple(float(x) for x in rng.uniform(3, 10, 2) * px)
            elif role == "one_lowtex":
                cam.velocity = direction(rng.uniform(0.3, 0.8) * px)
            elif role == "slow_object":
                cam.velocity = direction(rng.uniform(2.0, 3.0) * px)
                cam.sway = tuple(float(x) for x in rng.uniform(2, 6, 2) * px)
            else:
                cam.velocity = direction(rng.uniform(0.3, 1.0) * px)
                cam.zoom_ramp = float(rng.choice([-1, 1]) * rng.uniform(0.08, 0.14))
                cam.rot_amp_deg = float(rng.uniform(2.0, 3.5))
        elif role == "two_crossing":
            n_obj = 2
            cam.sway = tuple(float(x) for x in rng.uniform(3, 6, 2) * px)
        bg_name = backgrounds[i]
        bg = trim_border(_read_image(textures / bg_name))
        # photos narrower than the frame are scaled up; others get random room for variety
        min_scale = max(w / bg.shape[1], size[1] / bg.shape[0]) * float(rng.uniform(1.0, 1.25))
        scale = _place_camera(cam, bg.shape[:2], size, n_frames, rng, photo=bg if role == "one_lowtex" else None,
                              min_scale=min_scale)
        objs: list[BlobObject] = []
        for _k in range(n_obj):
            tname = objects[next(obj_iter)]
            tex = _read_image(textures / tname)
            frac = (0.04, 0.10) if n_obj == 2 else (0.03, 0.15)
            objs.append(_make_blob(rng, tname, size, tex.shape[:2], frac))
        if role == "one_textured":
            _linear_path(rng, objs[0], size, n_frames, rng.uniform(1.5, 3.5) * px)
        elif role == "one_lowtex":
            first = _first_frame(bg, scale, cam, size, n_frames)
            diam = int(2 * objs[0].max_radius())
            tex_map = _texture_map(cv2.cvtColor(first, cv2.COLOR_BGR2GRAY), (diam, diam))
            _linear_path(rng, objs[0], size, n_frames, rng.uniform(1.0, 2.0) * px, texture=tex_map)
        elif role == "slow_object":
            _linear_path(rng, objs[0], size, n_frames, rng.uniform(0.3, 0.6) * px)
        elif role == "zoom_rotate":
            _linear_path(rng, objs[0], size, n_frames, rng.uniform(1.0, 3.0) * px)
            objs[0].spin_deg = float(rng.choice([-1, 1]) * rng.uniform(0.5, 1.5))
            objs[0].scale_wave = float(rng.uniform(0.04, 0.08))
        elif role == "two_crossing":
            h = size[1]
            speed = rng.uniform(2.0, 4.0) * px
            tc = (n_frames - 1) / 2
            meet = np.array([w / 2 + rng.uniform(-0.08, 0.08) * w, h / 2 + rng.uniform(-0.08, 0.08) * h])
            ang = rng.uniform(-0.35, 0.35)
            for k, o in enumerate(objs):
                sgn = 1 if k == 0 else -1
                v = np.array([math.cos(ang), math.sin(ang) * (1 if k == 0 else -1)]) * speed * sgn
                off = np.array([0.0, (o.b * 0.35) * (1 if k == 0 else -1)])
                o.start = tuple(float(x) for x in meet + off - v * tc)
                o.velocity = (float(v[0]), float(v[1]))
                o.spin_deg = float(rng.uniform(-0.6, 0.6))
                o.period = float(rng.uniform(24, 60))
        _keep_in_view(objs, cam, size, n_frames)
        specs.append(SequenceSpec(name=role, split=split, role=role, description=ROLE_TEXT[role], size=size,
                                  n_frames=n_frames, background=bg_name, photo_scale=scale, camera=cam,
                                  objects=objs, seed=sseed))
    return specs


# ------------------------------------------------------------------------------------------ rendering
def render_sequence(spec: SequenceSpec, textures: Path):
    """Yield (frame (H, W, 3) uint8 BGR, mask (H, W) bool) for t = 0 … N − 1."""
    w, h = spec.size
    bg = trim_border(_read_image(textures / spec.background))
    scene = _scene(bg, spec.photo_scale)
    texs = [_read_image(textures / o.texture).astype(np.float32) for o in spec.objects]
    rng = np.random.default_rng(spec.seed)
    for t in range(spec.n_frames):
        cam = spec.camera.matrix(t, spec.size, spec.n_frames)
        frame = cv2.warpAffine(scene, cam[:2], (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        mask = np.zeros((h, w), bool)
        # the last object is drawn first: objects[0] is in front
        for obj, tex in reversed(list(zip(spec.objects, texs))):
            f_from_l = object_to_frame(obj, spec.camera, t, spec.size, spec.n_frames)
            box = _object_box(obj, f_from_l, spec.size)
            if box is None:  # wholly outside the frame
                continue
            x0, y0, x1, y1 = box
            d = object_signed_distance(obj, f_from_l, spec.size, box)
            alpha = np.clip(0.5 + d, 0.0, 1.0).astype(np.float32)[..., None]
            th, tw = tex.shape[:2]
            t_from_l = _affine((tw - 1) / 2, (th - 1) / 2, obj.texture_scale)
            t_from_f = t_from_l @ np.linalg.inv(f_from_l) @ _translate(x0, y0)
            layer = cv2.warpAffine(tex, t_from_f[:2], (x1 - x0, y1 - y0),
                                   flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT_101)
            frame[y0:y1, x0:x1] = frame[y0:y1, x0:x1] * (1 - alpha) + layer * alpha
            mask[y0:y1, x0:x1] |= d > 0
        frame = frame + rng.normal(0.0, spec.noise_sigma, frame.shape).astype(np.float32)
        yield np.clip(np.rint(frame), 0, 255).astype(np.uint8), mask


def _write_video(frames: Sequence[np.ndarray], folder: Path, size: tuple[int, int]) -> Path:
    """Write frames as video.mp4 (mp4v) — or video.avi (MJPG) where mp4v is unavailable; check frame count."""
    for name, fourcc in (("video.mp4", "mp4v"), ("video.avi", "MJPG")):
        path = folder / name
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, size)
        if not writer.isOpened():
            writer.release()
            path.unlink(missing_ok=True)
            continue
        for f in frames:
            writer.write(f)
        writer.release()
        cap = cv2.VideoCapture(str(path))
        n = 0
        while cap.read()[0]:
            n += 1
        cap.release()
        if n == len(frames):
            return path
        logger.warning("%s: %d frames read back of %d written; trying another codec", path, n, len(frames))
        path.unlink(missing_ok=True)
    raise BenchmarkError(f"{folder}: OpenCV could write neither an mp4v .mp4 nor an MJPG .avi video")


def _sequence_summary(spec: SequenceSpec, fg: list[float], video: Path) -> dict:
    d = spec.to_json()
    d["video"] = video.name
    d["masks"] = "masks"
    d["gt_fg_fraction_mean"] = float(np.mean(fg))
    d["frames_with_fg"] = int(sum(f > 0 for f in fg))
    d["background_speed_px_per_frame"] = float(np.hypot(*spec.camera.velocity))
    d["object_speeds_px_per_frame"] = [float(np.hypot(*o.velocity)) for o in spec.objects]
    return d


def make_sequence(spec: SequenceSpec, textures: Path, folder: Path) -> dict:
    """Render one sequence into ``folder`` (built beside it, then renamed into place); its description."""
    tmp = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "masks").mkdir(parents=True)
    frames, fg = [], []
    for t, (frame, mask) in enumerate(render_sequence(spec, textures)):
        frames.append(frame)
        fg.append(float(mask.mean()))
        write_mask_png(mask, tmp / "masks" / f"{t:05d}.png")
    video = _write_video(frames, tmp, spec.size)
    info = _sequence_summary(spec, fg, video)
    write_json(info, tmp / SEQUENCE_JSON)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return info


def _textures_fingerprint(textures: Path, names: Sequence[str]) -> dict[str, str]:
    out = {}
    for n in sorted(set(names)):
        h = hashlib.sha256((textures / n).read_bytes()).hexdigest()[:16]
        out[n] = h
    return out


def make_benchmark(out: str | os.PathLike, textures: str | os.PathLike = DEFAULT_TEXTURES, seed: int = 0,
                   n_frames: int = 48, overwrite: bool = False, splits: Sequence[str] = SPLITS,
                   backgrounds: dict[str, Sequence[str]] | None = None,
                   objects: dict[str, Sequence[str]] | None = None,
                   sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES, roles: Sequence[str] = ROLES) -> dict:
    """Render the benchmark into ``out``; returns the manifest (also written as ``out/manifest.json``).

    A rerun with the same settings skips the sequences already complete; different settings in a
    folder that holds a benchmark are an error unless ``overwrite`` (which deletes the old one).
    """
    out, textures = Path(out), Path(textures)
    if not textures.is_dir():
        raise BenchmarkError(f"{textures}: textures folder missing (the default one comes from Debian's opencv-doc "
                             "package: apt-get install opencv-doc, or pass --textures DIR)")
    if n_frames < 2:
        raise BenchmarkError(f"n_frames must be ≥ 2, got {n_frames}")
    plans = {s: plan_split(s, textures, seed, n_frames, (backgrounds or {}).get(s), (objects or {}).get(s),
                           sizes, roles) for s in splits}
    used = [n for specs in plans.values() for sp in specs for n in [sp.background] + [o.texture for o in sp.objects]]
    config = {"generator_version": GENERATOR_VERSION, "seed": seed, "n_frames": n_frames, "fps": FPS,
              "splits": list(splits), "roles": list(roles), "sizes": [list(s) for s in sizes],
              "textures": _textures_fingerprint(textures, used)}
    mpath = out / MANIFEST
    if mpath.is_file():
        try:
            old = json.loads(mpath.read_text())
        except ValueError:
            old = {}
        old_cfg = {k: old.get(k) for k in config}
        if old_cfg != config:
            diffs = [k for k in config if old_cfg[k] != config[k]]
            if not overwrite:
                raise BenchmarkError(f"{out} holds a benchmark made with other settings (differs in {diffs}): "
                                     "use another --out, or --overwrite to replace it")
            logger.warning("%s: replacing a benchmark made with other settings (%s)", out, diffs)
            for s in SPLITS:
                shutil.rmtree(out / s, ignore_errors=True)
            mpath.unlink()
    elif any((out / s).exists() for s in SPLITS):
        if not overwrite:
            raise BenchmarkError(f"{out} already holds split folders without a {MANIFEST}: "
                                 "use another --out, or --overwrite to replace them")
        for s in SPLITS:
            shutil.rmtree(out / s, ignore_errors=True)
    manifest: dict[str, Any] = {**config, "textures_dir": str(textures), "sequences": {}}
    for split, specs in plans.items():
        manifest["sequences"][split] = []
        for spec in specs:
            folder = out / split / spec.name
            want = json.loads(json.dumps(spec.to_json()))
            info = None
            if (folder / SEQUENCE_JSON).is_file():
                try:
                    info = json.loads((folder / SEQUENCE_JSON).read_text())
                except ValueError:
                    info = None
                have = {k: info.get(k) for k in want} if info else None
                if have != want or not (folder / info.get("video", "video.mp4")).is_file() or \
                        len(list((folder / "masks").glob("*.png"))) != spec.n_frames:
                    info = None
            if info is None:
                t0 = time.perf_counter()
                info = make_sequence(spec, textures, folder)
                logger.info("%s/%s: %d frames %dx%d, %d object(s), %.1f s", split, spec.name, spec.n_frames,
                            *spec.size, len(spec.objects), time.perf_counter() - t0)
            else:
                logger.info("%s/%s: already complete, kept", split, spec.name)
            manifest["sequences"][split].append({"name": spec.name, "path": f"{split}/{spec.name}", **info})
    write_json(manifest, mpath)
    atomic_write_text(out / "SEQUENCES.md", sequences_table(manifest))
    return manifest


def sequences_table(manifest: dict) -> str:
    """Markdown table of the benchmark's sequences (what ``make`` writes as ``SEQUENCES.md``)."""
    lines = ["| split | sequence | size | background | objects (texture: area % of the frame, speed px/frame) "
             "| camera (speed px/frame, sway, zoom, rotation) | GT fg % |", "|---|---|---|---|---|---|---|"]
    for split, seqs in manifest.get("sequences", {}).items():
        for s in seqs:
            w, h = s["size"]
            objs = []
            for o, speed in zip(s["objects"], s["object_speeds_px_per_frame"]):
                extra = ([f"spin {o['spin_deg']:+.1f}°/frame"] if o["spin_deg"] else []) + \
                    ([f"scale ±{100 * o['scale_wave']:.0f} %"] if o["scale_wave"] else [])
                area = BlobObject(**{**o, "start": tuple(o["start"])}).area() / (w * h)
                objs.append(f"{o['texture']}: {100 * area:.0f} %, {speed:.1f}"
                            + (f" ({', '.join(extra)})" if extra else ""))
            c = s["camera"]
            v, sway = math.hypot(*c["velocity"]), max(abs(x) for x in c["sway"])
            cam = [f"{v:.1f}"] + ([f"sway {sway:.0f} px"] if sway else [])
            if c["zoom_ramp"]:
                cam.append(f"zoom {'in' if c['zoom_ramp'] < 0 else 'out'} {100 * abs(c['zoom_ramp']):.0f} %")
            if c["zoom_wave"]:
                cam.append(f"zoom ±{100 * c['zoom_wave']:.0f} %")
            if c["rot_amp_deg"]:
                cam.append(f"rotation ±{c['rot_amp_deg']:.1f}°")
            if not v and not sway:
                cam = ["static"]
            lines.append(f"| {split} | {s['name']} | {w}×{h} | {s['background']} | {'; '.join(objs) or '—'} "
                         f"| {', '.join(cam)} | {100 * s['gt_fg_fraction_mean']:.1f} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ scoring
def load_manifest(bench: str | os.PathLike) -> dict:
    path = Path(bench) / MANIFEST
    if not path.is_file():
        raise BenchmarkError(f"{path}: no benchmark manifest (make one with: python -m "
                             "evaluationmodule.video_benchmark make --out DIR)")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise BenchmarkError(f"{path}: unreadable manifest ({err})") from None


def split_sequences(manifest: dict, split: str, bench: Path) -> list[dict]:
    seqs = manifest.get("sequences", {}).get(split)
    if not seqs:
        raise BenchmarkError(f"{bench / MANIFEST}: no split {split!r} (has {list(manifest.get('sequences', {}))})")
    return seqs


def _read_binary(path: Path, shape: tuple[int, int], what: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"))
    except (OSError, ValueError) as err:
        raise BenchmarkError(f"{path}: unreadable {what} ({err})") from None
    if arr.shape != shape:
        raise BenchmarkError(f"{path}: {what} is {arr.shape[1]}x{arr.shape[0]}, expected the video's "
                             f"{shape[1]}x{shape[0]}")
    return arr > 127


def score_sequence(gt_dir: Path, pred_dir: Path, n_frames: int, size: tuple[int, int],
                   bound_th: float = 0.008) -> pd.DataFrame:
    """Per-frame J and F of ``pred_dir/{t:05d}_binary.png`` against ``gt_dir/{t:05d}.png``.

    Frames 0 … N − 2 must all be there (the flow of the last frame needs a next one); frame N − 1 is
    scored when present. Columns: frame, J, F, gt_fg, pred_fg (fractions of the frame).
    """
    shape = (int(size[1]), int(size[0]))
    rows = []
    for t in range(n_frames):
        pred_path = pred_dir / f"{t:05d}_binary.png"
        if not pred_path.is_file():
            if t == n_frames - 1:
                continue
            raise BenchmarkError(f"{pred_path}: expected mask missing (the run must write "
                                 f"00000_binary.png … {n_frames - 2:05d}_binary.png)")
        gt = _read_binary(gt_dir / f"{t:05d}.png", shape, "ground-truth mask")
        pred = _read_binary(pred_path, shape, "predicted mask")
        rows.append({"frame": t, "J": float(db_eval_iou(gt, pred)), "F": db_eval_boundary(gt, pred, bound_th),
                     "gt_fg": float(gt.mean()), "pred_fg": float(pred.mean())})
    return pd.DataFrame(rows, columns=["frame", "J", "F", "gt_fg", "pred_fg"])


@dataclass
class BenchScores:
    per_frame: pd.DataFrame
    per_sequence: pd.DataFrame
    summary: dict


def score_run(bench: str | os.PathLike, split: str, run_dir: str | os.PathLike,
              timings: dict[str, dict] | None = None, label: str | None = None, bound_th: float = 0.008,
              extra: dict | None = None, write: bool = True) -> BenchScores:
    """Score a run folder (``run_dir/{sequence}/{t:05d}_binary.png``) on a split; write the tables.

    Writes ``per_frame.csv``, ``per_sequence.csv`` and ``summary.json`` into ``run_dir`` (atomic).
    ``timings`` (sequence → {"seconds", "n_masks"}) adds the run time and frames/s per sequence.
    Summary means are over sequences (each counts once); ``J_mean_objects`` / ``J_mean_empty`` split
    them by whether the ground truth has any foreground.
    """
    bench, run_dir = Path(bench), Path(run_dir)
    manifest = load_manifest(bench)
    seqs = split_sequences(manifest, split, bench)
    frames, rows = [], []
    for s in seqs:
        name = s["name"]
        df = score_sequence(bench / s["path"] / s.get("masks", "masks"), run_dir / name, int(s["n_frames"]),
                            tuple(s["size"]), bound_th)
        df.insert(0, "sequence", name)
        frames.append(df)
        tm = (timings or {}).get(name, {})
        sec = tm.get("seconds")
        rows.append({"sequence": name, "role": s.get("role", ""), "n_frames": int(s["n_frames"]), "n_scored": len(df),
                     "J_mean": df["J"].mean(), "F_mean": df["F"].mean(), "JF": (df["J"].mean() + df["F"].mean()) / 2,
                     "J_recall": float((df["J"] > 0.5).mean()), "F_recall": float((df["F"] > 0.5).mean()),
                     "gt_fg_mean": df["gt_fg"].mean(), "pred_fg_mean": df["pred_fg"].mean(),
                     "seconds": sec, "fps": (tm.get("n_masks", len(df)) / sec) if sec else None})
        logger.info("%s: J %.3f F %.3f over %d frames", name, rows[-1]["J_mean"], rows[-1]["F_mean"], len(df))
    per_frame = pd.concat(frames, ignore_index=True)
    per_seq = pd.DataFrame(rows)
    has_obj = per_seq["gt_fg_mean"] > 0
    total_s = sum((timings or {}).get(n, {}).get("seconds") or 0 for n in per_seq["sequence"])
    total_masks = sum((timings or {}).get(n, {}).get("n_masks") or 0 for n in per_seq["sequence"])
    summary = {
        "label": label or run_dir.name, "split": split, "bench": str(bench),
        "generator_version": manifest.get("generator_version"), "seed": manifest.get("seed"),
        "n_sequences": len(per_seq), "n_frames_scored": len(per_frame),
        "J_mean": float(per_seq["J_mean"].mean()), "F_mean": float(per_seq["F_mean"].mean()),
        "JF": float(per_seq["JF"].mean()),
        "J_mean_objects": float(per_seq.loc[has_obj, "J_mean"].mean()) if has_obj.any() else None,
        "J_mean_empty": float(per_seq.loc[~has_obj, "J_mean"].mean()) if (~has_obj).any() else None,
        "pred_fg_mean_empty": float(per_seq.loc[~has_obj, "pred_fg_mean"].mean()) if (~has_obj).any() else None,
        "seconds": total_s or None, "fps": (total_masks / total_s) if total_s else None,
        "bound_th": bound_th, **(extra or {}),
    }
    if write:
        write_csv(per_frame, run_dir / "per_frame.csv")
        write_csv(per_seq, run_dir / "per_sequence.csv")
        write_json(summary, run_dir / "summary.json")
    return BenchScores(per_frame, per_seq, summary)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_benchmark(bench: str | os.PathLike, split: str, out: str | os.PathLike, segment_args: Sequence[str] = (),
                  label: str | None = None, rerun: bool = False, score_only: bool = False,
                  bound_th: float = 0.008, script: str = "segment.py") -> BenchScores:
    """Run ``segment.py --video`` on each sequence of the split (end to end, timed), then score the run.

    ``script`` (run as ``python SCRIPT`` from the repository's root) stands for ``segment.py``. A
    sequence whose ``{out}/{sequence}/run.json`` records the same command and a success is not run
    again (resumable) unless ``rerun``. ``score_only`` scores what is there without running.
    """
    bench, out = Path(bench).resolve(), Path(out).resolve()
    manifest = load_manifest(bench)
    seqs = split_sequences(manifest, split, bench)
    timings: dict[str, dict] = {}
    for i, s in enumerate(seqs):
        name = s["name"]
        seq_out = out / name
        video = bench / s["path"] / s.get("video", "video.mp4")
        cmd = [sys.executable, str(script), "--video", str(video), "--out", str(seq_out), *segment_args]
        rec_path = seq_out / "run.json"
        rec = None
        if rec_path.is_file():
            try:
                rec = json.loads(rec_path.read_text())
            except ValueError:
                rec = None
        if score_only or (not rerun and rec and rec.get("command") == cmd[1:] and rec.get("returncode") == 0):
            if rec:
                timings[name] = rec
            logger.info("[%d/%d] %s: not run (%s)", i + 1, len(seqs), name,
                        "score only" if score_only else "already done with this command")
            continue
        if not video.is_file():
            raise BenchmarkError(f"{video}: benchmark video missing")
        # a fresh folder: a previous command's masks must not be scored as this one's, and extract_flow
        # refuses a flow folder made with other settings
        shutil.rmtree(seq_out, ignore_errors=True)
        seq_out.mkdir(parents=True)
        logger.info("[%d/%d] %s: %s", i + 1, len(seqs), name, " ".join(cmd[1:]))
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        atomic_write_text(seq_out / "segment.log", proc.stdout + proc.stderr)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise BenchmarkError(f"{name}: {Path(script).name} failed (exit {proc.returncode}; "
                                 f"log {seq_out / 'segment.log'}): {tail[0]}")
        n_masks = len(list(seq_out.glob("*_binary.png")))
        rec = {"command": cmd[1:], "returncode": 0, "seconds": seconds, "n_masks": n_masks}
        write_json(rec, rec_path)
        timings[name] = rec
        logger.info("[%d/%d] %s: %d masks in %.1f s (%.2f frames/s)", i + 1, len(seqs), name, n_masks, seconds,
                    n_masks / seconds)
    args = list(segment_args)
    if score_only:  # the arguments the masks were made with, as their runs recorded them
        recorded = {tuple(r["command"][5:]) for r in timings.values() if "command" in r}
        args = list(recorded.pop()) if len(recorded) == 1 else (["<mixed>"] if recorded else ["<unknown>"])
    extra = {"segment_args": args, "git_commit": _git_commit()}
    return score_run(bench, split, out, timings, label=label, bound_th=bound_th, extra=extra)


def _fmt(x: Any, spec: str = "6.2f") -> str:
    return format(float(x), spec) if x is not None and np.isfinite(float(x)) else f"{'-':>6}"


def format_table(per_seq: pd.DataFrame, summary: dict) -> str:
    """The per-sequence J, F, J&F, foreground fractions and frames/s, and the split's means, as text."""
    lines = [f"{'sequence':<14} {'J':>6} {'F':>6} {'J&F':>6} {'pred fg':>8} {'gt fg':>6} {'fps':>6}"]
    for r in per_seq.itertuples():
        lines.append(f"{r.sequence:<14} {r.J_mean:6.3f} {r.F_mean:6.3f} {r.JF:6.3f} {r.pred_fg_mean:8.3f} "
                     f"{r.gt_fg_mean:6.3f} {_fmt(r.fps)}")
    fps = _fmt(summary.get("fps"))
    lines.append(f"{'mean':<14} {summary['J_mean']:6.3f} {summary['F_mean']:6.3f} {summary['JF']:6.3f} "
                 f"{'':>8} {'':>6} {fps}")
    if summary.get("J_mean_objects") is not None and summary.get("J_mean_empty") is not None:
        lines.append(f"J over sequences with objects {summary['J_mean_objects']:.3f}; without: J "
                     f"{summary['J_mean_empty']:.3f}, predicted foreground {100 * summary['pred_fg_mean_empty']:.1f} %")
    return "\n".join(lines)


def load_scored_run(run_dir: str | os.PathLike) -> tuple[str, pd.DataFrame, dict]:
    """(label, per-sequence table, summary) of a run folder that ``score`` wrote."""
    d = Path(run_dir)
    ps, sm = d / "per_sequence.csv", d / "summary.json"
    if not ps.is_file() or not sm.is_file():
        raise BenchmarkError(f"{d}: not a scored run (no per_sequence.csv / summary.json)")
    summary = json.loads(sm.read_text())
    return summary.get("label") or d.name, pd.read_csv(ps), summary


def compare_runs(run_dirs: Sequence[str | os.PathLike], plot: str | os.PathLike | None = None) -> str:
    """Side-by-side per-sequence J / F table of several scored runs; optional bar plot of J."""
    runs = [load_scored_run(d) for d in run_dirs]
    seqs = list(dict.fromkeys(s for _, df, _ in runs for s in df["sequence"]))
    width = max(13, *(len(lb) for lb, _, _ in runs))  # a cell reads "0.000 / 0.000"
    head = f"{'sequence':<14}" + "".join(f" {lb[:width]:>{width}}" for lb, _, _ in runs)
    sub = f"{'':<14}" + "".join(f" {'J / F':>{width}}" for _ in runs)
    lines = [head, sub]
    for s in seqs + ["mean"]:
        cells = []
        for _, df, sm in runs:
            if s == "mean":
                cells.append(f"{sm['J_mean']:.3f} / {sm['F_mean']:.3f}")
                continue
            r = df[df["sequence"] == s]
            cells.append(f"{r['J_mean'].iloc[0]:.3f} / {r['F_mean'].iloc[0]:.3f}" if len(r) else "-")
        lines.append(f"{s:<14}" + "".join(f" {c:>{width}}" for c in cells))
    if plot is not None:
        series = {}
        for lb, df, _ in runs:
            j = df.set_index("sequence")["J_mean"]
            series[lb] = np.array([j.get(s, np.nan) for s in seqs], dtype=float)
        write_grouped_bars(seqs, series, plot, "Video benchmark: J per sequence (dashed: means)", ylabel="J")
    return "\n".join(lines)


def _read_video_frame(video: Path, t: int) -> np.ndarray:
    """Frame ``t`` of ``video`` as RGB uint8 (H, W, 3); decoded in order, as seeking in MP4 is inexact."""
    frames = iter_video_frames(video)
    try:
        frame = next(itertools.islice(frames, t, None), None)
    except ValueError as err:  # OpenCV cannot open it
        raise BenchmarkError(str(err)) from None
    finally:
        frames.close()
    if frame is None:
        raise BenchmarkError(f"{video}: has no frame {t}")
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def _outlined(frame: np.ndarray, masks: Sequence[tuple[np.ndarray, tuple[int, int, int]]]) -> np.ndarray:
    out = frame.copy()
    for mask, colour in masks:
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, colour, 2)
    return out


def parse_frame_spec(spec: str) -> tuple[str, int]:
    """``'zoom_rotate:30'`` → ('zoom_rotate', 30)."""
    name, sep, t = spec.rpartition(":")
    if not sep or not name or not t.isdigit():
        raise BenchmarkError(f"--frames {spec!r}: expected SEQUENCE:FRAME, e.g. zoom_rotate:30")
    return name, int(t)


def compare_frames(run_dirs: Sequence[str | os.PathLike], frames: Sequence[str], path: str | os.PathLike) -> Path:
    """A figure of real frames: one row per ``SEQUENCE:FRAME`` in ``frames``, one column per scored run,
    each panel the video's frame with the run's foreground outline (white) and the ground truth's
    (green), titled with the run's label and the frame's J. The runs must be on one benchmark split
    (their ``summary.json`` names it)."""
    from matplotlib.figure import Figure

    runs = []
    for d in run_dirs:
        label, _, summary = load_scored_run(d)
        runs.append((label, Path(d), summary))
    where = {(summary.get("bench"), summary.get("split")) for _, _, summary in runs}
    if len(where) != 1:
        raise BenchmarkError(f"the runs were scored on different benchmarks or splits: {sorted(map(str, where))}")
    bench_s, split = where.pop()
    bench = Path(bench_s)
    seqs = {s["name"]: s for s in split_sequences(load_manifest(bench), split, bench)}
    specs = [parse_frame_spec(f) for f in frames]
    fig = Figure(figsize=(3.2 * len(runs), 2.2 * len(specs) + 0.3))
    axes = np.asarray(fig.subplots(len(specs), len(runs), squeeze=False))
    for row, (name, t) in enumerate(specs):
        if name not in seqs:
            raise BenchmarkError(f"--frames {name}:{t}: no sequence {name!r} in the {split} split "
                                 f"(has {', '.join(seqs)})")
        seq = seqs[name]
        if not 0 <= t < int(seq["n_frames"]):
            raise BenchmarkError(f"--frames {name}:{t}: the sequence has frames 0 … {int(seq['n_frames']) - 1}")
        folder = bench / seq["path"]
        image = _read_video_frame(folder / seq["video"], t)
        shape = image.shape[:2]
        gt = _read_binary(folder / seq.get("masks", "masks") / f"{t:05d}.png", shape, "ground-truth mask")
        for col, (label, d, _) in enumerate(runs):
            pred = _read_binary(d / name / f"{t:05d}_binary.png", shape, "predicted mask")
            ax = axes[row, col]
            ax.imshow(_outlined(image, [(gt, (0, 255, 0)), (pred, (255, 255, 255))]))
            ax.set_title(f"{label} · {name} {t} · J {float(db_eval_iou(gt, pred)):.2f}", fontsize=7)
            ax.set_axis_off()
    fig.suptitle("white: the run's foreground; green: the ground truth", fontsize=8)
    fig.tight_layout()
    return write_figure(fig, Path(path))


# ------------------------------------------------------------------------------------------ CLI
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(prog="python -m evaluationmodule.video_benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log_level", default="INFO")
    sub = p.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="render the benchmark")
    mk.add_argument("--out", required=True)
    mk.add_argument("--textures", default=str(DEFAULT_TEXTURES), help="folder of the photographs (opencv-doc's)")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--n_frames", type=int, default=48)
    mk.add_argument("--overwrite", action="store_true", help="replace a benchmark made with other settings")
    sc = sub.add_parser("score", help="run segment.py --video on a split and score it (extra args after --)")
    sc.add_argument("--bench", required=True)
    sc.add_argument("--split", default="test", choices=list(SPLITS))
    sc.add_argument("--out", required=True, help="run folder (one subfolder per sequence)")
    sc.add_argument("--label", default=None, help="name in tables and plots (default: the folder's name)")
    sc.add_argument("--rerun", action="store_true", help="run again sequences already done with the same command")
    sc.add_argument("--score_only", action="store_true", help="score the masks already in --out, run nothing")
    sc.add_argument("--bound_th", type=float, default=0.008)
    cp = sub.add_parser("compare", help="per-sequence J / F of several scored runs side by side")
    cp.add_argument("runs", nargs="+")
    cp.add_argument("--plot", default=None, help="bar plot PNG (default: compare_J.png beside the first run)")
    cp.add_argument("--frames", nargs="+", default=None, metavar="SEQUENCE:FRAME",
                    help="also draw these frames, one row each, with every run's outline (e.g. zoom_rotate:30)")
    cp.add_argument("--frames_out", default=None,
                    help="the frames' figure (PNG; default: compare_frames.png beside the first run)")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if extra and args.cmd != "score":
        p.error("arguments after -- are only for score (they go to segment.py)")
    try:
        if args.cmd == "make":
            man = make_benchmark(args.out, args.textures, args.seed, args.n_frames, args.overwrite)
            n = sum(len(v) for v in man["sequences"].values())
            print(f"benchmark: {n} sequences ({', '.join(man['sequences'])}) → {args.out}")
        elif args.cmd == "score":
            res = run_benchmark(args.bench, args.split, args.out, extra, label=args.label, rerun=args.rerun,
                                score_only=args.score_only, bound_th=args.bound_th)
            print(format_table(res.per_sequence, res.summary))
            print(f"→ {Path(args.out) / 'summary.json'}")
        else:
            plot = args.plot or str(Path(args.runs[0]).resolve().parent / "compare_J.png")
            print(compare_runs(args.runs, plot))
            print(f"plot → {plot}")
            if args.frames:
                out = args.frames_out or str(Path(args.runs[0]).resolve().parent / "compare_frames.png")
                print(f"frames → {compare_frames(args.runs, args.frames, out)}")
    except (BenchmarkError, OSError) as err:
        raise SystemExit(f"video_benchmark: {err}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
