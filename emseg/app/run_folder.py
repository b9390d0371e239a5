"""One run per output folder: a new run never mixes with, or silently replaces, an earlier one.

A command that writes a run into a folder (``model_train.py --path_save_model DIR``, ``model_eval.py
--save_dir DIR``, ``segment.py --out DIR``) calls :func:`prepare_run_folder` once it holds
the folder's ``RunLock`` (so a run still going is refused, never moved). When the folder holds an
earlier run, then:

- by default the earlier run's files are **moved aside** to the sibling folder
  ``DIR.previous-<UTC time, e.g. 20250102T030405Z>`` (same relative paths; one WARNING line says
  where), so rerunning a command (the README's ``python model_train.py --path_save_model runs/demo``)
  just works and loses nothing;
- with ``--overwrite`` they are **removed** first;
- continuing the run (``--ckpt_path`` for training, ``--resume`` for model_eval) does not call this:
  the run goes on in place, as before.

Only the files an earlier run of that command writes are moved or removed (:class:`RunLayout`:
fixed names and name patterns, and the per-frame files its own tables list), never another file of
the folder (your notes, a data folder, an evaluation in a sub-folder), and never one of this run's
inputs: an input among them is an error with ``--overwrite`` (it would be deleted), and with the
default it may move only if the caller has already read it (``movable``, e.g. ``--init_ckpt``:
the caller is told where it went).

What counts as holding an earlier run (any of the ``markers``):

- **training** (:data:`TRAINING`): ``results.csv``, ``last.ckpt``, ``hparams.json``,
  ``train_summary.json`` or a best checkpoint ``epoch=*.ckpt``; its files are those, ``skipped.csv``,
  the loggers' folders ``logs/`` and ``wandb/`` and the temporary files of an interrupted write;
- **segmentation** (:data:`SEGMENTATION`, ``segment.py --out DIR``): ``manifest.json``, a mask
  ``*_binary.png`` or the animation; its files are those, the overlays, probabilities, ``flows.npz``,
  ``skipped.csv`` and the temporary files of an interrupted write (a flow file given as input,
  ``*.flo`` / ``*.npy`` other than ``*_proba.npy``, is never one of them);
- **evaluation** (:data:`EVALUATION`): ``results_*.csv`` / ``results_*.tsv`` (rows, part files,
  summaries) or ``predictions_*.tsv`` (manifests); its files are those, ``skipped_*.tsv``,
  ``eval_settings.json``, the loggers' ``logs_*/``, the scores ``evaluationmodule.Evaluation`` wrote
  of it (``evaluation_*/``) and every per-frame file (``*_proba.npy``, ``*_binary.png``,
  ``*_fig.png``) of a frame its tables or manifests list.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from emseg.core.hparams import ConfigError

logger = logging.getLogger(__name__)

#: the lock of the run that is starting: never part of the earlier run
LOCK_NAME = ".run.lock"


class RunLockError(RuntimeError):
    pass


class RunLock:
    """An exclusive lock file ``DIR/.run.lock`` holding the owner's PID. A lock whose process is
    gone is stale and taken over; a live one makes the second run refuse to start."""

    def __init__(self, directory: str, flag: str = "--path_save_model / --save_dir") -> None:
        self.path = os.path.join(directory, LOCK_NAME)
        self.flag = flag  # the option that named the folder, for the message
        self.held = False

    def acquire(self) -> RunLock:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pid = self._owner()
                if pid is not None and _alive(pid):
                    raise RunLockError(
                        f"{os.path.dirname(self.path)!r} is in use by another run (pid {pid}{_command_of(pid)}); "
                        f"choose another {self.flag}, or wait for it to finish. If pid {pid} "
                        f"is not a run of this project (a crashed run's pid reused), delete {self.path} and start "
                        "again") from None
                logger.warning("removing stale lock %s (pid %s is gone)", self.path, pid)
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            self.held = True
            return self
        raise RunLockError(f"could not take the lock {self.path}")

    def _owner(self) -> int | None:
        try:
            with open(self.path) as fh:
                return int(fh.read().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            try:
                if self._owner() == os.getpid():
                    os.remove(self.path)
            finally:
                self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _command_of(pid: int) -> str:
    """``: <command line>`` of a live process where the system tells it (Linux), else ``''``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return f": {cmd[:100]}" if cmd else ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as err:
        return err.errno == errno.EPERM
    return True


