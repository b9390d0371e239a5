"""The one home of the method's math: parametric motion bases, θ solvers, parametric flow, loss.

Conventions used throughout (DESIGN.md §1):

- ``flow`` (B, 2, I, J): channel 0 is u (horizontal), channel 1 is v.
- ``pred`` (B, L, I, J): soft masks, softmax over L.
- ``X`` (N, ft) with N = I·J: the basis evaluated at every pixel, pixels flattened row-major
  (i slowest), coordinates i/I and j/J. ft = 3 (Affine: [i, j, 1]) or 6 (Quadratic:
  [i·j, i², j², i, j, 1]).
- ``theta`` (B, L, ft, 2): the parametric flow of layer k is ``X @ theta[:, k]`` (N, 2).

The solvers work internally in a *conditioned* basis X' = X M (the same monomials of coordinates
centred and scaled to [-1, 1]): the quadratic monomials of [0, 1) coordinates give normal
matrices with condition numbers near 1e5, the centred ones near 10, so float32 accumulation is
safe. X θ = X' θ' exactly with θ = M θ', so the parametric flow never depends on the choice.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

FT: dict[str, int] = {"Affine": 3, "Quadratic": 6}
V_DISTANCES: tuple[str, ...] = ("squared", "l1", "l2")
THETA_METHODS: tuple[str, ...] = ("IRLS", "OLS", "Optim")
ENTROPY_FLOOR = 1e-4

# Relative ridge added to the normal matrices (of the conditioned basis), by working precision:
# near the float32 accumulation error of the matrices, so it costs no accuracy that float32 had.
# The absolute term keeps an all-zero mask finite (θ = 0).
RIDGE_REL = {torch.float32: 1e-7, torch.float64: 1e-12}
RIDGE_ABS = 1e-30


def check_param_model(param_model: str) -> int:
    """Return ft for ``param_model`` or raise a ValueError listing the valid names."""
    if param_model not in FT:
        raise ValueError(f"param_model must be one of {sorted(FT)}, got {param_model!r}")
    return FT[param_model]


def check_v_distance(v_distance: str) -> None:
    if v_distance not in V_DISTANCES:
        raise ValueError(f"v_distance must be one of {list(V_DISTANCES)}, got {v_distance!r}")


def check_theta_method(theta_method: str) -> None:
    if theta_method not in THETA_METHODS:
        raise ValueError(f"theta_method must be one of {list(THETA_METHODS)}, got {theta_method!r}")


def check_pred_flow(pred: Tensor, flow: Tensor) -> None:
    """Shape checks shared by the public entry points."""
    if not isinstance(flow, Tensor) or flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"expected flow (B, 2, I, J), got {tuple(getattr(flow, 'shape', ()))}")
    if not isinstance(pred, Tensor) or pred.dim() != 4:
        raise ValueError(f"expected pred (B, L, I, J), got {tuple(getattr(pred, 'shape', ()))}")
    if pred.shape[0] != flow.shape[0] or pred.shape[2:] != flow.shape[2:]:
        raise ValueError(
            f"pred (B, L, I, J) and flow (B, 2, I, J) disagree: pred {tuple(pred.shape)}, "
            f"flow {tuple(flow.shape)}"
        )
    if pred.shape[1] < 1:
        raise ValueError(f"expected at least one mask (L >= 1), got pred {tuple(pred.shape)}")


# --------------------------------------------------------------------------------------------
# Bases
# --------------------------------------------------------------------------------------------
def basis_from_coords(i: Tensor, j: Tensor, param_model: str) -> Tensor:
    """Evaluate the basis at coordinates ``i``, ``j`` (same shape S) → (*S, ft)."""
    check_param_model(param_model)
    one = torch.ones_like(i)
    if param_model == "Affine":
        return torch.stack([i, j, one], dim=-1)
    return torch.stack([i * j, i * i, j * j, i, j, one], dim=-1)


def grid_coords(img_size: Sequence[int], centered: bool = False, device=None,
                dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Row and column coordinates (I, J) each: i/I and j/J, or linspace(-1, 1) when centred."""
    I, J = int(img_size[0]), int(img_size[1])
    if centered:
        ii = torch.linspace(-1.0, 1.0, I, device=device, dtype=torch.float64)
        jj = torch.linspace(-1.0, 1.0, J, device=device, dtype=torch.float64)
    else:
        ii = torch.arange(I, device=device, dtype=torch.float64) / I
        jj = torch.arange(J, device=device, dtype=torch.float64) / J
    gi, gj = torch.meshgrid(ii, jj, indexing="ij")
    return gi.to(dtype), gj.to(dtype)


