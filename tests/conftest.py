"""Shared fixtures: a tiny synthetic DataSplit made once per test session."""

from __future__ import annotations

import atexit
import csv
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The suite must fit 2 CPU cores, shared by pytest-xdist's workers (pyproject.toml: -n auto, at most 4).
# Each worker, and every command line a test starts (they inherit OMP_NUM_THREADS), gets its share of
# the cores: more threads than cores make OpenMP wait on threads that are not running.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // WORKERS))
torch.set_num_threads(THREADS)
os.environ["OMP_NUM_THREADS"] = str(THREADS)

# What the code keeps between runs (exported networks, the built-in synthetic data) goes to a folder
# of this test process, not the user's ~/.cache; command lines the tests start inherit it.
_CACHE = tempfile.mkdtemp(prefix="emseg-test-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["XDG_CACHE_HOME"] = _CACHE


@pytest.fixture(autouse=True)
def _default_sigchld():
    """After each test, SIGCHLD's default disposition again. torch's DataLoader installs a SIGCHLD handler
    in the test process the first time a test runs worker processes, and keeps it; a later test whose
    subprocess then ended crashed the whole process (SIGSEGV) in that handler, order-dependently
    (tests/test_data_dataset.py's persistent worker, then tests/test_fast_start.py's segment.py run).
    The command lines never hit it: none starts a subprocess after a DataLoader."""
    import signal

    yield
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)


#: a MethodeB small enough to build, run and export in a fraction of a second
SMALL = {"unet.num_layers": 3, "unet.features_start": 8, "img_size": [32, 48]}


@pytest.fixture()
def small_ckpt(tmp_path) -> str:
    """A checkpoint of a freshly seeded :data:`SMALL` MethodeB (weights and hyperparameters only)."""
    from Models.CoherenceNets.MethodeB import MethodeB

    torch.manual_seed(0)
    model = MethodeB(**SMALL)
    path = tmp_path / "small.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_split(tmp_path_factory) -> tuple[str, str]:
    """(base_dir, data_file prefix) of a 24/8/8-sample synthetic split at 64 × 112."""
    from csvflowdatamodule.synthetic import make_synthetic_split

    out = tmp_path_factory.mktemp("tiny_split")
    prefix = make_synthetic_split(str(out), "tiny", n_train=24, n_val=8, n_test=8, img_size=(64, 112), seed=3)
    return str(out), prefix


def run_cli(args: list[str], timeout: int = 300, expect_ok: bool = True, env: dict | None = None):
    """Run ``python ARGS`` from the repository root; returns the CompletedProcess."""
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": ROOT, **(env or {})})
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def read_csv(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
