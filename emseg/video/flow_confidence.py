"""Warping by a flow, and a per-pixel flow confidence from forward–backward consistency.

Conventions: flows are (B, 2, I, J) in pixels of the grid they live on, channel 0 = u (along J,
rightwards), channel 1 = v (along I, downwards); the flow of frame t points from frame t to the
frame it was computed against. Confidences are (B, I, J) in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_flow(flow: Tensor, name: str = "flow") -> None:
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"expected {name} (B, 2, I, J), got {tuple(flow.shape)}")


def warp(x: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
    """Sample ``x`` at ``p + flow(p)`` (backward warping, bilinear).

    x (B, C, I, J), flow (B, 2, I, J) in pixels of that grid → (warped (B, C, I, J), inside (B, I, J)
    bool: the sample point lies in the image; outside it ``warped`` repeats the border).
    """
    _check_flow(flow)
    if x.dim() != 4 or x.shape[0] != flow.shape[0] or x.shape[2:] != flow.shape[2:]:
        raise ValueError(f"expected x (B, C, I, J) = ({flow.shape[0]}, C, {flow.shape[2]}, {flow.shape[3]}), "
                         f"got {tuple(x.shape)}")
    B, _, I, J = flow.shape
    jj = torch.arange(J, device=flow.device, dtype=flow.dtype).view(1, 1, J)
    ii = torch.arange(I, device=flow.device, dtype=flow.dtype).view(1, I, 1)
    xs = jj + flow[:, 0]
    ys = ii + flow[:, 1]
    inside = (xs >= 0) & (xs <= J - 1) & (ys >= 0) & (ys <= I - 1)
    # align_corners=True maps -1 and 1 to the centres of the first and last pixels.
    gx = 2 * xs / max(J - 1, 1) - 1
    gy = 2 * ys / max(I - 1, 1) - 1
    grid = torch.stack((gx, gy), dim=-1)
    out = F.grid_sample(x.to(flow.dtype), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.to(x.dtype), inside


def forward_backward_confidence(forward: Tensor, backward: Tensor, rel: float = 0.01, abs_px: float = 0.5) -> Tensor:
    """Confidence of ``forward`` (t → t+1) given ``backward`` (t+1 → t), both (B, 2, I, J).

    A correct flow returns to its start: ``e = |f(p) + b(p + f(p))|²`` is near 0. Following the usual
    test (|f + b|² against ``rel · (|f|² + |b|²) + abs_px``, Sundaram et al. 2010), the confidence is
    ``exp(−e / (rel · (|f|² + |b|²) + abs_px))``: 1 for a consistent pair, e⁻¹ at the test's threshold,
    and 0 where ``p + f(p)`` leaves the image (nothing to check it against; often an occlusion).
    """
    _check_flow(forward, "forward")
    _check_flow(backward, "backward")
    if forward.shape != backward.shape:
        raise ValueError(f"forward {tuple(forward.shape)} and backward {tuple(backward.shape)} differ in shape")
    b_at, inside = warp(backward, forward)
    e = (forward + b_at).square().sum(1)
    scale = rel * (forward.square().sum(1) + b_at.square().sum(1)) + abs_px
    return torch.exp(-e / scale) * inside


def resize_flow(flow: Tensor, size: tuple[int, int], rescale: bool) -> Tensor:
    """Bilinear resize of flow (B, 2, I, J) to ``size`` (I', J'); ``rescale`` multiplies u by J'/J and
    v by I'/I, so the vectors stay in pixels of the new grid (the network's input is *not* rescaled,
    as the authors' loader did; warping needs rescaled vectors)."""
    _check_flow(flow)
    I, J = flow.shape[2:]
    out = F.interpolate(flow, size=tuple(size), mode="bilinear", align_corners=False)
    if rescale:
        out = out * torch.tensor([size[1] / J, size[0] / I], dtype=out.dtype, device=out.device).view(1, 2, 1, 1)
    return out
