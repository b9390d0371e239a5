"""csvflowdatamodule/merge_splits.py: several DataSplits with their own base dirs → one."""

from __future__ import annotations

import csv
import logging
import os

import pytest

from csvflowdatamodule.CsvDataset import CsvDataset
from csvflowdatamodule.merge_splits import main, merge_splits
from tests.data_helpers import make_split, write_csv


def rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def two_splits(tmp_path):
    a = make_split(tmp_path / "a", name="A", n=3, seed=1)
    b = make_split(tmp_path / "b", name="B", n=2, seed=2, columns=("Flow", "Image"))  # unlabelled
    return tmp_path, (str(tmp_path / "a"), a), (str(tmp_path / "b"), b)


def test_merge_keeps_every_row_in_order_with_absolute_paths(two_splits, caplog):
    tmp, (base_a, a), (base_b, b) = two_splits
    out = str(tmp / "mixed" / "mixed")
    with caplog.at_level(logging.WARNING, logger="csvflowdatamodule.merge_splits"):
        counts = merge_splits(out, [(base_a, a), (base_b, b)])
    assert counts == {"train": 5, "val": 5, "test": 5}
    merged = rows(f"{out}_train.csv")
    assert list(merged[0]) == ["Flow", "Image"]  # GtMask is not in every split: dropped, and said so
    assert any("GtMask" in r.message for r in caplog.records)
    expected = [os.path.join(base_a, r["Flow"]) for r in rows(f"{a}_train.csv")] + \
               [os.path.join(base_b, r["Flow"]) for r in rows(f"{b}_train.csv")]
    assert [r["Flow"] for r in merged] == [os.path.abspath(p) for p in expected]
    assert all(os.path.isfile(r["Flow"]) and os.path.isfile(r["Image"]) for r in merged)
    assert not list((tmp / "mixed").glob("*.tmp")) and not list((tmp / "mixed").glob(".*"))
    # the merged split loads with --base_dir /
    ds = CsvDataset(f"{out}_val.csv", "/", img_size=(12, 20), request=("Flow", "Image"))
    assert len(ds) == 5 and ds[4]["Flow"].shape == (2, 12, 20)


def test_relative_paths_and_a_step_missing_from_one_split(two_splits, caplog):
    tmp, (base_a, a), (base_b, b) = two_splits
    os.remove(f"{b}_test.csv")
    out = str(tmp / "rel" / "mixed")
    with caplog.at_level(logging.WARNING, logger="csvflowdatamodule.merge_splits"):
        counts = merge_splits(out, [(base_a, a), (base_b, b)], relative_to=str(tmp), steps=("val", "test"))
    assert counts == {"val": 5, "test": 3}
    assert any("no test split" in r.message and "B_test.csv" in r.message for r in caplog.records)
    test_rows = rows(f"{out}_test.csv")
    assert list(test_rows[0]) == ["Flow", "Image", "GtMask"]  # only A has a test split: its columns stay
    assert all(not os.path.isabs(r["Flow"]) and os.path.isfile(tmp / r["GtMask"]) for r in test_rows)
    assert not os.path.exists(f"{out}_train.csv")


def test_a_step_no_split_has_is_not_written_and_bad_csv_names_the_file(tmp_path):
    base = tmp_path / "c"
    base.mkdir()
    write_csv(base / "C_val.csv", ["Flow"], [["x.flo"]])
    assert merge_splits(str(tmp_path / "o" / "o"), [(str(base), str(base / "C"))]) == {"val": 1}
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["o_val.csv"]
    write_csv(base / "D_val.csv", ["Image"], [["x.png"]])
    with pytest.raises(ValueError, match=r"D_val\.csv.*'Flow'"):
        merge_splits(str(tmp_path / "o" / "o"), [(str(base), str(base / "D"))])


def test_command_line(two_splits, capsys):
    tmp, (base_a, a), (base_b, b) = two_splits
    out = str(tmp / "cli" / "m")
    assert main(["--out", out, "--split", base_a, a, "--split", base_b, b, "--steps", "train"]) == 0
    assert "--base_dir / --data_file" in capsys.readouterr().out
    assert len(rows(f"{out}_train.csv")) == 5
