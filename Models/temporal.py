"""The temporal model's loss and its per-frame view (docs/METHOD.md §5).

- :func:`temporal_term`: the flow-gated mean |m_t − m_{t+1}| of a clip's masks, (B,).
- :func:`clip_loss`: ``emseg.core.coherence_math.em_loss_clip`` (the space-time coherence and the
  entropy) plus ``temporal_weight`` × the temporal term, per clip, and its breakdown per frame (detached):
  each frame's coherence and entropy (their means over the clip's frames are the clip's), its loss and
  its motion θ_t as a frame model's θ, so that rows, figures and parametric flows stay per frame.
- :func:`clips_as_frames` turns a clip batch (B clips of T frames) into the frame batch of its B·T frames
  (in place), and :func:`frame_of_clip` takes one frame per clip (``model_eval.py``: each frame from the
  clip centred on it, ``evaluationmodule/clip_frames.py``).

Shapes: pred (B, L, T, I, J) softmax over L, flow (B, 2, T, I, J).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from emseg.core import coherence_math as cm
from emseg.core.hparams import INFLATIONS

#: the keys of a clip batch that are (B, C, T, I, J) tensors (``csvflowdatamodule/clips.py``'s items)
CLIP_VOLUMES = ("Flow", "Image", "FlowRGB", "LossFlow")
#: (B, T) tensors of a clip batch
CLIP_PER_FRAME = ("FrameIndices", "RowIndices")


def temporal_term(pred: Tensor, flow: Tensor, sigma: float = 1.0) -> Tensor:
    """(1 / ((T − 1)·L·I·J)) Σ_t Σ_l Σ_px g_t |pred_l,t+1 − pred_l,t|, g_t = exp(−‖f_t+1 − f_t‖₂ / σ),
    per clip (B,).

    pred (B, L, T, I, J), flow (B, 2, T, I, J) at the same pixels; the gate is computed from the flow
    alone (no gradient): where the flow at a pixel changes from one frame to the next (a motion
    boundary passing), the masks may change there too. Zero for T = 1 and for masks constant in time.
    Differentiable with respect to ``pred`` (almost everywhere: |·| at 0), in pred's dtype.
    """
    if pred.dim() != 5 or flow.dim() != 5 or flow.shape[1] != 2:
        raise ValueError(f"expected pred (B, L, T, I, J) and flow (B, 2, T, I, J), got {tuple(pred.shape)} "
                         f"and {tuple(flow.shape)}")
    if pred.shape[0] != flow.shape[0] or pred.shape[2:] != flow.shape[2:]:
        raise ValueError(f"pred (B, L, T, I, J) and flow (B, 2, T, I, J) disagree: pred {tuple(pred.shape)}, "
                         f"flow {tuple(flow.shape)}")
    if not sigma > 0:
        raise ValueError(f"temporal_sigma must be > 0, got {sigma}")
    B, L, T = pred.shape[:3]
    if T < 2:
        return pred.new_zeros(B)
    with torch.no_grad():
        df = flow[:, :, 1:].to(pred.dtype) - flow[:, :, :-1].to(pred.dtype)
        gate = torch.exp(-torch.sqrt((df * df).sum(1)) / float(sigma))  # (B, T-1, I, J)
    diff = (pred[:, :, 1:] - pred[:, :, :-1]).abs()
    return (diff * gate[:, None]).mean((1, 2, 3, 4))


def frame_theta(theta: Tensor, st_param_model: str, T: int) -> Tensor:
    """Each frame's motion as a frame model's θ: θ (B, L, ft_t·ft_s, 2) of a space-time model in the
    original basis → θ_t (B, T, L, ft_s, 2) of its spatial model (``Affine``/``Quadratic``), the flow of
    frame t being X_s θ_t with θ_t = Σ_τ b_τ(t) θ_τ (docs/METHOD.md §4)."""
    spatial, _, _ = cm.check_st_model(st_param_model)
    ft_s = cm.FT[spatial]
    Xt = cm.temporal_basis(st_param_model, T, centered=False, device=theta.device, dtype=torch.float64)
    B, L, ft, _ = theta.shape
    th = theta.detach().double().reshape(B, L, ft // ft_s, ft_s, 2)
    return torch.einsum("tk,blksc->btlsc", Xt, th).to(theta.dtype)


def clip_loss(pred: Tensor, flow: Tensor, st_param_model: str = "QuadraticST1", v_distance: str = "l1",
              theta_method: str = "IRLS", entropy_weight: float = 0.01, temporal_weight: float = 0.0,
              temporal_sigma: float = 1.0, with_parametric_flow: bool = False) -> dict[str, Tensor]:
    """The temporal model's loss of pred (B, L, T, I, J) against flow (B, 2, T, I, J).

    Per clip: ``losses`` = em_loss_clip's (coherence − entropy_weight · entropy) + temporal_weight ·
    :func:`temporal_term` (B,), with its graph; ``coherence_losses``, ``entropies``, ``temporal_losses``
    (B,); ``theta`` (B, L, ft, 2) the space-time θ (original basis). With ``temporal_weight`` 0 the
    losses are em_loss_clip's exactly (the term is computed without a graph, for the logs).

    Per frame, detached: ``frame_losses``, ``frame_coherence``, ``frame_entropies`` (B, T), each
    frame's coherence − entropy_weight · entropy + temporal_weight · the clip's temporal term, so the
    mean over a clip's frames is its loss; ``frame_theta`` (B, T, L, ft_s, 2). With
    ``with_parametric_flow``: ``ParametricFlow`` (B, 2, T, I, J).
    """
    out = cm.em_loss_clip(pred, flow, st_param_model, v_distance, theta_method, float(entropy_weight),
                          with_parametric_flow=with_parametric_flow)
    tw = float(temporal_weight)
    if tw:
        temporal = temporal_term(pred, flow, temporal_sigma)
        losses = out["losses"] + tw * temporal.to(out["losses"].dtype)
    else:
        with torch.no_grad():
            temporal = temporal_term(pred.detach(), flow, temporal_sigma)
        losses = out["losses"]
    B, L, T, I, J = pred.shape
    with torch.no_grad():
        dtype = torch.promote_types(pred.dtype, torch.float32)
        f = flow.detach().reshape(B, 1, 2, T * I * J).to(dtype)
        d = cm.residual_distance(f - cm.layer_flows(out["Xc"].to(dtype), out["theta_c"].detach().to(dtype)),
                                 v_distance, dim=2)  # (B, L, T·I·J)
        p = pred.detach().to(dtype).reshape(B, L, T, I * J)
        coherence_t = (p * d.reshape(B, L, T, I * J)).sum((1, 3)) / (I * J)
        entropy_t = cm.entropy(pred.detach().transpose(1, 2).reshape(B * T, L, I, J)).reshape(B, T).to(dtype)
        frame_losses = coherence_t - float(entropy_weight) * entropy_t + tw * temporal.detach().to(dtype)[:, None]
    res = {"losses": losses, "coherence_losses": out["coherence_losses"], "entropies": out["entropies"],
           "temporal_losses": temporal.detach(), "theta": out["theta"],
           "frame_losses": frame_losses, "frame_coherence": coherence_t, "frame_entropies": entropy_t,
           "frame_theta": frame_theta(out["theta"], st_param_model, T)}
    if with_parametric_flow:
        res["ParametricFlow"] = out["ParametricFlow"]
    return res


def _frames_of(x: Tensor) -> Tensor:
    """(B, C, T, I, J) → (B·T, C, I, J), frame t of clip b at b·T + t."""
    B, C, T = x.shape[:3]
    return x.transpose(1, 2).reshape(B * T, C, *x.shape[3:])


def clips_as_frames(batch: dict[str, Any], T: int) -> dict[str, Any]:
    """The frames of a clip batch, in place: B clips of T frames become B·T frames, frame t of clip b
    at b·T + t. ``Flow``/``Image``/``FlowRGB``/``LossFlow`` (B, C, T, I, J) → (B·T, C, I, J), ``Pred``
    (B, L, T, I, J) → (B·T, L, I, J), ``GtMask`` (B, T, I, J) → (B·T, I, J), ``FrameIndices``,
    ``RowIndices`` (B, T) → (B·T,), the path lists (B lists of T) → B·T paths, ``Sequence`` repeated;
    ``Index`` becomes each frame's CSV row (``RowIndices``: what per-frame rows are keyed by) and the
    clip's number moves to ``ClipIndex`` (B·T,). ``Skipped`` is left as it is."""
    B = len(batch["Flow"])
    for key, value in list(batch.items()):
        if key == "Skipped":
            continue
        if isinstance(value, Tensor):
            if value.dim() == 5 and value.shape[2] == T:
                batch[key] = _frames_of(value)
            elif key == "GtMask" and value.dim() == 4:
                batch[key] = value.reshape(B * T, *value.shape[2:])
            elif key in CLIP_PER_FRAME and value.dim() == 2:
                batch[key] = value.reshape(B * T)
        elif isinstance(value, (list, tuple)) and len(value) == B:
            if all(isinstance(v, (list, tuple)) and len(v) == T for v in value):
                batch[key] = [p for v in value for p in v]
            elif all(isinstance(v, str) for v in value):
                batch[key] = [v for v in value for _ in range(T)]
    if isinstance(batch.get("Index"), Tensor):
        batch["ClipIndex"] = batch["Index"].repeat_interleave(T)
    if "RowIndices" in batch:
        batch["Index"] = batch["RowIndices"]
    else:  # no frame rows to key by: rows without an index (never de-duplicated)
        batch.pop("Index", None)
    return batch


