"""The one home of the method's math: parametric motion bases, θ solvers, parametric flow, loss.

Conventions used throughout (docs/METHOD.md §1 and §2):

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

Space-time models (``ST_MODELS``, the functions named ``…_clip``; docs/METHOD.md, "Space-time
bases") fit one motion per segment over a clip of T frames: ``pred`` (B, L, T, I, J), ``flow``
(B, 2, T, I, J), ``X`` (T·I·J, ft_t·ft_s) = temporal ⊗ spatial basis, voxels flattened t slowest,
then i, then j; the same solvers run on the clip's voxels as if they were one frame's pixels.
"""

from __future__ import annotations

import functools
import math
import operator
import threading
import weakref
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

# the accepted names, defined without torch so that the settings' choices need no torch; re-exported
from emseg.core.method_names import FT, ST_MODELS, THETA_METHODS, V_DISTANCES  # noqa: F401

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
    """Shape checks shared by the public entry points: pred (B, L, I, J), flow (B, 2, I, J)."""
    _check_pred_flow(pred, flow, "I, J")


def _check_pred_flow(pred: Tensor, flow: Tensor, grid: str) -> None:
    """pred (B, L, *grid) and flow (B, 2, *grid) of one batch and grid, L >= 1; ``grid`` names the axes."""
    dim = 2 + len(grid.split(","))
    if not isinstance(flow, Tensor) or flow.dim() != dim or flow.shape[1] != 2:
        raise ValueError(f"expected flow (B, 2, {grid}), got {tuple(getattr(flow, 'shape', ()))}")
    if not isinstance(pred, Tensor) or pred.dim() != dim:
        raise ValueError(f"expected pred (B, L, {grid}), got {tuple(getattr(pred, 'shape', ()))}")
    if pred.shape[0] != flow.shape[0] or pred.shape[2:] != flow.shape[2:]:
        raise ValueError(
            f"pred (B, L, {grid}) and flow (B, 2, {grid}) disagree: pred {tuple(pred.shape)}, "
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
IRLS_SCHEDULE: tuple[tuple[int, int, float], ...] = ((17, 9, 0.03), (5, 3, 0.02), (1, 3, 0.01))
IRLS_GAMMA = 0.4  # δ shrinks by this factor per MM step (continuation) down to the level's floor
IRLS_MIN_POINTS = 1024  # a coarse level's stride is lowered until it samples at least this many pixels
IRLS_DELTA_ABS = 1e-4  # absolute δ floor, relative to the sample's mean |flow| (weights stay finite)
_DELTA_TINY = 1e-12  # and in flow units: with a zero flow, weights stay below 1e12 (no float32 overflow)
IRLS_TOL = 1e-6  # a level stops early once a SQUAREM cycle improves no sample's objective by this
# The full-resolution level goes on, up to IRLS_MAX_EXTRA_STEPS more MM steps, while its last
# SQUAREM cycle still lowered some sample's objective by more than IRLS_CONTINUE_TOL (relative):
# when the coarse samples misled the start (e.g. a mask split evenly between two motions).
IRLS_CONTINUE_TOL = 2e-3
IRLS_MAX_EXTRA_STEPS = 9
_SQUAREM_MAX_STEP = 1e3  # bound on the SQUAREM step length |α|

# (id(tensor), what) → (weak reference to the tensor, derived tensors); an entry goes with its tensor.
_derived_cache: dict[tuple[int, tuple], tuple[weakref.ref, tuple]] = {}


def _derived(t: Tensor, what: tuple, make: Callable[[], tuple]) -> tuple:
    """``make()``, cached for the life of ``t`` (a basis from :func:`conditioned_basis`: never modified)."""
    key = (id(t), what)
    hit = _derived_cache.get(key)
    if hit is not None and hit[0]() is t:
        return hit[1]
    out = make()
    _derived_cache[key] = (weakref.ref(t), out)
    weakref.finalize(t, _derived_cache.pop, key, None)
    return out


def _sampled_basis(Xc: Tensor, XX: Tensor, stride: int) -> tuple[Tensor, Tensor, Tensor, bool]:
    """The basis on every ``stride``-th pixel, laid out for the IRLS products (cached):

    XsT (ft, n), XXuT (ft(ft+1)/2, n) the distinct per-pixel products X'_f X'_g (f ≤ g), full_idx
    (ft²,) rebuilding the ft × ft matrix from them, and whether the last basis function is the
    constant 1. Transposed: (k, n) @ (n, m) products run several times faster than
    (m, n) @ (n, k) ones on CPU BLAS.
    """
    ft = Xc.shape[1]

    def make() -> tuple:
        iu = torch.triu_indices(ft, ft, device=XX.device)
        full = torch.empty(ft, ft, dtype=torch.long, device=XX.device)
        arange = torch.arange(iu.shape[1], device=XX.device)
        full[iu[0], iu[1]] = arange
        full[iu[1], iu[0]] = arange
        XsT = Xc[::stride].t().contiguous()
        return XsT, XX[::stride, iu[0] * ft + iu[1]].t().contiguous(), full.reshape(-1), bool((XsT[-1] == 1).all())

    return _derived(XX, ("irls", stride, id(Xc)), make)  # type: ignore[return-value]


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
    """The robust M-step problem on every ``stride``-th pixel, buffers reused across MM steps.

    pred (B, L, N), flow (B, 2, N), Xc (N, ft), XX (N, ft²) at full resolution; the level works on
    its sample, n pixels. The independent problems ("blocks") are (B, L, K): K = 2 for ``l1``
    (one per flow channel), K = 1 for ``l2``.
    """

    def __init__(self, pred: Tensor, flow: Tensor, Xc: Tensor, XX: Tensor, stride: int, v_distance: str) -> None:
        self.XsT, self.XXuT, self.full_idx, self.const_last = _sampled_basis(Xc, XX, stride)
        self.l1 = v_distance == "l1"
        self.ft, n = self.XsT.shape
        B, L, _ = pred.shape
        K = 2 if self.l1 else 1
        self.B, self.L, self.K, self.n = B, L, K, n
        if stride == 1:
            self.p, self.f = pred, flow
        else:
            self.p = _scratch("p", (B, L, n), pred).copy_(pred[..., ::stride])
            self.f = _scratch("f", (B, 2, n), flow).copy_(flow[..., ::stride])
        self.pk = self.p[:, :, None]  # (B, L, 1, n)
        self.r = _scratch("r", (B, L, 2, n), flow)  # residual, then W·r
        self.a = _scratch("a", (B, L, K, n), flow)  # distance, then W
        self.t = _scratch("t", (B, L, K, n), flow)  # pred · distance
        self.mass = self.p.sum(-1)  # (B, L)

    def _distance(self, theta: Tensor) -> None:
        """self.r ← flow − X'θ' (B, L, 2, n); self.a ← |r_c| (l1) or ‖r‖ (l2) (B, L, K, n).

        X'θ' as ft multiply-adds over (B·L·2, n) rows: a (B·L·2, ft) @ (ft, n) product with ft
        as small as 3 or 6 runs several times slower on CPU BLAS.
        """
        th = theta.to(self.r.dtype).transpose(-1, -2).reshape(-1, self.ft, 1)  # (B·L·2, ft, 1)
        fk = self.f[:, None]  # (B, 1, 2, n)
        last = self.ft - 1 if self.const_last else self.ft
        if self.const_last:  # the last basis function is 1: start from flow − θ_last
            torch.sub(fk, th[:, last].view(self.B, self.L, 2, 1), out=self.r)
        else:
            self.r.copy_(fk.expand_as(self.r))
        rv = self.r.view(-1, self.n)
        for k in range(last):
            rv.addcmul_(th[:, k], self.XsT[k:k + 1], value=-1.0)
        if self.l1:
            torch.abs(self.r, out=self.a)
        else:
            a, r = self.a[:, :, 0], self.r
            torch.mul(r[:, :, 0], r[:, :, 0], out=a).addcmul_(r[:, :, 1], r[:, :, 1]).sqrt_()

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

    def mean_abs_flow(self) -> Tensor:
        """Mean |flow| per sample (B,) on this level's pixels."""
        return self.f.abs().mean((1, 2))

    def _gram(self, W: Tensor) -> Tensor:
        """Σ_i W X'ᵀX' for W (B, L, K, n) → (B, L, K, ft, ft)."""
        A = (self.XXuT @ W.reshape(-1, self.n).t()).t()[:, self.full_idx]
        return A.reshape(*W.shape[:3], self.ft, self.ft)

    def _project(self, Y: Tensor) -> Tensor:
        """Σ_i Y X' for Y (B, L, C, n) → (B, L, C, ft)."""
        return (self.XsT @ Y.reshape(-1, self.n).t()).t().reshape(*Y.shape[:3], self.ft)

    def ols(self) -> Tensor:
        """Weighted least squares with weights pred on this sample: θ' (B, L, ft, 2)."""
        A = self._gram(self.pk)[:, :, 0]
        rhs = self._project(torch.mul(self.pk, self.f[:, None], out=self.r))  # (B, L, 2, ft)
        return _solve_small(A, rhs.transpose(-1, -2))

    def step(self, theta: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
        """One MM step from θ' (B, L, ft, 2), weights pred / max(distance, δ), δ (B, L, K).

        Returns (the new θ', the objective at the given θ' per block (B, L, K)).
        """
        self._distance(theta)
        obj = self._objective()
        W = torch.div(self.pk, torch.maximum(self.a, delta[..., None], out=self.a), out=self.a)  # (B, L, K, n)
        A = self._gram(W)  # (B, L, K, ft, ft)
        g = self._project(self.r.mul_(W))  # X'ᵀ W r: (B, L, 2, ft)
        if self.l1:  # one problem per channel
            d = _solve_small(A, g[..., None])[..., 0].transpose(-1, -2)  # (B, L, ft, 2)
        else:
            d = _solve_small(A[:, :, 0], g.transpose(-1, -2))
        return theta + d.to(theta.dtype), obj


def _solve_small(A: Tensor, rhs: Tensor) -> Tensor:
    """:func:`_solve_normal` for the IRLS's tiny systems, solved on the CPU whatever the device.

    On a GPU a batch of a few dozen 3 × 3 or 6 × 6 float64 Cholesky solves costs about three
    times the round trip to the host (measured on an H200: 0.41 ms against 0.13 ms).
    """
    if A.device.type == "cpu":
        return _solve_normal(A, rhs)
    return _solve_normal(A.cpu(), rhs.cpu()).to(rhs.device)


def _block_where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Per-block select for θ' (B, L, ft, 2); mask (B, L, K): per channel (K = 2) or both (K = 1)."""
    return torch.where(mask[:, :, None, :], a, b)


def _block_sq_norm(x: Tensor, l1: bool) -> Tensor:
    """Squared norm of θ'-shaped x (B, L, ft, 2) per block: (B, L, 2) for l1, (B, L, 1) for l2."""
    s = (x * x).sum(-2)
    return s if l1 else s.sum(-1, keepdim=True)


def _squarem_level(level: _RobustLevel, theta: Tensor, n_steps: int, delta_at: Callable[[int], Tensor],
                   tol: float, max_steps: int | None = None, continue_tol: float = 0.0) -> tuple[Tensor, int]:
    """``n_steps`` MM steps on one level: SQUAREM cycles (Varadhan & Roland 2008: two MM steps,
    an extrapolation along their differences, a stabilising MM step), then plain steps.

    ``delta_at(k)`` gives δ (B, L, K) for the level's k-th step. The level stops early once a
    cycle lowers no sample's objective by more than ``tol`` (relative), and goes on with more
    cycles, up to ``max_steps``, while the last one lowered some sample's objective by more than
    ``continue_tol``. Returns the best θ' seen (per block, by the level's own objective) and the
    number of steps done.
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

    max_steps = n_steps if max_steps is None else max(max_steps, n_steps)
    k, improving = 0, False
    while k < n_steps or (improving and k + 3 <= max_steps):
        if 0 < n_steps - k < 3:
            th_next, obj = level.step(theta, delta_at(k))
            keep(theta, obj)
            theta = th_next
            k += 1
            continue
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
        start, end = obj0.sum((1, 2)), best_obj.sum((1, 2))  # per sample
        gain = (start - end) / end.clamp(min=torch.finfo(end.dtype).tiny)
        if k < n_steps and not bool((gain > tol).any()):
            break
        improving = bool((gain > continue_tol).any())
    keep(theta, level.objective(theta))
    return best, k


def fit_theta_irls(pred: Tensor, flow: Tensor, Xc: Tensor, XX: Tensor, v_distance: str,
                   n_iter: int | None = None, theta0: Tensor | None = None,
                   schedule: Sequence[tuple[int, int, float]] | None = None, tol: float = IRLS_TOL) -> Tensor:
    """Iteratively reweighted least squares for the ``l1`` and ``l2`` objectives, coarse to fine.

    Each majorise-minimise (MM) step solves the weighted least squares with weights
    pred / max(d, δ), d = |r_c| per channel (l1) or ‖r‖ (l2): it lowers the Huber-smoothed
    objective of width δ. δ starts at the mask-weighted mean residual of the OLS start and shrinks
    by ``IRLS_GAMMA`` per step down to a floor, a fraction of that start (1–3 %, the levels' last
    entries; never below ``IRLS_DELTA_ABS`` × mean |flow|): wide early steps, then a fixed point
    whose l1/l2 objective is within about 2e-4 (relative) of the exact optimum, which is what
    IRLS with a vanishing δ approaches only very slowly. SQUAREM extrapolation accelerates the
    MM steps, and the levels of ``schedule`` (default ``IRLS_SCHEDULE``: (pixel stride, steps,
    floor)) run them on pixel samples, coarse to fine; the full-resolution level adds SQUAREM
    cycles while they still pay (``IRLS_CONTINUE_TOL``). A block that a sparse sample saw badly
    (a small region) restarts from the next level's OLS. On each level the best θ' seen is kept
    per block (layer, and channel for l1), so the result is never worse than the start of the
    full-resolution level. ``n_iter`` overrides the first level's step count; ``theta0``
    (B, L, ft, 2) replaces the OLS start. Syncs with the device a few times per call (early
    stops), and reuses CPU scratch buffers across calls (see :func:`_scratch`).

    pred (B, L, N), flow (B, 2, N), Xc (N, ft), XX (N, ft²) → θ' (B, L, ft, 2).
    """
    if v_distance == "squared":
        return fit_theta_ols(pred, flow, Xc, XX) if theta0 is None else theta0
    B, L, N = pred.shape
    levels = list(IRLS_SCHEDULE if schedule is None else schedule)
    if n_iter is not None:
        levels[0] = (levels[0][0], int(n_iter), levels[0][2])
    theta, s0, prev, steps_done, delta_abs = theta0, None, None, 0, None
    for index, (stride, n_steps, floor) in enumerate(levels):
        stride = max(1, min(stride, N // IRLS_MIN_POINTS))  # small images: denser samples, or all pixels
        level = _RobustLevel(pred, flow, Xc, XX, stride, v_distance)
        if delta_abs is None:  # estimated on the first (sparsest) sample
            delta_abs = (level.mean_abs_flow() * IRLS_DELTA_ABS + _DELTA_TINY)[:, None, None]  # (B, 1, 1)
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

        def delta_at(k: int, s0: Tensor = s0, floor: float = floor, k0: int = steps_done,
                     lo: Tensor = delta_abs) -> Tensor:
            return torch.maximum(s0 * max(IRLS_GAMMA ** (k0 + k), floor), lo)  # (B, L, K)

        last = index == len(levels) - 1 and stride == 1
        theta, done = _squarem_level(level, theta, n_steps, delta_at, tol,
                                     max_steps=n_steps + IRLS_MAX_EXTRA_STEPS if last else None,
                                     continue_tol=IRLS_CONTINUE_TOL)
        steps_done += done
        prev = level
    return theta


def fit_theta_optim(pred: Tensor, flow: Tensor, Xc: Tensor, XX: Tensor, v_distance: str,
                    max_iter: int = 50) -> Tensor:
    """The original's ``Optim``: start from OLS, then L-BFGS (strong-Wolfe line search) on
    Σ_k Σ_i pred_k(i) · d(flow(i), X θ_k(i)) with pred detached. Slow; kept for reference.

    One L-BFGS run minimises the sum over samples and layers (the blocks are independent, so
    the sum's minimiser is every block's). ``max_iter`` = 50 by default (up to 1.25× as many
    objective evaluations with the line search); the tolerances are tight, so it stops earlier
    only when the line search stalls (float32 objective). It works in the conditioned basis,
    which is better conditioned than the original's raw one and can only help it.
    pred (B, L, N), flow (B, 2, N) → θ' (B, L, ft, 2).
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
    return _fit_flat(pred, flow, I * J, Xc, XX, v_distance, theta_method, dtype, **solver_kw), Xc, M


def _fit_flat(pred: Tensor, flow: Tensor, N: int, Xc: Tensor, XX: Tensor, v_distance: str, theta_method: str,
              dtype: torch.dtype, **solver_kw) -> Tensor:
    """The solver dispatch of :func:`fit_theta` and :func:`fit_theta_clip`: pred (B, L, ...) and
    flow (B, 2, ...) flattened to N pixels (or voxels), detached, in ``dtype``, autocast off → θ'."""
    B, L = pred.shape[:2]
    with torch.no_grad(), torch.autocast(pred.device.type, enabled=False):
        p = pred.detach().reshape(B, L, N).to(dtype)
        f = flow.detach().reshape(B, 2, N).to(dtype)
        if theta_method == "OLS" or v_distance == "squared":
            theta_c = fit_theta_ols(p, f, Xc, XX)
        elif theta_method == "IRLS":
            theta_c = fit_theta_irls(p, f, Xc, XX, v_distance, **solver_kw)
        else:
            theta_c = fit_theta_optim(p, f, Xc, XX, v_distance, **solver_kw)
    return theta_c


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
            theta_method: str = "IRLS", entropy_weight: float = 0.01, with_parametric_flow: bool = False,
            **solver_kw) -> dict[str, Tensor]:
    """The full per-sample criterion, assembled here only (models and ``coherence_loss`` call it):
    M-step (θ fitted to each mask, detached), then the mask-weighted residual and the entropy.

    pred (B, L, I, J) softmax over L, flow (B, 2, I, J). Returns ``losses`` = coherence −
    entropy_weight · entropy, ``coherence_losses``, ``entropies`` (all (B,), differentiable with
    respect to ``pred``), ``theta`` (B, L, ft, 2) in the original basis, the conditioned
    ``theta_c``, ``Xc`` and ``M``, and with ``with_parametric_flow`` the mask-weighted
    ``ParametricFlow`` (B, 2, I, J), detached.
    """
    theta_c, Xc, M = fit_theta(pred, flow, param_model, v_distance, theta_method, **solver_kw)  # checks shapes
    return _criterion(pred, flow, theta_c, Xc, M, v_distance, entropy_weight, with_parametric_flow)


def _criterion(pred: Tensor, flow: Tensor, theta_c: Tensor, Xc: Tensor, M: Tensor, v_distance: str,
               entropy_weight: float, with_parametric_flow: bool) -> dict[str, Tensor]:
    """The criterion's terms once θ' is fitted: pred (B, L, I, J) and flow (B, 2, I, J) (a clip's
    voxels as rows of one image), the keys of :func:`em_loss`."""
    coherence = coherence_terms(pred, flow, Xc, theta_c, v_distance)
    ent = entropy(pred).to(coherence.dtype)
    out = {
        "losses": coherence - entropy_weight * ent,
        "coherence_losses": coherence,
        "entropies": ent,
        "theta": theta_to_original(theta_c, M),
        "theta_c": theta_c,
        "Xc": Xc,
        "M": M,
    }
    if with_parametric_flow:
        out["ParametricFlow"] = parametric_flow(pred.detach(), Xc, theta_c)
    return out


# --------------------------------------------------------------------------------------------
# Classical EM (the non-learned baseline): the masks come from EM on the flow itself
# --------------------------------------------------------------------------------------------
def em_initial_masks(flow: Tensor, n_masks: int, param_model: str) -> Tensor:
    """Deterministic start from the flow by sequential robust fits: flow (B, 2, I, J) → (B, L, I, J).

    A robust (l1 IRLS) motion is fitted to the pixels not yet assigned; its inliers (residual
    below 2.5 × their median residual) form the next layer (layer 0 is usually the background);
    layer L−1 takes what is left. The hard partition is softened to 0.9 · hard + 0.1 / L.
    """
    B, _, I, J = flow.shape
    N = I * J
    remaining = torch.ones(B, N, dtype=flow.dtype, device=flow.device)
    f = flow.reshape(B, 1, 2, N)
    layers = []
    for _ in range(n_masks - 1):
        theta_c, Xc, _ = fit_theta(remaining.reshape(B, 1, I, J), flow, param_model, "l1", "IRLS")
        r = (f - layer_flows(Xc, theta_c)).abs().sum(2)[:, 0]  # (B, N)
        masked = torch.where(remaining > 0, r, torch.full_like(r, float("nan")))
        scale = masked.nanmedian(1).values.nan_to_num(0.0)[:, None] + 1e-6
        inliers = (r < 2.5 * scale).to(flow.dtype) * remaining
        layers.append(inliers)
        remaining = remaining - inliers
    layers.append(remaining)
    hard = torch.stack(layers, 1)  # (B, L, N), a partition
    return (0.9 * hard + 0.1 / n_masks).reshape(B, n_masks, I, J)


@torch.no_grad()
def em_segment(flow: Tensor, n_masks: int, param_model: str = "Quadratic", v_distance: str = "l1",
               theta_method: str = "IRLS", iterations: int = 20) -> Tensor:
    """A mixture of ``n_masks`` parametric motions fitted to each flow (B, 2, I, J) by EM → pred
    (B, L, I, J), softmax over L, float32.

    Start: :func:`em_initial_masks`. Then ``iterations`` times: M-step θ_k fitted to pred_k
    (``theta_method``); E-step pred_k ∝ π_k · p(d_k | s_k), a Laplace (``l1``, ``l2``) or Gaussian
    (``squared``) likelihood of the residual distance d_k with a per-layer scale s_k estimated from
    the weighted residuals (floored at 1e-3 × mean |flow|), and mixing weights π_k = mean pred_k.
    """
    flow = flow.float()
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"expected Flow (B, 2, I, J), got {tuple(flow.shape)}")
    B, _, I, J = flow.shape
    L = int(n_masks)
    pred = em_initial_masks(flow, L, param_model)
    f = flow.reshape(B, 1, 2, I * J)
    floor = 1e-3 * flow.abs().mean((1, 2, 3))[:, None, None] + 1e-6  # (B, 1, 1)
    gaussian = v_distance == "squared"
    for _ in range(iterations):
        theta_c, Xc, _ = fit_theta(pred, flow, param_model, v_distance, theta_method)
        d = residual_distance(f - layer_flows(Xc, theta_c), v_distance, dim=2)  # (B, L, N)
        p = pred.reshape(B, L, I * J)
        mass = p.sum(2, keepdim=True).clamp(min=1e-6)  # (B, L, 1)
        scale = ((p * d).sum(2, keepdim=True) / mass / (1.0 if gaussian else 2.0)).clamp(min=floor)
        log_norm = torch.log(scale) * (1.0 if gaussian else 2.0)
        log_pi = torch.log(mass / (I * J))
        pred = torch.softmax(log_pi - log_norm - d / scale, dim=1).reshape(B, L, I, J)
    return pred


