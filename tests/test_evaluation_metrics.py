"""Unit tests of the evaluation's measures: J, bbox Jaccard, boundary F, sequence statistics, resize + binarise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from evaluationmodule import davis_metrics as dm
from evaluationmodule.ScoreModule import (
    ScoreModule,
    bbox_jaccard,
    binary_mask,
    default_scoring_method,
    jaccard,
    largest_component_bbox,
    mask_stats,
    resize_proba,
    sequence_table,
)


def square(shape, r0, r1, c0, c1):
    m = np.zeros(shape, dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


# ---------------------------------------------------------------------------------------------- J
def test_jaccard_two_squares_hand_computed():
    a = square((10, 10), 2, 6, 2, 6)  # 16 px
    b = square((10, 10), 2, 6, 4, 8)  # 16 px, overlap 4 x 2 = 8
    assert jaccard(a, b) == pytest.approx(8 / 24)
    assert jaccard(a, a) == 1.0
    assert jaccard(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    assert jaccard(a, np.zeros_like(a)) == 0.0


# ---------------------------------------------------------------------------------------------- F
def test_seg2bmap_square_is_ring_shifted_up_left():
    a = square((10, 10), 2, 6, 2, 6)
    ring = square((10, 10), 1, 6, 1, 6) & ~square((10, 10), 2, 5, 2, 5)
    np.testing.assert_array_equal(dm.seg2bmap(a), ring)
    assert dm.seg2bmap(a).sum() == 16


def test_boundary_f_hand_computed_exact_matching():
    a = square((10, 10), 2, 6, 2, 6)
    b = square((10, 10), 2, 6, 3, 7)  # shifted one column: rings share their top and bottom rows (8 of 16 px)
    assert dm.boundary_precision_recall(a, b, bound_th=0) == (0.5, 0.5)
    assert dm.db_eval_boundary(a, b, bound_th=0) == pytest.approx(0.5)
    assert dm.db_eval_boundary(a, b, bound_th=1) == pytest.approx(1.0)  # 1 px tolerance matches all


def test_boundary_f_tolerance_relative_to_diagonal():
    shape = (100, 100)  # tolerance ceil(0.008 * 141.4) = 2 px
    assert dm.boundary_tolerance(shape) == 2
    gt = square(shape, 30, 60, 30, 60)
    assert dm.db_eval_boundary(gt, gt) == 1.0
    assert dm.db_eval_boundary(gt, square(shape, 32, 62, 30, 60)) == pytest.approx(1.0)  # within tolerance
    far = dm.db_eval_boundary(gt, square(shape, 35, 65, 30, 60))  # 5 px: only the vertical sides partly match
    assert 0 < far < 1
    # hand count: rings are 30x30 perimeters = 120 px; matched = the two vertical sides' overlap rows.
    p, r = dm.boundary_precision_recall(gt, square(shape, 35, 65, 30, 60))
    assert p == pytest.approx(r)
    assert far == pytest.approx(p)


def test_boundary_f_empty_conventions():
    z = np.zeros((20, 20), bool)
    a = square((20, 20), 5, 10, 5, 10)
    assert dm.db_eval_boundary(z, z) == 1.0  # both empty
    assert dm.db_eval_boundary(a, z) == 0.0  # empty prediction: P = 1, R = 0
    assert dm.db_eval_boundary(z, a) == 0.0  # empty ground truth: P = 0, R = 1
    assert dm.boundary_precision_recall(a, z) == (1.0, 0.0)
    assert dm.boundary_precision_recall(z, a) == (0.0, 1.0)
    with pytest.raises(ValueError, match="same shape"):
        dm.db_eval_boundary(a, z[:5])


# ---------------------------------------------------------------------------------- statistics
def test_sequence_statistics_hand_computed():
    x = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    assert dm.db_mean(x) == pytest.approx(0.55)
    assert dm.db_recall(x) == pytest.approx(0.5)  # 0.5 itself is not > 0.5
    # toolkit bins for n = 10: ids round(linspace(1, 10, 5)) - 1 = [0, 2, 5, 7, 9] → X[0:3] and X[7:10]
    assert [(s.start, s.stop) for s in dm.decay_bins(10)] == [(0, 3), (2, 6), (5, 8), (7, 10)]
    assert dm.db_decay(x) == pytest.approx(0.9 - 0.2)
    # array_split: [0:3], [3:6], [6:8], [8:10]
    assert dm.db_decay(x, "array_split") == pytest.approx(0.9 - 0.15)
    assert dm.db_decay([0.3]) == 0.0
    assert dm.db_decay([0.8, 0.2]) == pytest.approx(0.6)
    assert np.isnan(dm.db_mean([])) and np.isnan(dm.db_recall([])) and np.isnan(dm.db_decay([]))
    with pytest.raises(ValueError, match="binning"):
        dm.db_decay(x, "quartiles")


def test_sequence_table_orders_frames_and_skips_unscored():
    rows = []
    j = {"a": [0.9, 0.7, 0.2, 0.1], "b": [0.6]}
    for seq, vals in j.items():
        for k, v in enumerate(vals):
            rows.append({"sequence": seq, "GtMask": f"D/{seq}/{k}.png", "jacc": v, "boundary_f": v / 2, "score": v})
    rows.append({"sequence": "a", "GtMask": "D/a/10.png", "jacc": np.nan, "boundary_f": np.nan, "score": np.nan})
    df = pd.DataFrame(rows).iloc[[3, 0, 5, 2, 4, 1]]  # shuffled: order must come from the frame names
    t = sequence_table(df).set_index("sequence")
    assert t.loc["a", "n_frames"] == 4 and t.loc["a", "n_unscored"] == 1 and t.loc["a", "n_rows"] == 5
    assert t.loc["a", "J_mean"] == pytest.approx(0.475)
    assert t.loc["a", "J_recall"] == pytest.approx(0.5)
    # n = 4: ids round(linspace(1, 4, 5)) - 1 = [0, 1, 2, 2, 3] (1.75 → 2, 2.5 → 3, 3.25 → 3):
    # first bin X[0:2] = [0.9, 0.7], last bin X[2:4] = [0.2, 0.1]
    assert [(s.start, s.stop) for s in dm.decay_bins(4)] == [(0, 2), (1, 3), (2, 3), (2, 4)]
    assert t.loc["a", "J_decay"] == pytest.approx(0.8 - 0.15)
    assert t.loc["a", "F_mean"] == pytest.approx(0.2375)
    assert t.loc["a", "JF"] == pytest.approx((0.475 + 0.2375) / 2)
    assert t.loc["b", "J_decay"] == 0.0 and t.loc["b", "J_recall"] == 1.0
    assert list(t.index) == ["a", "b"]


# ------------------------------------------------------------------------------------- bbox_jacc
def test_bbox_jacc_known_rectangles():
    gt = square((12, 16), 2, 6, 2, 8)  # rows 2..5, cols 2..7: 24 px
    pred = square((12, 16), 3, 7, 4, 10)  # rows 3..6, cols 4..9: 24 px, box overlap 3 x 4 = 12
    pred[10, 0] = True  # a one-pixel blob: not the largest component, ignored
    assert largest_component_bbox(pred) == (3, 4, 6, 9)
    assert bbox_jaccard(gt, pred) == pytest.approx(12 / 36)
    # an L-shaped component is scored by its bounding box, not by its pixels
    ell = np.zeros((12, 16), bool)
    ell[2:6, 2] = True
    ell[5, 2:8] = True
    assert bbox_jaccard(gt, ell) == 1.0
    # the GT's box covers all its pixels (> 0), even when split in two parts
    gt2 = np.zeros((12, 16), np.uint8)
    gt2[2, 2] = 3
    gt2[5, 7] = 1
    assert bbox_jaccard(gt2, gt) == 1.0
    z = np.zeros((12, 16), bool)
    assert bbox_jaccard(gt, z) == 0.0
    assert bbox_jaccard(z, z) == 1.0
    assert bbox_jaccard(z, gt) == 0.0


def test_default_scoring_method():
    assert default_scoring_method("MoCA_test") == "bbox_jacc"
    assert default_scoring_method("moca_val") == "bbox_jacc"
    assert default_scoring_method("DAVIS_D16Split_val") == "db_eval_iou"


# ------------------------------------------------------------------------- resize then binarise
def test_exceptbiggest_through_resize():
    block = square((8, 12), 2, 5, 3, 7)  # 12 of 96 px: label 1 is the smaller label → foreground
    proba = np.stack([~block, block]).astype(np.float32)  # (2, 8, 12)
    gt = np.kron(block, np.ones((2, 2), dtype=bool))  # (16, 24)
    up = resize_proba(proba, gt.shape)
    assert tuple(up.shape) == (2, 16, 24)
    # bilinear (align_corners=False) ×2 of a hard 0/1 block puts the 0.5 level exactly on the block's edges
    torch.testing.assert_close(up.sum(0), torch.ones(16, 24))
    pred = binary_mask(up, binary_method="exceptbiggest")
    np.testing.assert_array_equal(pred, gt)
    fs = ScoreModule("db_eval_iou", "exceptbiggest").score(proba, gt)
    assert fs.pred_mask.shape == (16, 24)
    assert fs.jacc == 1.0 and fs.boundary_f == 1.0 and fs.bbox_jacc == 1.0 and fs.score == 1.0
    # inverted labels: label 0 is now the small one → still the block
    fs2 = ScoreModule().score(proba[::-1].copy(), gt)
    assert fs2.jacc == 1.0
    # a resize by a non-integer factor still gives the GT's size
    assert ScoreModule().score(proba, np.zeros((13, 17), bool)).pred_mask.shape == (13, 17)


def test_fair_uses_ground_truth():
    labels = np.zeros((8, 8), int)
    labels[:4] = 1  # label 1: top half, label 2: one corner of the bottom half
    labels[6:, 6:] = 2
    proba = np.eye(3, dtype=np.float32)[labels].transpose(2, 0, 1)
    gt = np.zeros((8, 8), bool)
    gt[:3] = True  # 24 of the 32 px of label 1 lie in the GT, none of label 2
    fs = ScoreModule("db_eval_iou", "fair").score(proba, gt)
    np.testing.assert_array_equal(fs.pred_mask, labels == 1)
    assert fs.jacc == pytest.approx(24 / 32)
    # exceptbiggest: label 0 (28 px) < label 1 (32 px) → foreground = labels 0 and 2
    eb = ScoreModule("db_eval_iou", "exceptbiggest").score(proba, gt)
    np.testing.assert_array_equal(eb.pred_mask, labels != 1)


def test_mask_stats_hand_computed():
    labels = np.array([[0, 0, 1, 1], [0, 0, 1, 2]])
    gt = np.array([[0, 1, 1, 0], [0, 0, 1, 0]], bool)  # 3 px: 1 in label 0, 2 in label 1
    pred = labels > 0
    s = mask_stats(labels, 3, gt, pred)
    assert s["n_masks"] == 3
    assert (s["mask0_size"], s["mask1_size"], s["mask2_size"]) == pytest.approx((0.5, 0.375, 0.125))
    assert (s["mask0_overlap"], s["mask1_overlap"], s["mask2_overlap"]) == pytest.approx((1 / 3, 2 / 3, 0))
    assert s["pred_fg_size"] == pytest.approx(0.5) and s["gt_fg_size"] == pytest.approx(3 / 8)
    assert np.isnan(mask_stats(labels, 3, np.zeros_like(gt), pred)["mask0_overlap"])


def test_score_module_rejects_bad_settings():
    with pytest.raises(ValueError, match="scoring_method"):
        ScoreModule("dice")
    with pytest.raises(ValueError, match="binary_method"):
        ScoreModule(binary_method="otsu")
    with pytest.raises(ValueError, match=r"\(L, I, J\)"):
        resize_proba(np.zeros((4, 4)), (8, 8))
