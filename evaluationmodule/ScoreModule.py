"""The authors' path to the benchmark scoring: ``evaluationmodule.scoring`` (frame scores,
``FrameScorer`` = ``ScoreModule``) and, resolved on first use, ``evaluationmodule.runner``'s driver
(``evaluate``, the per-sequence table, the summary), so ``--help`` paths stay light."""

from __future__ import annotations

from typing import Any

from evaluationmodule.scoring import *  # noqa: F403  (every public name of the scoring, as before)
from evaluationmodule.scoring import __all__ as _scoring_names

_RUNNER_NAMES = ("EvaluationResult", "PER_SEQUENCE_COLUMNS", "evaluate", "output_dir", "sequence_table", "summarise")
__all__ = [*_scoring_names, *_RUNNER_NAMES]


def __getattr__(name: str) -> Any:
    if name in _RUNNER_NAMES:
        from evaluationmodule import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