def flow_from_theta(theta: Tensor, param_model: str, img_size: Sequence[int]) -> Tensor:
    """Flow fields from θ in the original basis: theta (B, L, ft, 2) → (B, L, 2, I, J).

    A space-time ``param_model`` (``ST_MODELS``) takes ``img_size`` = (T, I, J) and gives
    (B, L, 2, T, I, J): :func:`flow_from_theta_clip`.
    """
    if param_model in ST_MODELS:
        return flow_from_theta_clip(theta, param_model, img_size)
    X = make_basis(param_model, img_size, device=theta.device, dtype=torch.float64)
    B, L = theta.shape[:2]
    return layer_flows(X, theta.double()).to(theta.dtype).reshape(B, L, 2, int(img_size[0]), int(img_size[1]))


def param_model_of(theta: Tensor) -> str:
    """The motion model whose θ (..., ft, 2) this is, from ft (3: Affine, 6: Quadratic)."""
    for name, ft in FT.items():
        if theta.shape[-2] == ft:
            return name
    raise ValueError(f"theta (..., ft, 2) with ft in {sorted(FT.values())} expected, got {tuple(theta.shape)}")


def parametric_flow_of(pred: Tensor, theta: Tensor) -> Tensor:
    """Mask-weighted parametric flow Σ_k pred_k X θ_k from θ (B, L, ft, 2) in the original basis and
    pred (B, L, I, J) → (B, 2, I, J), detached: what figures draw (the motion model follows from ft)."""
    B, L, I, J = pred.shape
    with torch.no_grad():
        flows = flow_from_theta(theta.detach(), param_model_of(theta), (I, J))  # (B, L, 2, I, J)
        return (pred.detach()[:, :, None].to(flows.dtype) * flows).sum(1)


