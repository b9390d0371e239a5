"""Write-then-rename: readers see the old file or the new one, never half of one.

The one helper every writer of results, masks, figures, flows and checkpoints in this project uses
(Lightning's checkpoints too: ``Models.checkpoint_io.AtomicCheckpointIO`` is the Trainer's
CheckpointIO plugin and writes through :func:`atomic_write`).

A full disk (``ENOSPC``, or a quota's ``EDQUOT``) while writing is a :class:`DiskFullError`: an
``OSError`` whose one-line message names the file and says that its disk is full; the previous
file, if there was one, is left as it was.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

#: the errors that mean "no room left" (a full file system, or the user's quota)
DISK_FULL_ERRNOS: frozenset[int] = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFullError(OSError):
    """No room left to write ``path``; the message is one line naming it (and what is free there)."""

    def __init__(self, path: str | os.PathLike, code: int = errno.ENOSPC) -> None:
        path = os.fspath(path)
        try:
            free = f", {shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free / 2**20:.1f} MiB free there"
        except OSError:
            free = ""
        super().__init__(f"{path}: the disk is full ({os.strerror(code)}{free}); it was not written and an "
                         "earlier version of it, if any, is unchanged: free some space and run again")
        self.errno, self.filename = code, path

    def __str__(self) -> str:  # only the message: OSError's own would prefix "[Errno 28]" and append the name
        return str(self.args[0])


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` says the disk (or the quota) is full."""
    return isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], fsync: bool = False) -> Path:
    """Run ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    The temporary file is removed if ``write`` fails. ``fsync`` flushes it to disk before the
    rename (for files a crash must not lose, such as results tables). A full disk raises
    :class:`DiskFullError` naming ``path``.
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
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if is_disk_full(err) and not isinstance(err, DiskFullError):
            raise DiskFullError(path, err.errno) from None
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
