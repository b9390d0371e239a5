"""The authors' ``Evaluation.py`` command, run as their Readme says: from ``evaluationmodule/``, short
flags, predictions in ``{model_base_dir}/{model_id}/``, results in ``.../evaluation_{datetime}/``."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evaluationmodule.Evaluation import cli, new_output_dir, prediction_dir
from tests.conftest import ROOT
from tests.data_helpers import make_split

EVAL_DIR = Path(ROOT) / "evaluationmodule"


def write_predictions(base: Path, csv_path: Path, pred_dir: Path) -> int:
    """``{pred_dir}/{Flow without extension}_proba.npy`` (2, I, J) for every row: layer 1 is the
    ground truth's foreground, so every frame scores J = 1; returns the number of rows."""
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        fg = np.array(Image.open(base / row["GtMask"])) > 0
        proba = np.stack([np.where(fg, 0.1, 0.9), np.where(fg, 0.9, 0.1)]).astype(np.float32)
        target = pred_dir / f"{os.path.splitext(row['Flow'])[0]}_proba.npy"
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, proba)
    return len(rows)


@pytest.fixture
def tiny(tmp_path):
    data = tmp_path / "data"
    prefix = make_split(data, name="Tiny", n=3)
    return data, Path(f"{prefix}_val.csv"), tmp_path / "models"


def run_from_evaluationmodule(args: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the script finds the repo itself
    return subprocess.run([sys.executable, "Evaluation.py", *args], cwd=EVAL_DIR, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_the_authors_readme_command(tiny):
    data, csv_path, models = tiny
    n = write_predictions(data, csv_path, models / "MyModelV8")
    rel_csv = os.path.relpath(csv_path, EVAL_DIR)  # like their ../DataSplit/MySuperSplit_val.csv
    proc = run_from_evaluationmodule(["-sm", "db_eval_iou", "-bm", "exceptbiggest", "-mi", "MyModelV8",
                                      "--model_base_dir", str(models), "-df", rel_csv, "--data_base_dir", str(data),
                                      "--no_progress"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (out,) = (models / "MyModelV8").glob("evaluation_*")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["total_rows"] == n and summary["scored_rows"] == n and summary["missing_rows"] == 0
    assert summary["mean_score"] == pytest.approx(1.0)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["scoring_method"] == "db_eval_iou" and settings["binary_method"] == "exceptbiggest"
    assert settings["model_id"] == "MyModelV8" and settings["prediction_dir"] == str(models / "MyModelV8")
    assert len(list((out / "binary").rglob("*.png"))) == n
    assert str(out) in proc.stdout


def test_no_scored_row_exits_non_zero(tiny, capsys):
    data, csv_path, models = tiny
    write_predictions(data, csv_path, models)  # in model_base_dir itself, not in its model_id folder
    (models / "M").mkdir()
    status = cli(["-mi", "M", "--model_base_dir", str(models), "-df", str(csv_path), "--data_base_dir", str(data),
                  "--no_progress", "--fig_every", "0"])
    err = capsys.readouterr().err
    assert status == 1
    assert "scored 0 of 3 rows (3 without a prediction" in err and str(models / "M") in err
    # the same predictions without --model_id are found and scored
    assert cli(["--model_base_dir", str(models), "-df", str(csv_path), "--data_base_dir", str(data),
                "--no_progress", "--fig_every", "0"]) == 0
    assert len(list(models.glob("evaluation_*"))) == 1


def test_missing_model_folder_and_bad_input_are_one_line_errors(tiny, capsys):
    data, csv_path, models = tiny
    models.mkdir()
    assert cli(["-mi", "absent", "--model_base_dir", str(models), "-df", str(csv_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no prediction folder" in err and "absent" in err
    assert cli(["--model_base_dir", str(models), "-df", str(csv_path.with_name("nope.csv"))]) == 1
    assert "nope.csv" in capsys.readouterr().err
    proc = run_from_evaluationmodule(["-mi", "absent", "--model_base_dir", str(models), "-df", str(csv_path)])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr


def test_output_folders_are_new_per_run(tmp_path):
    assert prediction_dir(tmp_path, "m") == tmp_path / "m" and prediction_dir(tmp_path, None) == tmp_path
    first = new_output_dir(tmp_path)
    assert first.parent == tmp_path and first.name.startswith("evaluation_")
    first.mkdir()
    second = new_output_dir(tmp_path)
    assert second != first and not second.exists()