def mean_vector_norm(flow: Tensor) -> Tensor:
    """Mean per-pixel vector norm of flow (B, 2, I, J) → (B,)."""
    return torch.linalg.vector_norm(flow, dim=1).flatten(1).mean(1)


# --------------------------------------------------------------------------------------------
# Space-time models: one parametric motion per segment over a clip of T frames
# --------------------------------------------------------------------------------------------
# A segment's flow over the clip is Σ_{τ,s} θ[τ·ft_s + s] · b_τ(t) · x_s(i, j): the spatial basis x
# (Affine or Quadratic, as above) times a temporal basis b (ft_t functions of the frame index t).
# The clip basis (T·I·J, ft_t·ft_s) has its rows (voxels) ordered t slowest, then i, then j, and its
# columns τ slowest, so θ (B, L, ft, 2) reads ``theta.unflatten(-2, (ft_t, ft_s))`` (B, L, ft_t, ft_s, 2):
# a spatial θ per temporal function. The solvers are the frame ones, run on the clip's voxels.
def check_st_model(param_model: str) -> tuple[str, str, int]:
    """(spatial model, ``"poly"`` or ``"bspline"``, degree d or spacing K) of a space-time model, or a
    ValueError listing the valid names (``ST_MODELS``)."""
    if param_model not in ST_MODELS:
        raise ValueError(f"space-time param_model must be one of {list(ST_MODELS)}, got {param_model!r}")
    return ST_MODELS[param_model]