def make_basis(param_model: str, img_size: Sequence[int], centered: bool = False, device=None,
               dtype: torch.dtype = torch.float32) -> Tensor:
    """The basis ``X`` (I·J, ft), row-major; coordinates i/I, j/J (or [-1, 1] if ``centered``).

    This is the tensor the models store as the ``XoT`` buffer.
    """
    gi, gj = grid_coords(img_size, centered, device=device, dtype=torch.float64)
    return basis_from_coords(gi.reshape(-1), gj.reshape(-1), param_model).to(dtype)


@functools.lru_cache(maxsize=32)
def _conditioning(param_model: str, I: int, J: int, device_str: str,
                  dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    """(X' (N, ft), X'⊗X' (N, ft²), both in ``dtype``, M float64 (ft, ft)) with X' = X M."""
    device = torch.device(device_str)
    X = make_basis(param_model, (I, J), device=device, dtype=torch.float64)
    Xc = make_basis(param_model, (I, J), centered=True, device=device, dtype=torch.float64)
    # Xc lies in the span of X (same monomials of affinely mapped coordinates), so this is exact.
    M = torch.linalg.lstsq(X.cpu(), Xc.cpu()).solution.to(device)
    ft = X.shape[1]
    XX = (Xc[:, :, None] * Xc[:, None, :]).reshape(-1, ft * ft)
    return Xc.to(dtype), XX.to(dtype), M


def conditioned_basis(param_model: str, img_size: Sequence[int], device=None,
                      dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    """Cached ``(Xc (N, ft), XcXc (N, ft²), M (ft, ft))`` with ``Xc = X @ M``; do not modify."""
    device = torch.device("cpu") if device is None else torch.device(device)
    return _conditioning(param_model, int(img_size[0]), int(img_size[1]), str(device), dtype)


def theta_to_original(theta_c: Tensor, M: Tensor) -> Tensor:
    """θ in the conditioned basis (..., ft, C) → θ in the original basis: θ = M θ'."""
    return (M @ theta_c.double()).to(theta_c.dtype)


def theta_to_conditioned(theta: Tensor, M: Tensor) -> Tensor:
    """Inverse of :func:`theta_to_original`: θ' = M⁻¹ θ."""
    return torch.linalg.solve(M, theta.double()).to(theta.dtype)


# --------------------------------------------------------------------------------------------
# Distances and the parametric flow
# --------------------------------------------------------------------------------------------
def _safe_sqrt(s: Tensor) -> Tensor:
    # sqrt with a zero (not NaN) gradient at 0, so an exact fit does not poison L-BFGS.
    pos = s > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, s, torch.ones_like(s))), torch.zeros_like(s))


def vector_distance(a: Tensor, b: Tensor, v_distance: str, dim: int = 1) -> Tensor:
    """Per-pixel distance between vector fields, reducing ``dim`` (the vector components).

    ``squared`` Σ_c (a_c − b_c)², ``l2`` sqrt(Σ_c (a_c − b_c)²), ``l1`` Σ_c |a_c − b_c|.
    """
    check_v_distance(v_distance)
    return residual_distance(a - b, v_distance, dim)