@dataclass(frozen=True)
class RunLayout:
    """What a command's run leaves in its folder.

    ``markers``: name patterns (relative to the folder, ``glob`` syntax) any of which means that the
    folder holds an earlier run; ``outputs``: the patterns of every file or folder such a run writes
    (``markers`` are included); ``listed``: the files its own records list (per-frame outputs),
    given the folder. ``folder_flag`` / ``continue_flag`` / ``what`` word the messages.
    """

    what: str
    folder_flag: str
    continue_flag: str
    markers: tuple[str, ...]
    outputs: tuple[str, ...] = ()
    listed: Callable[[Path], Iterable[Path]] | None = field(default=None, compare=False)


def _tmp_patterns(*names: str) -> tuple[str, ...]:
    # emseg.core.atomic_io's temporary names (``.NAME.PID.RANDOM.tmp``) of an interrupted write
    return tuple(f".{n}.*.tmp" for n in names)


TRAINING = RunLayout(
    what="training", folder_flag="--path_save_model", continue_flag="--ckpt_path",
    markers=("results.csv", "last.ckpt", "hparams.json", "train_summary.json", "epoch=*.ckpt"),
    outputs=("skipped.csv", "last.ckpt.tmp", "logs", "wandb",
             *_tmp_patterns("results.csv", "skipped.csv", "hparams.json", "train_summary.json", "last.ckpt",
                            "epoch=*.ckpt")),
)


def evaluation_frame_files(folder: Path) -> list[Path]:
    """The per-frame files an evaluation in ``folder`` wrote, as its tables and manifests list them."""
    from evaluationmodule.naming import FRAME_SUFFIXES, output_stem
    from evaluationmodule.writers import read_rows

    stems: set[str] = set()
    for table in folder.glob("results_*.csv"):
        for row in _rows(read_rows, table, ","):
            if row.get("file_name"):
                stems.add(output_stem(folder, row["file_name"]))
    for manifest in folder.glob("predictions_*.tsv"):
        for row in _rows(read_rows, manifest, "\t"):
            rel = row.get("proba_file") or ""
            if rel.endswith(FRAME_SUFFIXES["proba"]) and not os.path.isabs(rel) and ".." not in rel.split("/"):
                stems.add(str(folder / rel[: -len(FRAME_SUFFIXES["proba"])]))
    return [Path(stem + suffix) for stem in stems for suffix in FRAME_SUFFIXES.values()]


def _rows(read_rows: Callable, path: Path, delimiter: str) -> list[dict]:
    try:
        return read_rows(path, delimiter=delimiter)
    except (OSError, ValueError) as err:  # a table that is not model_eval's: it lists nothing
        logger.debug("%s: not read (%s)", path, err)
        return []


EVALUATION = RunLayout(
    what="evaluation", folder_flag="--save_dir", continue_flag="--resume",
    markers=("results_*.csv", "results_*.tsv", "predictions_*.tsv"),
    outputs=("skipped_*.tsv", "eval_settings.json", "logs_*", "evaluation_*",
             *_tmp_patterns("results_*", "predictions_*", "skipped_*", "eval_settings.json")),
    listed=evaluation_frame_files,
)


SEGMENTATION = RunLayout(
    what="segmentation", folder_flag="--out", continue_flag="",
    markers=("manifest.json", "*_binary.png", "segmentation.mp4", "segmentation.gif"),
    outputs=("*_overlay.png", "*_proba.npy", "flows.npz", "skipped.csv", "segmentation.tmp.mp4",
             *_tmp_patterns("manifest.json", "*_binary.png", "*_overlay.png", "*_proba.npy", "flows.npz",
                            "skipped.csv", "segmentation.gif")),
)


@dataclass
class PreviousRun:
    """The earlier run found in a folder: its ``files`` (as they were), and where they went
    (``moved_to``; None when removed)."""

    folder: Path
    files: list[Path]
    moved_to: Path | None = None

    def includes(self, path: str | os.PathLike) -> bool:
        """Whether ``path`` is one of the earlier run's files (or inside one of its folders)."""
        p = _real(path)
        return any(p == _real(f) or _real(f) in p.parents for f in self.files)

    def new_location(self, path: str | os.PathLike) -> Path | None:
        """Where ``path`` is now, if it was one of the files moved aside (or inside one); else None."""
        if self.moved_to is None or not self.includes(path):
            return None
        return self.moved_to / _real(path).relative_to(_real(self.folder))


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(path))