def _check_frames(T: int) -> int:
    try:
        n = operator.index(T)  # ints, numpy ints, 0-d integer tensors; not floats
    except TypeError:
        n = None
    if n is None or isinstance(T, bool) or n < 1:
        raise ValueError(f"expected a clip of T >= 1 frames, got T = {T!r}")
    return n


def temporal_ft(param_model: str, T: int) -> int:
    """ft_t, the number of temporal functions of ``param_model`` over T frames: d + 1 for
    ``…ST<d>``; n + 3 for ``…BSpline<K>``, n = ⌈(T − 1)/K⌉ knot intervals over the clip (see
    :func:`bspline_knots`)."""
    _, kind, n = check_st_model(param_model)
    T = _check_frames(T)
    return n + 1 if kind == "poly" else -(-(T - 1) // n) + 3


def bspline_knots(param_model: str, T: int) -> tuple[float, list[float]]:
    """(h, centres) of a ``…BSpline<K>`` model over T frames, in frames.

    The clip [0, T − 1] is cut into n = ⌈(T − 1)/K⌉ equal intervals of h = (T − 1)/n frames: h = K
    when K divides T − 1, otherwise the largest spacing below K that makes both ends of the clip
    knots (a fixed K would leave an end function touching the clip on a frame or two, with values
    near 1e-3, and its control point all but undetermined). The n + 3 cubic B-splines are centred
    on −h, 0, h, …, (n + 1)·h: every one whose support (c − 2h, c + 2h) meets the clip. T = 1: h = K.
    """
    _, kind, K = check_st_model(param_model)
    if kind != "bspline":
        raise ValueError(f"expected a B-spline space-time model (…BSpline<K>), got {param_model!r}")
    ft_t = temporal_ft(param_model, T)
    n = ft_t - 3
    h = (T - 1) / n if n else float(K)
    return h, [(m - 1) * h for m in range(ft_t)]


def st_ft(param_model: str, T: int) -> int:
    """ft = ft_t · ft_s, the number of parameters per flow component of a space-time model over T frames."""
    return temporal_ft(param_model, T) * FT[check_st_model(param_model)[0]]


def bspline3(x: Tensor) -> Tensor:
    """The centred cardinal cubic B-spline β3, elementwise: 2/3 − x² + |x|³/2 for |x| < 1,
    (2 − |x|)³/6 for 1 ≤ |x| < 2, 0 beyond (β3(0) = 2/3, β3(±1) = 1/6; integer shifts sum to 1)."""
    a = x.abs()
    inner = 2.0 / 3.0 - a * a + 0.5 * a * a * a
    outer = torch.clamp(2.0 - a, min=0.0) ** 3 / 6.0
    return torch.where(a < 1, inner, outer)


def _legendre(x: Tensor, d: int) -> list[Tensor]:
    """[P_0(x), …, P_d(x)] by Bonnet's recurrence (n + 1) P_{n+1} = (2n + 1) x P_n − n P_{n−1}."""
    P = [torch.ones_like(x), x]
    for n in range(1, d):
        P.append(((2 * n + 1) * x * P[n] - n * P[n - 1]) / (n + 1))
    return P[: d + 1]


def temporal_basis(param_model: str, T: int, centered: bool = False, device=None,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """The temporal basis of a space-time model, (T, ft_t): row t is frame t of the clip.

    ``…ST<d>`` (polynomial of degree d): [t^d, …, t, 1] of the frame index t = 0 … T − 1 (so a
    θ's coefficients are per-frame rates, whatever the clip's length); ``centered``: the Legendre
    polynomials [P_d(τ), …, P_1(τ), 1] of τ = linspace(−1, 1, T), nearly orthogonal over the clip
    (the temporal counterpart of the centred spatial coordinates; the Gram of the monomials of t
    grows like T^(2d)). The constant comes last, like the spatial bases' 1.
    ``…BSpline<K>``: the cubic B-splines β3((t − c_m)/h), m = 0 … ft_t − 1, with h and the centres
    c_m of :func:`bspline_knots`; they sum to 1 at every frame and take 1/6, 2/3, 1/6 at a knot.
    ``centered``: an orthonormal basis of their span on the clip's frames (QR, scaled by √T so the
    entries stay O(1)): the B-splines' own Gram has condition numbers of 1e3 and more, the end
    functions touching the clip only at a few frames with small values.

    ``centered`` (the solvers' basis) raises a ValueError when the ft_t functions are not independent
    on T frames (T < d + 1, or too few frames for the B-splines' control points).
    """
    _, kind, n = check_st_model(param_model)
    ft_t = temporal_ft(param_model, T)
    t = torch.arange(T, device=device, dtype=torch.float64)
    if kind == "poly":
        X = torch.stack([t ** p for p in range(n, 0, -1)] + [torch.ones_like(t)], dim=-1)
    else:
        h, centres = bspline_knots(param_model, T)
        X = bspline3((t[:, None] - torch.tensor(centres, device=device, dtype=torch.float64)) / h)
    if not centered:
        return X.to(dtype)
    rank = int(torch.linalg.matrix_rank(X.cpu()))
    if rank < ft_t:
        raise ValueError(f"{param_model} over T = {T} frames has {ft_t} temporal functions but only {rank} "
                         f"independent ones on the clip's frames: use a longer clip or a simpler model")
    if kind == "poly":
        x = torch.linspace(-1.0, 1.0, T, device=device, dtype=torch.float64)
        return torch.stack(_legendre(x, n)[::-1], dim=-1).to(dtype)
    return (torch.linalg.qr(X.cpu()).Q * math.sqrt(T)).to(device=device, dtype=dtype)


def _space_time(Xt: Tensor, Xs: Tensor) -> Tensor:
    """Row-wise Kronecker product: Xt (T, ft_t), Xs (N, ft_s) → (T·N, ft_t·ft_s) with
    X[t·N + n, τ·ft_s + s] = Xt[t, τ] · Xs[n, s]."""
    T, ft_t = Xt.shape
    N, ft_s = Xs.shape
    return (Xt[:, None, :, None] * Xs[None, :, None, :]).reshape(T * N, ft_t * ft_s)


def _clip_size(clip_size: Sequence[int]) -> tuple[int, int, int]:
    if len(clip_size) != 3:
        raise ValueError(f"expected a clip size (T, I, J), got {tuple(clip_size)}")
    T, I, J = (int(v) for v in clip_size)
    return _check_frames(T), I, J


def make_basis_clip(param_model: str, clip_size: Sequence[int], centered: bool = False, device=None,
                    dtype: torch.dtype = torch.float32) -> Tensor:
    """The space-time basis ``X`` (T·I·J, ft_t·ft_s) over a clip (T, I, J): temporal basis
    (:func:`temporal_basis`) ⊗ spatial basis (:func:`make_basis`), rows t slowest then i then j,
    columns τ slowest. Original coordinates t, i/I, j/J, or the centred ones if ``centered``."""
    spatial = check_st_model(param_model)[0]
    T, I, J = _clip_size(clip_size)
    Xs = make_basis(spatial, (I, J), centered, device=device, dtype=torch.float64)
    Xt = temporal_basis(param_model, T, centered, device=device, dtype=torch.float64)
    return _space_time(Xt, Xs).to(dtype)


@functools.lru_cache(maxsize=8)  # clip bases are T times a frame's: keep fewer
def _conditioning_clip(param_model: str, T: int, I: int, J: int, device_str: str,
                       dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    """(X' (T·I·J, ft), X'⊗X' (T·I·J, ft²) in ``dtype``, M float64 (ft, ft)) with X' = X M."""
    spatial = ST_MODELS[param_model][0]
    device = torch.device(device_str)
    Xct = temporal_basis(param_model, T, centered=True, dtype=torch.float64)  # checks identifiability
    ft_t = Xct.shape[1]
    # M_s exactly as the frame model's (_conditioning) computes it, so that one frame (T = 1) of a
    # degree-0 model is bit for bit the frame model.
    Xs = make_basis(spatial, (I, J), device=device, dtype=torch.float64)
    Xcs = make_basis(spatial, (I, J), centered=True, device=device, dtype=torch.float64)
    Ms = torch.linalg.lstsq(Xs.cpu(), Xcs.cpu()).solution.to(device)
    # The centred temporal functions lie in the span of the original ones (Legendre polynomials of
    # τ = 2t/(T − 1) − 1 are polynomials of t; the orthonormalised B-splines combinations of them).
    Mt = torch.linalg.lstsq(temporal_basis(param_model, T, dtype=torch.float64), Xct).solution
    # (Xt ⊗ Xs)(Mt ⊗ Ms) = (Xt Mt) ⊗ (Xs Ms) row-wise (mixed-product property). With d = 0, Mt = [1]:
    # M_s itself, memory layout included (lstsq answers column-major), for the same θ bits.
    M = Ms if ft_t == 1 else torch.kron(Mt.to(device).contiguous(), Ms.contiguous())
    Xc = _space_time(Xct.to(device), Xcs)
    ft = Xc.shape[1]
    # The products in float64 then rounded, as the frame model's, but a frame at a time: the float64
    # (T·I·J, ft²) whole would double the peak memory of the largest tensor here.
    XX = torch.empty(Xc.shape[0], ft * ft, dtype=dtype, device=device)
    for a in range(0, Xc.shape[0], I * J):
        Xr = Xc[a:a + I * J]
        XX[a:a + I * J] = (Xr[:, :, None] * Xr[:, None, :]).reshape(-1, ft * ft).to(dtype)
    return Xc.to(dtype), XX, M


def conditioned_basis_clip(param_model: str, clip_size: Sequence[int], device=None,
                           dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    """Cached ``(Xc (T·I·J, ft), XcXc (T·I·J, ft²), M (ft, ft))`` with ``Xc = make_basis_clip(...) @ M``
    for a clip (T, I, J); do not modify. M = M_t ⊗ M_s, the temporal and spatial changes of basis.

    A ValueError if the temporal functions are not independent on T frames (T < d + 1, or too few
    frames for the B-splines' control points). Memory: XcXc holds T·I·J·ft² numbers (QuadraticST1,
    T = 5 at 128 × 224: 83 MB in float32), as the frame solvers need them.
    """
    check_st_model(param_model)
    T, I, J = _clip_size(clip_size)
    device = torch.device("cpu") if device is None else torch.device(device)
    return _conditioning_clip(param_model, T, I, J, str(device), dtype)


def check_pred_flow_clip(pred: Tensor, flow: Tensor) -> None:
    """Shape checks of the clip entry points: pred (B, L, T, I, J), flow (B, 2, T, I, J)."""
    _check_pred_flow(pred, flow, "T, I, J")
    if pred.shape[2] < 1:
        raise ValueError(f"expected a clip of T >= 1 frames, got pred {tuple(pred.shape)}")


def fit_theta_clip(pred: Tensor, flow: Tensor, param_model: str = "QuadraticST1", v_distance: str = "l1",
                   theta_method: str = "IRLS", **solver_kw) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`fit_theta` over a clip: one space-time θ per layer, fitted to all the clip's voxels.

    pred (B, L, T, I, J), flow (B, 2, T, I, J) → (θ' (B, L, ft, 2) in the conditioned basis,
    Xc (T·I·J, ft), M (ft, ft)), ft = :func:`st_ft`; θ = ``theta_to_original(θ', M)``. The solvers
    and their options are the frame ones (the IRLS's coarse levels sample every 17th, 5th voxel).
    """
    check_pred_flow_clip(pred, flow)
    check_theta_method(theta_method)
    check_v_distance(v_distance)
    check_st_model(param_model)
    B, L, T, I, J = pred.shape
    dtype = torch.float64 if torch.float64 in (pred.dtype, flow.dtype) else torch.float32
    Xc, XX, M = conditioned_basis_clip(param_model, (T, I, J), pred.device, dtype)
    return _fit_flat(pred, flow, T * I * J, Xc, XX, v_distance, theta_method, dtype, **solver_kw), Xc, M


def coherence_terms_clip(pred: Tensor, flow: Tensor, Xc: Tensor, theta_c: Tensor, v_distance: str) -> Tensor:
    """:func:`coherence_terms` over a clip: (1/(T·I·J)) Σ_k Σ_voxels pred_k d(flow, X θ_k), (B,).

    pred (B, L, T, I, J), flow (B, 2, T, I, J), Xc (T·I·J, ft), θ' (B, L, ft, 2) (detached).
    """
    B, L, T, I, J = pred.shape
    return coherence_terms(pred.reshape(B, L, T * I, J), flow.reshape(B, 2, T * I, J), Xc, theta_c, v_distance)


def em_loss_clip(pred: Tensor, flow: Tensor, param_model: str = "QuadraticST1", v_distance: str = "l1",
                 theta_method: str = "IRLS", entropy_weight: float = 0.01, with_parametric_flow: bool = False,
                 **solver_kw) -> dict[str, Tensor]:
    """:func:`em_loss` over a clip with a space-time model (``ST_MODELS``).

    pred (B, L, T, I, J) softmax over L, flow (B, 2, T, I, J). Returns the same keys: ``losses``,
    ``coherence_losses``, ``entropies`` (B,), means over the clip's T·I·J voxels, differentiable with
    respect to ``pred``; ``theta`` (B, L, ft, 2) in the original basis (:func:`make_basis_clip`),
    ``theta_c``, ``Xc`` (T·I·J, ft), ``M``; with ``with_parametric_flow`` ``ParametricFlow``
    (B, 2, T, I, J), detached. ``…ST0`` on one frame (T = 1) is :func:`em_loss` bit for bit.
    """
    theta_c, Xc, M = fit_theta_clip(pred, flow, param_model, v_distance, theta_method, **solver_kw)  # checks
    B, L, T, I, J = pred.shape
    p = pred.reshape(B, L, T * I, J)  # the frame functions only use the product of the last two sizes
    out = _criterion(p, flow.reshape(B, 2, T * I, J), theta_c, Xc, M, v_distance, entropy_weight,
                     with_parametric_flow)
    if with_parametric_flow:
        out["ParametricFlow"] = out["ParametricFlow"].reshape(B, 2, T, I, J)
    return out


def flow_from_theta_clip(theta: Tensor, param_model: str, clip_size: Sequence[int]) -> Tensor:
    """Flow volumes from space-time θ in the original basis: theta (B, L, ft, 2), clip (T, I, J) →
    (B, L, 2, T, I, J)."""
    T, I, J = _clip_size(clip_size)
    ft = st_ft(param_model, T)
    if theta.dim() != 4 or theta.shape[-2:] != (ft, 2):
        raise ValueError(f"expected theta (B, L, {ft}, 2) for {param_model} over T = {T} frames, "
                         f"got {tuple(theta.shape)}")
    X = make_basis_clip(param_model, (T, I, J), device=theta.device, dtype=torch.float64)
    B, L = theta.shape[:2]
    return layer_flows(X, theta.double()).to(theta.dtype).reshape(B, L, 2, T, I, J)