def residual_distance(r: Tensor, v_distance: str, dim: int = 1) -> Tensor:
    """:func:`vector_distance` of a residual ``r`` already computed."""
    if v_distance == "squared":
        return (r * r).sum(dim)
    if v_distance == "l1":
        return r.abs().sum(dim)
    if v_distance == "l2":
        return _safe_sqrt((r * r).sum(dim))
    raise ValueError(f"v_distance must be one of {list(V_DISTANCES)}, got {v_distance!r}")


def layer_flows(Xc: Tensor, theta_c: Tensor) -> Tensor:
    """Parametric flow of every layer: Xc (N, ft), θ' (B, L, ft, 2) → (B, L, 2, N)."""
    return torch.einsum("nf,blfc->blcn", Xc, theta_c.to(Xc.dtype))


def parametric_flow(pred: Tensor, Xc: Tensor, theta_c: Tensor) -> Tensor:
    """Mask-weighted parametric flow Σ_k pred_k X θ_k: (B, 2, I, J)."""
    B, L, I, J = pred.shape
    flows = layer_flows(Xc, theta_c)  # (B, L, 2, N)
    return torch.einsum("bln,blcn->bcn", pred.reshape(B, L, I * J).to(flows.dtype), flows).reshape(B, 2, I, J)


# --------------------------------------------------------------------------------------------
# θ solvers (all return θ' in the conditioned basis, detached, float32)
# --------------------------------------------------------------------------------------------
def _solve_normal(A: Tensor, rhs: Tensor) -> Tensor:
    """Batched ridge-regularised Cholesky solve in float64: A (..., ft, ft), rhs (..., ft, C)."""
    ridge = RIDGE_REL.get(A.dtype, RIDGE_REL[torch.float32])
    A = A.double()
    ft = A.shape[-1]
    scale = A.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None]
    eye = torch.eye(ft, dtype=A.dtype, device=A.device)
    A = A + (ridge * scale + RIDGE_ABS) * eye
    chol, _ = torch.linalg.cholesky_ex(A)  # no error check: no device sync; A is PD by the ridge
    return torch.cholesky_solve(rhs.double(), chol).to(rhs.dtype)


def weighted_lstsq(Xc: Tensor, XX: Tensor, Y: Tensor, W: Tensor) -> Tensor:
    """Weighted least squares for every layer at once.

    Xc (N, ft); XX (N, ft²) the per-pixel outer products; Y (B, C, N) targets;
    W (B, L, N) weights shared by the C channels, or (B, L, C, N) one per channel.
    Returns θ' (B, L, ft, C) minimising Σ_n W (Y − Xc θ')² per (b, k, c).
    """
    ft = Xc.shape[1]
    if W.dim() == 3:
        A = (W @ XX).unflatten(-1, (ft, ft))  # (B, L, ft, ft)
        rhs = torch.einsum("bln,bcn,nf->blfc", W, Y, Xc)  # (B, L, ft, C)
        return _solve_normal(A, rhs)
    A = (W @ XX).unflatten(-1, (ft, ft))  # (B, L, C, ft, ft)
    rhs = ((W * Y[:, None]) @ Xc)[..., None]  # (B, L, C, ft, 1)
    return _solve_normal(A, rhs)[..., 0].transpose(-1, -2)  # (B, L, ft, C)


def fit_theta_ols(pred: Tensor, flow: Tensor, Xc: Tensor, XX: Tensor) -> Tensor:
    """θ'_k = (X'ᵀ W_k X')⁻¹ X'ᵀ W_k Y, W_k = diag(pred_k). pred (B, L, N), flow (B, 2, N)."""
    return weighted_lstsq(Xc, XX, flow, pred)


def layer_objective(pred: Tensor, flow: Tensor, Xc: Tensor, theta_c: Tensor, v_distance: str) -> Tensor:
    """Σ_i pred_k(i) · d(flow(i), X'θ'_k(i)) / N per (b, k): the M-step objective, (B, L)."""
    r = flow[:, None] - layer_flows(Xc, theta_c)  # (B, L, 2, N)
    return (pred * residual_distance(r, v_distance, dim=2)).mean(-1)


