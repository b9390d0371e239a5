"""Shared helpers of the benchmark scripts: machine and version header, timing, tables, JSON.

Every benchmark prints a markdown table headed by :func:`env_markdown` and writes JSON with
:func:`write_results` (``{"meta": ..., "env": env_info(), "rows": [...]}``), so that results
from different machines can be compared and traced back to the code that produced them.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent

Column = str | tuple[str, str] | tuple[str, str, str]


#: the networks the benchmarks compare: the CPU-sized one and the paper's default
NETS = {
    "cpu-sized": {"unet.num_layers": 4, "unet.features_start": 16},
    "paper": {"unet.num_layers": 7, "unet.features_start": 64},
}

def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """HEAD of the repository (with ``-dirty`` if the tree has changes), or None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def env_info() -> dict[str, Any]:
    """Machine, thread count and versions: what a benchmark's numbers depend on."""
    info: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": git_commit(),
    }
    try:
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        info["load_average_1min"] = None
    return info


def env_markdown(info: Mapping[str, Any] | None = None) -> str:
    """A one-paragraph markdown header describing the machine and versions."""
    e = dict(env_info() if info is None else info)
    gpu = f", GPU {e['cuda']}" if e.get("cuda") else ""
    return (f"Machine: {e['cpu_model']} ({e['cpu_count']} logical CPUs{gpu}), {e['platform']}; "
            f"torch {e['torch']} with {e['torch_num_threads']} threads, numpy {e['numpy']}, "
            f"python {e['python']}; commit {e.get('git_commit') or 'unknown'}; "
            f"load average {e.get('load_average_1min')}; {e['date_utc']}.")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _finite(obj: Any) -> Any:
    """NaN/inf → None (JSON has neither), recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_results(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> Path:
    """Write ``{"meta": meta, "env": env_info(), "rows": rows}`` as JSON (parents created)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = _finite({"meta": dict(meta), "env": env_info(), "rows": [dict(r) for r in rows]})
    out.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    return out


def _column(col: Column) -> tuple[str, str, str]:
    if isinstance(col, str):
        return col, col, ""
    if len(col) == 2:
        return col[0], col[1], ""
    return col[0], col[1], col[2]


def markdown_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """A markdown table of ``rows`` (dicts). A column is a key, (key, header) or
    (key, header, format spec such as ``".3f"``); missing values print as empty cells.
    """
    cols = [_column(c) for c in columns]
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in rows:
        cells = []
        for key, _, fmt in cols:
            v = row.get(key)
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                cells.append("")
            elif fmt:
                cells.append(format(v, fmt))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def time_calls(fns: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1,
               sync: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Wall-clock seconds of each callable, ``repeats`` times, interleaved (one round calls every
    callable once) so that a burst of load on a shared machine hits them all alike.
    ``sync`` (e.g. ``torch.cuda.synchronize``) runs before each clock read.
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


def summarise_times(times: Sequence[float]) -> dict[str, float]:
    """median, min and max of a list of seconds, in milliseconds."""
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times), "max_ms": 1e3 * max(times)}


def announce(path: Path) -> None:
    """Say where the JSON went (on stderr, so stdout stays a clean markdown report)."""
    print(f"wrote {path}", file=sys.stderr)
