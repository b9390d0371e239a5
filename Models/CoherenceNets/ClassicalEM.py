"""ClassicalEM: the non-learned baseline — EM on the flow itself, no network, no weights."""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import Tensor

from Models.CoherenceNet import CoherenceNet
from utils import coherence_math as cm


class ClassicalEM(CoherenceNet):
    """Mixture of L parametric motions fitted by EM to each flow, independently.

    Initialisation is deterministic and comes from the flow: one robust global motion is fitted,
    and pixels are split into L bands by their residual to it (layer 0 = the best-fitting band,
    usually the background). Then ``em_iterations`` times: M-step θ_k fitted to pred_k (the
    configured ``theta_method``); E-step pred_k ∝ π_k · exp(−d_k / σ), with π_k the layer's mean
    weight and σ the current mean weighted residual (the Laplace / Gaussian scale estimate).
    """

    HPARAM_DEFAULTS: dict[str, Any] = {"em_iterations": 20}
    has_network = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.em_iterations = int(self.hparams["em_iterations"])
        # A parameterless module is fine for inference; Lightning needs no optimiser for it.

    @staticmethod
    def add_specific_args(parent_parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parent_parser = CoherenceNet.add_specific_args(parent_parser)
        parent_parser.add_argument("--em_iterations", type=int, default=20, help="ClassicalEM iterations")
        return parent_parser

    def configure_optimizers(self):
        return None

    def _initial_masks(self, flow: Tensor) -> Tensor:
        B, _, I, J = flow.shape
        L = self.L
        ones = torch.ones(B, 1, I, J, dtype=flow.dtype, device=flow.device)
        theta_c, Xc, _ = cm.fit_theta(ones, flow, self.param_model, "l1", "IRLS")
        r = (flow.reshape(B, 1, 2, I * J) - cm.layer_flows(Xc, theta_c)).abs().sum(2)[:, 0]  # (B, N)
        if L == 1:
            return ones
        ranks = r.argsort(1).argsort(1).float() / (I * J)  # in [0, 1)
        band = torch.clamp((ranks * L).long(), max=L - 1)
        pred = torch.nn.functional.one_hot(band, L).permute(0, 2, 1).to(flow.dtype)
        return (0.9 * pred + 0.1 / L).reshape(B, L, I, J)

    @torch.no_grad()
    def prediction(self, batch: dict) -> dict:
        flow = batch["Flow"].float()
        if flow.dim() != 4 or flow.shape[1] != 2:
            raise ValueError(f"expected Flow (B, 2, I, J), got {tuple(flow.shape)}")
        B, _, I, J = flow.shape
        pred = self._initial_masks(flow)
        f = flow.reshape(B, 1, 2, I * J)
        for _ in range(self.em_iterations):
            theta_c, Xc, _ = cm.fit_theta(pred, flow, self.param_model, self.v_distance, self.theta_method)
            d = cm.residual_distance(f - cm.layer_flows(Xc, theta_c), self.v_distance, dim=2)  # (B, L, N)
            p = pred.reshape(B, self.L, I * J)
            sigma = (p * d).sum((1, 2)) / (I * J) + 1e-6  # (B,)
            log_pi = torch.log(p.mean(2).clamp(min=1e-6))  # (B, L)
            pred = torch.softmax(log_pi[..., None] - d / sigma[:, None, None], dim=1).reshape(B, self.L, I, J)
        batch["Pred"] = pred
        return batch

    def training_step(self, batch: dict, batch_idx: int):
        raise RuntimeError("ClassicalEM has no weights to train; use it with model_eval.py --model ClassicalEM")
