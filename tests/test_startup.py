"""The command lines start without the heavy libraries: structural checks, not timings.

``model_train.py --help`` took 7 s and ``python -m evaluationmodule.Evaluation --help`` 3 s, nearly
all of it importing Lightning (5-7 s) and torch (2.4 s) that printing the flags never uses. Each
test runs the command's ``--help`` (or builds its parser) in a fresh interpreter that watches the
imports, and fails naming the chain of project lines that first imported a forbidden library. The
timings themselves are ``bench/bench_startup.py``'s.

The parsers declare the model's and the data's flags without importing the classes that own them
(``emseg/app/trainer_args.py``); the last tests check that the two declarations agree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: imported only by the code that uses them: none may be loaded to parse a command line
HEAVY = ("pytorch_lightning", "lightning_fabric", "lightning", "torch", "torchvision", "pandas", "matplotlib",
         "seaborn", "onnx", "onnxruntime", "openvino", "wandb")

#: runs in the child: records, for each forbidden top-level package, the project lines on the stack
#: when it was first looked for, then runs the command (argv[2]: a script, ``-m module`` or ``-c code``)
PROBE = r'''
import json, os, runpy, sys, traceback
root, forbidden, kind, target = sys.argv[1], set(sys.argv[2].split(",")), sys.argv[3], sys.argv[4]
already = sorted(m for m in forbidden if m in sys.modules)  # loaded by site, before the probe
first = {}

class Watch:
    @staticmethod
    def find_spec(name, path=None, target=None):
        top = name.partition(".")[0]
        if top in forbidden and top not in first:
            first[top] = [f"{os.path.relpath(f.filename, root)}:{f.lineno}: {f.line}" for f in
                          traceback.extract_stack()[:-1] if f.filename.startswith(root)]
        return None  # only watching: the import goes on as usual

sys.meta_path.insert(0, Watch)
sys.path.insert(0, root)
try:
    if kind == "script":
        sys.argv = [target, "--help"]
        runpy.run_path(os.path.join(root, target), run_name="__main__")
    elif kind == "module":
        sys.argv = [target, "--help"]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        exec(target, {"__name__": "__probe__"})
except SystemExit as stop:
    if stop.code not in (0, None):
        raise
loaded = sorted(m for m in forbidden if m in sys.modules)
print("PROBE" + json.dumps({"loaded": loaded, "already": already, "chains": {m: first.get(m, []) for m in loaded}}))
'''


def probe(kind: str, target: str, forbidden: tuple[str, ...] = HEAVY) -> dict:
    """Run ``target`` (kind ``script``: ``X.py --help``; ``module``: ``-m X --help``; ``code``: Python
    source) in a fresh interpreter; which of ``forbidden`` it loaded, and from where."""
    proc = subprocess.run([sys.executable, "-c", PROBE, ROOT, ",".join(forbidden), kind, target], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "120"})
    assert proc.returncode == 0, f"{kind} {target} failed:\n{proc.stderr[-3000:]}"
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE"))
    return json.loads(line[len("PROBE"):])


def explain(found: dict) -> str:
    """Which library each chain of project lines pulled in (the last line is the importer)."""
    parts = [f"already loaded at start-up: {found['already']}"] if found["already"] else []
    for module, chain in found["chains"].items():
        parts.append(f"{module} imported via:\n    " + ("\n    ".join(chain) or "(no project frame on the stack)"))
    return "\n".join(parts)


CASES = [
    ("script", "model_train.py"),
    ("script", "model_eval.py"),
    ("module", "evaluationmodule.Evaluation"),
    ("module", "csvflowdatamodule.extract_flow"),
    # the parser builders, as a notebook or a test would call them
    ("code", "from emseg.app import training_cli; training_cli.build_parser().format_help()"),
    ("code", "from emseg.app import training_cli; training_cli.parse_args(['--max_epochs', '1'])"),
    ("code", "from emseg.app import evaluation_cli; evaluation_cli.build_parser().format_help()"),
    ("code", "from evaluationmodule import Evaluation; Evaluation.build_parser().format_help()"),
    ("code", "from csvflowdatamodule import extract_flow; extract_flow.build_parser().format_help()"),
]


@pytest.mark.parametrize("kind,target", CASES, ids=[t.split(";")[0] if k == "code" else t for k, t in CASES])
def test_parsing_the_command_line_imports_no_heavy_library(kind, target):
    if "parse_args" in target:
        # a real parse runs the settings' checks: the network's size is counted with torch (on the meta
        # device), so only Lightning and the rest are forbidden there
        found = probe(kind, target, tuple(m for m in HEAVY if m != "torch"))
    else:
        found = probe(kind, target)
    assert found["loaded"] == [], explain(found)


def test_the_probe_sees_a_heavy_import_and_names_its_importer():
    # without this, a probe that never saw anything would pass every test above
    found = probe("code", "import Models.CoherenceNets.MethodeB")
    assert "pytorch_lightning" in found["loaded"] and "torch" in found["loaded"]
    chain = found["chains"]["pytorch_lightning"]
    assert chain and chain[-1].startswith("Models/"), explain(found)
    assert "torch imported via" in explain(found)


# ------------------------------------------------------------------------------------------------
# The flags declared without the classes are the classes' own
# ------------------------------------------------------------------------------------------------
def layout(add) -> list[tuple]:
    """Every argument group's title and, per flag, its spellings, destination, default, type, choices,
    nargs, metavar and help: what ``--help`` shows and what the parse returns."""
    parser = argparse.ArgumentParser(add_help=False)
    add(parser)
    return [(g.title, [(tuple(a.option_strings), a.dest, repr(a.default), a.type, a.choices, a.nargs, a.metavar,
                        a.help, type(a).__name__) for a in g._group_actions]) for g in parser._action_groups]


def test_the_model_and_data_flags_are_the_classes_own():
    from csvflowdatamodule.CsvDataModule import CsvDataModule
    from emseg.app import trainer_args
    from Models.CoherenceNets.ClassicalEM import ClassicalEM
    from Models.CoherenceNets.MethodeB import MethodeB

    assert layout(trainer_args.add_model_args) == layout(MethodeB.add_specific_args)
    assert layout(trainer_args.add_data_args) == layout(CsvDataModule.add_specific_args)
    assert layout(trainer_args.add_classical_em_args) == layout(ClassicalEM.add_specific_args)
    assert trainer_args.CLASSICAL_EM_FLAGS == ClassicalEM.CLI_FLAGS
    assert trainer_args.CLASSICAL_EM_GROUPS == ClassicalEM.all_hparam_groups()


def test_the_choice_lists_spelt_for_the_parsers_are_the_modules_own():
    from emseg.app import evaluation_cli, evaluation_run
    from emseg.core import coherence_math, method_names
    from evaluationmodule import BinarisationModule, Evaluation, ScoreModule

    assert evaluation_cli.MODEL_NAMES == tuple(evaluation_run.MODELS)
    assert tuple(Evaluation.SCORING_METHODS) == tuple(ScoreModule.SCORING_METHODS)
    assert tuple(Evaluation.BINARY_METHODS) == tuple(BinarisationModule.BINARY_METHODS)
    assert coherence_math.FT is method_names.FT and coherence_math.THETA_METHODS is method_names.THETA_METHODS


def test_the_moved_names_stay_importable_where_they_were():
    from emseg.app import evaluation_cli, evaluation_run, training, training_cli
    from evaluationmodule import Evaluation, runner

    for name in ("build_parser", "parse_args", "explicit_flags", "check_training_args", "demo_help",
                 "config_path_of", "replayed_settings", "REPLAY_SKIPS"):
        assert getattr(training, name) is getattr(training_cli, name)
    assert evaluation_run.build_parser is evaluation_cli.build_parser
    assert evaluation_run.parse_args is evaluation_cli.parse_args
    assert Evaluation.evaluate is runner.evaluate and Evaluation.EvaluationResult is runner.EvaluationResult
