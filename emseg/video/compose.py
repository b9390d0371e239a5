"""The flow over k frames composed from k consecutive frame-to-frame flows.

Flow files (segment.py ``--flows``) hold one flow per frame, t → t+1, and no frames to estimate
t → t+k from; following each pixel along the chain gives it:

    F_{t→t+k}(p) = F_t(p) + F_{t+1}(p_1) + … + F_{t+k−1}(p_{k−1}),   p_j = p + F_{t→t+j}(p),

each F_{t+j} sampled bilinearly at p_j (:func:`emseg.video.flow_confidence.warp`). The noise of the k
flows adds up (about √k times one flow's, if independent), their motion k-fold, so a slow mover
stands about √k times higher above the noise: less than a direct estimate over the gap gives (whose
noise does not grow with k), but without the frames.

**A chain that leaves the frame.** Where p_j (j < k) falls outside the grid (outside the pixel
centres, ``warp``'s ``inside``) there is no F_{t+j} to sample: the pixel's chain stops after j flows
and its flow over k frames is the part composed so far extrapolated linearly, k/j × F_{t→t+j}(p)
(j = 1: k times its flow to t+1, the fallback segment.py's ``--gap`` uses for a video where the
long flow fails its check). ``steps`` says how many flows each pixel's chain composed (k where it
stayed in the frame), for callers to trust the extrapolated pixels less.

Conventions (``emseg.video.flow_confidence``'s): flows (B, 2, I, J) in pixels of their grid,
channel 0 = u (along J, rightwards), channel 1 = v (along I, downwards).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from emseg.video.flow_confidence import warp


def compose_flows(flows: Sequence[Tensor] | Tensor) -> tuple[Tensor, Tensor]:
    """The flow over ``k = len(flows)`` frames: ``flows`` = [F_t, …, F_{t+k−1}], each (B, 2, I, J)
    floating point on one grid and device (or one tensor (k, B, 2, I, J)) → (flow (B, 2, I, J) from
    frame t to t+k, steps (B, I, J) int64 in [1, k]: the flows each pixel's chain composed; where
    steps < k the chain left the frame and the flow is k/steps × the part composed; module docstring).

    k = 1 returns F_t itself (a copy) and steps 1. Values are not checked for finiteness: a NaN
    sampled along a chain stays in it.
    """
    flows = list(flows)
    if not flows:
        raise ValueError("compose_flows needs at least one flow (k >= 1), got none")
    first = flows[0]
    for j, f in enumerate(flows):
        if not isinstance(f, Tensor):
            raise TypeError(f"flows[{j}]: expected a torch.Tensor (B, 2, I, J), got {type(f).__name__}")
        if f.dim() != 4 or f.shape[1] != 2:
            raise ValueError(f"flows[{j}]: expected a flow (B, 2, I, J), got {tuple(f.shape)}")
        if not f.is_floating_point():
            raise ValueError(f"flows[{j}]: expected a floating-point flow, got {f.dtype}")
        if f.shape != first.shape:
            raise ValueError(f"flows[{j}] is {tuple(f.shape)}, flows[0] {tuple(first.shape)}: consecutive "
                             "flows must share one grid")
        if f.device != first.device:
            raise ValueError(f"flows[{j}] is on {f.device}, flows[0] on {first.device}")
    k = len(flows)
    dtype = torch.promote_types(first.dtype, torch.float32)
    total = first.to(dtype).clone()
    B, _, I, J = first.shape
    steps = torch.ones((B, I, J), dtype=torch.int64, device=first.device)
    alive = torch.ones((B, I, J), dtype=torch.bool, device=first.device)
    for f in flows[1:]:
        sampled, inside = warp(f.to(dtype), total)  # F_{t+j} at p + F_{t→t+j}(p)
        alive &= inside
        total = torch.where(alive[:, None], total + sampled, total)
        steps += alive
    if k > 1:
        # exactly 1 where the chain stayed in the frame; k/j where it stopped after j flows
        total = total * (k / steps.to(dtype))[:, None]
    return total.to(first.dtype), steps
