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
import math
import threading
import weakref
from collections.abc import Callable, Sequence

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


# IRLS schedule, coarse to fine: (pixel stride, MM steps, δ floor relative to the start's
# residual scale). The coarse levels (every 17th, then every 5th pixel of the row-major order:
# strides coprime with the usual widths, so the samples form lattices over the image) do most of
# the work at a fraction of the cost; the full-resolution level polishes. Tuned with
# bench/bench_theta.py.
IRLS_SCHEDULE: tuple[tuple[int, int, float], ...] = ((17, 12, 0.03), (5, 3, 0.03), (1, 2, 0.01))
IRLS_GAMMA = 0.4  # δ shrinks by this factor per MM step (continuation) down to the level's floor
IRLS_MIN_POINTS = 1024  # a coarse level needs at least this many pixels, else it runs at stride 1
IRLS_DELTA_ABS = 1e-4  # absolute δ floor, relative to the sample's mean |flow| (weights stay finite)
IRLS_TOL = 1e-6  # a level stops early once a SQUAREM cycle improves no block's objective by this
_SQUAREM_MAX_STEP = 1e3  # bound on the SQUAREM step length |α|

# id(XX) → (weak reference to XX, XXu, index); an entry goes when its XX is freed.
_unique_products_cache: dict[int, tuple[weakref.ref, Tensor, Tensor]] = {}


def _unique_products(XX: Tensor, ft: int) -> tuple[Tensor, Tensor]:
    """The ft(ft+1)/2 distinct per-pixel products of XX (N, ft²), transposed: XXuT (ft(ft+1)/2, N),
    and the index (ft²,) rebuilding the full ft × ft matrix from them. Cached per XX tensor (never
    modify it). Transposed because (k, N) @ (N, m) products run several times faster than
    (m, N) @ (N, k) ones on CPU BLAS.
    """
    cached = _unique_products_cache.get(id(XX))
    if cached is not None and cached[0]() is XX:
        return cached[1], cached[2]
    iu = torch.triu_indices(ft, ft, device=XX.device)
    XXuT = XX[:, iu[0] * ft + iu[1]].t().contiguous()
    full = torch.empty(ft, ft, dtype=torch.long, device=XX.device)
    arange = torch.arange(iu.shape[1], device=XX.device)
    full[iu[0], iu[1]] = arange
    full[iu[1], iu[0]] = arange
    key = id(XX)
    _unique_products_cache[key] = (weakref.ref(XX), XXuT, full.reshape(-1))
    weakref.finalize(XX, _unique_products_cache.pop, key, None)
    return XXuT, full.reshape(-1)


_workspace = threading.local()


