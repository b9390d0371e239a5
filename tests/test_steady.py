"""Steady masks (emseg/video/steady.py): hysteresis and the three-frame median on exact cases, and the
writer's wiring (a one-frame blob dropped, a mover kept where it is)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from emseg.app.segment.options import SegmentOptions
from emseg.app.segment.writers import Writer
from emseg.video.steady import DEFAULT_BAND, SteadyMasks, carry_mask, foreground_margin, upsample_flow

H, W = 24, 32


def square(x0: int, y0: int = 8, side: int = 6) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y0 + side, x0:x0 + side] = True
    return m


def margin_of(mask: np.ndarray, level: float = 1.0) -> np.ndarray:
    return np.where(mask, level, -level).astype(np.float32)


def still() -> np.ndarray:
    return np.zeros((H, W, 2), np.float32)


def shift(dx: float) -> np.ndarray:
    f = still()
    f[..., 0] = dx
    return f


def run(margins, to_prevs, forwards, **kw) -> list[np.ndarray]:
    sm = SteadyMasks(**kw)
    out = []
    for t, m in enumerate(margins):
        out += sm.push(m, to_prevs[t], forwards[t], payload=t)
    out += sm.finish()
    assert [p for p, _ in out] == list(range(len(margins)))  # in order, every frame once
    return [mask for _, mask in out]


def test_foreground_margin_two_labels_follows_the_background():
    d = np.array([[0.8, -0.2], [-0.6, 0.3]], np.float32)  # p1 - p0: two pixels each
    labels, m = foreground_margin(d, 2)
    np.testing.assert_array_equal(labels, [[1, 0], [0, 1]])
    np.testing.assert_array_equal(m, d)  # tie in counts: label 0 is the background, as exceptbiggest
    d3 = np.array([[0.8, 0.2], [-0.6, 0.3]], np.float32)  # label 1 is the majority: the background
    _, m3 = foreground_margin(d3, 2)
    np.testing.assert_array_equal(m3, -d3)


def test_foreground_margin_three_labels_by_hand():
    q = np.array([[[0.7, 0.2, 0.1], [0.6, 0.1, 0.3]], [[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]]], np.float32)
    labels, m = foreground_margin(q, 3)
    np.testing.assert_array_equal(labels, [[0, 0], [1, 2]])
    # background = label 0 (two pixels); margin = best other - p0
    np.testing.assert_allclose(m, [[0.2 - 0.7, 0.3 - 0.6], [0.5 - 0.2, 0.8 - 0.1]], atol=1e-7)
    with pytest.raises(ValueError, match=r"expected scores \(H, W, 3\)"):
        foreground_margin(q[..., :2], 3)


def test_upsample_flow_rescales_vectors_to_the_new_grid():
    f = np.zeros((2, 6, 8), np.float32)
    f[0], f[1] = 1.0, 0.5
    up = upsample_flow(f, (H, W))
    assert up.shape == (H, W, 2)
    np.testing.assert_allclose(up[..., 0], W / 8)
    np.testing.assert_allclose(up[..., 1], 0.5 * H / 6)
    with pytest.raises(ValueError, match=r"expected flow \(2, I, J\)"):
        upsample_flow(f.transpose(1, 2, 0), (H, W))


def test_carry_mask_follows_an_integer_shift():
    prev, cur = square(10), square(13)  # moved 3 px along x
    carried, inside = carry_mask(prev, shift(-3.0))  # frame t's pixel x came from x - 3
    np.testing.assert_array_equal(carried, cur)
    assert not inside[:, :3].any() and inside[:, 3:].all()
    with pytest.raises(ValueError, match="expected flow"):
        carry_mask(prev, np.zeros((H, W + 1, 2), np.float32))


def test_the_opencv_twins_agree_with_the_torch_warping():
    """upsample_flow and carry_mask are flow_confidence's resize_flow and warp (≥ 0.5) in OpenCV."""
    import torch

    from emseg.video.flow_confidence import resize_flow, warp

    rng = np.random.default_rng(0)
    small = (3 * rng.standard_normal((2, 6, 8))).astype(np.float32)
    up = upsample_flow(small, (H, W))
    ref = resize_flow(torch.from_numpy(small)[None], (H, W), rescale=True)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(up, ref, atol=1e-4)
    mask = rng.random((H, W)) > 0.6
    carried, inside = carry_mask(mask, up)
    w, ins = warp(torch.from_numpy(mask.astype(np.float32))[None, None], torch.from_numpy(up).permute(2, 0, 1)[None])
    np.testing.assert_array_equal(inside, ins[0].numpy())
    np.testing.assert_array_equal(carried, w[0, 0].numpy() >= 0.5)


def test_a_one_frame_blob_is_dropped_and_a_still_object_kept():
    obj, blob = square(4), square(20, 2, 4)
    masks = [obj] * 5
    masks[2] = obj | blob
    out = run([margin_of(m) for m in masks], [None] + [still()] * 4, [still()] * 5)
    for t in range(5):
        np.testing.assert_array_equal(out[t], obj)
    alone = [margin_of(m) > 0 for m in masks]  # the frame-by-frame decision keeps it
    assert alone[2][blob].all()


