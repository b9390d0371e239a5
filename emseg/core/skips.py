"""Skip-and-record: how every dataset of the project sets aside a sample with a bad file.

A sample (a frame, a clip, or a frame read with its clip) whose file is missing, corrupt, an empty
cell or of the wrong size is never silently dropped: the dataset returns ``{'Skipped': (key, path,
reason)}`` in its place, warns once per bad file, and records it, so that training and evaluation can
list it (``skipped.csv``, the run summaries). In strict data mode the dataset raises instead; that
error names its own context (a row, a clip's rows), so it stays with each dataset.
"""

from __future__ import annotations

import logging
from typing import Any


class SkipRecord:
    """The samples one dataset set aside in this process (with DataLoader workers, each worker keeps
    its own; the data module gathers them), keyed by the dataset's sample key (a CSV row index, a clip
    index)."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.skipped: dict[int, tuple[int, str, str]] = {}
        self._warned: set[str] = set()

    def skip(self, key: int, path: str, reason: str, message: str, *args: Any) -> dict[str, Any]:
        """Record sample ``key`` as skipped because of ``path`` (``reason``) and return the item that
        stands for it. ``message % args`` is logged as a warning the first time ``path`` fails."""
        if path not in self._warned:
            self._warned.add(path)
            self.logger.warning(message, *args)
        self.skipped[key] = (key, path, reason)
        return {"Skipped": (key, path, reason)}

    def report(self) -> dict[str, Any]:
        """``{'count': n, 'samples': [(key, path, reason), ...]}``, in key order."""
        samples = [self.skipped[k] for k in sorted(self.skipped)]
        return {"count": len(samples), "samples": samples}
