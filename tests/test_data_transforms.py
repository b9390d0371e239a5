"""Flow normalisations and augmentations (csvflowdatamodule/Transforms.py, docs/METHOD.md §2)."""

from __future__ import annotations

import pytest
import torch

from csvflowdatamodule.Transforms import (
    AUGMENTATION_STRENGTHS,
    FLOW_AUGMENTATIONS,
    LOSS_FLOW_KEY,
    TransformsComposer,
    TrAugmentFlow,
    TrFlowNoise,
    TrNormaliseFlow,
)
from emseg.core.coherence_math import make_basis, mean_vector_norm

I, J = 16, 24


def _flow(seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, I, J, generator=g) * scale + torch.tensor([1.5, -0.5])[:, None, None]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


_PINV = {m: (make_basis(m, (I, J), centered=True, dtype=torch.float64),) for m in ("Affine", "Quadratic")}
_PINV = {m: (X, torch.linalg.pinv(X)) for m, (X,) in _PINV.items()}


def _fit_residual(field: torch.Tensor, param_model: str) -> float:
    """Relative residual of the least-squares fit of field (2, I, J) by the basis."""
    X, pinv = _PINV[param_model]
    Y = field.double().reshape(2, -1).T
    return float((X @ (pinv @ Y) - Y).norm() / Y.norm().clamp_min(1e-30))


# --------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------
def test_none_leaves_the_flow_unchanged():
    flow = _flow()
    assert torch.equal(TrAugmentFlow("none")(flow), flow)
    item = {"Flow": flow, "FlowPath": "a.flo", "Index": 3}
    out = TransformsComposer("none", "none")(item)
    assert torch.equal(out["Flow"], flow) and out["FlowPath"] == "a.flo" and out["Index"] == 3


def test_names_and_unknown_name_is_an_error():
    assert set(FLOW_AUGMENTATIONS) == {"none"} | {f"{f}{s}" for f in ("globalmotion", "globalmotionfullquad")
                                                  for s in ("light", "medium", "strong")}
    for bad in ("globalmotionheavy", "globalmotion", "fullquadlight", "GlobalMotionLight", ""):
        with pytest.raises(ValueError, match="flow_augmentation"):
            TrAugmentFlow(bad)
    with pytest.raises(ValueError, match="flow_augmentation"):
        TransformsComposer("none", "quadratic")


@pytest.mark.parametrize("name", [n for n in FLOW_AUGMENTATIONS if n != "none"])
def test_added_motion_is_bounded_global_and_of_the_right_family(name):
    alpha = AUGMENTATION_STRENGTHS[name.replace("globalmotionfullquad", "").replace("globalmotion", "")]
    tr = TrAugmentFlow(name, generator=_gen(1))
    ratios, quad_residuals = [], []
    for k in range(24):
        flow = _flow(k, scale=0.5 + k / 6)
        added = tr(flow) - flow
        ratio = float(mean_vector_norm(added[None].double())[0] / mean_vector_norm(flow[None].double())[0])
        assert ratio <= alpha * (1 + 1e-5), (name, k, ratio)
        ratios.append(ratio / alpha)
        family = "Quadratic" if "fullquad" in name else "Affine"
        assert _fit_residual(added, family) < 1e-4  # a global motion of the family's basis
        quad_residuals.append(_fit_residual(added, "Affine"))
    mean_ratio = sum(ratios) / len(ratios)
    assert 0.3 < mean_ratio < 0.7  # U(0, 1) · α scaling: mean 0.5 · α
    if "fullquad" in name:
        assert max(quad_residuals) > 0.05  # really quadratic, not only affine


def test_augmentation_follows_the_design_formula_exactly():
    """Recompute the added field from the same random draws: rows/columns in [-1, 1], θ U(-1, 1),
    rescaled to the input's mean norm, times U(0, 1) · α."""
    flow = _flow(3)
    for name, ft in (("globalmotionfullquadmedium", 6), ("globalmotionstrong", 3)):
        for seed in range(6):
            out = TrAugmentFlow(name, generator=_gen(seed))(flow)
            g = _gen(seed)
            if ft == 6:
                theta = torch.rand(6, 2, generator=g, dtype=torch.float64) * 2 - 1
            elif float(torch.rand(1, generator=g, dtype=torch.float64)) < 0.4:
                a = float(torch.rand(1, generator=g, dtype=torch.float64)) * 2 - 1
                theta = torch.tensor([[0.0, a], [a, 0.0], [0.0, 0.0]], dtype=torch.float64)
            else:
                theta = torch.rand(3, 2, generator=g, dtype=torch.float64) * 2 - 1
            u = float(torch.rand(1, generator=g, dtype=torch.float64))
            ii = torch.linspace(-1, 1, I, dtype=torch.float64)[:, None].expand(I, J)
            jj = torch.linspace(-1, 1, J, dtype=torch.float64)[None, :].expand(I, J)
            one = torch.ones_like(ii)
            basis = [ii, jj, one] if ft == 3 else [ii * jj, ii * ii, jj * jj, ii, jj, one]
            field = torch.stack([sum(b * theta[f, c] for f, b in enumerate(basis)) for c in range(2)])
            norm = lambda x: torch.linalg.vector_norm(x, dim=0).mean()  # noqa: E731
            alpha = 4.0 if "medium" in name else 8.0
            expected = flow.double() + field / norm(field) * norm(flow.double()) * u * alpha
            torch.testing.assert_close(out, expected.float(), rtol=1e-5, atol=1e-5)