def frame_of_clip(x: Tensor, at: Tensor) -> Tensor:
    """Frame ``at[b]`` of each clip: (B, C, T, …) → (B, C, …); ``at`` (B,) int."""
    idx = at.to(device=x.device, dtype=torch.long).view(-1, *([1] * (x.dim() - 1)))
    idx = idx.expand(x.shape[0], x.shape[1], 1, *x.shape[3:])
    return x.gather(2, idx).squeeze(2)


def per_frame(values: Tensor, at: Tensor | None) -> Tensor:
    """(B, T, …) per-frame values → (B·T, …) (every frame), or (B, …) frame ``at[b]`` of each clip."""
    if at is None:
        return values.reshape(-1, *values.shape[2:])
    return values[torch.arange(len(values), device=values.device), at.to(values.device).long()]


#: the frame model's weights whose shape the 2-D temporal network changes: its first convolution and its head
FIRST_CONV = "backbone_model.model.layers.0.net.0.weight"
HEAD_KEYS = ("head_model.model.pred_conv.weight", "head_model.model.pred_conv.bias")


def inflate_frame_weights(frame_state: dict[str, Tensor], clip_length: int, mode: str = "mean") -> dict[str, Tensor]:
    """A frame model's state dict → the ``stack2d`` temporal network's over clips of T = ``clip_length``.

    The head (L, F, 1, 1), (L,) is repeated per frame (L·T, …), channel l·T + t = W[l], and the first
    convolution's weights (F, C, 3, 3) become (F, C·T, 3, 3), channel c·T + t:

    - ``'mean'``: W[:, c] / T for every t, so every frame's masks are the frame model's on the clip's
      mean flow;
    - ``'centre'``: W[:, c] for the central frame t = ⌊(T − 1)/2⌋, 0 for the others, so every frame's masks
      are the frame model's on the central flow: exact for the frame that ``segment.py`` and
      ``model_eval.py`` take from the window it is central in (``emseg/app/segment/windows.py``).

    Everything else is kept as it is. Training moves from this start (``model_train.py --init_ckpt
    FRAME.ckpt --clip_length T --inflate MODE``)."""
    T = int(clip_length)
    if T < 2:
        raise ValueError(f"expected clip_length >= 2 to inflate a frame model, got {clip_length}")
    if mode not in INFLATIONS:
        raise ValueError(f"inflation must be one of {INFLATIONS}, got {mode!r}")
    missing = [k for k in (FIRST_CONV, *HEAD_KEYS) if k not in frame_state]
    if missing:
        raise KeyError(f"not a frame U-Net's state dict: it has none of {missing}")
    out = dict(frame_state)
    w = frame_state[FIRST_CONV]
    if mode == "mean":
        out[FIRST_CONV] = (w / T).repeat_interleave(T, dim=1)
    else:
        spread = torch.zeros(w.shape[0], w.shape[1], T, *w.shape[2:], dtype=w.dtype)
        spread[:, :, (T - 1) // 2] = w
        out[FIRST_CONV] = spread.reshape(w.shape[0], w.shape[1] * T, *w.shape[2:])
    for k in HEAD_KEYS:
        out[k] = frame_state[k].repeat_interleave(T, dim=0)
    return out
