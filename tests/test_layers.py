"""The layers of docs/ARCHITECTURE.md, checked on the source: no import runs up them.

core (``emseg.core``, the authors' ``utils.evaluations``/``utils.distance_metrics``, ``coherence_loss``)
  < building blocks (``Models``, ``csvflowdatamodule``, ``evaluationmodule``, ``emseg.video``)
  < application (``emseg.app``, the authors' ``utils.Callbacks``)
  < entry scripts (``model_train.py``, ``model_eval.py``, ``segment.py``).

Every import counts, including those inside functions: a lazy import up the layers is still a cycle
waiting to happen.
"""

from __future__ import annotations

import ast
import importlib
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("emseg", "Models", "csvflowdatamodule", "evaluationmodule", "utils")
TOP_MODULES = ("model_train", "model_eval", "segment", "coherence_loss")
CORE, BLOCKS, APP, ENTRY = range(4)
NAMES = {CORE: "core", BLOCKS: "building blocks", APP: "application", ENTRY: "entry scripts"}


def is_shim(path: str) -> bool:
    """The old ``utils.X`` names of moved modules: one alias line, nothing else."""
    with open(path) as fh:
        return "sys.modules[__name__] = _moved" in fh.read()


def project_modules() -> dict[str, str]:
    """module name → file, for every project module (tests and benchmarks aside)."""
    out = {m: os.path.join(ROOT, f"{m}.py") for m in TOP_MODULES}
    for pkg in PACKAGES:
        for dirpath, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, f), ROOT)[:-3].replace(os.sep, ".")
                    out[rel.removesuffix(".__init__")] = os.path.join(dirpath, f)
    return out


def layer_of(module: str) -> int:
    if module in ("model_train", "model_eval", "segment"):
        return ENTRY
    if module == "coherence_loss" or module in ("utils", "utils.evaluations", "utils.distance_metrics"):
        return CORE
    if module == "utils.Callbacks" or module.startswith("emseg.app"):
        return APP
    if module.startswith("emseg.video") or module.split(".")[0] in ("Models", "csvflowdatamodule",
                                                                   "evaluationmodule"):
        return BLOCKS
    if module == "emseg" or module.startswith("emseg.core"):
        return CORE
    raise AssertionError(f"{module}: no layer assigned; add it to tests/test_layers.py and docs/ARCHITECTURE.md")


def imports_of(path: str, known: set[str]) -> set[str]:
    """The project modules a file imports (``from pkg import name`` counts ``pkg.name`` when that is a module)."""
    tree = ast.parse(open(path).read(), path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m in known}


MODULES = project_modules()
SHIMS = {m for m, p in MODULES.items() if is_shim(p)}


def test_every_module_has_a_layer():
    for m in MODULES:
        if m not in SHIMS:
            layer_of(m)


@pytest.mark.parametrize("module", sorted(set(MODULES) - SHIMS))
def test_no_import_runs_up_the_layers(module):
    mine = layer_of(module)
    deps = imports_of(MODULES[module], set(MODULES))
    old = sorted(deps & SHIMS)
    assert not old, f"{module} imports the old names {old}; import the moved modules themselves"
    up = sorted(d for d in deps if layer_of(d) > mine)
    assert not up, (f"{module} ({NAMES[mine]}) imports {', '.join(f'{d} ({NAMES[layer_of(d)]})' for d in up)}, "
                    f"a layer above it")


def test_old_names_of_moved_modules_are_the_moved_modules():
    assert len(SHIMS) >= 10  # the modules that left utils/
    sys.path.insert(0, ROOT)
    for old in sorted(SHIMS):
        tree = ast.parse(open(MODULES[old]).read())
        (target,) = [f"{n.module}.{n.names[0].name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                     and n.module and n.module.startswith("emseg")]
        assert importlib.import_module(old) is importlib.import_module(target), old
