"""Slow and faint movers (issue 24): motion judged over a gap of several frames (--gap), and masks
refined at the video's resolution with the frame as guide (--refine), on exact cases."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from emseg.app.segment.options import SegmentOptions
from emseg.app.segment.source import FramePair, video_pairs
from emseg.app.segment.stages import pairs_to_steps
from emseg.core.masks import labels_at
from emseg.core.significance import significant_foreground
from emseg.video.refine import drop_specks, guide_of, guided_filter, refined_labels
from evaluationmodule.davis_metrics import db_eval_boundary


# ------------------------------------------------------------------------------------------------ --gap
def _textured_clip(path, n_frames: int, shift_px: float, size=(160, 120)) -> str:
    """A smooth random texture translating ``shift_px`` px/frame to the right (sub-pixel by warping)."""
    rng = np.random.default_rng(1)
    W, H = size
    tex = cv2.GaussianBlur((rng.random((H, W + 64, 3)) * 255).astype(np.uint8), (7, 7), 0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
    for t in range(n_frames):
        m = np.float32([[1, 0, -32 + shift_px * t], [0, 1, 0]])
        writer.write(cv2.warpAffine(tex, m, (W, H), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT))
    writer.release()
    return str(path)


def test_the_source_pairs_each_frame_with_the_one_gap_frames_later(tmp_path):
    video = _textured_clip(tmp_path / "c.avi", n_frames=7, shift_px=1.0)
    stats: dict = {}
    pairs = list(video_pairs(video, SegmentOptions(gap=3), None, keep_frames=False, stats=stats))
    assert [p.t for p in pairs] == list(range(6)) and stats["decoded"] == 7
    assert [p.gap for p in pairs] == [3, 3, 3, 3, 2, 1]  # the last frames: the longest gap the clip has
    for p in pairs:
        assert p.forward.shape == (120, 160, 2)
        if p.gap > 1:
            inner = p.gap_forward[20:-20, 20:-20, 0]
            # the texture moves 1 px/frame: the long flow sees gap px, the short one 1 px
            assert abs(float(np.median(inner)) - p.gap) < 0.3, (p.gap, float(np.median(inner)))
            assert abs(float(np.median(p.forward[20:-20, 20:-20, 0])) - 1) < 0.3
            assert p.gap_backward.shape == p.gap_forward.shape
        else:
            assert p.gap_forward is None
    plain = list(video_pairs(video, SegmentOptions(gap=1), None, keep_frames=False, stats={}))
    assert [p.gap for p in plain] == [1] * 6
    for a, b in zip(plain, pairs):  # the frame-to-frame flows do not depend on the gap
        np.testing.assert_array_equal(a.forward, b.forward)
        np.testing.assert_array_equal(a.backward, b.backward)


def _pair(fwd: float, gap_fwd: float, gap_bwd: float, k: int = 4) -> FramePair:
    shape = (24, 40, 2)
    return FramePair(0, None, (24, 40), np.full(shape, fwd, np.float32), np.full(shape, -fwd, np.float32), k,
                     np.full(shape, gap_fwd, np.float32), np.full(shape, gap_bwd, np.float32))


@pytest.mark.parametrize("consistent", [True, False])
def test_the_network_reads_the_long_flow_where_its_check_holds(consistent):
    seen = []

    def predict(flows: torch.Tensor) -> torch.Tensor:
        seen.append(flows.clone())
        return torch.full((flows.shape[0], 2, *flows.shape[2:]), 0.5)

    pair = _pair(0.3, 2.0, -2.0 if consistent else 5.0)
    (steps,) = list(pairs_to_steps(iter([pair]), (12, 20), predict, batch=4, keep_flows=None))
    expected = 2.0 if consistent else 4 * 0.3  # else: gap × the flow to t+1
    # (pixels whose long flow leaves the frame have nothing to check it against: the short flow's there)
    assert (seen[0] - expected).abs().lt(1e-5).float().mean() > 0.8
    assert steps[0].conf_in is not None and steps[0].conf_in.shape == (12, 20)
    if consistent:
        assert steps[0].conf_in[:-2, :-2].min() > 0.9
    # without a gap the network reads the flow to t+1, and no separate confidence is kept
    seen.clear()
    plain = FramePair(0, None, (24, 40), pair.forward, pair.backward)
    (steps,) = list(pairs_to_steps(iter([plain]), (12, 20), predict, batch=4, keep_flows=None))
    assert torch.allclose(seen[0], torch.full_like(seen[0], 0.3)) and steps[0].conf_in is None


def test_a_slow_object_is_significant_over_a_gap_and_not_in_one_frame():
    """0.3 px/frame over a panning background with estimator noise: one frame's flow puts it under the
    significance floor; the flow over 6 frames (a direct estimate: its noise does not grow with the
    gap) shows 1.8 px and keeps it."""
    g = torch.Generator().manual_seed(0)
    I, J = 48, 80
    obj = torch.zeros(I, J, dtype=torch.bool)
    obj[14:30, 24:44] = True
    pred = torch.stack([(~obj).float(), obj.float()]) * 0.9 + 0.05

    def flow(k: int) -> torch.Tensor:
        f = torch.zeros(2, I, J)
        f[0] += 2.0 * k  # the pan
        f[0, obj] += 0.3 * k  # the object's own motion
        return f + 0.08 * torch.randn(2, I, J, generator=g)

    one = significant_foreground(pred, flow(1), min_motion=2.0)
    assert not one.foreground.any()
    six = significant_foreground(pred, flow(6), min_motion=2.0)
    assert six.foreground[obj].mean() > 0.95 and not six.foreground[~obj].any()


# ------------------------------------------------------------------------------------------------ --refine
def test_guided_filter_exact_cases():
    rng = np.random.default_rng(0)
    guide = rng.random((30, 40)).astype(np.float32)
    const = np.full((30, 40), 0.7, np.float32)
    np.testing.assert_allclose(guided_filter(guide, const, 3), const, atol=1e-5)  # a constant stays
    # the guide itself is reproduced (an affine function of the guide, fitted with a tiny ridge)
    np.testing.assert_allclose(guided_filter(guide, guide, 3, eps=1e-8), guide, atol=1e-3)
    stack = np.stack([const, guide], -1)
    out = guided_filter(guide, stack, 3, eps=1e-8)
    assert out.shape == (30, 40, 2)
    np.testing.assert_allclose(out[..., 1], guided_filter(guide, guide, 3, eps=1e-8), atol=1e-5)
    with pytest.raises(ValueError, match="guide"):
        guided_filter(guide, const[:10], 3)
    with pytest.raises(ValueError, match="RGB uint8"):
        guide_of(guide)


def test_refined_masks_follow_a_sharp_edged_object_better_than_upsampled_ones():
    H, W, I, J = 240, 420, 16, 28  # 15 output pixels per model pixel
    rng = np.random.default_rng(3)
    truth = np.zeros((H, W), np.uint8)
    cv2.circle(truth, (120, 110), 30, 1, -1)
    cv2.fillPoly(truth, [np.array([[250, 40], [380, 60], [300, 200]], np.int32)], 1)
    truth[190:206, 40:200] = 1  # a thin bar: one model pixel high
    truth = truth.astype(bool)
    frame = np.where(truth[..., None], 200, 60).astype(np.uint8).repeat(3, -1)
    frame = np.clip(frame + rng.normal(0, 6, frame.shape), 0, 255).astype(np.uint8)
    # the network's view: the object at its coarse grid, boundaries smeared over a model pixel
    small = cv2.resize(truth.astype(np.float32), (J, I), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (3, 3), 0.8)
    pred = np.stack([1 - small, small]).astype(np.float32)
    plain = labels_at(pred, (H, W)).astype(bool)
    refined = refined_labels(pred, frame).astype(bool)
    f_plain = db_eval_boundary(truth, plain)
    f_refined = db_eval_boundary(truth, refined)
    assert f_refined > f_plain + 0.05, (f_plain, f_refined)
    j = lambda m: (m & truth).sum() / (m | truth).sum()  # noqa: E731
    assert j(refined) >= j(plain)
    # three masks: the argmax of the filtered probabilities
    pred3 = np.stack([1 - small, small * 0.6, small * 0.4]).astype(np.float32)
    assert refined_labels(pred3, frame).shape == (H, W)


def test_specks_left_by_the_refinement_are_dropped():
    fg = np.zeros((100, 100), bool)
    fg[10:40, 10:40] = True
    fg[80, 80] = fg[81, 81] = True  # 2 pixels, 8-connected: one speck, under 0.2 % of the frame
    fg[60:66, 70:76] = True  # 36 pixels: kept
    out = drop_specks(fg)
    assert out.sum() == 900 + 36 and not out[80, 80] and out[60, 70]
    assert drop_specks(np.zeros((5, 5), bool)).sum() == 0


def test_refine_and_gap_are_segment_flags():
    import segment

    opts = segment.options_of(segment.build_parser().parse_args(["--video", "x.mp4", "--out", "o"]))
    assert (opts.gap, opts.refine) == (4, True)  # the defaults, chosen on the video benchmark's dev split
    args = segment.build_parser().parse_args(["--video", "x.mp4", "--out", "o", "--gap", "1", "--no_refine"])
    opts = segment.options_of(args)
    assert (opts.gap, opts.refine) == (1, False)
    with pytest.raises(SystemExit):
        segment.build_parser().parse_args(["--video", "x.mp4", "--out", "o", "--gap", "0"])


#: each quality flag of segment.py with a value other than its default, and the option it must set
QUALITY_FLAGS = {
    "no_temporal": (["--no_temporal"], "temporal", False),
    "gap": (["--gap", "2"], "gap", 2),
    "no_refine": (["--no_refine"], "refine", False),
    "no_steady": (["--no_steady"], "steady", False),
    "fusion_weight": (["--fusion_weight", "1.5"], "fusion_weight", 1.5),
    "min_motion": (["--min_motion", "3"], "min_motion", 3.0),
    "track_frames": (["--track_frames", "1"], "track_frames", 1),
    "adapt": (["--adapt", "5"], "adapt_steps", 5),
    "adapt_lr": (["--adapt_lr", "0.01"], "adapt_lr", 0.01),
    "save_adapted": (["--save_adapted", "a.ckpt"], "save_adapted", "a.ckpt"),
}


def test_every_quality_flag_reaches_the_pipeline_options():
    """A flag parsed but not passed on is silently ignored (``--track_frames`` once was)."""
    import segment
    from emseg.core import hparams as H

    assert set(QUALITY_FLAGS) == set(H.spec_map(H.SegmentQualityHparams))  # a new flag needs a case here
    parser = segment.build_parser()
    base = segment.options_of(parser.parse_args(["--video", "x.mp4", "--out", "o"]))
    for key, (argv, field, value) in QUALITY_FLAGS.items():
        opts = segment.options_of(parser.parse_args(["--video", "x.mp4", "--out", "o", *argv]))
        assert getattr(base, field) != value, key
        assert getattr(opts, field) == value, key


def test_adaptation_reads_the_flows_the_network_reads_over_the_gap(tmp_path, small_ckpt):
    # --adapt fine-tuned on the one-frame flows while the network segments the flows over --gap frames
    from emseg.app.segment.app import video_flows_at_model_size
    from emseg.app.segment.model import flow_width_of, load_segmenter
    from tests.test_segment import write_clip

    video = write_clip(tmp_path / "clip.avi", n_frames=7)
    model = load_segmenter(small_ckpt, device="cpu")
    img_size = tuple(model.hparams["img_size"])
    opts = SegmentOptions(gap=3, progress=False)
    adapted_on = video_flows_at_model_size(video, model, opts)
    seen: list[torch.Tensor] = []

    def spy(flows: torch.Tensor) -> torch.Tensor:
        seen.append(flows.clone())
        return torch.full((len(flows), 2, *flows.shape[2:]), 0.5)

    pairs = video_pairs(video, opts, flow_width_of(model, None), keep_frames=False, stats={})
    for _ in pairs_to_steps(pairs, img_size, spy, batch=4, keep_flows=None):
        pass
    network_in = torch.cat(seen)
    assert adapted_on.shape == network_in.shape == (6, 2, *img_size)
    torch.testing.assert_close(adapted_on, network_in, rtol=0, atol=0)
    one_frame = video_flows_at_model_size(video, model, SegmentOptions(gap=1, progress=False))
    # the square moves 3 px a frame: over the gap its flow is about 3 times longer
    ratio = adapted_on[:3].abs().amax() / one_frame[:3].abs().amax()
    assert 2.0 < float(ratio) < 4.0, float(ratio)
