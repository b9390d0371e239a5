"""Loss wiring of the EM coherence model: basis buffer, Criterion, binarisation, per-frame rows."""

from __future__ import annotations

import argparse
import logging
from typing import Any

import torch
from torch import Tensor

from evaluationmodule.BinarisationModule import BinarisationModule
from Models.LitSegmentationModel import LitSegmentationModel
from utils import coherence_math as cm
from utils import hparams as H
from utils.evaluations import db_eval_iou

logger = logging.getLogger(__name__)


def materialise_rows(pending: list[dict]) -> list[dict]:
    """Turn batches of per-frame tensors into rows ``epoch, step_label, file_name, losses, jaccs,
    masks_usages, index`` (one host transfer per batch)."""
    rows = []
    for p in pending:
        losses = p["losses"].float().cpu().tolist()
        n = len(losses)
        jaccs = p["jaccs"].float().cpu().tolist() if p["jaccs"] is not None else [""] * n
        usages = p["masks_usages"].float().cpu().tolist()
        index = p["index"].tolist() if isinstance(p["index"], Tensor) else [None] * n
        for i in range(n):
            rows.append({"epoch": p["epoch"], "step_label": p["step_label"], "file_name": p["file_name"][i],
                         "losses": losses[i], "jaccs": jaccs[i],
                         "masks_usages": " ".join(f"{u:.4f}" for u in usages[i]), "index": index[i]})
    return rows


class CoherenceNet(LitSegmentationModel):
    """Segmentation network trained by the coherence loss (docs/METHOD.md §1).

    ``Criterion(batch)`` fits θ per mask (the M-step, detached), then returns per-sample
    ``losses`` = coherence − entropy_weight · entropy, ``coherence_losses`` and ``entropies``
    (B,), and adds ``theta`` (B, L, ft, 2) and ``ParametricFlow`` (B, 2, I, J) to the batch.
    """

    HPARAM_GROUPS: tuple[type, ...] = (H.LossHparams,)
    #: validation frames drawn in the figure sent to the logger each epoch
    n_figure_frames = 4

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        hp = self.hparams
        self.param_model = hp["param_model"]
        self.v_distance = hp["v_distance"]
        self.theta_method = hp["theta_method"]
        self.entropy_weight = float(hp["entropy_weight"])
        self.binary_method = hp["binary_method"]
        cm.check_param_model(self.param_model)
        cm.check_v_distance(self.v_distance)
        cm.check_theta_method(self.theta_method)
        self.binariser = BinarisationModule(self.binary_method)
        # The authors' checkpoints store the basis; keeping it keeps their state dicts loadable.
        self.register_buffer("XoT", cm.make_basis(self.param_model, hp["img_size"]))
        self.figure_batch: dict | None = None
        #: set by the evaluation runner when its figures show the parametric flow
        self.test_outputs_need_parametric_flow = False

    @staticmethod
    def add_specific_args(parent_parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parent_parser = LitSegmentationModel.add_specific_args(parent_parser)
        H.add_arguments(parent_parser.add_argument_group("coherence loss"), H.LossHparams)
        return parent_parser

    # ----------------------------------------------------------------------------------------
    def ComputeTheta(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:  # noqa: N802 (authors' name)
        """M-step: θ' (B, L, ft, 2) in the conditioned basis, Xc (N, ft), M (ft, ft)."""
        return cm.fit_theta(batch["Pred"], batch["Flow"], self.param_model, self.v_distance, self.theta_method)

    def Criterion(self, batch: dict, with_parametric_flow: bool = True) -> dict:  # noqa: N802 (authors' name)
        pred, flow = batch["Pred"], batch["Flow"]
        cm.check_pred_flow(pred, flow)
        theta_c, Xc, M = self.ComputeTheta(batch)
        coherence = cm.coherence_terms(pred, flow, Xc, theta_c, self.v_distance)
        entropies = cm.entropy(pred).to(coherence.dtype)
        batch["theta"] = cm.theta_to_original(theta_c, M)
        if with_parametric_flow:
            batch["ParametricFlow"] = cm.parametric_flow(pred.detach(), Xc, theta_c)
        return {
            "losses": coherence - self.entropy_weight * entropies,
            "coherence_losses": coherence,
            "entropies": entropies,
        }

    def generate_binary_mask(self, batch: dict) -> dict:
        """Add ``'PredMask'`` (B, I, J) bool, by ``binary_method``."""
        return self.binariser.binarise(batch)

    # ----------------------------------------------------------------------------------------
    def wants_figure(self, stage: str, batch_idx: int) -> bool:
        if stage == "test":
            return self.test_outputs_need_parametric_flow
        return stage == "val" and batch_idx == 0 and self.figure_batch is None

    @torch.no_grad()
    def frame_metrics(self, batch: dict) -> dict:
        """Per-frame ``jaccs`` (B,) when ``GtMask`` is present and ``masks_usages`` (B, L)."""
        self.generate_binary_mask(batch)
        out = {"masks_usages": batch["Pred"].detach().float().mean((2, 3))}
        if "GtMask" in batch:
            out["jaccs"] = db_eval_iou(batch["GtMask"].to(batch["PredMask"].device) > 0, batch["PredMask"])
        return out

    @torch.no_grad()
    def collect_frame_rows(self, batch: dict, crit: dict, stage: str, batch_idx: int) -> list[dict]:
        metrics = self.frame_metrics(batch)
        B = batch["Flow"].shape[0]
        if "jaccs" in metrics:
            self.log(f"{stage}/jacc", metrics["jaccs"].float().mean(), on_step=False, on_epoch=True,
                     batch_size=B, sync_dist=stage != "train", prog_bar=stage != "train")
        # Kept on the device as tensors: converting to Python rows here would sync every step.
        pending = {
            "epoch": int(self.current_epoch), "step_label": stage,
            "file_name": list(batch.get("FlowPath") or [f"{stage}_{batch_idx}_{i}" for i in range(B)]),
            "losses": crit["losses"].detach(), "jaccs": metrics.get("jaccs"),
            "masks_usages": metrics["masks_usages"], "index": batch.get("Index"),
        }
        self.frame_rows.append(pending)
        rows = materialise_rows([pending]) if stage == "test" else []
        if stage == "val" and self.wants_figure(stage, batch_idx):
            n = self.n_figure_frames
            self.figure_batch = {k: v[:n].detach().cpu() for k, v in batch.items()
                                 if isinstance(v, Tensor) and v.dim() >= 3}
            for k in ("FlowPath", "ImagePath"):
                if k in batch:
                    self.figure_batch[k] = list(batch[k][:n])
        return rows

    def take_frame_rows(self) -> list[dict]:
        """The per-frame rows collected since the last call, as plain dicts (then forgotten)."""
        rows = materialise_rows(self.frame_rows)
        self.frame_rows.clear()
        return rows

    def on_validation_epoch_start(self) -> None:
        self.figure_batch = None

    def on_validation_epoch_end(self) -> None:
        if self.figure_batch is None or self.trainer is None or self.trainer.sanity_checking:
            return
        if not self.trainer.is_global_zero or not self.loggers:
            return
        from utils.figures import frames_figure, log_figure

        fig = frames_figure(self.figure_batch, title=f"validation, epoch {self.current_epoch}")
        for lg in self.loggers:
            log_figure(lg, fig, "val/frames", int(self.current_epoch))
        import matplotlib.pyplot as plt

        plt.close(fig)
