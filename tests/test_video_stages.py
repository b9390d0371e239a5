"""The video-quality stages on exact cases: warping and flow confidence, identity matching,
temporal fusion, motion significance and test-time adaptation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emseg.core.significance import significant_foreground, suppress
from emseg.video.adaptation import adapt, mean_loss
from emseg.video.flow_confidence import forward_backward_confidence, resize_flow, warp
from emseg.video.temporal import align_identities, best_permutation, fuse
from Models.CoherenceNets.MethodeB import MethodeB

I, J = 48, 64


def constant_flow(u: float, v: float, i: int = I, j: int = J) -> torch.Tensor:
    f = torch.zeros(1, 2, i, j)
    f[:, 0], f[:, 1] = u, v
    return f


# --------------------------------------------------------------------------------------------
# warping and confidence
# --------------------------------------------------------------------------------------------
def test_warp_by_an_integer_shift_moves_the_image_exactly():
    x = torch.arange(I * J, dtype=torch.float64).reshape(1, 1, I, J)
    out, inside = warp(x, constant_flow(3, -2).double())
    # out(i, j) = x(i − 2, j + 3) wherever that point exists
    assert torch.allclose(out[0, 0, 2:, :-3], x[0, 0, :-2, 3:], rtol=0, atol=1e-9)
    assert inside[0, 2:, :-3].all() and not inside[0, :2].any() and not inside[0, :, -3:].any()


def test_warp_by_a_half_pixel_interpolates_bilinearly():
    x = torch.arange(J, dtype=torch.float64).repeat(I, 1)[None, None]
    out, _ = warp(x, constant_flow(0.5, 0).double())
    assert torch.allclose(out[0, 0, :, :-1], x[0, 0, :, :-1] + 0.5)


def test_confidence_is_one_for_consistent_flows_and_low_for_inconsistent_ones():
    fwd, bwd = constant_flow(2, 1), constant_flow(-2, -1)
    c = forward_backward_confidence(fwd, bwd)
    assert torch.allclose(c[0, :-1, :-2], torch.ones(I - 1, J - 2))  # exact round trip
    assert (c[0, :, -2:] == 0).all() and (c[0, -1:] == 0).all()  # lands outside the image
    bad = forward_backward_confidence(fwd, constant_flow(3, 4))
    # |f + b|² = 25 + 25 = 50 against 0.01 · (5 + 25) + 0.5 = 0.8: confidence e^(−62.5)
    assert bad[0, 10, 10] == pytest.approx(np.exp(-50 / 0.8), abs=1e-12)


def test_resize_flow_rescales_vectors_only_when_asked():
    f = constant_flow(4, 2, 40, 80)
    assert torch.allclose(resize_flow(f, (20, 20), rescale=False), constant_flow(4, 2, 20, 20))
    assert torch.allclose(resize_flow(f, (20, 20), rescale=True), constant_flow(1, 1, 20, 20))


# --------------------------------------------------------------------------------------------
# identities and fusion
# --------------------------------------------------------------------------------------------
def test_best_permutation_exhaustive_and_greedy_agree_on_a_clear_case():
    perm8 = [3, 0, 1, 2, 7, 4, 5, 6]
    ov = torch.zeros(8, 8)
    ov[torch.arange(8), torch.tensor(perm8)] = 1.0  # previous a matches current perm8[a]
    assert best_permutation(ov) == perm8  # L > 6: greedy
    ov4 = torch.full((4, 4), 0.1)
    ov4[torch.arange(4), torch.tensor([2, 0, 3, 1])] = 1.0
    ov4[0, 0] = 0.95  # a tempting single cell: taking it costs the total
    assert best_permutation(ov4) == [2, 0, 3, 1]


def disc_pred(centres: list[tuple[float, float]], radius: float = 7.0, order: list[int] | None = None) -> torch.Tensor:
    """pred (1 + len(centres), I, J): one-hot, background mask 0, disc k in mask k + 1, then the
    masks reordered by ``order``."""
    ii, jj = torch.meshgrid(torch.arange(I, dtype=torch.float32), torch.arange(J, dtype=torch.float32),
                            indexing="ij")
    labels = torch.zeros(I, J, dtype=torch.long)
    for k, (ci, cj) in enumerate(centres):
        labels[(ii - ci) ** 2 + (jj - cj) ** 2 <= radius ** 2] = k + 1
    pred = torch.nn.functional.one_hot(labels, len(centres) + 1).permute(2, 0, 1).float()
    return pred if order is None else pred[order]


def test_identities_survive_two_objects_crossing():
    """Two discs cross (A rightwards, B leftwards, on the same row); the network's mask order is
    shuffled every frame. Matching through the flow keeps A and B in the same masks throughout,
    including the frame where they touch and after they have swapped sides."""
    rng = np.random.default_rng(0)
    T, speed = 9, 4.0
    aligned = None
    for t in range(T):
        a = (24.0, 12.0 + speed * t)
        b = (24.0, 52.0 - speed * t)
        order = list(rng.permutation(3))
        raw = disc_pred([a, b], order=order)
        if aligned is None:
            aligned = raw
            ident = [order.index(0), order.index(1), order.index(2)]  # where bg, A, B sit in frame 0
            continue
        # the flow from frame t back to t − 1: A's pixels came from the left, B's from the right
        to_prev = torch.zeros(2, I, J)
        lab = disc_pred([a, b]).argmax(0)
        to_prev[0][lab == 1] = -speed
        to_prev[0][lab == 2] = speed
        aligned, _ = align_identities(raw, aligned, to_prev)
        truth = disc_pred([a, b])
        for role in range(3):  # bg, A, B stay in the masks they had in frame 0
            assert torch.equal(aligned[ident[role]], truth[role]), (t, role)


def test_fusion_raises_jaccard_on_a_noisy_sequence():
    """A disc moving 2 px/frame; each frame's prediction has 15 % of its pixels' labels flipped at
    random. Fusing each frame with its neighbours carried by the true flow raises J."""
    gen = torch.Generator().manual_seed(0)
    T, speed = 12, 2.0
    truths, preds = [], []
    for t in range(T):
        truth = disc_pred([(24.0, 16.0 + speed * t)], radius=9)
        flip = torch.rand(I, J, generator=gen) < 0.15
        noisy = torch.where(flip[None], 1 - truth, truth) * 0.8 + 0.1
        truths.append(truth[1] > 0.5)
        preds.append(noisy / noisy.sum(0, keepdim=True))
    fwd = torch.zeros(2, I, J)
    fwd[0] = speed  # true flow t → t + 1 (the whole disc moves; the background flow does not matter here)
    back = -fwd

    def jacc(p, truth):
        fg = p.argmax(0) == 1
        return float((fg & truth).sum()) / float((fg | truth).sum())

    j_single = np.mean([jacc(p, g) for p, g in zip(preds, truths)])
    fused = []
    for t in range(1, T - 1):
        nb = [(warp(preds[t - 1][None], back[None])[0][0], torch.ones(I, J)),
              (warp(preds[t + 1][None], fwd[None])[0][0], torch.ones(I, J))]
        fused.append(jacc(fuse(preds[t], nb), truths[t]))
    assert np.mean(fused) > j_single + 0.1, (np.mean(fused), j_single)
    assert torch.allclose(fuse(preds[3], nb).sum(0), torch.ones(I, J))


# --------------------------------------------------------------------------------------------
# significance
# --------------------------------------------------------------------------------------------
def affine_flow(a: float, b: float, c: float, d: float, e: float, f: float) -> torch.Tensor:
    ii, jj = torch.meshgrid(torch.arange(I) / I, torch.arange(J) / J, indexing="ij")
    return torch.stack([a + b * jj + c * ii, d + e * jj + f * ii]).float()


def test_a_static_scene_gives_an_empty_foreground():
    """A camera motion (affine) plus noise, and a network that still marks two blobs as foreground:
    neither moves unlike the background, so nothing is kept."""
    gen = torch.Generator().manual_seed(1)
    flow = affine_flow(1.5, 2.0, -1.0, 0.5, 0.3, 1.2) + 0.2 * torch.randn(2, I, J, generator=gen)
    three = disc_pred([(12.0, 14.0), (34.0, 48.0)])
    pred = torch.stack([three[0], three[1] + three[2]]) * 0.9 + 0.05
    assert (pred.argmax(0) == 1).sum() > 200  # exceptbiggest alone would call them foreground
    sig = significant_foreground(pred, flow)
    assert not sig.foreground.any() and len(sig.kept) == 2 and not any(sig.kept.values())
    off = significant_foreground(pred, flow, min_motion=0)
    assert off.foreground.sum() == (pred.argmax(0) == 1).sum()  # --min_motion 0: exceptbiggest as it was


def test_an_independently_moving_object_is_kept_and_a_noise_blob_dropped():
    gen = torch.Generator().manual_seed(2)
    flow = affine_flow(1.0, 1.0, 0.0, -0.5, 0.0, 0.5) + 0.2 * torch.randn(2, I, J, generator=gen)
    obj = disc_pred([(20.0, 20.0)], radius=8)[1] > 0
    flow[0][obj] += 3.0  # the object moves 3 px more to the right
    both = disc_pred([(20.0, 20.0), (36.0, 50.0)], radius=8)
    pred = torch.stack([both[0], both[1] + both[2]]) * 0.9 + 0.05
    sig = significant_foreground(pred, flow)
    assert sig.foreground[obj.numpy()].all()
    blob = (both[2] > 0).numpy()
    assert not sig.foreground[blob].any()
    assert sorted(sig.kept.values()) == [False, True]
    out = suppress(pred, blob & ~sig.foreground, sig.foreground)
    assert (out.argmax(0)[torch.from_numpy(blob)] == 0).all() and (out.argmax(0)[obj] == 1).all()


def test_unconfident_regions_are_dropped():
    flow = affine_flow(0.5, 0, 0, 0, 0, 0)
    obj = disc_pred([(20.0, 20.0)], radius=8)[1] > 0
    flow[1][obj] += 4.0
    pred = disc_pred([(20.0, 20.0)], radius=8) * 0.9 + 0.05
    conf = torch.ones(I, J)
    assert significant_foreground(pred, flow, conf).foreground[obj.numpy()].all()
    conf[obj] = 0.1  # the forward–backward check fails inside the region
    assert not significant_foreground(pred, flow, conf).foreground.any()


# --------------------------------------------------------------------------------------------
# adaptation
# --------------------------------------------------------------------------------------------
def test_adaptation_lowers_the_loss_on_the_clip_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = MethodeB(**{"unet.num_layers": 3, "unet.features_start": 8, "img_size": [32, 48]}).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    flows = []
    for t in range(6):  # a clip: a camera pan plus a square moving right
        f = torch.zeros(2, 32, 48)
        f[0] = 0.5
        f[1, 8:20, 10 + 2 * t:24 + 2 * t] = 2.0
        flows.append(f + 0.05 * torch.randn(2, 32, 48, generator=gen))
    flows = torch.stack(flows)
    adapted, summary = adapt(model, flows, steps=30, lr=1e-3, batch_size=3, progress=False)
    assert summary["loss_after"] < summary["loss_before"] - 1e-3, summary
    assert summary["loss_after"] == pytest.approx(mean_loss(adapted, flows))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a copy was trained
    again, summary2 = adapt(model, flows, steps=30, lr=1e-3, batch_size=3, progress=False)
    assert summary2["loss_after"] == pytest.approx(summary["loss_after"], rel=1e-5)  # seeded


def test_adaptation_rejects_flows_of_another_size():
    model = MethodeB(**{"unet.num_layers": 3, "unet.features_start": 8, "img_size": [32, 48]})
    with pytest.raises(ValueError, match=r"model's size \(32, 48\)"):
        adapt(model, torch.zeros(2, 2, 30, 40), steps=1)


def test_binarisation_applies_significance_only_when_asked():
    from evaluationmodule.BinarisationModule import BinarisationModule

    gen = torch.Generator().manual_seed(3)
    flow = affine_flow(1.0, 0.5, 0.0, 0.0, 0.0, 0.5) + 0.1 * torch.randn(2, I, J, generator=gen)
    both = disc_pred([(20.0, 20.0), (36.0, 50.0)], radius=8)
    obj = both[1] > 0
    flow[0][obj] += 3.0
    pred = torch.stack([both[0], both[1] + both[2]]) * 0.9 + 0.05
    plain = BinarisationModule("exceptbiggest").binarise({"Pred": pred[None], "Flow": flow[None]})["PredMask"][0]
    assert plain[obj].all() and plain[both[2] > 0].all()  # the paper's rule keeps both regions
    sig = BinarisationModule("exceptbiggest", min_motion=2).binarise({"Pred": pred[None], "Flow": flow[None]})
    assert sig["PredMask"][0][obj].all() and not sig["PredMask"][0][both[2] > 0].any()
    with pytest.raises(ValueError, match="min_motion must be a finite number >= 0"):
        BinarisationModule(min_motion=-1)
