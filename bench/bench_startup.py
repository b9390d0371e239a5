"""Start-up time of the command-line tools: how long ``--help`` (and one small real run) takes.

    python bench/bench_startup.py [--repeats 5] [--only model_train.py,segment.py] [--out PATH]

Each command runs in its own subprocess from the repository root, once to warm the file cache,
then ``--repeats`` times, the commands interleaved (one round runs each once) so that a burst of
load on a shared machine hits them all alike. The table gives the median and the minimum wall
time in seconds and, where the command has one, its target (``--help`` must not wait for torch
or Lightning: see ``tests/test_startup.py`` for the structural check). The exit status is 1 when
a command fails or misses its target.

The one-flow ``segment.py`` run is the whole tool on ``images/00000.flo`` into a fresh folder: it
loads torch and the bundled model, so it measures what a user waits for one mask, not ``--help``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, announce, env_markdown, markdown_table, write_results  # noqa: E402

#: where the output of the one-flow run goes (a fresh sub-folder per run)
OUT_MARK = "{out}"


@dataclass(frozen=True)
class Command:
    """A command line to time (``argv`` after the interpreter; ``{out}`` is a fresh folder) and its
    target in seconds (None: measured, not judged)."""

    name: str
    argv: tuple[str, ...]
    target_s: float | None


COMMANDS: tuple[Command, ...] = (
    Command("model_train.py --help", ("model_train.py", "--help"), 3.0),
    Command("model_eval.py --help", ("model_eval.py", "--help"), 3.0),
    Command("segment.py --help", ("segment.py", "--help"), None),
    Command("-m evaluationmodule.Evaluation --help", ("-m", "evaluationmodule.Evaluation", "--help"), 1.5),
    Command("-m csvflowdatamodule.extract_flow --help", ("-m", "csvflowdatamodule.extract_flow", "--help"), 1.5),
    Command("segment.py --flow images/00000.flo --out <tmp>",
            ("segment.py", "--flow", "images/00000.flo", "--out", OUT_MARK), None),
)


def run_once(cmd: Command, scratch: Path) -> tuple[float, int, str]:
    """Wall seconds, exit status and the end of stderr of one run of ``cmd``."""
    out = Path(tempfile.mkdtemp(dir=scratch))  # a fresh folder: a rerun must not find earlier outputs
    argv = [sys.executable, *(str(out / "out") if a == OUT_MARK else a for a in cmd.argv)]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return time.perf_counter() - t0, proc.returncode, proc.stderr[-400:]


def measure(commands: list[Command], repeats: int) -> list[dict]:
    """One warm-up run each, then ``repeats`` interleaved rounds; a row per command."""
    times: dict[str, list[float]] = {c.name: [] for c in commands}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as tmp:
        for round_ in range(repeats + 1):
            for c in commands:
                seconds, rc, err = run_once(c, Path(tmp))
                if rc != 0:
                    errors.setdefault(c.name, f"exit {rc}: {err.strip().splitlines()[-1] if err.strip() else ''}")
                if round_ > 0:  # round 0 warms the file cache (and any cache a tool keeps)
                    times[c.name].append(seconds)
    rows = []
    for c in commands:
        median = statistics.median(times[c.name])
        if c.name in errors:
            verdict = "error"
        elif c.target_s is None:
            verdict = "—"
        else:
            verdict = "pass" if median < c.target_s else "FAIL"
        rows.append({"command": c.name, "median_s": median, "min_s": min(times[c.name]), "target_s": c.target_s,
                     "result": verdict, "error": errors.get(c.name), "repeats": repeats})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed runs per command (after one warm-up run)")
    p.add_argument("--only", default=None,
                   help="comma-separated substrings: time only the commands whose name contains one")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "startup.json"), help="the JSON rows")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    commands = list(COMMANDS)
    if args.only:
        wanted = [w for w in args.only.split(",") if w]
        commands = [c for c in commands if any(w in c.name for w in wanted)]
        if not commands:
            p.error(f"--only {args.only}: no command matches")
    rows = measure(commands, args.repeats)
    print(env_markdown())
    print()
    print(markdown_table(rows, [("command", "command"), ("median_s", "median s", ".2f"), ("min_s", "min s", ".2f"),
                                ("target_s", "target s", ".1f"), ("result", "result")]))
    for r in rows:
        if r["error"]:
            print(f"\n{r['command']}: {r['error']}")
    announce(write_results(args.out, rows, {"script": "bench_startup.py", "repeats": args.repeats}))
    return 1 if any(r["result"] in ("FAIL", "error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
