"""emseg/core/flow_io.py: the .flo writer round-trips bit-exactly (with flowiz too), tensors and arrays
write the same bytes, and the names stay importable from the authors' csvflowdatamodule.CsvDataset."""

from __future__ import annotations

import flowiz
import numpy as np
import pytest
import torch

from emseg.core import flow_io
from emseg.core.flow_io import TAG_FLOAT, DataFileError, read_flow, write_flow

try:
    from data_helpers import random_flow
except ImportError:  # tests/ imported as a package
    from tests.data_helpers import random_flow


def test_write_flow_round_trips_bit_exactly_with_flowiz(tmp_path):
    rng = np.random.default_rng(0)
    flow = random_flow(rng, 7, 11)
    flow[0, 0] = [-0.0, 1e30]
    flow[0, 1] = [np.float32(1e-45), -np.float32(3.4e38)]  # denormal and near-max
    p = tmp_path / "a.flo"
    write_flow(p, flow)
    assert p.stat().st_size == 12 + 8 * 7 * 11
    header = np.frombuffer(p.read_bytes()[:12], dtype=np.uint8)
    assert np.frombuffer(header[:4].tobytes(), "<f4")[0] == TAG_FLOAT
    assert tuple(np.frombuffer(header[4:].tobytes(), "<i4")) == (11, 7)  # width, then height
    back = flowiz.read_flow(str(p))
    assert back.shape == (7, 11, 2)
    np.testing.assert_array_equal(back.view(np.uint32), flow.view(np.uint32))
    with pytest.raises(DataFileError, match="implausible flow"):  # 1e30 and 3.4e38 px are no motion
        read_flow(p)
    flow[0, 0, 1], flow[0, 1, 1] = 99999.0, -99999.0
    write_flow(p, flow)
    np.testing.assert_array_equal(read_flow(p).view(np.uint32), flow.view(np.uint32))


def test_write_flow_accepts_channel_first_tensor(tmp_path):
    flow = random_flow(np.random.default_rng(1), 5, 6)
    write_flow(tmp_path / "np.flo", flow)
    write_flow(tmp_path / "t.flo", torch.from_numpy(flow).permute(2, 0, 1))
    assert (tmp_path / "np.flo").read_bytes() == (tmp_path / "t.flo").read_bytes()
    with pytest.raises(ValueError):
        write_flow(tmp_path / "bad.flo", np.zeros((4, 5, 3), np.float32))


def test_npy_flow_round_trip_and_the_authors_path(tmp_path):
    from csvflowdatamodule import CsvDataset as authors  # noqa: N813

    flow = random_flow(np.random.default_rng(2), 4, 6)
    np.save(tmp_path / "f.npy", flow)
    np.testing.assert_array_equal(read_flow(tmp_path / "f.npy"), flow)
    for name in ("TAG_FLOAT", "DataFileError", "read_flow", "write_flow", "flow_to_rgb"):
        assert getattr(authors, name) is getattr(flow_io, name)
    write_flow(tmp_path / "f.flo", flow)
    loaded = authors.FilesLoaders().load_file(path=tmp_path / "f.flo", type="Flow", img_size=(4, 6))
    np.testing.assert_array_equal(loaded.numpy(), flow.transpose(2, 0, 1))
    with pytest.raises(DataFileError, match="missing file"):
        read_flow(tmp_path / "none.flo")
