"""The space-time motion models (issue 23, item 1): bases, exact recovery over a clip, gradients, the
one-frame case against the frame model, input checks."""

from __future__ import annotations

import pytest
import torch

from emseg.core import coherence_math as cm
from emseg.core import method_names

FIT_MODELS = ("AffineST1", "QuadraticST1", "QuadraticST2", "AffineBSpline3", "QuadraticBSpline3")
FITS = (("squared", "OLS"), ("l1", "IRLS"), ("l2", "IRLS"))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors, many ops: one thread is fastest (see tests/test_theta_solvers.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def clip_partition(T: int, I: int, J: int) -> torch.Tensor:
    """A known partition of a clip (3, T, I, J), one-hot: background, a fixed band on the left, and
    a disc moving right across the frames (every layer present in every frame)."""
    ii, jj = torch.meshgrid(torch.arange(I), torch.arange(J), indexing="ij")
    labels = torch.zeros(T, I, J, dtype=torch.long)
    labels[:, :, : J // 4] = 1
    for t in range(T):
        centre_j = J / 3 + (J / 3) * t / max(T - 1, 1)
        labels[t][((ii - I / 2) ** 2 + (jj - centre_j) ** 2) < (min(I, J) / 4) ** 2] = 2
    return torch.nn.functional.one_hot(labels, 3).permute(3, 0, 1, 2).double()


def known_motions(param_model: str, T: int, I: int, J: int, L: int, seed: int = 0) -> torch.Tensor:
    """θ (1, L, ft, 2) in the original basis, drawn as O(1) coefficients of the conditioned basis
    (so the flows are O(1) over the clip, whatever the powers of t in the original basis)."""
    _, _, M = cm.conditioned_basis_clip(param_model, (T, I, J), dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    theta_c = torch.randn(1, L, M.shape[0], 2, generator=g, dtype=torch.float64)
    return cm.theta_to_original(theta_c, M)


def piecewise_clip_flow(masks: torch.Tensor, theta: torch.Tensor, param_model: str) -> torch.Tensor:
    """flow (1, 2, T, I, J) = Σ_k mask_k · X θ_k over the clip, masks (L, T, I, J)."""
    flows = cm.flow_from_theta_clip(theta, param_model, masks.shape[1:])[0]  # (L, 2, T, I, J)
    return (masks[:, None] * flows).sum(0)[None]


# --------------------------------------------------------------------------------------------
# Bases
# --------------------------------------------------------------------------------------------
def test_names_stay_apart_from_the_frame_models():
    assert cm.FT == {"Affine": 3, "Quadratic": 6}  # --param_model's choices are unchanged
    assert not set(cm.ST_MODELS) & set(cm.FT)
    assert cm.ST_MODELS is method_names.ST_MODELS
    assert cm.ST_MODELS["QuadraticST1"] == ("Quadratic", "poly", 1)
    assert cm.ST_MODELS["AffineBSpline5"] == ("Affine", "bspline", 5)
    assert cm.st_ft("QuadraticST1", 10) == 12  # the CVPR 2023 model: 6 × {t, 1}
    assert cm.st_ft("AffineST2", 10) == 9
    assert cm.temporal_ft("QuadraticBSpline3", 7) == 5  # 2 intervals of 3 frames, + 3
    assert cm.temporal_ft("QuadraticBSpline3", 8) == 6  # ⌈7/3⌉ = 3 intervals
    assert cm.st_ft("QuadraticBSpline3", 8) == 36


def test_bspline_partition_of_unity_and_linear_reproduction():
    for name in ("AffineBSpline2", "AffineBSpline3", "QuadraticBSpline5", "AffineBSpline10"):
        for T in (1, 2, 5, 6, 7, 12, 31):
            B = cm.temporal_basis(name, T, dtype=torch.float64)
            assert B.shape == (T, cm.temporal_ft(name, T))
            assert torch.allclose(B.sum(1), torch.ones(T, dtype=torch.float64), atol=1e-14, rtol=0)
            assert (B >= 0).all()
            # cubic B-splines reproduce linear functions: Σ_m c_m B_m(t) = t
            _, centres = cm.bspline_knots(name, T)
            t = torch.arange(T, dtype=torch.float64)
            assert torch.allclose(B @ torch.tensor(centres, dtype=torch.float64), t, atol=1e-12, rtol=0)


def test_bspline_values_hand_computed():
    x = torch.tensor([0.0, 0.5, -0.5, 1.0, -1.0, 1.5, 2.0, -2.5], dtype=torch.float64)
    expected = torch.tensor([2 / 3, 23 / 48, 23 / 48, 1 / 6, 1 / 6, 1 / 48, 0.0, 0.0], dtype=torch.float64)
    assert torch.allclose(cm.bspline3(x), expected, atol=1e-15, rtol=0)
    # K = 3 divides T − 1 = 6: knots at frames 0, 3, 6, centres −3, 0, 3, 6, 9
    assert cm.bspline_knots("AffineBSpline3", 7) == (3.0, [-3.0, 0.0, 3.0, 6.0, 9.0])
    B = cm.temporal_basis("AffineBSpline3", 7, dtype=torch.float64)
    knot = torch.tensor([1 / 6, 2 / 3, 1 / 6], dtype=torch.float64)
    for t, first in ((0, 0), (3, 1), (6, 2)):  # at a knot: 1/6, 2/3, 1/6 on three functions, 0 elsewhere
        row = torch.zeros(5, dtype=torch.float64)
        row[first:first + 3] = knot
        assert torch.allclose(B[t], row, atol=1e-15, rtol=0), t
    # between knots, t = 1: β3(4/3), β3(1/3), β3(−2/3), β3(−5/3), 0
    mid = torch.tensor([4 / 81, 31 / 54, 10 / 27, 1 / 162, 0.0], dtype=torch.float64)
    assert torch.allclose(B[1], mid, atol=1e-15, rtol=0)
    # K = 3 does not divide T − 1 = 5: two intervals of 2.5 frames, both ends of the clip knots
    assert cm.bspline_knots("AffineBSpline3", 6) == (2.5, [-2.5, 0.0, 2.5, 5.0, 7.5])
    B = cm.temporal_basis("AffineBSpline3", 6, dtype=torch.float64)
    assert torch.allclose(B[0], torch.tensor([1 / 6, 2 / 3, 1 / 6, 0, 0], dtype=torch.float64), atol=1e-15)
    assert torch.allclose(B[5], torch.tensor([0, 0, 1 / 6, 2 / 3, 1 / 6], dtype=torch.float64), atol=1e-15)


def test_polynomial_temporal_basis():
    X = cm.temporal_basis("QuadraticST2", 5, dtype=torch.float64)
    t = torch.arange(5, dtype=torch.float64)
    assert torch.equal(X, torch.stack([t * t, t, torch.ones(5, dtype=torch.float64)], 1))
    Xc = cm.temporal_basis("QuadraticST2", 5, centered=True, dtype=torch.float64)
    tau = torch.linspace(-1, 1, 5, dtype=torch.float64)
    legendre = torch.stack([(3 * tau * tau - 1) / 2, tau, torch.ones(5, dtype=torch.float64)], 1)
    assert torch.allclose(Xc, legendre, atol=1e-15, rtol=0)
    assert torch.equal(cm.temporal_basis("AffineST0", 4), torch.ones(4, 1))


@pytest.mark.parametrize("param_model", ["QuadraticST1", "AffineST3", "QuadraticBSpline2"])
def test_clip_basis_layout_and_conditioning(param_model):
    T, I, J = 6, 4, 5
    X = cm.make_basis_clip(param_model, (T, I, J), dtype=torch.float64)
    Xt = cm.temporal_basis(param_model, T, dtype=torch.float64)
    Xs = cm.make_basis(cm.ST_MODELS[param_model][0], (I, J), dtype=torch.float64)
    assert X.shape == (T * I * J, Xt.shape[1] * Xs.shape[1])
    t, i, j = 4, 2, 3  # voxel (t, i, j) is row t·I·J + i·J + j; columns τ slowest
    assert torch.equal(X[t * I * J + i * J + j], torch.kron(Xt[t], Xs[i * J + j]))
    Xc, XX, M = cm.conditioned_basis_clip(param_model, (T, I, J), dtype=torch.float64)
    assert torch.allclose(X @ M, Xc, atol=1e-12, rtol=0)
    assert torch.allclose(XX[7], torch.outer(Xc[7], Xc[7]).reshape(-1), atol=0, rtol=0)
    assert torch.linalg.cond(Xc.T @ Xc) < 200  # well conditioned whatever the powers of t
    assert cm.conditioned_basis_clip(param_model, (T, I, J), dtype=torch.float64)[0] is Xc  # cached


def test_theta_layout_is_a_spatial_theta_per_temporal_function():
    """θ (B, L, ft_t·ft_s, 2), τ slowest: frame t of an ST1 motion is the spatial motion θ[1] + t·θ[0]."""
    T, I, J = 5, 6, 7
    theta = known_motions("QuadraticST1", T, I, J, 2)
    flows = cm.flow_from_theta(theta, "QuadraticST1", (T, I, J))  # the frame entry point dispatches
    assert torch.equal(flows, cm.flow_from_theta_clip(theta, "QuadraticST1", (T, I, J)))
    assert flows.shape == (1, 2, 2, T, I, J)
    per_t = theta.unflatten(-2, (2, 6))  # (B, L, ft_t, ft_s, 2)
    for t in range(T):
        frame = cm.flow_from_theta(per_t[:, :, 1] + t * per_t[:, :, 0], "Quadratic", (I, J))
        assert torch.allclose(flows[:, :, :, t], frame, atol=1e-12, rtol=0), t
    # B-splines: frame t is Σ_m B_m(t) θ[m]
    theta = known_motions("AffineBSpline3", T, I, J, 2)
    flows = cm.flow_from_theta_clip(theta, "AffineBSpline3", (T, I, J))
    B = cm.temporal_basis("AffineBSpline3", T, dtype=torch.float64)
    per_t = theta.unflatten(-2, (B.shape[1], 3))
    for t in range(T):
        frame = cm.flow_from_theta(torch.einsum("m,blmfc->blfc", B[t], per_t), "Affine", (I, J))
        assert torch.allclose(flows[:, :, :, t], frame, atol=1e-12, rtol=0), t


# --------------------------------------------------------------------------------------------
# Exact recovery on a known partition
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("v_distance,theta_method", FITS)
@pytest.mark.parametrize("param_model", FIT_MODELS)
def test_known_space_time_motions_are_recovered(param_model, v_distance, theta_method):
    T, I, J = 7, 20, 28  # 3920 voxels: the IRLS's coarse levels sample every 3rd voxel
    masks = clip_partition(T, I, J)
    theta = known_motions(param_model, T, I, J, 3, seed=len(param_model))
    flow = piecewise_clip_flow(masks, theta, param_model)
    out = cm.em_loss_clip(masks[None], flow, param_model, v_distance, theta_method, with_parametric_flow=True)
    assert out["coherence_losses"].shape == (1,) and out["losses"].shape == (1,)
    assert out["coherence_losses"].item() < 1e-9
    assert torch.allclose(out["theta"], theta, atol=1e-6 * theta.abs().max().item(), rtol=0)
    assert torch.allclose(out["ParametricFlow"], flow, atol=1e-8, rtol=0)
    # a wrong model (constant in time) does not fit the same flow: the test can fail
    spatial = cm.ST_MODELS[param_model][0]
    wrong = cm.em_loss_clip(masks[None], flow, spatial + "ST0", v_distance, theta_method)
    assert wrong["coherence_losses"].item() > 1e-3


@pytest.mark.parametrize("param_model", ["QuadraticST1", "QuadraticBSpline3"])
def test_recovery_in_float32(param_model):
    T, I, J = 7, 20, 28
    masks = clip_partition(T, I, J)
    theta = known_motions(param_model, T, I, J, 3, seed=5)
    flow = piecewise_clip_flow(masks, theta, param_model)
    scale = flow.abs().max().item()
    # the float32 OLS accumulates its normal equations over all T·I·J voxels in float32 (as the frame
    # OLS over I·J pixels): relative errors near 1e-4 here; the IRLS's MM steps refine on residuals
    for (v_distance, theta_method), tol in zip(FITS, (1e-3, 1e-5, 1e-5), strict=True):
        out = cm.em_loss_clip(masks[None].float(), flow.float(), param_model, v_distance, theta_method,
                              with_parametric_flow=True)
        assert out["theta"].dtype == torch.float32 and out["losses"].dtype == torch.float32
        assert (out["ParametricFlow"].double() - flow).abs().max() < tol * scale, v_distance
        assert out["coherence_losses"].item() < (tol * scale) ** (2 if v_distance == "squared" else 1)


def test_irls_is_robust_over_a_clip():
    """Outliers on 5 % of the voxels: l1 IRLS still recovers the motion, OLS does not."""
    T, I, J = 6, 20, 24
    masks = clip_partition(T, I, J)
    theta = known_motions("QuadraticST1", T, I, J, 3, seed=1)
    flow = piecewise_clip_flow(masks, theta, "QuadraticST1")
    g = torch.Generator().manual_seed(3)
    outliers = torch.rand(flow.shape[2:], generator=g, dtype=torch.float64) < 0.05
    noisy = flow + 20 * outliers * torch.randn(flow.shape, generator=g, dtype=torch.float64)
    robust = cm.em_loss_clip(masks[None], noisy, "QuadraticST1", "l1", "IRLS", with_parametric_flow=True)
    ols = cm.em_loss_clip(masks[None], noisy, "QuadraticST1", "squared", "OLS", with_parametric_flow=True)
    inliers = ~outliers
    err_robust = (robust["ParametricFlow"] - flow)[:, :, inliers].abs().max()
    err_ols = (ols["ParametricFlow"] - flow)[:, :, inliers].abs().max()
    assert err_robust < 0.02 < err_ols


# --------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("param_model", ["QuadraticST1", "AffineBSpline3"])
def test_gradcheck_float64(param_model):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 2, 4, 4, 5, generator=g, dtype=torch.float64)
    flow = torch.randn(1, 2, 4, 4, 5, generator=g, dtype=torch.float64)
    pred0 = torch.softmax(logits, 1)
    # squared + OLS: θ is the exact minimiser of the coherence at every pred, so the loss's total
    # derivative is its partial one at fixed θ (what backprop gives): gradcheck the public function.
    def loss(p):
        return cm.em_loss_clip(p, flow, param_model, "squared", "OLS")["losses"]

    assert torch.autograd.gradcheck(loss, (pred0.clone().requires_grad_(True),), eps=1e-6, atol=1e-6)
    # l1: θ detached, check the gradient at fixed θ against finite differences of that map
    theta_c, Xc, _ = cm.fit_theta_clip(pred0, flow, param_model, "l1", "IRLS")

    def fixed(p):
        return cm.coherence_terms_clip(p, flow, Xc, theta_c, "l1") - 0.01 * cm.entropy(p.flatten(2, 3))

    assert torch.autograd.gradcheck(fixed, (pred0.clone().requires_grad_(True),), eps=1e-6, atol=1e-6)
    p = pred0.clone().requires_grad_(True)
    cm.em_loss_clip(p, flow, param_model, "l1", "IRLS")["losses"].sum().backward()
    q = pred0.clone().requires_grad_(True)
    fixed(q).sum().backward()
    assert torch.allclose(p.grad, q.grad, atol=1e-12, rtol=0)


# --------------------------------------------------------------------------------------------
# One frame, degree 0: the frame model bit for bit
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("v_distance,theta_method", [("squared", "OLS"), ("l1", "OLS"), ("l1", "IRLS"),
                                                     ("l2", "IRLS")])
@pytest.mark.parametrize("spatial", ["Affine", "Quadratic"])
def test_one_frame_degree_zero_is_the_frame_model(spatial, v_distance, theta_method):
    g = torch.Generator().manual_seed(7)
    pred = torch.softmax(torch.randn(2, 3, 40, 52, generator=g), 1)  # 2080 pixels: coarse IRLS levels
    flow = torch.randn(2, 2, 40, 52, generator=g)
    p4, p5 = pred.clone().requires_grad_(True), pred[:, :, None].clone().requires_grad_(True)
    frame = cm.em_loss(p4, flow, spatial, v_distance, theta_method, with_parametric_flow=True)
    clip = cm.em_loss_clip(p5, flow[:, :, None], spatial + "ST0", v_distance, theta_method,
                           with_parametric_flow=True)
    for key in ("losses", "coherence_losses", "entropies", "theta", "theta_c", "Xc", "M"):
        assert torch.equal(frame[key], clip[key]), key
    assert torch.equal(frame["ParametricFlow"], clip["ParametricFlow"][:, :, 0])
    frame["losses"].sum().backward()
    clip["losses"].sum().backward()
    assert torch.equal(p4.grad, p5.grad[:, :, 0])


@pytest.mark.parametrize("v_distance", ["squared", "l1"])
def test_repeated_frame_degree_zero_is_the_frame_model(v_distance):
    """T copies of a frame under a constant-in-time model: the frame's θ and losses (means over the voxels)."""
    g = torch.Generator().manual_seed(4)
    pred = torch.softmax(torch.randn(2, 3, 9, 11, generator=g, dtype=torch.float64), 1)
    flow = torch.randn(2, 2, 9, 11, generator=g, dtype=torch.float64)
    frame = cm.em_loss(pred, flow, "Quadratic", v_distance, "OLS")
    clip = cm.em_loss_clip(pred[:, :, None].expand(-1, -1, 4, -1, -1), flow[:, :, None].expand(-1, -1, 4, -1, -1),
                           "QuadraticST0", v_distance, "OLS")
    for key in ("losses", "coherence_losses", "entropies", "theta"):
        assert torch.allclose(frame[key], clip[key], atol=1e-12, rtol=1e-10), key


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------
def test_bad_shapes_and_names_raise_clear_errors():
    pred = torch.softmax(torch.randn(1, 2, 5, 6, 7), 1)
    flow = torch.randn(1, 2, 5, 6, 7)
    with pytest.raises(ValueError, match=r"expected flow \(B, 2, T, I, J\), got \(1, 2, 6, 7\)"):
        cm.em_loss_clip(pred, flow[:, :, 0], "AffineST1")
    with pytest.raises(ValueError, match=r"expected flow \(B, 2, T, I, J\), got \(1, 3, 5, 6, 7\)"):
        cm.em_loss_clip(pred, torch.randn(1, 3, 5, 6, 7), "AffineST1")
    with pytest.raises(ValueError, match=r"expected pred \(B, L, T, I, J\), got \(1, 2, 6, 7\)"):
        cm.em_loss_clip(pred[:, :, 0], flow, "AffineST1")
    with pytest.raises(ValueError, match=r"disagree: pred \(1, 2, 4, 6, 7\), flow \(1, 2, 5, 6, 7\)"):
        cm.em_loss_clip(pred[:, :, :4], flow, "AffineST1")
    with pytest.raises(ValueError, match=r"disagree"):
        cm.fit_theta_clip(pred.expand(2, -1, -1, -1, -1), flow, "AffineST1", "l1")
    with pytest.raises(ValueError, match=r"at least one mask"):
        cm.em_loss_clip(pred[:, :0], flow, "AffineST1")
    with pytest.raises(ValueError, match=r"T >= 1 frames"):
        cm.em_loss_clip(pred[:, :, :0], flow[:, :, :0], "AffineST1")
    with pytest.raises(ValueError, match=r"space-time param_model must be one of .*got 'Quadratic'"):
        cm.em_loss_clip(pred, flow, "Quadratic")  # a frame model is not a space-time one
    with pytest.raises(ValueError, match=r"param_model must be one of \['Affine', 'Quadratic'\]"):
        cm.em_loss(pred[:, :, 0], flow[:, :, 0], "QuadraticST1")  # nor the reverse
    with pytest.raises(ValueError, match=r"v_distance must be one of"):
        cm.em_loss_clip(pred, flow, "AffineST1", v_distance="l3")
    with pytest.raises(ValueError, match=r"theta_method must be one of"):
        cm.em_loss_clip(pred, flow, "AffineST1", theta_method="SGD")
    # too few frames for the temporal functions
    with pytest.raises(ValueError, match=r"QuadraticST2 over T = 2 frames has 3 temporal functions but only 2"):
        cm.em_loss_clip(pred[:, :, :2], flow[:, :, :2], "QuadraticST2")
    with pytest.raises(ValueError, match=r"AffineBSpline3 over T = 3 frames has 4 temporal functions"):
        cm.fit_theta_clip(pred[:, :, :3], flow[:, :, :3], "AffineBSpline3", "l1")
    with pytest.raises(ValueError, match=r"expected theta \(B, L, 12, 2\) for QuadraticST1 over T = 5 frames"):
        cm.flow_from_theta_clip(torch.zeros(1, 2, 6, 2), "QuadraticST1", (5, 6, 7))
    with pytest.raises(ValueError, match=r"expected a clip size \(T, I, J\), got \(6, 7\)"):
        cm.make_basis_clip("QuadraticST1", (6, 7))
    with pytest.raises(ValueError, match=r"expected a B-spline"):
        cm.bspline_knots("QuadraticST1", 5)
