"""Writing a benchmark on disk: each sequence's video, masks and description, the manifest, SEQUENCES.md.

A sequence is built in a hidden folder beside its place and renamed into it when complete, so an
interrupted ``make`` leaves no half sequence that a rerun would keep. A rerun with the same settings
keeps the complete sequences; other settings in a folder that holds a benchmark are refused unless
``overwrite``. Videos are MP4 (mp4v, 25 fps) or, where OpenCV lacks that codec, MJPG AVI; masks are
8-bit PNGs with values 0 / 255 at the video's size (True where the pixel's centre lies inside an object).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from emseg.app.video_benchmark.layout import (
    DEFAULT_TEXTURES,
    FPS,
    GENERATOR_VERSION,
    MANIFEST,
    SEQUENCE_JSON,
    SPLITS,
    BenchmarkError,
)
from emseg.app.video_benchmark.scenes import DEFAULT_SIZES, ROLES, BlobObject, SequenceSpec, plan_split, render_sequence
from emseg.core.atomic_io import atomic_write_text
from emseg.core.video_io import iter_frames, open_video
from evaluationmodule.writers import write_json, write_mask_png

logger = logging.getLogger(__name__)


def _count_frames(path: Path) -> int:
    """How many frames the project's video reader decodes from ``path`` (0 when it cannot open it):
    a codec that writes without complaint can still write what no reader decodes in full."""
    try:
        cap, _ = open_video(path, flag="written video")
    except (OSError, ValueError):
        return 0
    return sum(1 for _ in iter_frames(cap))


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
        n = _count_frames(path)
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


def _only_appends_roles(old: dict, new: dict) -> bool:
    """Whether settings ``new`` differ from ``old`` only by roles appended after ``old``'s (and the textures
    those use): every existing sequence is then one the new settings make identically (a sequence's draws
    depend on its position in the roles only, ``scenes.plan_split``)."""
    old_roles, old_tex = old.get("roles") or [], old.get("textures") or {}
    same = all(old.get(k) == new[k] for k in new if k not in ("roles", "textures"))
    return (same and bool(old_roles) and new["roles"][:len(old_roles)] == old_roles
            and all(new["textures"].get(k) == v for k, v in old_tex.items()))


def make_benchmark(out: str | os.PathLike, textures: str | os.PathLike = DEFAULT_TEXTURES, seed: int = 0,
                   n_frames: int = 48, overwrite: bool = False, splits: Sequence[str] = SPLITS,
                   backgrounds: dict[str, Sequence[str]] | None = None,
                   objects: dict[str, Sequence[str]] | None = None,
                   sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES, roles: Sequence[str] = ROLES) -> dict:
    """Render the benchmark into ``out``; returns the manifest (also written as ``out/manifest.json``).

    A rerun with the same settings skips the sequences already complete, and so does a rerun that only
    appends roles (a benchmark made before the new roles gains them, its sequences kept); other settings
    in a folder that holds a benchmark are an error unless ``overwrite`` (which deletes the old one).
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
        if old_cfg != config and _only_appends_roles(old_cfg, config):
            # the sequences already there are those the new settings make first: keep them, add the rest
            logger.info("%s: adding the roles %s to the benchmark", out, config["roles"][len(old_cfg["roles"]):])
        elif old_cfg != config:
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
