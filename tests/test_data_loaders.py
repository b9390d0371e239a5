"""FilesLoaders and every bad-file case (csvflowdatamodule/CsvDataset.py); the .flo round trip is in test_flow_io.py."""

from __future__ import annotations

from pathlib import Path

import flowiz
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from csvflowdatamodule.CsvDataset import TAG_FLOAT, DataFileError, FilesLoaders, write_flow

try:
    from data_helpers import random_flow
except ImportError:  # tests/ imported as a package
    from tests.data_helpers import random_flow

REPO = Path(__file__).resolve().parents[1]
L = FilesLoaders()


# --------------------------------------------------------------------------------------------
# Flow
# --------------------------------------------------------------------------------------------
def test_load_flow_flo_and_npy(tmp_path):
    flow = random_flow(np.random.default_rng(2), 9, 13)
    write_flow(tmp_path / "f.flo", flow)
    np.save(tmp_path / "f.npy", flow.astype(np.float64))
    for name in ("f.flo", "f.npy"):
        t = L.load_file(tmp_path / name, "Flow")
        assert t.shape == (2, 9, 13) and t.dtype == torch.float32
        np.testing.assert_array_equal(t[0].numpy(), flow[..., 0])  # channel 0 = u
        np.testing.assert_array_equal(t[1].numpy(), flow[..., 1])


def test_flow_resize_is_bilinear_without_antialias_and_keeps_vectors(tmp_path):
    flow = random_flow(np.random.default_rng(3), 40, 60)
    write_flow(tmp_path / "f.flo", flow)
    t = L.load_file(tmp_path / "f.flo", "Flow", img_size=(16, 28))
    ref = F.interpolate(torch.from_numpy(flow).permute(2, 0, 1)[None], size=(16, 28), mode="bilinear",
                        align_corners=False, antialias=False)[0]
    assert t.shape == (2, 16, 28)
    torch.testing.assert_close(t, ref, rtol=0, atol=0)
    const = np.zeros((40, 60, 2), np.float32)
    const[..., 0], const[..., 1] = 3.0, -2.0
    write_flow(tmp_path / "c.flo", const)
    c = L.load_file(tmp_path / "c.flo", "Flow", img_size=(10, 15))
    assert torch.allclose(c[0], torch.tensor(3.0)) and torch.allclose(c[1], torch.tensor(-2.0))


def test_authors_example_flow_loads_like_their_code():
    """images/00000.flo at 128 × 224 equals the input the authors' loader produced."""
    ref = np.load(REPO / "tests" / "data" / "blackswan_flow_128x224.npy")
    t = L.load_file(REPO / "images" / "00000.flo", "Flow", img_size=(128, 224))
    np.testing.assert_array_equal(t.numpy(), ref)
    assert L.load_file(REPO / "images" / "00000.flo", "Flow").shape == (2, 480, 854)


# --------------------------------------------------------------------------------------------
# Image, GtMask, FlowRGB
# --------------------------------------------------------------------------------------------
def test_image_modes_give_three_channels_in_range(tmp_path):
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, size=(10, 14, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=95)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    rgba = np.concatenate([rgb, np.full((10, 14, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.png")

    t = L.load_file(tmp_path / "rgb.png", "Image")
    assert t.shape == (3, 10, 14) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), rgb.transpose(2, 0, 1) / 255.0 - 0.5, atol=1e-6)
    g = L.load_file(tmp_path / "gray.png", "Image")
    assert g.shape == (3, 10, 14) and torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])
    np.testing.assert_allclose(g[0].numpy(), rgb[..., 0] / 255.0 - 0.5, atol=1e-6)
    a = L.load_file(tmp_path / "rgba.png", "Image")
    assert a.shape == (3, 10, 14)
    torch.testing.assert_close(a, t)  # alpha dropped
    for name in ("rgb.jpg", "pal.png"):
        x = L.load_file(tmp_path / name, "Image", img_size=(5, 7))
        assert x.shape == (3, 5, 7) and x.min() >= -0.5 and x.max() <= 0.5


