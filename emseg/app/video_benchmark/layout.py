"""The benchmark on disk: its file names, its manifest, its splits, and the one error type.

Layout written by ``make``: ``{bench}/manifest.json``, ``{bench}/SEQUENCES.md``,
``{bench}/{split}/{sequence}/video.mp4`` (or ``video.avi``), ``{bench}/{split}/{sequence}/masks/00000.png`` …
(0 / 255, the video's size) and ``{bench}/{split}/{sequence}/sequence.json`` (its description).

Standard library only: the command line reads its defaults from here before anything heavy is imported.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# bumped when an existing sequence would render differently; appending a role (scenes.ROLES) needs no bump,
# as the sequences already there stay byte-identical (and each sequence.json records this number)
GENERATOR_VERSION = 1
MANIFEST = "manifest.json"
SEQUENCE_JSON = "sequence.json"
DEFAULT_TEXTURES = Path("/usr/share/doc/opencv-doc/examples/data")
# segment.py (which run.py starts) and git (the commit recorded in a run's summary) run from here
REPO_ROOT = Path(__file__).resolve().parents[3]
FPS = 25
SPLITS = ("dev", "test")


class BenchmarkError(ValueError):
    """Bad benchmark input or output (one clear line naming the file)."""


def load_manifest(bench: str | os.PathLike) -> dict:
    """The benchmark's ``manifest.json`` (what ``make`` wrote) as a dict."""
    path = Path(bench) / MANIFEST
    if not path.is_file():
        raise BenchmarkError(f"{path}: no benchmark manifest (make one with: python -m "
                             "emseg.app.video_benchmark make --out DIR)")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise BenchmarkError(f"{path}: unreadable manifest ({err})") from None


def split_sequences(manifest: dict, split: str, bench: Path) -> list[dict]:
    """The manifest's entries of one split (name, path, n_frames, size, …), in the generator's order."""
    seqs = manifest.get("sequences", {}).get(split)
    if not seqs:
        raise BenchmarkError(f"{bench / MANIFEST}: no split {split!r} (has {list(manifest.get('sequences', {}))})")
    return seqs
