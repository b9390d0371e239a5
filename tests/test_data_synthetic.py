"""The built-in synthetic dataset (csvflowdatamodule/synthetic.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import csvflowdatamodule.synthetic as synthetic
from csvflowdatamodule.CsvDataModule import CsvDataModule
from csvflowdatamodule.CsvDataset import read_flow
from emseg.core.coherence_math import make_basis


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_split_layout_csvs_and_info(tmp_path):
    prefix = synthetic.make_synthetic_split(tmp_path, "syn", 12, 3, 2, img_size=(32, 48), seed=3)
    assert prefix == str(tmp_path / "syn")
    for split, n in (("train", 12), ("val", 3), ("test", 2)):
        rows = _rows(tmp_path / f"syn_{split}.csv")
        assert rows[0] == ["Flow", "Image", "GtMask", "FlowRGB"] and len(rows) == n + 1
        for row in rows[1:]:
            assert all((tmp_path / p).is_file() for p in row)
            parts = [Path(p).parts for p in row[:3]]
            assert [p[0] for p in parts] == ["Flows", "Images", "Masks"]
            assert len({p[1] for p in parts}) == 1 and parts[0][1].startswith(f"{split}_seq_")
    seqs = {Path(r[0]).parent.name for r in _rows(tmp_path / "syn_train.csv")[1:]}
    assert seqs == {"train_seq_000", "train_seq_001"}  # 10 frames per sequence
    info = json.loads((tmp_path / "syn_info.json").read_text())
    assert (info["n_train"], info["n_val"], info["n_test"], info["seed"]) == (12, 3, 2, 3)
    assert info["img_size"] == [32, 48]


def test_generation_is_deterministic_given_the_seed(tmp_path):
    for d, seed in (("a", 5), ("b", 5), ("c", 6)):
        synthetic.make_synthetic_split(tmp_path / d, "s", 4, 2, 2, img_size=(24, 40), seed=seed)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b
    flows = [k for k in a if k.endswith(".flo")]
    assert len(flows) == 8 and all(a[k] != c[k] for k in flows)


def test_samples_are_plausible_motion_segmentation_data(tmp_path):
    size = (64, 112)
    prefix = synthetic.make_synthetic_split(tmp_path, "s", 30, 0, 0, img_size=size, seed=1)
    X = make_basis("Quadratic", size, centered=True).double().numpy()
    dm = CsvDataModule(prefix, tmp_path, batch_size=30, request=["Flow", "Image", "GtMask", "FlowRGB"],
                       img_size=None, num_workers=0, shuffle_fit=False)
    batch = next(iter(dm.train_dataloader()))
    assert batch["Skipped"] == [] and batch["Flow"].shape == (30, 2, *size)
    assert batch["Image"].shape == (30, 3, *size)
    for flow, mask in zip(batch["Flow"].double().numpy(), batch["GtMask"].numpy(), strict=True):
        fg = mask.astype(bool).reshape(-1)
        assert 0.01 < fg.mean() < 0.5  # 1-3 objects, never empty, never everything
        Y = flow.reshape(2, -1).T
        assert np.isfinite(Y).all() and 0.1 < np.linalg.norm(Y, axis=1).mean() < 10
        # The objects move differently from the background: a quadratic motion fitted on the
        # background leaves much larger residuals on the objects than on the background.
        theta = np.linalg.lstsq(X[~fg], Y[~fg], rcond=None)[0]
        r = np.linalg.norm(Y - X @ theta, axis=1)
        assert r[fg].mean() > 3 * r[~fg].mean()
        assert r[~fg].mean() > 0.005  # noise, as real estimators produce


def test_object_count_and_magnitude_vary_at_paper_size():
    import cv2

    counts, norms, bg_models = [], [], set()
    for k in range(12):
        seq = synthetic.generate_sequence(np.random.default_rng([0, k]), (128, 224), 1)
        flow, mask = seq[0]
        counts.append(cv2.connectedComponents(mask.astype(np.uint8))[0] - 1)
        norms.append(np.linalg.norm(flow, axis=2).mean())
    assert min(counts) >= 1 and len(set(counts)) >= 2
    assert 0.3 < np.median(norms) < 8  # a few pixels, like real flow at 128 × 224
    for k in range(20):
        theta = synthetic._background_theta(np.random.default_rng(k), 1.0)
        bg_models.add(theta.shape[0])
    assert bg_models == {3, 6}  # affine and quadratic camera motions


def test_cli_writes_a_loadable_split(tmp_path, capsys):
    prefix = synthetic.main(["--out", str(tmp_path), "--name", "cli", "--n_train", "3", "--n_val", "1",
                             "--n_test", "1", "--img_size", "16", "24", "--seed", "2"])
    assert prefix == str(tmp_path / "cli") and "--data_file" in capsys.readouterr().out
    flow = read_flow(tmp_path / _rows(tmp_path / "cli_val.csv")[1][0])
    assert flow.shape == (16, 24, 2)


def test_default_split_is_cached_and_regenerated_when_incomplete(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "DEFAULT_SIZES", {"n_train": 3, "n_val": 2, "n_test": 2})
    monkeypatch.setattr(synthetic, "DEFAULT_IMG_SIZE", (16, 24))
    cache = tmp_path / "cache" / "synthetic_vX"
    base, prefix = synthetic.default_synthetic_split(cache)
    assert base == str(cache) and prefix == str(cache / "synthetic")
    flo = cache / _rows(cache / "synthetic_train.csv")[1][0]
    mtime = flo.stat().st_mtime_ns
    assert synthetic.default_synthetic_split(cache) == (base, prefix)
    assert flo.stat().st_mtime_ns == mtime  # reused, not regenerated
    flo.unlink()
    synthetic.default_synthetic_split(cache)
    assert flo.is_file()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["synthetic_vX"]  # no temp dir left


def test_default_cache_dir_is_versioned(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    d = synthetic.default_cache_dir()
    assert d == tmp_path / "em_motion_segmentation" / f"synthetic_v{synthetic.GENERATOR_VERSION}"


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        synthetic.make_synthetic_split(tmp_path, "x", -1, 0, 0)
    with pytest.raises(ValueError):
        synthetic.make_synthetic_split(tmp_path, "x", 1, 0, 0, img_size=(4, 4))


def test_motion_support_is_the_objects_plus_their_bleed():
    import cv2

    size, bases = (64, 112), synthetic._Bases((64, 112))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    n_bleed = n_exact = 0
    for k in range(12):
        plain = synthetic.generate_sequence(np.random.default_rng([7, k]), size, 3, bases)
        full = synthetic.generate_sequence(np.random.default_rng([7, k]), size, 3, bases, with_support=True)
        for (flow, gt), (flow2, gt2, support) in zip(plain, full):
            # the dataset itself is unchanged by asking for the support
            assert np.array_equal(flow, flow2) and np.array_equal(gt, gt2)
            assert support.dtype == bool and support.shape == size
            assert not (gt & ~support).any()  # every object pixel moves with its object
            assert not (support & ~cv2.dilate(gt.astype(np.uint8), disk).astype(bool)).any()  # bleed <= 2 px
            n_bleed += bool((support & ~gt).any())
            n_exact += bool(np.array_equal(support, gt))
    assert n_bleed > 0 and n_exact > 0  # bleed is drawn per sequence among 0, 1 and 2 px
