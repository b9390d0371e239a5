"""The layers of docs/ARCHITECTURE.md, checked on the source: no import runs up them.

core (``emseg.core``, the authors' ``utils.evaluations``/``utils.distance_metrics``, ``coherence_loss``)
  < building blocks (``Models``, ``csvflowdatamodule``, ``evaluationmodule``, ``emseg.video``)
  < application (``emseg.app``, the authors' ``utils.Callbacks``)
  < entry scripts (``model_train.py``, ``model_eval.py``, ``segment.py``).

Inside the building-block layer the blocks are siblings: ``Models``, ``csvflowdatamodule``,
``evaluationmodule`` and ``emseg.video`` each import only the core and their own package (only the
application combines blocks). And no project module takes part in an import cycle.

Every import counts, including those inside functions: a lazy import up the layers or across the blocks
is still a cycle waiting to happen. The old names of moved modules (one ``sys.modules`` alias line) are
left out: they are the moved module itself.
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


def block_of(module: str) -> str:
    """The building block a module belongs to (its package; ``emseg.video`` for the video stages)."""
    return "emseg.video" if module.startswith("emseg.video") else module.split(".")[0]


@pytest.mark.parametrize("module", sorted(m for m in set(MODULES) - SHIMS if layer_of(m) == BLOCKS))
def test_blocks_import_only_the_core_and_their_own_package(module):
    mine = block_of(module)
    deps = imports_of(MODULES[module], set(MODULES)) - SHIMS
    across = sorted(d for d in deps if layer_of(d) == BLOCKS and block_of(d) != mine)
    assert not across, (f"{module} (block {mine}) imports {', '.join(f'{d} (block {block_of(d)})' for d in across)}: "
                        f"a building block imports only emseg.core and its own package; move the shared piece "
                        f"down into emseg/core, or the code that combines blocks up into emseg/app")


def import_graph() -> dict[str, set[str]]:
    """module → the project modules it imports (shims aside), a package's ``__init__`` counted as the
    package and ``from pkg import mod`` as an import of ``pkg.mod`` only (a package is not its modules)."""
    known = set(MODULES)
    graph = {}
    for m in sorted(set(MODULES) - SHIMS):
        deps = imports_of(MODULES[m], known) - SHIMS - {m}
        # ``from pkg import mod`` also adds ``pkg``: drop it when a submodule of it is what was imported
        graph[m] = {d for d in deps if not any(o.startswith(d + ".") for o in deps)}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: each strongly connected component of more than one module, as a
    path that closes on its first module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def test_find_cycles_finds_a_cycle_through_a_lazy_import(tmp_path):
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    lazy = tmp_path / "lazy.py"
    lazy.write_text("def f():\n    from Models import backends\n")
    assert imports_of(str(lazy), set(MODULES)) >= {"Models.backends"}


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, ("import cycles (lazy imports included): "
                        + "; ".join(" ⇄ ".join(c) for c in cycles)
                        + ". Move what both need into a third module, or keep an old name as a re-export of the "
                          "new module (never the other way round)")


def test_old_names_of_moved_modules_are_the_moved_modules():
    assert len(SHIMS) >= 10  # the modules that left utils/
    sys.path.insert(0, ROOT)
    for old in sorted(SHIMS):
        tree = ast.parse(open(MODULES[old]).read())
        (target,) = [f"{n.module}.{n.names[0].name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                     and n.module and n.module.startswith("emseg")]
        assert importlib.import_module(old) is importlib.import_module(target), old
