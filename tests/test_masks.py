"""The mask rules of emseg/core/masks.py: the torch and the array forms of each rule agree exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from emseg.core import masks
from emseg.core.binarisation import Binariser
from emseg.core.significance import check_min_motion


def _preds(L: int, seed: int, with_ties: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(6, L, 9, 11, generator=g)
    if with_ties:  # quantised scores make equal maxima common: argmax ties must go the same way
        p = (p * 3).round()
    return p / p.sum(1, keepdim=True).clamp_min(1e-6)


@pytest.mark.parametrize("n_labels", [2, 3, 9])
def test_exceptbiggest_labels_is_the_histogram_rule_ties_included(n_labels):
    rng = np.random.default_rng(n_labels)
    cases = [rng.integers(0, n_labels, (7, 9)).astype(np.uint8 if n_labels == 2 else np.int64) for _ in range(20)]
    tie = np.zeros((4, 6), np.uint8)
    tie[:2] = 1  # 12 against 12: argmax of the histogram takes label 0, so label 1 is the foreground
    cases.append(tie if n_labels == 2 else tie.astype(np.int64))
    for labels in cases:
        expected = labels != np.argmax(np.bincount(labels.ravel().astype(np.int64), minlength=n_labels))
        np.testing.assert_array_equal(masks.exceptbiggest_labels(labels, n_labels), expected)
    np.testing.assert_array_equal(masks.exceptbiggest_labels(tie, 2), tie == 1)


@pytest.mark.parametrize("n_labels", [2, 3, 5])
@pytest.mark.parametrize("with_ties", [False, True])
def test_exceptbiggest_torch_and_array_forms_agree(n_labels, with_ties):
    pred = _preds(n_labels, seed=n_labels, with_ties=with_ties)
    fg_torch = masks.exceptbiggest(pred).numpy()
    labels = pred.numpy().argmax(1)
    fg_array = np.stack([masks.exceptbiggest_labels(lab, n_labels) for lab in labels])
    np.testing.assert_array_equal(fg_torch, fg_array)


def test_exceptbiggest_on_a_known_partition():
    pred = torch.zeros(1, 3, 4, 4)
    pred[0, 0] = 1  # label 0 everywhere ...
    pred[0, 0, :1] = 0
    pred[0, 2, :1] = 1  # ... but the first row, label 2
    expected = torch.zeros(1, 4, 4, dtype=torch.bool)
    expected[0, 0] = True
    assert torch.equal(masks.exceptbiggest(pred), expected)
    assert torch.equal(Binariser("exceptbiggest").binarise({"Pred": pred})["PredMask"], expected)


@pytest.mark.parametrize("n_labels", [2, 4])
def test_labels_at_is_the_argmax_of_resize_proba(n_labels):
    pred = _preds(n_labels, seed=10 + n_labels, with_ties=False)[0].numpy().astype(np.float32)
    for size in [(9, 11), (18, 22), (31, 45), (5, 7)]:
        ref = masks.resize_proba(pred, size).numpy()
        got = masks.labels_at(pred, size)
        top2 = np.sort(ref, 0)[-2:]
        clear = (top2[1] - top2[0]) > 1e-5  # a near tie may fall either way in float32
        assert clear.mean() > 0.95
        np.testing.assert_array_equal(got[clear], ref.argmax(0)[clear])
        fg = masks.foreground_at(pred, size)
        np.testing.assert_array_equal(fg, masks.exceptbiggest_labels(got, n_labels))


def test_resize_proba_checks_its_input():
    with pytest.raises(ValueError, match=r"expected probabilities \(L, I, J\)"):
        masks.resize_proba(np.zeros((4, 4)), (8, 8))
    same = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(masks.resize_proba(same, (4, 5)).numpy(), same)


def test_fair_takes_the_labels_mostly_inside_the_truth():
    pred = torch.zeros(1, 2, 2, 4)
    pred[0, 1, :, :3] = 1  # label 1 on 6 pixels, 4 of them inside the truth
    pred[0, 0, :, 3:] = 1
    gt = torch.zeros(1, 2, 4, dtype=torch.bool)
    gt[0, :, :2] = True
    out = masks.fair(pred, gt)
    assert torch.equal(out, pred[:, 1].bool())
    with pytest.raises(ValueError, match="expected GtMask"):
        masks.fair(pred, gt[:, :1])


def test_ground_truth_is_foreground_above_zero_in_every_mode():
    m = np.zeros((3, 4), np.uint8)
    m[1, 1:3] = 1
    for mode, arr in [("L", m), ("L", m * 255), ("P", m), ("RGB", np.stack([m * 0, m * 7, m * 0], -1)),
                      ("RGBA", np.stack([m, m, m, np.full_like(m, 255)], -1))]:
        im = Image.fromarray(arr, mode="RGBA" if mode == "RGBA" else None)
        if mode == "P":
            im = im.convert("P")
        np.testing.assert_array_equal(masks.decode_mask(im), m > 0, err_msg=mode)
    np.testing.assert_array_equal(masks.is_foreground(np.array([0, 1, 127, 128, 255])), [0, 1, 1, 1, 1])


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "x"])
def test_min_motion_is_checked_in_one_place(bad):
    with pytest.raises(ValueError, match="min_motion must be"):
        check_min_motion(bad)
    with pytest.raises(ValueError, match="min_motion must be"):
        Binariser("exceptbiggest", min_motion=bad)
    assert check_min_motion(0) == 0.0 and check_min_motion("2.5") == 2.5


def test_binary_method_is_checked():
    with pytest.raises(ValueError, match="binary_method must be one of"):
        Binariser("biggest")