def test_globalmotion_draws_a_zoom_with_probability_04():
    tr = TrAugmentFlow("globalmotionlight", generator=_gen(7))
    n, zooms = 500, 0
    for _ in range(n):
        th = tr.draw_params()
        zooms += bool(th[0, 0] == 0 and th[1, 1] == 0 and th[2].abs().sum() == 0 and th[0, 1] == th[1, 0])
    assert 0.33 < zooms / n < 0.47


def test_augmentation_is_reproducible_with_seeds():
    flow = _flow(4)
    a = TrAugmentFlow("globalmotionfullquadlight", generator=_gen(11))(flow)
    b = TrAugmentFlow("globalmotionfullquadlight", generator=_gen(11))(flow)
    c = TrAugmentFlow("globalmotionfullquadlight", generator=_gen(12))(flow)
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(5)
    d = TrAugmentFlow("globalmotionmedium")(flow)
    torch.manual_seed(5)
    e = TrAugmentFlow("globalmotionmedium")(flow)
    assert torch.equal(d, e) and not torch.equal(d, flow)


def test_zero_flow_gets_no_motion_and_batches_are_per_sample():
    zero = torch.zeros(2, I, J)
    assert torch.equal(TrAugmentFlow("globalmotionstrong", generator=_gen(0))(zero), zero)
    batch = torch.stack([_flow(0), _flow(0)])
    out = TrAugmentFlow("globalmotionfullquadstrong", generator=_gen(0))(batch)
    assert out.shape == batch.shape and not torch.equal(out[0], out[1])


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["median", "mean", "max"])
def test_norm_normalisations_make_the_statistic_one(mode):
    flow = _flow(1, scale=5.0)
    out = TrNormaliseFlow(mode)(flow)
    norms = torch.linalg.vector_norm(out, dim=0).flatten()
    stat = {"median": norms.median(), "mean": norms.mean(), "max": norms.max()}[mode]
    assert abs(float(stat) - 1.0) < 1e-5
    ratio = out / flow  # a single scale factor for every component
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-4)


