"""The generator: camera paths, textured blobs, the plan of a split, and the rendering of a sequence.

Each sequence is rendered: the background is a real photograph seen by a moving camera (a smooth,
bounded affine path — translation, zoom, small rotation — whose window always lies inside the
photograph, so no border ever comes into view), and 0–2 foreground objects (the original seven roles;
2–5 small ones, each 1–3 % of the frame, in the roles added after them) are smooth irregular
blobs (Fourier-perturbed ellipses) textured from other real photographs, each with its own smooth
motion relative to the scene. Objects are composited with an anti-aliased alpha; the ground truth
is exact: a pixel is foreground where its centre lies inside an object's analytic shape (the
object's alpha > 0.5; the union of the objects). Mild sensor noise is added. Since every pixel's
motion is known, :func:`backward_motion` gives it exactly (the scorer's flicker uses it).

Everything here is deterministic given the seed: :func:`plan_split` draws the specs
(:class:`SequenceSpec`), :func:`render_sequence` turns one into frames and masks. Writing them is
``make.py``'s job.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from emseg.app.video_benchmark.layout import GENERATOR_VERSION, SPLITS, BenchmarkError

# The first seven are the original benchmark ("core7"). New roles are only ever appended: a sequence's
# random draws come from its position in ROLES (and the object textures are dealt in role order), so an
# appended role leaves every earlier sequence byte-identical.
CORE_ROLES = ("static_empty", "pan_empty", "one_textured", "one_lowtex", "two_crossing", "slow_object", "zoom_rotate")
NEW_ROLES = ("small_objects", "formation")
ROLES = CORE_ROLES + NEW_ROLES
EMPTY_ROLES = ("static_empty", "pan_empty")  # no object: the ground truth is empty in every frame
SMALL_AREA = (0.01, 0.03)  # area of each small_objects / formation blob, fraction of the frame
ROLE_TEXT = {
    "static_empty": "static camera, no object (empty ground truth)",
    "pan_empty": "moving camera (pan, slight zoom and rotation), no object (empty ground truth)",
    "one_textured": "panning camera, one object on a textured background",
    "one_lowtex": "slow pan over the photo's least textured region, one object over it",
    "two_crossing": "swaying camera, two objects crossing (the first occludes the second)",
    "slow_object": "fast pan, one object moving slowly relative to the scene (motion close to the camera's)",
    "zoom_rotate": "camera zoom and rotation, one rotating and scaling object",
    "small_objects": "panning camera, 2–3 small objects (1–3 % of the frame each), each on its own path",
    "formation": "swaying camera, 3–5 small blobs (1–3 % of the frame each) moving together in formation, "
                 "each with a small jitter and spin of its own (like limbs)",
}
# Backgrounds are disjoint between the splits; the role order of ROLES (photographs only: the folder's
# videos are never used, vtest.avi least of all — it is kept for an independent check).
DEFAULT_BACKGROUNDS = {
    "dev": ["leuvenA.jpg", "graf1.png", "board.jpg", "stuff.jpg", "aero3.jpg", "Blender_Suzanne1.jpg", "left01.jpg",
            "basketball1.png", "right01.jpg"],
    "test": ["building.jpg", "starry_night.jpg", "aloeL.jpg", "home.jpg", "aero1.jpg", "ela_original.jpg",
             "licenseplate_motion.jpg", "box_in_scene.png", "left.jpg"],
}
DEFAULT_OBJECTS = {
    "dev": ["fruits.jpg", "baboon.jpg", "orange.jpg", "HappyFish.jpg", "smarties.png", "box.png"],
    "test": ["messi5.jpg", "apple.jpg", "butterfly.jpg", "chicky_512.png", "squirrel_cls.jpg", "rubberwhale1.png"],
}
DEFAULT_SIZES = ((640, 360), (672, 480), (720, 404), (640, 480))
NOISE_SIGMA = 2.0  # grey levels (of 255): mild sensor noise, before the codec's own


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

    @classmethod
    def from_json(cls, d: dict) -> SequenceSpec:
        """The spec back from :meth:`to_json`'s dict (a ``sequence.json``, or a manifest entry: other keys
        are ignored)."""
        def tuples(x: dict) -> dict:
            return {k: tuple(v) if isinstance(v, list) and k not in ("coeffs", "phases") else v for k, v in x.items()}

        cam = CameraPath(**tuples(d["camera"]))
        objs = [BlobObject(**tuples(o)) for o in d["objects"]]
        keep = {k: d[k] for k in ("name", "split", "role", "description", "n_frames", "background", "photo_scale",
                                  "seed", "noise_sigma") if k in d}
        return cls(**keep, size=(int(d["size"][0]), int(d["size"][1])), camera=cam, objects=objs)


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


def _small_blobs(rng: np.random.Generator, role: str, n_obj: int, objects: Sequence[str],
                 obj_iter: Iterator[int], textures: Path, size: tuple[int, int]) -> list[BlobObject]:
    """The blobs of a new role, each of ``SMALL_AREA`` of the frame: ``small_objects`` gives each its own
    texture; ``formation``'s blobs share one, so they read as the parts of one body."""
    names = [objects[next(obj_iter)] for _ in range(n_obj if role == "small_objects" else 1)]
    hw = {n: _read_image(textures / n).shape[:2] for n in names}
    return [_make_blob(rng, names[k % len(names)], size, hw[names[k % len(names)]], SMALL_AREA)
            for k in range(n_obj)]


