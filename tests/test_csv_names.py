"""Names with any character round-trip through every table the project writes and reads
(evaluationmodule/writers.py), and a cell a spreadsheet would run as a formula is written guarded."""

from __future__ import annotations

import csv
import io

import pandas as pd
import pytest

from evaluationmodule import writers as W

NAMES = ["plain", "with,comma", 'with"quote', "with\ttab", "with\nnewline", "with\r\ncrlf", "with\u2028ls",
         "=1+1", "+cmd", "-rf", "@SUM(A1)", "'quoted", "''twice", "'=", "", " lead space", "ünïcödé/séq"]


@pytest.mark.parametrize("delimiter", [",", "\t"])
def test_rows_round_trip_every_name(tmp_path, delimiter):
    rows = [{"name": n, "value": i - 3.5, "text": f"-{i}"} for i, n in enumerate(NAMES)]
    path = tmp_path / "t.csv"
    W.append_rows(path, rows[:5], ["name", "value", "text"], delimiter=delimiter)
    W.append_rows(path, rows[5:], ["name", "value", "text"], delimiter=delimiter)
    back = W.read_rows(path, delimiter=delimiter)
    assert [r["name"] for r in back] == NAMES
    assert [float(r["value"]) for r in back] == [r["value"] for r in rows]
    assert [r["text"] for r in back] == [r["text"] for r in rows]  # "-3" is a number: written as it is
    W.rewrite_rows(path, rows, ["name", "value"], delimiter=delimiter)
    assert [r["name"] for r in W.read_rows(path, delimiter=delimiter)] == NAMES


def test_formula_cells_are_guarded_on_disk_and_numbers_are_not(tmp_path):
    path = tmp_path / "t.csv"
    W.rewrite_rows(path, [{"a": "=HYPERLINK(x)", "b": -2.5, "c": "-2.5", "d": "@x", "e": "+", "f": "ok"}],
                   list("abcdef"))
    (_header, cells), = [list(csv.reader(io.StringIO(path.read_text(), newline="")))]
    assert cells == ["'=HYPERLINK(x)", "-2.5", "-2.5", "'@x", "'+", "ok"]
    for cell in cells:
        assert cell[:1] not in ("=", "+", "@") and not (cell.startswith("-") and not cell[1:2].isdigit())


def test_dataframes_round_trip_through_write_csv_and_unguard_frame(tmp_path):
    df = pd.DataFrame({"sequence": NAMES, "J": [0.5] * len(NAMES), "n": list(range(len(NAMES)))})
    path = W.write_csv(df, tmp_path / "per_sequence.csv")
    back = W.unguard_frame(pd.read_csv(path, keep_default_na=False))
    assert back["sequence"].tolist() == NAMES
    assert back["J"].tolist() == df["J"].tolist() and back["n"].tolist() == df["n"].tolist()
    assert df["sequence"].tolist() == NAMES  # the caller's frame is not changed


def test_a_torn_last_record_is_dropped_even_inside_a_quoted_newline(tmp_path, caplog):
    path = tmp_path / "t.csv"
    W.append_rows(path, [{"name": "a\nb", "v": 1}, {"name": "c", "v": 2}], ["name", "v"])
    full = path.read_bytes().decode()
    cut = full.index("c") - 1  # inside nothing: the second record lost its end
    for torn in (full[:-1], full[: full.index("\nb") + 1], full[:cut] + '"c'):
        path.write_bytes(torn.encode())
        rows = W.read_rows(path)
        assert [r["name"] for r in rows] in ([], ["a\nb"])
        assert "incomplete last record" in caplog.text
    path.write_bytes(full.encode())
    assert [r["name"] for r in W.read_rows(path)] == ["a\nb", "c"]


def test_guard_is_exactly_invertible():
    for value in [*NAMES, "'", "''", "'a", "-", "-x", "1e-3", "-inf", None, 3, -1.0]:
        assert W.unguard_cell(W.guard_cell(value)) == value


SEQUENCES = ["new\nline", "line\u2028sep", "tab\tbed", "=cmd", 'quo"te,comma', "-dash"]


@pytest.mark.slow
def test_model_eval_and_evaluation_keep_every_frame_of_oddly_named_sequences(tiny_split, tmp_path):
    """A sequence folder's name with a newline, U+2028, a tab, a quote or a formula start: model_eval writes
    a row per frame, its manifest lists every prediction, and the evaluation module scores every row."""
    import json
    import os
    import shutil

    from emseg.core.datasplit import split_csv
    from tests.conftest import run_cli

    base, prefix = tiny_split
    src = W.read_rows(split_csv(prefix, "test"))
    data = tmp_path / "data"
    rows = []
    for k, seq in enumerate(SEQUENCES):
        for r in src[k: k + 1]:
            new = {}
            for col in ("Flow", "GtMask"):
                rel = os.path.join(col, seq, os.path.basename(r[col]))
                os.makedirs(data / col / seq, exist_ok=True)
                shutil.copyfile(os.path.join(base, r[col]), data / rel)
                new[col] = rel
            rows.append(new)
    W.rewrite_rows(data / "odd_test.csv", rows, ["Flow", "GtMask"])
    ev = tmp_path / "eval"
    run_cli(["model_eval.py", "--model", "ClassicalEM", "--em_iterations", "1", "--img_size", "64", "112",
             "--save_dir", str(ev), "--base_dir", str(data), "--data_file", str(data / "odd"), "--steps", "test",
             "--save_npy", "--num_workers", "0", "--accelerator", "cpu"])
    results = W.read_rows(ev / "results_test.csv")
    assert sorted(r["file_name"] for r in results) == sorted(r["Flow"] for r in rows)
    listed = [r["proba_file"] for r in W.read_rows(ev / "predictions_test.tsv", delimiter="\t")]
    assert len(listed) == len(rows) and all((ev / p).is_file() for p in listed)
    summary = W.read_rows(ev / "results_test_summary.tsv", delimiter="\t")
    assert sorted(r["name"] for r in summary if r["level"] == "sequence") == sorted(SEQUENCES)
    run_cli(["-m", "evaluationmodule.Evaluation", "--data_file", str(data / "odd"), "--step", "test",
             "--model_base_dir", str(tmp_path), "--data_base_dir", str(data), "--model_id", "eval", "--no_progress"])
    out_dir = next(ev.glob("evaluation_*"))
    assert json.loads((out_dir / "summary.json").read_text())["scored_rows"] == len(rows)
    scores = W.unguard_frame(pd.read_csv(out_dir / "scores.csv", keep_default_na=False))
    assert sorted(scores["sequence"]) == sorted(SEQUENCES) and set(scores["status"]) == {"ok"}
