"""The command lines in the entry scripts' docstrings parse, and the DataSplits they name exist."""

from __future__ import annotations

import os
import re
import shlex

import pytest

import model_eval
import model_train
from csvflowdatamodule.CsvDataModule import resolve_data_path
from tests.conftest import ROOT


def commands(doc: str, script: str) -> list[list[str]]:
    """``python SCRIPT ...`` lines of a docstring (backslash continuations joined), without '...' ones."""
    text = re.sub(r"\\\n\s*", " ", doc)
    out = []
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line.startswith(f"python {script}") and "..." not in line:
            out.append(shlex.split(line)[2:])
    return out


def split_files(data_file: str, steps: list[str]) -> list[str]:
    pattern = resolve_data_path(data_file)
    return [os.path.join(ROOT, pattern.format(step)) for step in steps]


def test_model_train_docstring_examples_work():
    from emseg.app.training import parse_args

    cmds = commands(model_train.__doc__, "model_train.py")
    assert len(cmds) == 2
    with_data = [c for c in cmds if "--data_file" in c]
    assert with_data
    for argv in cmds:
        args = parse_args(argv)
        if args.data_file:
            missing = [p for p in split_files(args.data_file, ["train", "val"]) if not os.path.isfile(p)]
            assert not missing, f"model_train.py's docstring names a DataSplit without {missing}"


def test_model_eval_docstring_examples_work():
    from emseg.app.evaluation_run import parse_args

    cmds = commands(model_eval.__doc__, "model_eval.py")
    assert cmds
    for argv in cmds:
        args = parse_args(argv)
        missing = [p for p in split_files(args.data_file, args.steps) if not os.path.isfile(p)]
        assert not missing, f"model_eval.py's docstring names a DataSplit without {missing}"


@pytest.mark.parametrize("doc,script", [(model_train.__doc__, "model_train.py"), (model_eval.__doc__, "model_eval.py")])
def test_docstrings_name_the_installed_commands(doc, script):
    assert ("emseg-train" if script == "model_train.py" else "emseg-eval") in doc
