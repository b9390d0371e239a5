"""Stage 5 and the run's files: binarise, overlay, write (a writer thread), the animation, the
manifest, ``skipped.csv``, and progress reporting."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from emseg.app.segment.options import SegmentOptions
from emseg.app.segment.source import StageTimes
from emseg.core.atomic_io import atomic_write, atomic_write_image
from emseg.core.masks import exceptbiggest_labels, labels_at, scores_at
from emseg.video.refine import drop_specks, refined_labels, refined_scores
from emseg.video.steady import SteadyMasks, foreground_margin, upsample_flow
from evaluationmodule.writers import rewrite_rows, write_json, write_npy

logger = logging.getLogger(__name__)

PALETTE = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
                    [140, 86, 75], [227, 119, 194], [127, 127, 127]], dtype=np.uint8)
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))  # the 4-neighbourhood
ANIMATION_WIDTH = 480
LOG_EVERY_S = 10.0


def overlay(base: np.ndarray, labels: np.ndarray, binary: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """base uint8 (H, W, 3) RGB, labels (H, W) int (:func:`labels_at`), binary (H, W) bool → uint8
    (H, W, 3): each pixel ``(1 − alpha) · base + alpha · colour of its label`` (rounded), the
    foreground's boundary (its pixels with a 4-neighbour outside it) drawn white."""
    # In uint8 through OpenCV: the float32 blend cost half the writer thread's time per frame.
    tint = np.take(PALETTE, labels, axis=0, mode="wrap")
    out = cv2.addWeighted(np.ascontiguousarray(base), 1 - alpha, tint, alpha, 0.0)
    mask = binary.astype(np.uint8)
    out[mask > cv2.erode(mask, _CROSS, borderType=cv2.BORDER_REPLICATE)] = 255
    return out


def _png(path: Path, image: np.ndarray) -> None:
    """A PNG with fast compression (masks compress well anyway)."""
    atomic_write_image(path, image, (cv2.IMWRITE_PNG_COMPRESSION, 1))


