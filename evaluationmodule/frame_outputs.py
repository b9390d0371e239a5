"""The per-frame files of a test step, written the same way by ``model_eval.py``
(``emseg.app.evaluation_run.FrameOutputWriter``) and the authors' ``utils.Callbacks.SaveResultsFig``.

At ``{save_dir}/{Flow path without extension}`` (``naming.output_stem``): ``_proba.npy`` (L × I × J
float32, softmax over L), ``_binary.png`` (0 / 255) and ``_fig.png`` (``emseg.core.figures.frame_figure``).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from torch import Tensor

from emseg.core.coherence_math import parametric_flow_of
from emseg.core.figures import frame_figure, save_figure
from evaluationmodule.naming import FRAME_SUFFIXES
from evaluationmodule.writers import write_mask_png, write_npy

#: the outputs' keys the figure shows, when the step returned them
FIGURE_KEYS = ("Image", "Flow", "Pred", "PredMask", "GtMask", "ParametricFlow")


def with_parametric_flow(outputs: dict[str, Any]) -> dict[str, Any]:
    """``outputs`` with ``ParametricFlow`` (B, 2, I, J), the figures' last panel, computed once per
    batch from its ``Pred`` (B, L, I, J) and ``theta`` (B, L, ft, 2) where it has both and lacks it."""
    if "ParametricFlow" in outputs or not isinstance(outputs.get("theta"), Tensor) or "Pred" not in outputs:
        return outputs
    return {**outputs, "ParametricFlow": parametric_flow_of(outputs["Pred"], outputs["theta"])}


def write_frame_outputs(outputs: dict[str, Any], i: int, stem: str, title: str, jacc: float | None,
                        save_figure_png: bool, save_mask: bool, save_npy: bool) -> list[str]:
    """Write frame ``i`` of a test step's outputs under ``stem``; returns the paths written.

    ``outputs`` holds batched tensors: ``Pred`` (B, L, I, J) softmax over L, ``PredMask`` (B, I, J)
    bool, and for the figure whichever of ``Image``, ``Flow``, ``GtMask``, ``ParametricFlow`` it has.
    ``jacc`` (None or NaN: unknown) titles the ground truth's panel.
    """
    written = []
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    if save_npy:
        written.append(stem + FRAME_SUFFIXES["proba"])
        write_npy(outputs["Pred"][i].detach().float().cpu().numpy().astype(np.float32), written[-1])
    if save_mask:
        written.append(stem + FRAME_SUFFIXES["mask"])
        write_mask_png(outputs["PredMask"][i].detach().cpu().numpy(), written[-1])
    if save_figure_png:
        sample = {k: outputs[k][i].detach().cpu() for k in FIGURE_KEYS if isinstance(outputs.get(k), Tensor)}
        written.append(stem + FRAME_SUFFIXES["figure"])
        save_figure(frame_figure(sample, title=title, jacc=jacc, argmax=True), written[-1])
    return written
