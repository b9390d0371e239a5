"""The video benchmark: real photographs composited into videos with exact ground truth, ``segment.py
--video`` run on them, and the runs scored and compared. Usage: ``cli.py`` (``python -m
emseg.app.video_benchmark --help``); its former path ``evaluationmodule.video_benchmark`` is an alias.

One job per module:

- ``layout.py``: file names, the manifest, the splits, :class:`BenchmarkError` (standard library only);
- ``scenes.py``: the generator (camera paths, blobs, :func:`plan_split`, :func:`render_sequence`, each
  pixel's exact motion :func:`backward_motion`);
- ``make.py``: writing a benchmark on disk (videos, masks, ``sequence.json``, the manifest, ``SEQUENCES.md``);
- ``run.py``: running ``segment.py`` over a split (timed, resumable), then scoring it;
- ``measures.py``: flicker (by the exact motion) and region recall / false regions of masks;
- ``score.py``: scoring a run (per-frame J, F, flicker, regions; per-sequence and per-group means —
  the original seven roles, the new ones, all —, ``summary.json``, the text table);
- ``compare.py``: scored runs side by side (table, bar plot, a figure of chosen frames);
- ``loss_check.py``: whether the training loss prefers the ground truth to a run's masks (on its own flows);
- ``truth_drift.py``: whether training on the loss keeps a network fitted to the ground truth there;
- ``cli.py``: the command line.

This application module combines building blocks (``evaluationmodule``'s metrics and writers) with the
core (``emseg.core.masks``' ground-truth rule, ``emseg.core.video_io``'s video reading).

The public names of the former single module are importable from here (``from emseg.app.video_benchmark
import make_benchmark``). They load on first use, so that the command line's ``--help`` imports none of
numpy, pandas, torch or matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

# name → the module (of this package) that defines it
_HOMES = {
    **dict.fromkeys(("GENERATOR_VERSION", "MANIFEST", "SEQUENCE_JSON", "DEFAULT_TEXTURES", "REPO_ROOT", "FPS",
                     "SPLITS", "BenchmarkError", "load_manifest", "split_sequences"), "layout"),
    **dict.fromkeys(("ROLES", "CORE_ROLES", "NEW_ROLES", "EMPTY_ROLES", "SMALL_AREA", "frame_layers",
                     "backward_motion", "ROLE_TEXT", "DEFAULT_BACKGROUNDS", "DEFAULT_OBJECTS", "DEFAULT_SIZES",
                     "NOISE_SIGMA",
                     "CameraPath", "window_corners", "BlobObject", "object_to_frame", "object_signed_distance",
                     "SequenceSpec", "trim_border", "plan_split", "render_sequence"), "scenes"),
    **dict.fromkeys(("make_sequence", "make_benchmark", "sequences_table"), "make"),
    **dict.fromkeys(("warp_mask", "flicker_of", "flicker_pair", "flicker", "region_counts", "FOUND_COVERAGE",
                     "FALSE_OVERLAP"),
                    "measures"),
    **dict.fromkeys(("read_mask", "group_summary", "score_sequence", "BenchScores", "score_run", "format_table",
                     "load_scored_run"),
                    "score"),
    "run_benchmark": "run",
    **dict.fromkeys(("compare_runs", "parse_frame_spec", "compare_frames"), "compare"),
    "main": "cli",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    """A public name, from its module (imported on first use, then cached here)."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