def holds_run(folder: str | os.PathLike, layout: RunLayout) -> bool:
    """Whether ``folder`` holds an earlier run of ``layout``'s command (any of its markers)."""
    folder = Path(folder)
    return folder.is_dir() and any(any(folder.glob(m)) for m in layout.markers)


def earlier_run_files(folder: str | os.PathLike, layout: RunLayout) -> list[Path]:
    """The files and folders of the earlier run in ``folder`` ([] when it holds none): every match of
    ``layout``'s patterns and what its records list, that exists, inside ``folder``, outermost only."""
    folder = Path(folder)
    if not holds_run(folder, layout):
        return []
    found = {p for pattern in (*layout.markers, *layout.outputs) for p in folder.glob(pattern)}
    if layout.listed is not None:
        found |= {p for p in layout.listed(folder) if os.path.lexists(p)}
    root = _real(folder)
    inside = {p for p in found if p.name != LOCK_NAME and (root == _real(p.parent) or root in _real(p).parents)}
    # a file inside a folder that goes is carried with it
    return sorted(p for p in inside if not any(q in p.parents for q in inside))


def previous_folder(folder: str | os.PathLike, now: float | None = None) -> Path:
    """``FOLDER.previous-<UTC time>``, a sibling of ``folder`` that does not exist yet."""
    folder = Path(os.path.abspath(folder))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    candidate = folder.with_name(f"{folder.name}.previous-{stamp}")
    n = 2
    while os.path.lexists(candidate):
        candidate = folder.with_name(f"{folder.name}.previous-{stamp}-{n}")
        n += 1
    return candidate


def prepare_run_folder(folder: str | os.PathLike, layout: RunLayout, *, overwrite: bool = False,
                       keep: Iterable[str | os.PathLike | None] = (),
                       movable: Iterable[str | os.PathLike | None] = ()) -> PreviousRun | None:
    """Make ``folder`` ready for a new run of ``layout``'s command (call it holding the folder's
    ``RunLock``): move the earlier run aside to :func:`previous_folder`, or with ``overwrite`` remove
    it. ``keep``: this run's inputs, which are neither moved nor removed (one among the earlier run's
    files is a ConfigError naming it); ``movable``: inputs already read, which may be moved (the
    caller asks :meth:`PreviousRun.new_location` where) but not removed. Returns the earlier run,
    or None when the folder held none."""
    folder = Path(folder)
    files = earlier_run_files(folder, layout)
    if not files:
        return None
    previous = PreviousRun(folder, files)
    keep = [Path(p) for p in keep if p]
    movable = [Path(p) for p in movable if p]
    for path in keep + (movable if overwrite else []):
        if previous.includes(path):
            action = "remove" if overwrite else "move aside"
            raise ConfigError(
                f"{layout.folder_flag} {folder}: it holds an earlier {layout.what} whose files include {path}, an "
                f"input of this run, which starting a new run would {action}: copy it elsewhere first, or give "
                f"another {layout.folder_flag}")
    if overwrite:
        for path in files:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        _remove_emptied_folders(folder, files)
        logger.warning("%s %s: --overwrite: removed %d files of the previous %s", layout.folder_flag, folder,
                       len(files), layout.what)
        return previous
    target = previous_folder(folder)
    for path in files:
        dst = target / path.relative_to(folder)
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(path, dst)
        except OSError:  # another file system below the folder (a mount point): copy, then remove
            shutil.move(os.fspath(path), os.fspath(dst))
    _remove_emptied_folders(folder, files)
    previous.moved_to = target
    hint = f"{layout.continue_flag} continues a run instead; " if layout.continue_flag else ""
    logger.warning("%s %s held an earlier %s: moved its %d files to %s (%s--overwrite removes the earlier one)",
                   layout.folder_flag, folder, layout.what, len(files), target, hint)
    return previous


def _remove_emptied_folders(folder: Path, files: Iterable[Path]) -> None:
    """Remove the sub-folders of ``folder`` that moving or removing ``files`` left empty (only those)."""
    root = _real(folder)
    parents = {p for f in files for p in f.parents if root in _real(p).parents}
    for d in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        try:
            d.rmdir()
        except OSError:  # not empty (other files live there) or already gone
            pass
