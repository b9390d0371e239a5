"""ClassicalEM: the non-learned baseline — EM on the flow itself, no network, no weights."""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import Tensor

from Models.CoherenceNet import CoherenceNet
from utils import coherence_math as cm
from utils import hparams as H


class ClassicalEM(CoherenceNet):
    """Mixture of L parametric motions fitted by EM to each flow, independently.

    Initialisation is deterministic and comes from the flow (sequential robust fits): a robust
    (l1 IRLS) motion is fitted to all pixels, its inliers (residual below 2.5 × the median
    residual) form layer 0, usually the background; the same is repeated on the remaining pixels
    for layers 1 … L−2, and layer L−1 takes what is left. Then ``em_iterations`` times: M-step θ_k
    fitted to pred_k (``theta_method``); E-step pred_k ∝ π_k · p(d_k | s_k), a Laplace (l1, l2) or
    Gaussian (squared) likelihood of the residual with a per-layer scale s_k estimated from the
    weighted residuals and mixing weights π_k = mean pred_k.
    """

    HPARAM_GROUPS: tuple[type, ...] = (H.ClassicalEMHparams,)
    #: the settings it uses, which its command line takes (no network, no optimiser)
    CLI_FLAGS = ("nAffineMasks", "param_model", "v_distance", "theta_method", "em_iterations")
    has_network = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.em_iterations = int(self.hparams["em_iterations"])

    @staticmethod
    def add_specific_args(parent_parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """``CLI_FLAGS`` (defaults: ``utils/hparams.py``), in a group of their own."""
        g = parent_parser.add_argument_group("ClassicalEM (with --model ClassicalEM)")
        H.add_arguments(g, *ClassicalEM.all_hparam_groups(), only=ClassicalEM.CLI_FLAGS)
        return parent_parser

    def configure_optimizers(self):
        return None

    def _initial_masks(self, flow: Tensor) -> Tensor:
        B, _, I, J = flow.shape
        N = I * J
        remaining = torch.ones(B, N, dtype=flow.dtype, device=flow.device)
        f = flow.reshape(B, 1, 2, N)
        layers = []
        for _ in range(self.L - 1):
            theta_c, Xc, _ = cm.fit_theta(remaining.reshape(B, 1, I, J), flow, self.param_model, "l1", "IRLS")
            r = (f - cm.layer_flows(Xc, theta_c)).abs().sum(2)[:, 0]  # (B, N)
            masked = torch.where(remaining > 0, r, torch.full_like(r, float("nan")))
            scale = masked.nanmedian(1).values.nan_to_num(0.0)[:, None] + 1e-6
            inliers = (r < 2.5 * scale).to(flow.dtype) * remaining
            layers.append(inliers)
            remaining = remaining - inliers
        layers.append(remaining)
        hard = torch.stack(layers, 1)  # (B, L, N), a partition
        return (0.9 * hard + 0.1 / self.L).reshape(B, self.L, I, J)

    @torch.no_grad()
    def prediction(self, batch: dict) -> dict:
        flow = batch["Flow"].float()
        if flow.dim() != 4 or flow.shape[1] != 2:
            raise ValueError(f"expected Flow (B, 2, I, J), got {tuple(flow.shape)}")
        B, _, I, J = flow.shape
        pred = self._initial_masks(flow)
        f = flow.reshape(B, 1, 2, I * J)
        floor = 1e-3 * flow.abs().mean((1, 2, 3))[:, None, None] + 1e-6  # (B, 1, 1)
        gaussian = self.v_distance == "squared"
        for _ in range(self.em_iterations):
            theta_c, Xc, _ = cm.fit_theta(pred, flow, self.param_model, self.v_distance, self.theta_method)
            d = cm.residual_distance(f - cm.layer_flows(Xc, theta_c), self.v_distance, dim=2)  # (B, L, N)
            p = pred.reshape(B, self.L, I * J)
            mass = p.sum(2, keepdim=True).clamp(min=1e-6)  # (B, L, 1)
            scale = ((p * d).sum(2, keepdim=True) / mass / (1.0 if gaussian else 2.0)).clamp(min=floor)
            log_norm = torch.log(scale) * (1.0 if gaussian else 2.0)
            log_pi = torch.log(mass / (I * J))
            pred = torch.softmax(log_pi - log_norm - d / scale, dim=1).reshape(B, self.L, I, J)
        batch["Pred"] = pred
        return batch

    def training_step(self, batch: dict, batch_idx: int):
        raise RuntimeError("ClassicalEM has no weights to train; use it with model_eval.py --model ClassicalEM")