def fit_theta_irls(pred: Tensor, flow: Tensor, Xc: Tensor, XX: Tensor, v_distance: str,
                   n_iter: int = 12, theta0: Tensor | None = None) -> Tensor:
    """Iteratively reweighted least squares for the ``l1`` and ``l2`` objectives.

    Each step solves the weighted least squares with weights pred / max(|r|, δ) (per channel for
    l1, on the vector norm for l2): a majorise-minimise step of the robust objective. The best
    θ' seen so far is kept per layer, so the result is never worse than the OLS start.
    pred (B, L, N), flow (B, 2, N) → θ' (B, L, ft, 2).
    """
    theta = fit_theta_ols(pred, flow, Xc, XX) if theta0 is None else theta0
    if v_distance == "squared":
        return theta
    # δ: below the flow's own precision, relative to its typical magnitude (per sample).
    delta = (flow.abs().mean((1, 2)) * 1e-4 + 1e-8)[:, None, None, None]  # (B, 1, 1, 1)
    per_channel = v_distance == "l1"

    def residual_and_objective(th: Tensor) -> tuple[Tensor, Tensor]:
        r = flow[:, None] - layer_flows(Xc, th)  # (B, L, 2, N)
        d = r.abs() if per_channel else _safe_sqrt((r * r).sum(2, keepdim=True))
        return d, (pred[:, :, None] * d).sum(-1)  # objective (B, L, 1 or 2)

    d, best_obj = residual_and_objective(theta)
    best = theta
    for _ in range(n_iter):
        W = pred[:, :, None] / torch.clamp(d, min=delta)  # (B, L, C|1, N)
        theta = weighted_lstsq(Xc, XX, flow, W if per_channel else W[:, :, 0])
        d, obj = residual_and_objective(theta)
        if per_channel:  # channels are independent problems: keep the best of each
            better = (obj < best_obj)[:, :, None, :]  # (B, L, 1, 2)
            best_obj = torch.minimum(obj, best_obj)
        else:
            better = (obj < best_obj)[..., None]  # (B, L, 1, 1)
            best_obj = torch.minimum(obj, best_obj)
        best = torch.where(better, theta, best)
    return best


def fit_theta_optim(pred: Tensor, flow: Tensor, Xc: Tensor, XX: Tensor, v_distance: str,
                    max_iter: int = 50) -> Tensor:
    """The original's ``Optim``: start from OLS, then L-BFGS (strong-Wolfe line search) on
    Σ_k Σ_i pred_k(i) · d(flow(i), X θ_k(i)) with pred detached. Slow; kept for reference.
    """
    theta0 = fit_theta_ols(pred, flow, Xc, XX)
    if v_distance == "squared":
        return theta0
    theta = theta0.clone(memory_format=torch.contiguous_format).requires_grad_(True)  # L-BFGS views grads flat
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-12)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = layer_objective(pred, flow, Xc, theta, v_distance).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return theta.detach()


