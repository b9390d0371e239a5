"""emseg.core.datasplit: the one rule from --data_file to a DataSplit's CSVs, shared by training and evaluation."""

from __future__ import annotations

import pytest

from csvflowdatamodule.CsvDataModule import resolve_data_path
from emseg.core.datasplit import STEPS, split_csv, split_pattern
from evaluationmodule.core import resolve_data_file


def test_training_and_evaluation_read_data_file_by_the_same_rule(tmp_path):
    assert resolve_data_path is split_pattern and resolve_data_file is split_csv
    for step in STEPS:
        (tmp_path / f"X_{step}.csv").write_text("Flow\n")
    for given in (tmp_path / "X", str(tmp_path / "X_{}.csv"), tmp_path / "X_val.csv"):
        pattern = split_pattern(given)
        assert pattern == str(tmp_path / "X_{}.csv")
        if not str(given).endswith("_val.csv"):  # one step's CSV is scored as it is
            assert [split_csv(given, s) for s in STEPS] == [tmp_path / f"X_{s}.csv" for s in STEPS]
    assert split_csv(tmp_path / "X_val.csv", "test") == tmp_path / "X_val.csv"


def test_bad_data_file_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError, match="other.csv"):
        split_pattern(tmp_path / "other.csv")
    with pytest.raises(FileNotFoundError, match="Y_test.csv"):
        split_csv(tmp_path / "Y", "test")
    with pytest.raises(FileNotFoundError, match="Z.csv"):
        split_csv(tmp_path / "Z.csv")


def test_a_frames_sequence_is_its_flow_folder_and_frames_sort_by_their_numbers():
    from emseg.core.datasplit import frame_order_key, sequence_folder

    assert sequence_folder("Flows/seq_003/00007.flo") == "Flows/seq_003"
    assert sequence_folder(" Flows\\seq_003\\00007.flo ") == "Flows/seq_003"
    assert sequence_folder("00007.flo") == ""
    names = ["s/f_10.flo", "s/f_2.flo", "s/f_1.flo", "s/g.flo"]
    assert sorted(names, key=frame_order_key) == ["s/f_1.flo", "s/f_2.flo", "s/f_10.flo", "s/g.flo"]
