"""The shared skip-and-record (emseg/core/skips.py) and the three datasets that use it."""

import logging

import numpy as np
import pytest

from csvflowdatamodule.clips import CsvClipDataset
from csvflowdatamodule.dataset import CsvDataset
from emseg.core.flow_io import write_flow
from emseg.core.skips import SkipRecord
from evaluationmodule.clip_frames import FrameClipDataset


def test_skip_record_warns_once_per_path_and_reports_in_key_order(caplog):
    rec = SkipRecord(logging.getLogger("test_skips"))
    with caplog.at_level(logging.WARNING, logger="test_skips"):
        item = rec.skip(7, "a.flo", "missing", "skipping %d: %s", 7, "a.flo")
        rec.skip(2, "a.flo", "missing", "skipping %d: %s", 2, "a.flo")
        rec.skip(5, "b.flo", "corrupt", "skipping %d: %s", 5, "b.flo")
    assert item == {"Skipped": (7, "a.flo", "missing")}
    assert [r.getMessage() for r in caplog.records] == ["skipping 7: a.flo", "skipping 5: b.flo"]
    assert rec.report() == {"count": 3, "samples": [(2, "a.flo", "missing"), (5, "b.flo", "corrupt"),
                                                    (7, "a.flo", "missing")]}


@pytest.fixture
def split(tmp_path):
    """One sequence of 4 flows, the third missing on disk."""
    rows = []
    for t in range(4):
        rel = f"Flows/s/{t:05d}.flo"
        if t != 2:
            (tmp_path / "Flows/s").mkdir(parents=True, exist_ok=True)
            write_flow(tmp_path / rel, np.zeros((8, 12, 2), np.float32))
        rows.append(rel)
    csv = tmp_path / "d_test.csv"
    csv.write_text("Flow\n" + "\n".join(rows) + "\n")
    return tmp_path, csv


def test_the_three_datasets_record_the_missing_file(split):
    base, csv = split
    frames = CsvDataset(str(csv), str(base), (8, 12), ["Flow"])
    assert "Skipped" in frames[2] and "Flow" in frames[1]
    missing = str(base / "Flows/s/00002.flo")
    assert frames.skipped_report() == {"count": 1, "samples": [(2, missing, "missing file")]}
    assert frames.skipped == {2: frames.skipped_report()["samples"][0]}

    clips = CsvClipDataset(str(csv), str(base), (8, 12), ["Flow"], clip_length=2, clip_stride=1)
    got = [("Skipped" in clips[i]) for i in range(len(clips))]
    assert got == [False, True, True]  # clips (0,1) (1,2) (2,3): two hold the missing frame
    assert [s[0] for s in clips.skipped_report()["samples"]] == [1, 2]

    per_frame = FrameClipDataset(CsvDataset(str(csv), str(base), (8, 12), ["Flow"]), clip_length=2)
    skipped = [i for i in range(len(per_frame)) if "Skipped" in per_frame[i]]
    assert skipped and per_frame.skipped_report()["count"] == len(skipped)
    assert all(s[1] == missing for s in per_frame.skipped_report()["samples"])