def _centre_track(obj: BlobObject, n_frames: int) -> np.ndarray:
    """The object's centre (N, 2) at t = 0 … N − 1, in scene-at-t = 0 coordinates."""
    return np.array([obj.pose(t)[:2, 2] for t in range(n_frames)])


def _separate_paths(rng: np.random.Generator, objs: list[BlobObject], size: tuple[int, int], n_frames: int,
                    px: float, tries: int = 30) -> None:
    """Straight paths (1–3 px/frame at 640 px, small spin) that keep the objects apart: each new path is
    redrawn (up to ``tries`` times) until its blob never comes within 1.1 × the two radii of an earlier
    one, so every object stays a ground-truth region of its own."""
    placed: list[tuple[np.ndarray, float]] = []
    for o in objs:
        r = o.max_radius()
        for _ in range(tries):
            _linear_path(rng, o, size, n_frames, rng.uniform(1.0, 3.0) * px, keep=1.2)
            track = _centre_track(o, n_frames)
            if all(np.linalg.norm(track - tr, axis=1).min() > 1.1 * (r + rr) for tr, rr in placed):
                break
        o.spin_deg = float(rng.uniform(-1.0, 1.0))
        placed.append((_centre_track(o, n_frames), r))


def _formation_paths(rng: np.random.Generator, objs: list[BlobObject], size: tuple[int, int], n_frames: int,
                     px: float) -> None:
    """One straight path (1–2.5 px/frame at 640 px) for the whole formation: ``objs[0]`` is the body, the
    others sit around it, touching or nearly (0.85–1.15 × the sum of the two radii), each with a jitter
    (1.5–4 px at 640 px, its own period) and a spin of its own: the parts move together, not rigidly."""
    body, limbs = objs[0], objs[1:]
    rb = body.max_radius()
    base = rng.uniform(0, 2 * np.pi)
    offsets = []
    for k, o in enumerate(limbs):
        ang = base + 2 * np.pi * k / len(limbs) + rng.uniform(-0.3, 0.3)
        dist = (rb + o.max_radius()) * rng.uniform(0.85, 1.15)
        offsets.append(np.array([math.cos(ang), math.sin(ang)]) * dist)
    extent = max(float(np.linalg.norm(off)) + o.max_radius() for off, o in zip(offsets, limbs))
    ang = rng.uniform(0, 2 * np.pi)
    d = np.array([math.cos(ang), math.sin(ang)]) * rng.uniform(1.0, 2.5) * px * (n_frames - 1)
    room = np.maximum(np.array(size, float) - 2 * extent, 1.0)  # where the formation's centre may go
    d *= min(1.0, *(room / np.maximum(np.abs(d), 1e-9))) * 0.999
    mid = np.array(size, float) / 2 + rng.uniform(-0.5, 0.5, 2) * np.maximum(room - np.abs(d), 0.0)
    start, vel = mid - d / 2, d / (n_frames - 1)
    for o, off in zip(objs, [np.zeros(2), *offsets]):
        o.start = (float(start[0] + off[0]), float(start[1] + off[1]))
        o.velocity = (float(vel[0]), float(vel[1]))
        jitter = (rng.uniform(1.5, 4.0) if o is not body else rng.uniform(0.5, 2.0)) * px
        o.wobble = tuple(float(x) for x in rng.uniform(-1, 1, 2) * jitter)
        o.period = float(rng.uniform(16, 40))
        o.spin_deg = float(rng.uniform(-1.5, 1.5))


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
    # textures are dealt in role order, cycling (the same deal as the former four rounds of obj_order)
    obj_iter = itertools.cycle(obj_order)
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
        elif role == "small_objects":  # no zoom: the objects keep their 1–3 % of the frame
            n_obj = int(rng.integers(2, 4))
            cam.velocity = direction(rng.uniform(0.8, 1.8) * px)
            cam.sway = tuple(float(x) for x in rng.uniform(2, 6, 2) * px)
        elif role == "formation":
            n_obj = int(rng.integers(3, 6))
            cam.velocity = direction(rng.uniform(0.3, 1.0) * px)
            cam.sway = tuple(float(x) for x in rng.uniform(3, 8, 2) * px)
        bg_name = backgrounds[i]
        bg = trim_border(_read_image(textures / bg_name))
        # photos narrower than the frame are scaled up; others get random room for variety
        min_scale = max(w / bg.shape[1], size[1] / bg.shape[0]) * float(rng.uniform(1.0, 1.25))
        scale = _place_camera(cam, bg.shape[:2], size, n_frames, rng, photo=bg if role == "one_lowtex" else None,
                              min_scale=min_scale)
        objs: list[BlobObject] = []
        if role in NEW_ROLES:
            objs = _small_blobs(rng, role, n_obj, objects, obj_iter, textures, size)
        else:  # the original roles, drawn exactly as before
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
        elif role == "small_objects":
            _separate_paths(rng, objs, size, n_frames, px)
        elif role == "formation":
            _formation_paths(rng, objs, size, n_frames, px)
        # the small blobs are kept wholly in view where the paths allow it, so they keep their size
        _keep_in_view(objs, cam, size, n_frames, keep=1.1 if role in NEW_ROLES else 0.6)
        specs.append(SequenceSpec(name=role, split=split, role=role, description=ROLE_TEXT[role], size=size,
                                  n_frames=n_frames, background=bg_name, photo_scale=scale, camera=cam,
                                  objects=objs, seed=sseed))
    return specs


