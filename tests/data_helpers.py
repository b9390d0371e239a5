"""Helpers for the data tests (tests/test_data_*.py): small files and DataSplits in tmp_path."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from csvflowdatamodule.CsvDataset import write_flow

H, W = 12, 20


def random_flow(rng: np.random.Generator, h: int = H, w: int = W) -> np.ndarray:
    """A float32 flow (h, w, 2)."""
    return rng.normal(0.0, 3.0, size=(h, w, 2)).astype(np.float32)


def write_csv(path: Path, columns: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        w.writerows(rows)
    return path


def make_sample_files(base: Path, k: int, rng: np.random.Generator, h: int = H, w: int = W) -> dict[str, str]:
    """Write one good sample (flow, image, mask) under ``base``; return column → relative path."""
    (base / "flows").mkdir(parents=True, exist_ok=True)
    (base / "images").mkdir(exist_ok=True)
    (base / "masks").mkdir(exist_ok=True)
    rel = {"Flow": f"flows/{k:05d}.flo", "Image": f"images/{k:05d}.png", "GtMask": f"masks/{k:05d}.png"}
    write_flow(base / rel["Flow"], random_flow(rng, h, w))
    Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(base / rel["Image"])
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255
    Image.fromarray(mask).save(base / rel["GtMask"])
    return rel


def make_split(base: Path, name: str = "split", n: int = 6, seed: int = 0,
               columns: tuple[str, ...] = ("Flow", "Image", "GtMask"), h: int = H, w: int = W) -> str:
    """A DataSplit ``base/name_{train,val,test}.csv`` of ``n`` good samples each; returns the prefix."""
    rng = np.random.default_rng(seed)
    for split_i, split in enumerate(("train", "val", "test")):
        rows = []
        for k in range(n):
            rel = make_sample_files(base, 100 * split_i + k, rng, h, w)
            rows.append([rel[c] for c in columns])
        write_csv(base / f"{name}_{split}.csv", list(columns), rows)
    return str(base / name)


def textured(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random RGB texture (h, w, 3) uint8 (good for flow estimation)."""
    import cv2

    t = rng.random((h, w, 3)).astype(np.float32)
    t = cv2.GaussianBlur(t, (0, 0), 1.5)
    t = (t - t.min()) / (t.max() - t.min())
    return (t * 255).astype(np.uint8)


def moving_square_frames(n: int, h: int = 72, w: int = 96, side: int = 28, start: tuple[int, int] = (18, 16),
                         step: tuple[int, int] = (3, 2), seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames (RGB uint8 (h, w, 3)) of a textured square moving by ``step`` = (dx, dy) px per frame
    over a static textured background, and the square's masks (bool (h, w)) per frame."""
    rng = np.random.default_rng(seed)
    bg = textured(rng, h, w)
    sq = textured(rng, side, side)
    frames, masks = [], []
    for t in range(n):
        y0, x0 = start[0] + step[1] * t, start[1] + step[0] * t
        f = bg.copy()
        f[y0: y0 + side, x0: x0 + side] = sq
        m = np.zeros((h, w), bool)
        m[y0: y0 + side, x0: x0 + side] = True
        frames.append(f)
        masks.append(m)
    return frames, masks
