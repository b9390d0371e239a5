"""Running ``segment.py --video`` over a benchmark split, one subprocess per sequence, timed end to end,
resumable; then scoring the run (``score.py``).

Each sequence's output folder ``{out}/{sequence}`` gets the masks, ``segment.log`` (the subprocess's
output) and ``run.json`` (the command, its exit status, seconds, the number of masks): a sequence whose
``run.json`` records the same command and a success is not run again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from emseg.app.video_benchmark.layout import REPO_ROOT, BenchmarkError, load_manifest, split_sequences
from emseg.app.video_benchmark.score import BenchScores, score_run
from emseg.core.atomic_io import atomic_write_text
from evaluationmodule.writers import write_json

logger = logging.getLogger(__name__)


def _git_commit() -> str | None:
    """The repository's short commit, recorded in a run's summary (None outside a git checkout)."""
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