def test_16bit_gray_image(tmp_path):
    arr = np.array([[0, 65535], [32768, 1000]], np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    t = L.load_file(tmp_path / "g16.png", "Image")
    assert t.shape == (3, 2, 2)
    np.testing.assert_allclose(t[0].numpy(), arr / 65535.0 - 0.5, atol=1e-6)


def test_masks_any_positive_value_is_foreground(tmp_path):
    m = np.zeros((8, 10), np.uint8)
    m[1:3, 1:4] = 1  # the original's /255 truncation would have emptied these
    m[5:7, 5:9] = 2
    pal = Image.fromarray(m, mode="P")
    pal.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))  # DAVIS-2017 style
    pal.save(tmp_path / "pal.png")
    Image.fromarray(m * 255 // 2).save(tmp_path / "gray.png")
    rgb = np.zeros((8, 10, 3), np.uint8)
    rgb[m > 0, 1] = 200
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    rgba = np.concatenate([rgb, np.full((8, 10, 1), 255, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    for name in ("pal.png", "gray.png", "rgb.png", "rgba.png"):
        t = L.load_file(tmp_path / name, "GtMask")
        assert t.dtype == torch.long and t.shape == (8, 10), name
        np.testing.assert_array_equal(t.numpy(), (m > 0).astype(np.int64), err_msg=name)


def test_mask_resize_is_nearest_and_stays_binary(tmp_path):
    m = (np.random.default_rng(5).random((30, 50)) > 0.5).astype(np.uint8) * 255
    Image.fromarray(m).save(tmp_path / "m.png")
    t = L.load_file(tmp_path / "m.png", "GtMask", img_size=(13, 21))
    assert t.shape == (13, 21) and t.dtype == torch.long
    assert set(t.unique().tolist()) <= {0, 1}
    ref = F.interpolate(torch.from_numpy((m > 0).astype(np.float32))[None, None], size=(13, 21), mode="nearest")
    assert torch.equal(t, ref[0, 0].long())


def test_flowrgb_from_png_and_from_flo(tmp_path):
    flow = random_flow(np.random.default_rng(6), 9, 12)
    write_flow(tmp_path / "f.flo", flow)
    expected = flowiz.convert_from_flow(flow.copy()).transpose(2, 0, 1) / 255.0 - 0.5
    t = L.load_file(tmp_path / "f.flo", "FlowRGB")
    assert t.shape == (3, 9, 12) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), expected, atol=1e-6)
    Image.fromarray(flowiz.convert_from_flow(flow.copy())).save(tmp_path / "f.png")
    torch.testing.assert_close(L.load_file(tmp_path / "f.png", "FlowRGB"), t)
    assert L.load_file(tmp_path / "f.flo", "FlowRGB", img_size=(4, 6)).shape == (3, 4, 6)


def test_unknown_type_and_bad_size_are_errors(tmp_path):
    write_flow(tmp_path / "f.flo", random_flow(np.random.default_rng(7), 4, 4))
    with pytest.raises(ValueError, match="unknown file type"):
        L.load_file(tmp_path / "f.flo", "Depth")
    with pytest.raises(ValueError, match="img_size"):
        L.load_file(tmp_path / "f.flo", "Flow", img_size=(0, 4))


# --------------------------------------------------------------------------------------------
# Bad files: DataFileError naming the file and the problem
# --------------------------------------------------------------------------------------------
def _flo_bytes(flow: np.ndarray, tag: float = TAG_FLOAT, w: int | None = None, h: int | None = None) -> bytes:
    hh, ww = flow.shape[:2]
    return (np.array([tag], "<f4").tobytes() + np.array([ww if w is None else w, hh if h is None else h], "<i4")
            .tobytes() + flow.astype("<f4").tobytes())


def _bad_files(tmp_path: Path) -> list[tuple[str, str, str]]:
    """(file name, type, expected reason regex) for every bad-input case."""
    flow = random_flow(np.random.default_rng(8), 6, 8)
    good = _flo_bytes(flow)
    (tmp_path / "magic.flo").write_bytes(_flo_bytes(flow, tag=123.0))
    (tmp_path / "trunc.flo").write_bytes(good[:-10])
    (tmp_path / "header.flo").write_bytes(good[:7])
    (tmp_path / "long.flo").write_bytes(good + b"\0\0\0\0")
    (tmp_path / "dims.flo").write_bytes(_flo_bytes(flow, w=-8))
    nan = flow.copy()
    nan[2, 3, 1] = np.nan
    (tmp_path / "nan.flo").write_bytes(_flo_bytes(nan))
    inf = flow.astype(np.float64)
    inf[0, 0, 0] = np.inf
    np.save(tmp_path / "inf.npy", inf)
    np.save(tmp_path / "shape3.npy", np.zeros((6, 8, 3), np.float32))
    np.save(tmp_path / "chw.npy", np.zeros((2, 6, 8), np.float32))
    np.save(tmp_path / "int.npy", np.zeros((6, 8, 2), np.int32))
    (tmp_path / "junk.npy").write_bytes(b"not a numpy file at all")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    Image.fromarray(np.random.default_rng(9).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "trunc.png").write_bytes((tmp_path / "ok.png").read_bytes()[:300])
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "ok.jpg")
    (tmp_path / "trunc.jpg").write_bytes((tmp_path / "ok.jpg").read_bytes()[:200])
    return [
        ("missing.flo", "Flow", "missing file"),
        ("missing.npy", "Flow", "missing file"),
        ("missing.png", "Image", "missing file"),
        ("missing.png", "GtMask", "missing file"),
        ("missing.flo", "FlowRGB", "missing file"),
        ("magic.flo", "Flow", r"bad magic 123\.0 \(expected 202021\.25\)"),
        ("trunc.flo", "Flow", r"truncated: expected 396 bytes, got 386"),
        ("header.flo", "Flow", "truncated"),
        ("long.flo", "Flow", "size mismatch"),
        ("dims.flo", "Flow", "illegal size"),
        ("nan.flo", "Flow", "contains NaN or inf"),
        ("nan.flo", "FlowRGB", "contains NaN or inf"),
        ("inf.npy", "Flow", "contains NaN or inf"),
        ("shape3.npy", "Flow", r"expected flow H×W×2, got \(6, 8, 3\)"),
        ("chw.npy", "Flow", r"expected flow H×W×2, got \(2, 6, 8\)"),
        ("int.npy", "Flow", "float"),
        ("junk.npy", "Flow", "unreadable"),
        ("junk.png", "Image", "unreadable image"),
        ("junk.png", "GtMask", "unreadable image"),
        ("trunc.png", "Image", "unreadable image"),
        ("trunc.jpg", "Image", "unreadable image"),
        ("trunc.png", "FlowRGB", "unreadable image"),
    ]


def test_every_bad_file_raises_a_data_file_error_naming_it(tmp_path):
    cases = _bad_files(tmp_path)
    for name, typ, reason in cases:
        path = tmp_path / name
        with pytest.raises(DataFileError, match=reason) as info:
            L.load_file(path, typ, img_size=(4, 4))
        assert str(path) in str(info.value), (name, typ)
        assert info.value.path == str(path)
        assert isinstance(info.value, ValueError)