def _scratch(name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An uninitialised scratch tensor of ``shape`` with ``like``'s dtype and device.

    On CPU the storage is kept (per thread) and reused by the next call: fresh multi-megabyte
    allocations are page-faulted in on every call, which cost the IRLS as much as its arithmetic.
    Other devices have caching allocators and get a plain ``torch.empty``.
    """
    if like.device.type != "cpu":
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    store = getattr(_workspace, "buffers", None)
    if store is None:
        store = _workspace.buffers = {}
    numel = math.prod(shape)
    buf = store.get((name, like.dtype))
    if buf is None or buf.numel() < numel:
        buf = store[(name, like.dtype)] = torch.empty(numel, dtype=like.dtype)
    return buf[:numel].view(shape)


class _RobustLevel:
    """The robust M-step problem on one pixel sample, with its buffers reused across MM steps.

    pred (B, L, n), flow (B, 2, n), XcT (ft, n), XXuT (ft(ft+1)/2, n), full_idx (ft²,) (see
    :func:`_unique_products`). The independent problems ("blocks") are (B, L, K): K = 2 for
    ``l1`` (one per flow channel), K = 1 for ``l2``.
    """

    def __init__(self, pred: Tensor, flow: Tensor, XcT: Tensor, XXuT: Tensor, full_idx: Tensor,
                 v_distance: str) -> None:
        self.pred, self.flow, self.XcT, self.XXuT, self.full_idx = pred, flow, XcT, XXuT, full_idx
        self.l1 = v_distance == "l1"
        self.ft = XcT.shape[0]
        B, L, n = pred.shape
        K = 2 if self.l1 else 1
        self.B, self.L, self.n = B, L, n
        self.pk = pred[:, :, None]  # (B, L, 1, n)
        self.r = _scratch("r", (B, L, 2, n), flow)  # residual, then W·r
        self.a = _scratch("a", (B, L, K, n), flow)  # distance, then W
        self.t = _scratch("t", (B, L, K, n), flow)  # pred · distance
        self.mass = pred.sum(-1)  # (B, L)

    def _distance(self, theta: Tensor) -> None:
        """self.r ← flow − X'θ' (B, L, 2, n); self.a ← |r_c| (l1) or ‖r‖ (l2) (B, L, K, n)."""
        torch.matmul(theta.transpose(-1, -2).to(self.r.dtype), self.XcT, out=self.r)
        torch.sub(self.flow[:, None], self.r, out=self.r)
        if self.l1:
            torch.abs(self.r, out=self.a)
        else:
            a = self.a[:, :, 0]
            torch.mul(self.r[:, :, 0], self.r[:, :, 0], out=a).addcmul_(self.r[:, :, 1], self.r[:, :, 1]).sqrt_()

    def _objective(self) -> Tensor:
        """Σ_i pred · distance per block (B, L, K), from self.a."""
        return torch.mul(self.a, self.pk, out=self.t).sum(-1)

    def objective(self, theta: Tensor) -> Tensor:
        """The level's objective at θ' (B, L, ft, 2), per block (B, L, K)."""
        self._distance(theta)
        return self._objective()

    def scale(self, theta: Tensor) -> Tensor:
        """Mask-weighted mean distance at θ' per block (B, L, K): where δ starts from."""
        return self.objective(theta) / self.mass[..., None].clamp(min=torch.finfo(self.a.dtype).tiny)

    def _gram(self, W: Tensor) -> Tensor:
        """Σ_i W X'ᵀX' for W (B, L, K, n) → (B, L, K, ft, ft)."""
        A = (self.XXuT @ W.reshape(-1, self.n).t()).t()[:, self.full_idx]
        return A.reshape(*W.shape[:3], self.ft, self.ft)

    def _project(self, Y: Tensor) -> Tensor:
        """Σ_i Y X' for Y (B, L, C, n) → (B, L, C, ft)."""
        return (self.XcT @ Y.reshape(-1, self.n).t()).t().reshape(*Y.shape[:3], self.ft)

    def ols(self) -> Tensor:
        """Weighted least squares with weights pred on this sample: θ' (B, L, ft, 2)."""
        A = self._gram(self.pk)[:, :, 0]
        rhs = self._project(self.pk * self.flow[:, None])  # (B, L, 2, ft)
        return _solve_normal(A, rhs.transpose(-1, -2))

    def step(self, theta: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
        """One MM step from θ' (B, L, ft, 2), weights pred / max(distance, δ), δ (B, L, K, 1).

        Returns (the new θ', the objective at the given θ' per block (B, L, K)).
        """
        self._distance(theta)
        obj = self._objective()
        W = torch.div(self.pk, torch.maximum(self.a, delta, out=self.a), out=self.a)  # (B, L, K, n)
        A = self._gram(W)  # (B, L, K, ft, ft)
        g = self._project(self.r.mul_(W))  # X'ᵀ W r: (B, L, 2, ft)
        if self.l1:
            d = _solve_normal(A, g[..., None])[..., 0].transpose(-1, -2)  # (B, L, ft, 2)
        else:
            d = _solve_normal(A[:, :, 0], g.transpose(-1, -2))
        return theta + d.to(theta.dtype), obj


def _block_where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Per-block select for θ' (B, L, ft, 2); mask (B, L, K): per channel (K = 2) or both (K = 1)."""
    return torch.where(mask[:, :, None, :], a, b)


def _block_sq_norm(x: Tensor, l1: bool) -> Tensor:
    """Squared norm of θ'-shaped x (B, L, ft, 2) per block: (B, L, 2) for l1, (B, L, 1) for l2."""
    s = (x * x).sum(-2)
    return s if l1 else s.sum(-1, keepdim=True)


def _squarem_level(level: _RobustLevel, theta: Tensor, n_steps: int, delta_at: Callable[[int], Tensor],
                   tol: float) -> tuple[Tensor, int]:
    """Up to ``n_steps`` MM steps on one level: SQUAREM cycles (Varadhan & Roland 2008: two MM
    steps, an extrapolation along their differences, a stabilising MM step), then plain steps.

    ``delta_at(k)`` gives δ (B, L, K, 1) for the level's k-th step. Returns the best θ' seen (per
    block, by the level's own objective) and the number of steps done (fewer if it converged).
    """
    best, best_obj = theta, None

    def keep(th: Tensor, obj: Tensor) -> None:
        nonlocal best, best_obj
        if best_obj is None:
            best, best_obj = th, obj
            return
        better = obj < best_obj  # a NaN never wins
        best_obj = torch.where(better, obj, best_obj)
        best = _block_where(better, th, best)

    k = 0
    while k < n_steps:
        if n_steps - k < 3:
            th_next, obj = level.step(theta, delta_at(k))
            keep(theta, obj)
            theta = th_next
            k += 1
            continue
        before = best_obj
        th1, obj0 = level.step(theta, delta_at(k))
        keep(theta, obj0)
        th2, obj1 = level.step(th1, delta_at(k + 1))
        keep(th1, obj1)
        r = th1 - theta
        v = th2 - th1 - r
        ratio = _block_sq_norm(r, level.l1) / _block_sq_norm(v, level.l1).clamp(min=torch.finfo(v.dtype).tiny)
        alpha = -torch.sqrt(ratio).clamp(1.0, _SQUAREM_MAX_STEP)[:, :, None, :]  # α = −1 gives θ2
        th_x = theta - 2 * alpha * r + alpha * alpha * v
        th3, obj_x = level.step(th_x, delta_at(k + 2))
        keep(th_x, obj_x)
        theta = _block_where(obj_x <= obj1, th3, th2)  # extrapolation no better (or NaN): from θ2
        k += 3
        if tol > 0 and before is not None and not bool(((before - best_obj) > tol * best_obj).any()):
            break
    keep(theta, level.objective(theta))
    return best, k


def fit_theta_irls(pred: Tensor, flow: Tensor, Xc: Tensor, XX: Tensor, v_distance: str,
                   n_iter: int | None = None, theta0: Tensor | None = None,
                   schedule: Sequence[tuple[int, int, float]] | None = None, tol: float = IRLS_TOL) -> Tensor:
    """Iteratively reweighted least squares for the ``l1`` and ``l2`` objectives, coarse to fine.

    Each majorise-minimise (MM) step solves the weighted least squares with weights
    pred / max(d, δ), d = |r_c| per channel (l1) or ‖r‖ (l2); δ starts at the mask-weighted mean
    residual of the start and shrinks by ``IRLS_GAMMA`` per step down to a floor (continuation:
    large δ makes early steps long, Huber-like; small δ makes the fixed point the l1/l2 one).
    SQUAREM extrapolation accelerates the MM steps, and the levels of ``schedule`` (default
    ``IRLS_SCHEDULE``) run them on pixel samples, coarse to fine. On each level the best θ' seen
    is kept per block (layer, and channel for l1), so the full-resolution result is never worse
    than the full-resolution start. ``n_iter`` overrides the first level's step count; ``theta0``
    (B, L, ft, 2) replaces the OLS start.

    pred (B, L, N), flow (B, 2, N), Xc (N, ft), XX (N, ft²) → θ' (B, L, ft, 2).
    """
    if v_distance == "squared":
        return fit_theta_ols(pred, flow, Xc, XX) if theta0 is None else theta0
    B, L, N = pred.shape
    XXuT, full_idx = _unique_products(XX, Xc.shape[1])
    XcT = Xc.t()
    levels = list(IRLS_SCHEDULE if schedule is None else schedule)
    if n_iter is not None:
        levels[0] = (levels[0][0], int(n_iter), levels[0][2])
    tiny = torch.finfo(flow.dtype).tiny
    mean_abs = torch.linalg.vector_norm(flow, ord=1, dim=(1, 2)) / flow[0].numel()
    delta_abs = (mean_abs * IRLS_DELTA_ABS + tiny)[:, None, None, None]  # (B, 1, 1, 1)
    theta, s0, prev, steps_done = theta0, None, None, 0
    for stride, n_steps, floor in levels:
        if stride > 1 and N // stride < IRLS_MIN_POINTS:
            stride = 1
        if stride == 1:
            level = _RobustLevel(pred, flow, XcT.contiguous(), XXuT, full_idx, v_distance)
        else:
            level = _RobustLevel(pred[..., ::stride].contiguous(), flow[..., ::stride].contiguous(),
                                 XcT[:, ::stride].contiguous(), XXuT[:, ::stride].contiguous(), full_idx,
                                 v_distance)
        if theta is None:
            theta = level.ols()
        elif prev is not None:
            # A block whose mask the previous (sparser) sample saw badly, e.g. a small region,
            # restarts from this level's OLS.
            expected = prev.mass * (level.n / prev.n)
            bad = (expected - level.mass).abs() > 0.5 * level.mass + 1e-3 * level.mass.sum(1, keepdim=True)
            if bool(bad.any()):
                theta = torch.where(bad[:, :, None, None], level.ols(), theta)
                s0 = torch.where(bad[..., None], level.scale(theta), s0)
        if s0 is None:
            s0 = level.scale(theta)  # (B, L, K)

        def delta_at(k: int, s0: Tensor = s0, floor: float = floor, k0: int = steps_done) -> Tensor:
            return torch.maximum(s0 * max(IRLS_GAMMA ** (k0 + k), floor), delta_abs[..., 0])[..., None]

        theta, done = _squarem_level(level, theta, n_steps, delta_at, tol)
        steps_done += done
        prev = level
    return theta


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

