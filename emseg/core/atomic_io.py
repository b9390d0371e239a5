"""Write-then-rename: readers see the old file or the new one, never half of one.

The one helper every writer of results, masks, figures, flows and checkpoints in this project uses,
except ``emseg.app.training.LastCheckpoint``: Lightning's checkpoint save is collective (every rank
calls it, rank 0 writes), so it renames a fixed temporary name after a barrier instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], fsync: bool = False) -> Path:
    """Run ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    The temporary file is removed if ``write`` fails. ``fsync`` flushes it to disk before the
    rename (for files a crash must not lose, such as results tables).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_image(path: str | os.PathLike, image, params: tuple[int, ...] = ()) -> Path:
    """An image (OpenCV's BGR or grey array) encoded by ``path``'s extension, with OpenCV's encoder
    ``params``, through a temporary name, so a killed run never leaves a truncated image."""
    import cv2  # only the writers of images need it

    path = Path(path)
    ok, buf = cv2.imencode(path.suffix, image, list(params))
    if not ok:
        raise OSError(f"cannot encode {path}")
    return atomic_write(path, lambda p: p.write_bytes(buf.tobytes()))


def atomic_write_text(path: str | os.PathLike, text: str, fsync: bool = False) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8", newline=""), fsync=fsync)