def test_hysteresis_keeps_the_carried_label_inside_the_band():
    obj = square(4)
    margins = [margin_of(obj, 0.5), np.where(obj, -0.05, -1.0).astype(np.float32)]  # frame 1: just under 0
    kept = run(margins, [None, still()], [still(), still()])
    np.testing.assert_array_equal(kept[1], obj)  # |margin| <= band: the previous label stands
    alone = run(margins, [None, still()], [still(), still()], band=0.0)
    assert not alone[1].any()
    outside = [margins[0], np.where(obj, -2 * DEFAULT_BAND, -1.0).astype(np.float32)]
    assert not run(outside, [None, still()], [still(), still()])[1].any()


def test_a_mover_missing_in_one_frame_is_restored_where_it_moved():
    xs = [2, 4, 6, 8, 10]  # 2 px/frame along x
    margins = [margin_of(square(x)) for x in xs]
    margins[2] = margin_of(np.zeros((H, W), bool))  # the network missed it in frame 2
    out = run(margins, [None] + [shift(-2.0)] * 4, [shift(2.0)] * 5)
    for t, x in enumerate(xs):
        np.testing.assert_array_equal(out[t], square(x))


def test_a_break_unlinks_the_frames_on_either_side():
    obj, blob = square(4), square(20, 2, 4)
    masks = [obj, obj, obj | blob, obj, obj]
    # frame 3 has no flow back to frame 2: frame 2 has no next, frame 3 no previous
    out = run([margin_of(m) for m in masks], [None, still(), still(), None, still()], [still()] * 5)
    np.testing.assert_array_equal(out[2], obj | blob)  # decided on itself (and its past, which has no blob)
    for t in (0, 1, 3, 4):
        np.testing.assert_array_equal(out[t], obj)


def test_clean_is_applied_to_each_vote_and_result():
    obj = square(4)
    speck = np.zeros((H, W), bool)
    speck[1, 1] = True
    clean = lambda m: m & ~speck  # noqa: E731
    out = run([margin_of(obj | speck)] * 3, [None, still(), still()], [still()] * 3, clean=clean)
    for m in out:
        np.testing.assert_array_equal(m, obj)


def test_bad_settings_and_inputs_are_refused():
    with pytest.raises(ValueError, match="band"):
        SteadyMasks(band=-0.1)
    with pytest.raises(ValueError, match=r"expected margin \(H, W\)"):
        SteadyMasks().push(np.zeros((2, H, W), np.float32), None, None)


def _proba(mask: np.ndarray) -> np.ndarray:
    p1 = np.where(mask, 0.9, 0.1).astype(np.float32)
    return np.stack([1 - p1, p1])


@pytest.mark.parametrize("steady", [True, False])
def test_writer_drops_a_one_frame_blob_unless_no_steady(tmp_path, steady):
    obj, blob = square(4), square(20, 2, 4)
    masks = [obj, obj | blob, obj]
    opts = SegmentOptions(refine=False, animation=False, steady=steady)
    writer = Writer(tmp_path, opts, fps=None)
    zero = np.zeros((2, H, W), np.float32)
    for t, m in enumerate(masks):
        writer.submit(f"{t:05d}", _proba(m), (2 * H, 2 * W), None, None if t == 0 else zero, zero)
    writer.close()
    assert writer.n_written == 3
    got = [np.array(Image.open(tmp_path / f"{t:05d}_binary.png")) > 0 for t in range(3)]
    big = lambda m: m.repeat(2, 0).repeat(2, 1)  # noqa: E731  (the output is twice the model's grid)
    np.testing.assert_array_equal(got[0], big(obj))
    np.testing.assert_array_equal(got[1], big(obj) if steady else big(obj | blob))



def test_writer_restores_a_missed_mover_where_the_flows_put_it(tmp_path):
    """The writer's flows (model grid, its pixels) are upsampled and used the right way round."""
    xs = [2, 4, 6]  # 2 model px/frame along x
    masks = [square(x) for x in xs]
    masks[1] = np.zeros((H, W), bool)  # the network missed it in frame 1
    writer = Writer(tmp_path, SegmentOptions(refine=False, animation=False), fps=None)
    back, ahead = np.zeros((2, H, W), np.float32), np.zeros((2, H, W), np.float32)
    back[0], ahead[0] = -2.0, 2.0
    for t, m in enumerate(masks):
        writer.submit(f"{t:05d}", _proba(m), (2 * H, 2 * W), None, None if t == 0 else back, ahead)
    writer.close()
    got = np.array(Image.open(tmp_path / "00001_binary.png")) > 0
    want = square(4).repeat(2, 0).repeat(2, 1)
    np.testing.assert_array_equal(got, want)  # integer shifts: exact