# ------------------------------------------------------------------------------------------ rendering
def render_sequence(spec: SequenceSpec, textures: Path) -> Iterator[tuple[np.ndarray, np.ndarray]]:
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


# ------------------------------------------------------------------------------------------ exact motion
def frame_layers(spec: SequenceSpec, t: int) -> np.ndarray:
    """Which layer each pixel of frame t shows → (H, W) int16: 0 the background, k > 0 ``objects[k − 1]``
    (the frontmost object where they overlap, as rendered). ``layers > 0`` is the frame's ground truth."""
    w, h = spec.size
    layers = np.zeros((h, w), np.int16)
    for k in range(len(spec.objects), 0, -1):  # back to front: objects[0] is drawn last, in front
        obj = spec.objects[k - 1]
        f_from_l = object_to_frame(obj, spec.camera, t, spec.size, spec.n_frames)
        box = _object_box(obj, f_from_l, spec.size)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        inside = object_signed_distance(obj, f_from_l, spec.size, box) > 0
        layers[y0:y1, x0:x1][inside] = k
    return layers


def backward_motion(spec: SequenceSpec, t: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact motion of frame t back to frame t − 1 (t ≥ 1), from the camera's and objects' paths.

    Returns (flow (H, W, 2) float32: pixel p of frame t shows the scene point that frame t − 1 showed at
    p + flow(p); channel 0 along x, 1 along y — the convention of ``emseg.video.flow_confidence.warp``),
    valid (H, W) bool: p + flow(p) lies in frame t − 1 and frame t − 1 shows the same layer there (the
    pixel was neither outside the view nor hidden by another object)).
    """
    if not 1 <= t < spec.n_frames:
        raise ValueError(f"backward motion needs 1 ≤ t < {spec.n_frames}, got {t}")
    w, h = spec.size
    cur, prev = frame_layers(spec, t), frame_layers(spec, t - 1)
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    flow = np.zeros((h, w, 2), np.float64)
    cam_t = spec.camera.matrix(t, spec.size, spec.n_frames)
    cam_p = spec.camera.matrix(t - 1, spec.size, spec.n_frames)
    # frame t → frame t − 1, per layer: through the scene for the background, the object's own frame otherwise
    maps = [np.linalg.inv(cam_p) @ cam_t] + [
        object_to_frame(o, spec.camera, t - 1, spec.size, spec.n_frames)
        @ np.linalg.inv(object_to_frame(o, spec.camera, t, spec.size, spec.n_frames)) for o in spec.objects]
    for k, m in enumerate(maps):
        sel = cur == k
        if not sel.any():
            continue
        x, y = xs[sel], ys[sel]
        flow[sel, 0] = m[0, 0] * x + m[0, 1] * y + m[0, 2] - x
        flow[sel, 1] = m[1, 0] * x + m[1, 1] * y + m[1, 2] - y
    sx, sy = xs + flow[..., 0], ys + flow[..., 1]
    valid = (sx >= 0) & (sx <= w - 1) & (sy >= 0) & (sy <= h - 1)
    ix = np.clip(np.rint(sx), 0, w - 1).astype(np.intp)
    iy = np.clip(np.rint(sy), 0, h - 1).astype(np.intp)
    valid &= prev[iy, ix] == cur
    return flow.astype(np.float32), valid
