"""The project is an installable package: a wheel builds offline, carries the code and the console
scripts, and its metadata agrees with requirements.txt, CHANGELOG.md and CITATION.cff."""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

packaging_requirements = pytest.importorskip("packaging.requirements")

SCRIPTS = {"emseg-train": "model_train:main", "emseg-eval": "model_eval:main", "emseg-segment": "segment:main"}
PACKAGES = ("Models", "Models/Backbones", "Models/CoherenceNets", "csvflowdatamodule", "evaluationmodule", "utils")
MODULES = ("emseg/__init__.py", "model_train.py", "model_eval.py", "segment.py", "coherence_loss.py")
# what a copy of the source tree for the build leaves out (outputs, environments, caches)
IGNORED = shutil.ignore_patterns(".git", ".venv", "venv", ".ci-venv", "__pycache__", "*.pyc", ".pytest_cache",
                                 ".ruff_cache", "build", "dist", "*.egg-info", "runs", "out", "data", "wandb",
                                 "lightning_logs", "tests", "bench")


def pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        return tomllib.load(fh)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the source tree (the build writes build/ and *.egg-info in place)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=IGNORED)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(tmp / "dist")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (whl,) = (tmp / "dist").glob("emseg-*.whl")
    return whl


def test_wheel_holds_the_code_the_scripts_and_the_version(wheel):
    import emseg

    assert wheel.name.startswith(f"emseg-{emseg.__version__}-")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = z.read(f"{info}/entry_points.txt").decode()
        meta = email.parser.Parser().parsestr(z.read(f"{info}/METADATA").decode())
    for pkg in PACKAGES:
        assert f"{pkg}/__init__.py" in names, pkg
    for mod in MODULES:
        assert mod in names, mod
    for path in ("Models/Backbones/unet.py", "csvflowdatamodule/CsvDataset.py", "evaluationmodule/Evaluation.py",
                 "emseg/core/coherence_math.py", "utils/Callbacks.py", "checkpoints/em_small.ckpt",
                 "checkpoints/em_temporal.ckpt"):
        assert path in names, path
    assert not [n for n in names if n.startswith(("tests/", "bench/")) or "__pycache__" in n]
    section = entry_points.split("[console_scripts]")[1]
    declared = dict(re.findall(r"^(\S+) = (\S+)$", section, flags=re.M))
    assert {k: declared.get(k) for k in SCRIPTS} == SCRIPTS
    assert meta["Name"] == "emseg" and meta["Version"] == emseg.__version__
    assert meta["Requires-Python"] == ">=3.11" and meta["License-Expression"] == "AGPL-3.0-only"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_console_script_targets_are_the_entry_scripts_mains():
    import importlib

    for target in SCRIPTS.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), target


@pytest.mark.slow
def test_installed_wheel_runs_outside_the_repository(wheel, tmp_path):
    """Installed into a bare folder and run from elsewhere, the segment script finds its bundled model."""
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                           str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    script = target / "bin" / "emseg-segment"
    assert script.is_file()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    code = ("import segment, emseg.app.segmentation as s; print(segment.__file__); print(s.BUNDLED_CKPT.is_file())")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    where, bundled = out.stdout.split()
    assert Path(where).resolve().parent == target.resolve() and bundled == "True"
    usage = subprocess.run([sys.executable, str(script), "--help"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120)
    assert usage.returncode == 0 and "--flow" in usage.stdout, usage.stderr[-2000:]


def test_dependencies_agree_with_requirements_txt():
    from packaging.requirements import Requirement

    project = pyproject()["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    declared += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    by_name = {r.name.lower(): r for r in declared}
    pins = {}
    with open(os.path.join(ROOT, "requirements.txt")) as fh:
        for line in fh:
            line = line.split("#")[0].strip()
            if line:
                name, version = line.split("==")
                pins[name.lower()] = version
    runtime = [Requirement(r).name.lower() for r in project["dependencies"]]
    for name in runtime:
        assert name in pins, f"{name} is a dependency but not pinned in requirements.txt"
    for name, version in pins.items():
        if name == "setuptools":
            continue  # the build backend, declared in [build-system]
        assert name in by_name, f"requirements.txt pins {name}, pyproject.toml does not declare it"
        assert by_name[name].specifier.contains(version, prereleases=True), (name, version, by_name[name])
    assert project["requires-python"] == ">=3.11"


def test_release_files_name_one_version():
    import emseg

    v = emseg.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", v)
    root = Path(ROOT)
    assert re.search(rf"^## \[?{re.escape(v)}\]?", (root / "CHANGELOG.md").read_text(), flags=re.M)
    cff = (root / "CITATION.cff").read_text()
    assert re.search(rf'^version: "?{re.escape(v)}"?$', cff, flags=re.M)
    assert "2201.02074" in cff and "Meunier" in cff and "Bouthemy" in cff and "Badoual" in cff
    lic = (root / "LICENSE").read_text()
    assert lic.lstrip().startswith("GNU AFFERO GENERAL PUBLIC LICENSE") and "Version 3, 19 November 2007" in lic
    project = pyproject()["project"]
    assert project["license"] == "AGPL-3.0-only" and project["license-files"] == ["LICENSE"]


def test_readme_bibtex_matches_citation_cff():
    readme = (Path(ROOT) / "README.md").read_text()
    (bib,) = re.findall(r"```bibtex\n(.*?)```", readme, flags=re.S)
    cff = (Path(ROOT) / "CITATION.cff").read_text()
    fields = dict(re.findall(r"^\s*(\w+)\s*=\s*\{(.*)\},?$", bib, flags=re.M))
    assert fields["doi"] in cff and fields["eprint"] in cff and fields["volume"] in cff and fields["year"] in cff
    assert fields["pages"].replace("--", "") == "44624473" and "start: 4462" in cff and "end: 4473" in cff
    assert "Meunier" in fields["author"] and "Badoual" in fields["author"] and "Bouthemy" in fields["author"]
