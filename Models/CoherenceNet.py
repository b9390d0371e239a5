"""The EM coherence criterion and binarisation (shared by the trained and the classical models),
and CoherenceNet: the network trained by it."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from emseg.core import coherence_math as cm
from emseg.core import hparams as H
from emseg.core.binarisation import Binariser
from Models.LitSegmentationModel import LitSegmentationModel, masks_usages
from utils.evaluations import db_eval_iou


class CoherenceCriterion:
    """``Criterion``, ``generate_binary_mask`` and ``frame_metrics`` of the EM coherence method,
    configured by hyperparameters (``param_model``, ``v_distance``, ``theta_method``,
    ``entropy_weight``, ``binary_method``, ``track_frames`` (1 by default: each frame alone; see
    ``emseg.core.binarisation.Binariser``) and ``min_motion``, 0 by default: keep a foreground
    region only if it moves unlike the background). Call :meth:`init_criterion` from ``__init__``.
    """

    def init_criterion(self, hp: Mapping[str, Any]) -> None:
        self.param_model = hp["param_model"]
        self.v_distance = hp["v_distance"]
        self.theta_method = hp["theta_method"]
        self.entropy_weight = float(hp["entropy_weight"])
        self.binary_method = hp["binary_method"]
        cm.check_param_model(self.param_model)
        cm.check_v_distance(self.v_distance)
        cm.check_theta_method(self.theta_method)
        self.binariser = Binariser(self.binary_method, min_motion=float(hp.get("min_motion") or 0.0),
                                   track_frames=int(hp.get("track_frames") or 1))
        # the temporal model's (clip_length > 1; docs/METHOD.md §5)
        self.clip_length = int(hp.get("clip_length") or 1)
        self.st_param_model = hp["st_param_model"]
        self.temporal_weight = float(hp["temporal_weight"])
        self.temporal_sigma = float(hp["temporal_sigma"])
        if self.clip_length > 1:
            cm.check_st_model(self.st_param_model)
            if not (self.temporal_weight >= 0 and self.temporal_sigma > 0):
                raise ValueError(f"--temporal_weight must be >= 0 and --temporal_sigma > 0, got "
                                 f"{self.temporal_weight} and {self.temporal_sigma}")
            try:
                cm.temporal_basis(self.st_param_model, self.clip_length, centered=True)
            except ValueError as err:
                raise ValueError(f"--st_param_model {self.st_param_model} with --clip_length {self.clip_length}: "
                                 f"{err}") from None

    def ComputeTheta(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:  # noqa: N802 (authors' name)
        """M-step: θ' (B, L, ft, 2) in the conditioned basis, Xc (N, ft), M (ft, ft)."""
        if self.clip_length > 1:  # θ' (B, L, ft, 2) of the space-time model, Xc (T·I·J, ft)
            return cm.fit_theta_clip(batch["Pred"], batch["Flow"], self.st_param_model, self.v_distance,
                                     self.theta_method)
        return cm.fit_theta(batch["Pred"], batch["Flow"], self.param_model, self.v_distance, self.theta_method)

    def Criterion(self, batch: dict, with_parametric_flow: bool = True) -> dict:  # noqa: N802 (authors' name)
        """The loss of ``batch['Pred']`` (B, L, I, J) against ``batch['Flow']`` (B, 2, I, J), by
        :func:`emseg.core.coherence_math.em_loss`; ``batch`` is left as it was. A batch with
        ``'LossFlow'`` (B, 2, I, J) is fitted to that flow instead: training with
        ``--flow_noise_target clean`` puts there the flow from before the input's noise.

        Returns ``losses`` = coherence − entropy_weight · entropy, ``coherence_losses``,
        ``entropies`` (B,), ``theta`` (B, L, ft, 2) in the original basis and, with
        ``with_parametric_flow``, ``ParametricFlow`` (B, 2, I, J).

        The temporal model's (``clip_length`` T > 1): pred (B, L, T, I, J) against flow (B, 2, T, I, J)
        by :func:`Models.temporal.clip_loss` (``st_param_model``, ``temporal_weight``, ``temporal_sigma``):
        the same keys per clip, ``temporal_losses``, and the per-frame ``frame_…`` terms.
        """
        flow = batch.get("LossFlow", batch["Flow"])
        if self.clip_length > 1:
            from Models.temporal import clip_loss

            return clip_loss(batch["Pred"], flow, self.st_param_model, self.v_distance, self.theta_method,
                             self.entropy_weight, self.temporal_weight, self.temporal_sigma,
                             with_parametric_flow=with_parametric_flow)
        out = cm.em_loss(batch["Pred"], flow, self.param_model, self.v_distance, self.theta_method,
                         self.entropy_weight, with_parametric_flow=with_parametric_flow)
        keep = ("losses", "coherence_losses", "entropies", "theta", "ParametricFlow")
        return {k: out[k] for k in keep if k in out}

    def generate_binary_mask(self, batch: dict) -> dict:
        """Add ``'PredMask'`` (B, I, J) bool, by ``binary_method`` (and ``min_motion``)."""
        return self.binariser.binarise(batch)

    @torch.no_grad()
    def frame_metrics(self, batch: dict) -> dict:
        """Add ``PredMask``; per-frame ``masks_usages`` (B, L) and, when ``GtMask`` is present, ``jaccs`` (B,)."""
        self.generate_binary_mask(batch)
        out = {"masks_usages": masks_usages(batch["Pred"])}
        if "GtMask" in batch:
            out["jaccs"] = db_eval_iou(batch["GtMask"].to(batch["PredMask"].device) > 0, batch["PredMask"])
        return out


class CoherenceNet(CoherenceCriterion, LitSegmentationModel):
    """Segmentation network trained by the coherence loss (docs/METHOD.md §1).

    ``Criterion(batch)`` fits θ per mask (the M-step, detached), then returns per-sample
    ``losses`` = coherence − entropy_weight · entropy, ``coherence_losses`` and ``entropies``
    (B,), ``theta`` (B, L, ft, 2) and ``ParametricFlow`` (B, 2, I, J); it writes nothing into
    the batch. Binarisation follows ``binary_method`` (and ``min_motion``).
    """

    HPARAM_GROUPS: tuple[type, ...] = (H.LossHparams,)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.init_criterion(self.hparams)
        # The authors' checkpoints store the basis; keeping it keeps their state dicts loadable.
        self.register_buffer("XoT", cm.make_basis(self.param_model, self.hparams["img_size"]))

    @staticmethod
    def add_specific_args(parent_parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parent_parser = LitSegmentationModel.add_specific_args(parent_parser)
        H.add_arguments(parent_parser.add_argument_group("coherence loss"), H.LossHparams)
        return parent_parser
