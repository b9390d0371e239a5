"""Motion significance: keep a foreground region only if it moves unlike the background.

``exceptbiggest`` calls foreground everything but the largest mask, so a frame where nothing moves
independently still gets a "foreground": the network must put *some* pixels in its other masks,
and on real flow it puts noise there (low-texture ground, sky, compression blocks). The test here
is the method's own: fit the background's parametric motion (the same robust M-step as the loss,
``emseg.core.coherence_math.fit_theta``) to the largest mask, then ask of each connected foreground
region whether the flow inside it departs from that motion by more than the flow's own noise.

- **Noise** σ: the 90th percentile of the residual ‖flow − X θ_bg‖ over confident background
  pixels — how far the background's own flow strays from its fitted motion (estimator noise,
  unmodelled depth). A high quantile, not the median: estimator errors are heavy-tailed (tiny on
  texture, large on textureless patches), and the noise blobs to reject come from that tail.
- **Departure** of a region: the median of the same residual over its confident pixels.
- The region is kept when departure > ``min_motion`` · σ and > ``MIN_DEPARTURE_PX`` (0.5 px of
  the flow's grid: about 1 px/frame at 640 px for the bundled model, whose flows are computed at
  320 px). Dropped too: a region smaller than ``MIN_REGION_FRACTION`` of the frame (a speck), and
  one with fewer than ``MIN_CONFIDENT_FRACTION`` confident pixels (its flow fails the
  forward–backward check almost everywhere). ``min_motion = 0`` turns the test off.

The constants were chosen on the dev split of the repository's video benchmark
(``python -m evaluationmodule.video_benchmark``), never on its test split. The test is in the core
because the model's binarisation (``Binariser(min_motion=…)``), the benchmark evaluation and
``segment.py`` all apply it.

Conventions: flow (2, I, J) in pixels (any grid: only ratios of residuals matter), pred
(L, I, J) softmax over L, confidence (I, J) in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from emseg.core import coherence_math as cm
from emseg.core.masks import exceptbiggest

DEFAULT_MIN_MOTION = 2.0
MIN_DEPARTURE_PX = 0.5
MIN_CONFIDENT_FRACTION = 0.25
MIN_REGION_FRACTION = 0.002
NOISE_QUANTILE = 0.9
CONFIDENT = 0.5
FIT_POOL = 2


def check_min_motion(value: float, name: str = "min_motion") -> float:
    """The one check of a ``min_motion`` setting: a finite number >= 0 (0 turns the test off)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


@dataclass
class Significance:
    """What :func:`significant_foreground` decided: the kept foreground (I, J) bool, the noise σ,
    the departure a region must exceed (``threshold`` = max(min_motion · σ, MIN_DEPARTURE_PX); nan when
    untested), and per region (label id in ``regions`` (I, J) int32, 0 = background) its departure
    (nan: a speck or an unconfident region, never kept) and verdict."""

    foreground: np.ndarray
    regions: np.ndarray
    sigma: float
    departures: dict[int, float]
    kept: dict[int, bool]
    threshold: float = float("nan")

    def scores(self) -> dict[int, float]:
        """Each region's departure over the threshold, z (kept by this one-frame test when z > 1); nan
        for an untestable region. Untested (``min_motion`` 0 or no region): every region scores inf."""
        if not math.isfinite(self.threshold):
            return {k: math.inf for k in self.kept}
        t = max(self.threshold, 1e-12)
        return {k: v / t if math.isfinite(v) else math.nan for k, v in self.departures.items()}


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float = 0.5) -> float:
    if values.size == 0 or weights.sum() <= 0:
        return float("nan")
    order = np.argsort(values)
    cw = np.cumsum(weights[order])
    return float(values[order][min(np.searchsorted(cw, q * cw[-1]), len(values) - 1)])


def background_residual(flow: Tensor, background: Tensor, param_model: str = "Quadratic",
                        weights: Tensor | None = None) -> Tensor:
    """‖flow − X θ_bg‖, θ_bg fitted (robust l1 IRLS) to the pixels of ``background`` (bool or soft),
    each weighted by ``weights`` if given: flow (2, I, J) and background, weights (I, J) → (I, J),
    or a batch, flow (B, 2, I, J) and (B, I, J) → (B, I, J), fitted in one solver call."""
    single = flow.dim() == 3
    if single:
        flow, background = flow[None], background[None]
        weights = None if weights is None else weights[None]
    if flow.dim() != 4 or flow.shape[1] != 2 or background.shape != (flow.shape[0], *flow.shape[2:]):
        raise ValueError(f"expected flow (2, I, J) or (B, 2, I, J) and background on its grid, got "
                         f"{tuple(flow.shape)} and {tuple(background.shape)}")
    I, J = flow.shape[2:]
    w = background.to(torch.float32)
    if weights is not None:
        w = w * weights.to(torch.float32)
    w = w[:, None]
    f = flow.to(torch.float32)
    # θ of a smooth motion is fitted as well on a grid of half the resolution, at a quarter of the cost.
    k = FIT_POOL if min(I, J) >= 8 * FIT_POOL else 1
    wf = F.avg_pool2d(w, k)
    ff = F.avg_pool2d(f * w, k) / wf.clamp_min(1e-6)
    theta_c, _, M = cm.fit_theta(wf, ff, param_model, "l1", "IRLS")
    theta = cm.theta_to_original(theta_c, M)  # coordinates i/I, j/J: the same on both grids
    d = f - cm.flow_from_theta(theta, param_model, (I, J))[:, 0]
    r = torch.hypot(d[:, 0], d[:, 1])  # vector_norm(dim=1) gives the same, ~80x slower on CPU
    return r[0] if single else r