def test_znorm_is_per_channel():
    flow = _flow(2, scale=3.0)
    out = TrNormaliseFlow("znorm")(flow)
    assert torch.allclose(out.mean(dim=(1, 2)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(out.std(dim=(1, 2)), torch.ones(2), atol=1e-5)


def test_normalisation_edge_cases_and_errors():
    zero = torch.zeros(2, I, J)
    for mode in ("none", "median", "mean", "max", "znorm"):
        out = TrNormaliseFlow(mode)(zero)
        assert torch.isfinite(out).all() and torch.equal(out, zero)
    assert TrNormaliseFlow("none")({"Skipped": (1, "p", "r")}) == {"Skipped": (1, "p", "r")}
    with pytest.raises(ValueError, match="flow_normalisation"):
        TrNormaliseFlow("l2")
    with pytest.raises(ValueError):
        TrNormaliseFlow("mean")(torch.zeros(3, I, J))


def test_composer_augments_then_normalises():
    flow = _flow(6)
    out = TransformsComposer("mean", "globalmotionfullquadstrong", generator=_gen(2))({"Flow": flow})["Flow"]
    assert abs(float(mean_vector_norm(out[None])[0]) - 1.0) < 1e-5
    aug = TrAugmentFlow("globalmotionfullquadstrong", generator=_gen(2))(flow)
    torch.testing.assert_close(out, TrNormaliseFlow("mean")(aug))


# --------------------------------------------------------------------------------------------
# Estimator-like flow noise
# --------------------------------------------------------------------------------------------
def test_flow_noise_changes_only_a_few_blobs_with_zero_mean_fields():
    flow = torch.zeros(2, 40, 60)
    flow[0] = 1.0
    noisy = TrFlowNoise(1.0, generator=_gen(0)).noise(flow)
    changed = (noisy - flow).abs().sum(0) > 1e-9
    assert 0.005 < changed.float().mean() < 0.2  # 2–15 % targeted (blobs may overlap or leave the image)
    d = (noisy - flow)[:, changed]
    assert d.abs().mean() > 0.3  # amplitude ≥ 0.5 × (mean norm 1 + 0.5 px) on average
    assert torch.equal(TrFlowNoise(0.0).noise(flow), flow)
    assert torch.equal(TrFlowNoise(1.0, generator=_gen(0)).noise(flow), noisy)  # seeded


def test_flow_noise_lands_on_the_textureless_part_of_the_image():
    flow = torch.zeros(2, 40, 60)
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(3, 40, 60, generator=gen) - 0.5
    image[:, :, :30] = 0.1  # the left half is flat
    hits = torch.zeros(40, 60)
    tr = TrFlowNoise(1.0, generator=_gen(2))
    for _ in range(10):
        out = tr({"Flow": flow, "Image": image})
        hits += (out["Flow"] - flow).abs().sum(0) > 1e-9
    assert hits[:, :30].sum() > 3 * hits[:, 30:].sum()


def test_flow_noise_is_a_train_only_option_of_the_composer():
    with pytest.raises(ValueError, match="flow_noise must be a probability"):
        TrFlowNoise(1.5)
    comp = TransformsComposer(flow_noise=1.0, generator=_gen(0))
    assert any(isinstance(t, TrFlowNoise) for t in comp.transforms)
    assert not any(isinstance(t, TrFlowNoise) for t in TransformsComposer().transforms)


def test_clean_target_keeps_the_augmented_flow_without_the_noise_for_the_loss():
    flow, image = _flow(3), torch.rand(3, I, J, generator=_gen(4))
    comp = TransformsComposer(flow_augmentation="globalmotionfullquadlight", flow_noise=1.0,
                              flow_noise_target="clean", generator=_gen(5))
    out = comp({"Flow": flow, "Image": image, "FlowPath": "f.flo"})
    assert set(out) == {"Flow", "Image", "FlowPath", LOSS_FLOW_KEY}
    # The loss's flow is the input plus one global quadratic motion: the augmentation, exactly.
    assert _fit_residual(out[LOSS_FLOW_KEY] - flow, "Quadratic") < 1e-6
    assert (out[LOSS_FLOW_KEY] - flow).abs().max() > 1e-3
    # The network's flow is that same flow plus the blobs, which cover a few per cent of it.
    changed = (out["Flow"] - out[LOSS_FLOW_KEY]).abs().sum(0) > 1e-6
    assert 0.005 < changed.float().mean() < 0.2
    # The noisy target ('noisy', the default) has no second flow.
    noisy = TransformsComposer(flow_noise=1.0, generator=_gen(5))({"Flow": flow, "Image": image})
    assert LOSS_FLOW_KEY not in noisy
    # Without a draw of noise (probability 0 → the composer is plain) and on a bare tensor.
    assert LOSS_FLOW_KEY not in TransformsComposer(flow_noise_target="clean")({"Flow": flow})
    t = TransformsComposer(flow_noise=1.0, flow_noise_target="clean", generator=_gen(5))(flow)
    assert t.shape == flow.shape and not torch.equal(t, flow)
    with pytest.raises(ValueError, match="flow_noise_target must be one of"):
        TransformsComposer(flow_noise=0.3, flow_noise_target="both")


@pytest.mark.parametrize("mode", ["max", "znorm"])
def test_clean_target_is_normalised_with_the_noisy_flows_statistics(mode):
    flow = _flow(6)
    comp = TransformsComposer(flow_normalisation=mode, flow_noise=1.0, flow_noise_target="clean",
                              generator=_gen(7))
    out = comp({"Flow": flow})
    noisy = TrFlowNoise(1.0, generator=_gen(7)).noise(flow)  # the same draw
    torch.testing.assert_close(out["Flow"], TrNormaliseFlow(mode)(noisy))
    if mode == "max":
        scale = torch.linalg.vector_norm(noisy, dim=0).max()
        torch.testing.assert_close(out[LOSS_FLOW_KEY], flow / scale)
    else:
        mean, std = noisy.mean((1, 2), keepdim=True), noisy.std((1, 2), keepdim=True)
        torch.testing.assert_close(out[LOSS_FLOW_KEY], (flow - mean) / std)
    with pytest.raises(ValueError, match="one shape"):
        TrNormaliseFlow(mode).normalise(flow, flow[:, :4])