def fit_theta(pred: Tensor, flow: Tensor, param_model: str, v_distance: str, theta_method: str = "IRLS",
              **solver_kw) -> tuple[Tensor, Tensor, Tensor]:
    """Fit θ for every layer; inputs are detached, autocast is off.

    Works in float32 (float16/bfloat16 inputs are upcast), or in float64 when either input is
    float64. pred (B, L, I, J), flow (B, 2, I, J) → (θ' (B, L, ft, 2) in the conditioned basis,
    Xc (N, ft), M (ft, ft)); θ in the original basis is ``theta_to_original(θ', M)``.
    """
    check_pred_flow(pred, flow)
    check_theta_method(theta_method)
    check_v_distance(v_distance)
    B, L, I, J = pred.shape
    dtype = torch.float64 if torch.float64 in (pred.dtype, flow.dtype) else torch.float32
    Xc, XX, M = conditioned_basis(param_model, (I, J), pred.device, dtype)
    with torch.no_grad(), torch.autocast(pred.device.type, enabled=False):
        p = pred.detach().reshape(B, L, I * J).to(dtype)
        f = flow.detach().reshape(B, 2, I * J).to(dtype)
        if theta_method == "OLS" or v_distance == "squared":
            theta_c = fit_theta_ols(p, f, Xc, XX)
        elif theta_method == "IRLS":
            theta_c = fit_theta_irls(p, f, Xc, XX, v_distance, **solver_kw)
        else:
            theta_c = fit_theta_optim(p, f, Xc, XX, v_distance, **solver_kw)
    return theta_c, Xc, M


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------
def coherence_terms(pred: Tensor, flow: Tensor, Xc: Tensor, theta_c: Tensor, v_distance: str) -> Tensor:
    """coherence = (1/N) Σ_k Σ_i pred_k(i) d(flow(i), X θ_k(i)), per sample (B,).

    θ is used detached; gradients reach only ``pred``. Computed in pred's dtype (float64 stays
    float64 for gradcheck), and the residual never copies the flow once per mask.
    """
    B, L, I, J = pred.shape
    dtype = torch.promote_types(pred.dtype, torch.float32)
    with torch.no_grad():
        f = flow.detach().reshape(B, 1, 2, I * J).to(dtype)
        d = residual_distance(f - layer_flows(Xc.to(dtype), theta_c.detach().to(dtype)), v_distance, dim=2)
    return (pred.reshape(B, L, I * J).to(dtype) * d).sum((1, 2)) / (I * J)


def entropy(pred: Tensor) -> Tensor:
    """−(1/N) Σ_k Σ_i pred_k(i) log2(max(pred_k(i), 1e-4)), per sample (B,)."""
    B, L, I, J = pred.shape
    p = pred.reshape(B, L, I * J)
    return -(p * torch.log2(torch.clamp(p, min=ENTROPY_FLOOR))).sum((1, 2)) / (I * J)


def em_loss(pred: Tensor, flow: Tensor, param_model: str = "Quadratic", v_distance: str = "l1",
            theta_method: str = "IRLS", entropy_weight: float = 0.01, **solver_kw) -> dict[str, Tensor]:
    """The full per-sample criterion: M-step (θ detached) then the mask-weighted residual.

    Returns ``losses`` = coherence − entropy_weight · entropy, ``coherence_losses``,
    ``entropies`` (all (B,)), ``theta`` (B, L, ft, 2) in the original basis and the conditioned
    ``theta_c``, ``Xc`` and ``M`` (for :func:`parametric_flow`).
    """
    theta_c, Xc, M = fit_theta(pred, flow, param_model, v_distance, theta_method, **solver_kw)
    coherence = coherence_terms(pred, flow, Xc, theta_c, v_distance)
    ent = entropy(pred).to(coherence.dtype)
    return {
        "losses": coherence - entropy_weight * ent,
        "coherence_losses": coherence,
        "entropies": ent,
        "theta": theta_to_original(theta_c, M),
        "theta_c": theta_c,
        "Xc": Xc,
        "M": M,
    }


def flow_from_theta(theta: Tensor, param_model: str, img_size: Sequence[int]) -> Tensor:
    """Flow fields from θ in the original basis: theta (B, L, ft, 2) → (B, L, 2, I, J)."""
    X = make_basis(param_model, img_size, device=theta.device, dtype=torch.float64)
    B, L = theta.shape[:2]
    return layer_flows(X, theta.double()).to(theta.dtype).reshape(B, L, 2, int(img_size[0]), int(img_size[1]))


def mean_vector_norm(flow: Tensor) -> Tensor:
    """Mean per-pixel vector norm of flow (B, 2, I, J) → (B,)."""
    return torch.linalg.vector_norm(flow, dim=1).flatten(1).mean(1)

