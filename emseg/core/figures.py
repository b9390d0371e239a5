"""Figures: flow colour coding, masks, binary masks, ground truth and parametric flow side by side."""

from __future__ import annotations

import logging
import os
from typing import Any

# No backend is forced: matplotlib falls back to Agg without a display, and notebooks keep inline.
import matplotlib.pyplot as plt
import numpy as np
from torch import Tensor

from emseg.core.atomic_io import atomic_write

logger = logging.getLogger(__name__)


def _np(x: Any) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def flow_to_rgb(flow: Any) -> np.ndarray:
    """Middlebury colour coding of flow (2, I, J) → uint8 (I, J, 3); hue is the direction,
    saturation the norm relative to the field's own maximum."""
    from emseg.core.flow_io import flow_to_rgb as hw2_to_rgb

    f = _np(flow)
    if f.ndim != 3 or f.shape[0] != 2:
        raise ValueError(f"expected flow (2, I, J), got {f.shape}")
    return hw2_to_rgb(f.transpose(1, 2, 0))


def masks_to_rgb(pred: Any) -> np.ndarray:
    """Soft masks (L, I, J) → uint8 (I, J, 3): each layer's colour weighted by its probability."""
    p = _np(pred)
    if p.ndim != 3:
        raise ValueError(f"expected pred (L, I, J), got {p.shape}")
    colours = plt.get_cmap("tab10")(np.arange(p.shape[0]) % 10)[:, :3]  # (L, 3)
    return (np.einsum("lij,lc->ijc", p, colours) * 255).clip(0, 255).astype(np.uint8)


def image_to_rgb(image: Any) -> np.ndarray:
    """Image (3, I, J) in [-0.5, 0.5] → uint8 (I, J, 3)."""
    im = _np(image)
    return ((im.transpose(1, 2, 0) + 0.5) * 255).clip(0, 255).astype(np.uint8)


def labels_to_rgb(pred: Any) -> np.ndarray:
    """Argmax of soft masks (L, I, J) → uint8 (I, J, 3), one colour per label."""
    return label_map_to_rgb(_np(pred).argmax(0))


def label_map_to_rgb(labels: Any) -> np.ndarray:
    """A label map (I, J) of integers ≥ 0 → uint8 (I, J, 3), label k in tab10's colour k (mod 10)."""
    lab = _np(labels).astype(np.int64)
    if lab.ndim != 2 or (lab.size and lab.min() < 0):
        raise ValueError(f"expected labels (I, J) of integers >= 0, got shape {lab.shape}")
    colours = (plt.get_cmap("tab10")(np.arange(10))[:, :3] * 255).astype(np.uint8)
    return colours[lab % 10]


def frame_panels(sample: dict, jacc: float | None = None, argmax: bool = False) -> list[tuple[str, np.ndarray, dict]]:
    """The panels of one frame's figure, from whatever the sample holds (tensors without batch dim):
    ``Image`` (3, I, J), ``Flow`` (2, I, J), ``Pred`` (L, I, J) or ``Labels`` (I, J), ``PredMask``
    (I, J), ``GtMask`` (I, J) [titled with ``jacc``], ``ParametricFlow`` (2, I, J)."""
    panels: list[tuple[str, np.ndarray, dict]] = []
    if "Image" in sample:
        panels.append(("image", image_to_rgb(sample["Image"]), {}))
    if "Flow" in sample:
        panels.append(("flow", flow_to_rgb(sample["Flow"]), {}))
    if "Pred" in sample:
        L = sample["Pred"].shape[0]
        if argmax:
            panels.append((f"argmax of {L} masks", labels_to_rgb(sample["Pred"]), {}))
        else:
            panels.append((f"masks (L={L})", masks_to_rgb(sample["Pred"]), {}))
    if "Labels" in sample:  # argmax labels (I, J) computed elsewhere (the benchmark's, at the GT's size)
        panels.append(("argmax of the masks", label_map_to_rgb(sample["Labels"]), {}))
    if "PredMask" in sample:
        panels.append(("binary mask", _np(sample["PredMask"]).astype(float), {"cmap": "gray", "vmin": 0, "vmax": 1}))
    if "GtMask" in sample:
        title = "ground truth" + (f" (J = {jacc:.3f})" if jacc is not None and np.isfinite(jacc) else "")
        panels.append((title, (_np(sample["GtMask"]) > 0).astype(float), {"cmap": "gray", "vmin": 0, "vmax": 1}))
    if "ParametricFlow" in sample:
        panels.append(("parametric flow", flow_to_rgb(sample["ParametricFlow"]), {}))
    return panels


def frames_figure(batch: dict, title: str = "", jaccs: Any = None, max_frames: int = 4, argmax: bool = False):
    """One row per frame of a batch (tensors with a batch dim), one column per panel."""
    n = min(max_frames, next(v.shape[0] for v in batch.values() if isinstance(v, Tensor)))
    rows = []
    for b in range(n):
        sample = {k: v[b] for k, v in batch.items() if isinstance(v, Tensor) and v.dim() >= 3}
        jacc = None if jaccs is None else float(_np(jaccs)[b])
        rows.append(frame_panels(sample, jacc, argmax))
    ncols = max(len(r) for r in rows)
    fig, axes = plt.subplots(n, ncols, figsize=(2.6 * ncols, 1.7 * n + 0.4), squeeze=False)
    for b, panels in enumerate(rows):
        for c in range(ncols):
            ax = axes[b, c]
            ax.axis("off")
            if c < len(panels):
                name, img, kw = panels[c]
                ax.imshow(img, **kw)
                ax.set_title(name, fontsize=8)
        if "FlowPath" in batch and b < len(batch["FlowPath"]):
            axes[b, 0].text(0, -0.02, os.path.basename(str(batch["FlowPath"][b])), transform=axes[b, 0].transAxes,
                            fontsize=6, va="top")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def frame_figure(sample: dict, title: str = "", jacc: float | None = None, argmax: bool = True):
    """The per-frame evaluation figure of every pipeline (model_eval, ``SaveResultsFig``, the
    benchmark's ``EvaluationSaver``): image, flow, argmax of the masks, binary mask, ground truth with its
    Jaccard, parametric flow: the panels the sample holds (:func:`frame_panels`)."""
    batch = {k: (v[None] if isinstance(v, Tensor) else v) for k, v in sample.items()}
    return frames_figure(batch, title=title, jaccs=None if jacc is None else [jacc], max_frames=1, argmax=argmax)


def save_figure(fig, path: str) -> None:
    """Save a figure as PNG (write then rename) and close it."""
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)


def log_figure(lg: Any, fig, name: str, step: int) -> None:
    """Send a figure to a Lightning logger: TensorBoard image, wandb image, else a PNG in its log dir."""
    try:
        kind = type(lg).__name__
        if kind == "TensorBoardLogger":
            lg.experiment.add_figure(name, fig, global_step=step, close=False)
        elif kind == "WandbLogger":
            import wandb

            lg.experiment.log({name: wandb.Image(fig), "epoch": step})
        else:
            log_dir = getattr(lg, "log_dir", None) or getattr(lg, "save_dir", None)
            if log_dir:
                path = os.path.join(log_dir, "figures", f"{name.replace('/', '_')}_epoch{step:04d}.png")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                fig.savefig(path, dpi=100)
    except Exception as err:  # a figure must never kill a training run
        logger.warning("could not log figure %s to %s: %s", name, type(lg).__name__, err)