def _regions(pred: Tensor, foreground: np.ndarray | None) -> tuple[np.ndarray, int, np.ndarray]:
    """The foreground (``exceptbiggest`` of pred (L, I, J) unless given) and its 8-connected regions."""
    if foreground is None:
        foreground = exceptbiggest(pred[None])[0].cpu().numpy()
    fg = np.asarray(foreground, dtype=bool)
    n, regions = cv2.connectedComponents(fg.astype(np.uint8), connectivity=8)
    return fg, n, regions.astype(np.int32)


def _verdict(fg: np.ndarray, n: int, regions: np.ndarray, resid: np.ndarray, conf: np.ndarray,
             min_motion: float) -> Significance:
    trusted = conf >= CONFIDENT
    bg_sel = ~fg & trusted
    if bg_sel.any():
        sigma = _weighted_quantile(resid[bg_sel], conf[bg_sel], NOISE_QUANTILE)
    else:
        sigma = float(np.quantile(resid[~fg], NOISE_QUANTILE)) if (~fg).any() else 0.0
    threshold = max(min_motion * sigma, MIN_DEPARTURE_PX)
    min_size = max(1, MIN_REGION_FRACTION * fg.size)
    keep = np.zeros(n, dtype=bool)
    departures: dict[int, float] = {}
    for k in range(1, n):
        inside = regions == k
        size = int(inside.sum())
        sel = inside & trusted
        if size < min_size or sel.sum() < MIN_CONFIDENT_FRACTION * size:
            departures[k] = float("nan")
            continue
        departures[k] = _weighted_quantile(resid[sel], conf[sel])
        keep[k] = departures[k] > threshold
    kept_fg = keep[regions] & fg
    return Significance(kept_fg, regions, float(sigma), departures, {k: bool(keep[k]) for k in range(1, n)},
                        float(threshold))


def significant_foregrounds(preds: Sequence[Tensor], flows: Sequence[Tensor],
                            confidences: Sequence[Tensor | None] | None = None,
                            foregrounds: Sequence[np.ndarray | None] | None = None,
                            min_motion: float = DEFAULT_MIN_MOTION,
                            param_model: str = "Quadratic") -> list[Significance]:
    """:func:`significant_foreground` of several frames: pred (L, I, J), flow (2, I, J) and
    confidence (I, J) per frame, on one grid. The frames' background fits are one batched solver
    call, which costs about a sixth of fitting them one by one on a CPU."""
    n_frames = len(preds)
    confidences = [None] * n_frames if confidences is None else list(confidences)
    foregrounds = [None] * n_frames if foregrounds is None else list(foregrounds)
    if not (len(flows) == len(confidences) == len(foregrounds) == n_frames):
        raise ValueError(f"expected as many flows, confidences and foregrounds as preds ({n_frames}), got "
                         f"{len(flows)}, {len(confidences)} and {len(foregrounds)}")
    check_min_motion(min_motion)
    out: list[Significance | None] = [None] * n_frames
    todo = []
    for i, (pred, flow) in enumerate(zip(preds, flows)):
        if pred.dim() != 3 or flow.shape != (2, *pred.shape[1:]):
            raise ValueError(f"expected pred (L, I, J) and flow (2, I, J) on one grid, got {tuple(pred.shape)} "
                             f"and {tuple(flow.shape)}")
        fg, n, regions = _regions(pred, foregrounds[i])
        if min_motion == 0 or n <= 1:
            out[i] = Significance(fg.copy(), regions, float("nan"), {}, {k: True for k in range(1, n)})
            continue
        c = confidences[i]
        conf = np.ones(fg.shape, np.float32) if c is None else c.float().cpu().numpy()
        todo.append((i, fg, n, regions, conf))
    if todo:
        grids = {tuple(flows[i].shape) for i, *_ in todo}
        if len(grids) > 1:
            raise ValueError(f"expected every flow on one grid, got {sorted(grids)}")
        flow_b = torch.stack([flows[i].float().cpu() for i, *_ in todo])
        bg = torch.from_numpy(np.stack([~fg for _, fg, *_ in todo]))
        w = torch.from_numpy(np.stack([conf for *_, conf in todo]))
        resid = background_residual(flow_b, bg, param_model, w).numpy()
        for (i, fg, n, regions, conf), r in zip(todo, resid):
            out[i] = _verdict(fg, n, regions, r, conf, min_motion)
    return out  # type: ignore[return-value]


def significant_foreground(pred: Tensor, flow: Tensor, confidence: Tensor | None = None,
                           foreground: np.ndarray | None = None, min_motion: float = DEFAULT_MIN_MOTION,
                           param_model: str = "Quadratic") -> Significance:
    """Split the ``exceptbiggest`` foreground of ``pred`` (L, I, J) — or the given ``foreground``
    (I, J) bool — into 8-connected regions and keep those whose flow (2, I, J) departs from the
    background's fitted motion by more than ``min_motion`` times the noise (module docstring)."""
    return significant_foregrounds([pred], [flow], [confidence], [foreground], min_motion, param_model)[0]


def suppress(pred: Tensor, dropped: np.ndarray, kept: np.ndarray | None = None) -> Tensor:
    """Move the probability of the ``dropped`` pixels (I, J) bool — grown by one pixel, so no rim is
    left after upsampling, but never into ``kept`` (I, J) bool — to the most frequent label:
    pred (L, I, J) → pred (L, I, J)."""
    if not dropped.any():
        return pred
    grown = cv2.dilate(dropped.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    if kept is not None:
        grown &= ~kept
    labels = pred.max(0).indices
    biggest = int(torch.bincount(labels.flatten(), minlength=pred.shape[0]).argmax())
    out = pred.clone()
    m = torch.from_numpy(grown).to(pred.device)
    out[:, m] = 0
    out[biggest, m] = 1
    return out