class Writer:
    """Writes every output in order on one background thread (PNG encoding releases the GIL);
    the animation is streamed, never held in memory."""

    def __init__(self, out: Path, opts: SegmentOptions, fps: float | None, times: StageTimes | None = None) -> None:
        self.out, self.opts, self.fps = out, opts, fps
        self.times = times or StageTimes()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        self.pending: deque = deque()
        self.mp4: cv2.VideoWriter | None = None
        self.mp4_tmp: Path | None = None
        self.gif_frames: list[Image.Image] = []
        self.n_written = 0
        # a frame's mask decided with its neighbours' (--no_steady: alone)
        self.steady = (SteadyMasks(clean=drop_specks if opts.refine else None)
                       if opts.temporal and opts.steady else None)

    def submit(self, name: str, final: np.ndarray, size: tuple[int, int], base: Callable[[], np.ndarray] | None,
               to_prev: np.ndarray | None = None, forward: np.ndarray | None = None):
        """One frame, in order: its final probabilities (L, I, J), output size (H, W), a maker of its RGB
        image (or None), and its flows (2, I, J) on the model's grid, in its pixels, back to the previous
        frame (None: the sequence is broken here) and on to the next (the steady masks' neighbours)."""
        self.pending.append(self.pool.submit(self._write, name, final, size, base, to_prev, forward))
        while len(self.pending) > 32:  # back-pressure: memory stays flat
            self.pending.popleft().result()

    def _write(self, name: str, final: np.ndarray, size: tuple[int, int], base, to_prev, forward) -> None:
        t0 = time.perf_counter()
        frame = base() if base is not None and (self.opts.refine or self.opts.overlays or self.opts.animation) else None
        refine = self.opts.refine and frame is not None
        if self.steady is not None:
            # the margin decides with the neighbours' masks (emseg/video/steady.py), one frame later
            L = final.shape[0]
            labels, margin = foreground_margin(refined_scores(final, frame) if refine else scores_at(final, size), L)
            hw = margin.shape
            flows = [None if f is None else upsample_flow(f, hw) for f in (to_prev, forward)]
            decided = self.steady.push(margin, *flows, payload=(name, final, labels, frame))
            self.times.add("binarise", t0)
            for (n, fin, lab, fr), binary in decided:
                self._emit(n, fin, lab, fr, binary)
            return
        if refine:
            labels = refined_labels(final, frame)
            binary = drop_specks(exceptbiggest_labels(labels, final.shape[0]))
        else:
            labels = labels_at(final, size)  # once: the mask and the overlay both use it
            binary = exceptbiggest_labels(labels, final.shape[0])
        self.times.add("binarise", t0)
        self._emit(name, final, labels, frame, binary)

    def _flush(self) -> None:
        """The frame the steady masks still hold (on the writer thread, after every other)."""
        if self.steady is not None:
            for (n, fin, lab, fr), binary in self.steady.finish():
                self._emit(n, fin, lab, fr, binary)

    def _emit(self, name: str, final: np.ndarray, labels: np.ndarray, frame: np.ndarray | None,
              binary: np.ndarray) -> None:
        t0 = time.perf_counter()
        _png(self.out / f"{name}_binary.png", binary.astype(np.uint8) * 255)
        if self.opts.save_proba:
            write_npy(final.astype(np.float32), self.out / f"{name}_proba.npy")
        if self.opts.overlays:
            ov = overlay(frame, labels, binary)
            _png(self.out / f"{name}_overlay.png", cv2.cvtColor(ov, cv2.COLOR_RGB2BGR))
            if self.opts.animation:
                self._animate(cv2.resize(ov, self._animation_size(ov.shape), interpolation=cv2.INTER_AREA))
        elif self.opts.animation:
            # Drawn at the animation's size: a full-size overlay would cost three times as much.
            anim = self._animation_size(labels.shape)
            small_base = cv2.resize(frame, anim, interpolation=cv2.INTER_AREA)
            small_labels = cv2.resize(labels.astype(np.uint8), anim, interpolation=cv2.INTER_NEAREST)
            small_binary = cv2.resize(binary.astype(np.uint8), anim, interpolation=cv2.INTER_NEAREST) > 0
            self._animate(overlay(small_base, small_labels, small_binary))
        self.times.add("write", t0)
        self.n_written += 1

    @staticmethod
    def _animation_size(shape: tuple[int, ...]) -> tuple[int, int]:
        """(width, height) of the animation for frames of ``shape`` (H, W, ...): at most
        ``ANIMATION_WIDTH`` wide, even sides (the MP4 encoder needs them)."""
        scale = min(1.0, ANIMATION_WIDTH / shape[1])
        return max(2, int(shape[1] * scale)) // 2 * 2, max(2, int(shape[0] * scale)) // 2 * 2

    def _animate(self, small: np.ndarray) -> None:
        """Append one RGB frame, already at :meth:`_animation_size`."""
        size = (small.shape[1], small.shape[0])
        if self.fps is None:  # flow files: a GIF (few frames)
            self.gif_frames.append(Image.fromarray(small))
            return
        if self.mp4 is None:
            self.mp4_tmp = self.out / "segmentation.tmp.mp4"
            self.mp4 = cv2.VideoWriter(str(self.mp4_tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, size)
        self.mp4.write(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))

    def close(self) -> dict:
        self.pending.append(self.pool.submit(self._flush))
        for f in self.pending:
            f.result()
        self.pool.shutdown(wait=True)
        res = {}
        if self.mp4 is not None:
            self.mp4.release()
            os.replace(self.mp4_tmp, self.out / "segmentation.mp4")
            res["animation"] = str(self.out / "segmentation.mp4")
        elif len(self.gif_frames) > 1:
            imgs = self.gif_frames
            atomic_write(self.out / "segmentation.gif", lambda p: imgs[0].save(
                p, format="GIF", save_all=True, append_images=imgs[1:], duration=80, loop=0))
            res["animation"] = str(self.out / "segmentation.gif")
        return res


def write_manifest(out: Path, manifest: dict) -> None:
    write_json(manifest, out / "manifest.json")


class Progress:
    """tqdm on a terminal; a log line every ``LOG_EVERY_S`` seconds otherwise (CI logs, nohup)."""

    def __init__(self, total: int | None, desc: str, enabled: bool) -> None:
        self.tty = enabled and sys.stderr.isatty()
        self.enabled = enabled
        self.bar = tqdm(total=total, desc=desc, unit="frame", disable=not self.tty)
        self.total, self.desc, self.n = total, desc, 0
        self.t0 = self.last = time.perf_counter()

    def update(self, k: int = 1) -> None:
        self.n += k
        self.bar.update(k)
        now = time.perf_counter()
        if self.enabled and not self.tty and now - self.last >= LOG_EVERY_S:
            self.last = now
            of = f"/{self.total}" if self.total else ""
            logger.info("%s: %d%s frames, %.1f frames/s", self.desc, self.n, of, self.n / (now - self.t0))

    def close(self) -> None:
        self.bar.close()


def write_skipped(out: Path, skipped: list[tuple[str, str]]) -> None:
    rewrite_rows(out / "skipped.csv", [{"file": f, "reason": r} for f, r in skipped], ["file", "reason"])


def write_flows(out: Path, flows: list[np.ndarray]) -> Path:
    """``flows.npz``: every flow (N, h, w, 2) float16 under the key ``flows``, compressed, through
    ``atomic_write`` (numpy is handed an open file: given the temporary name, it would add ``.npz``)."""
    stacked = np.stack(flows)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, flows=stacked)

    return atomic_write(out / "flows.npz", write)
