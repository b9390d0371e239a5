"""ClassicalEM: the non-learned baseline — EM on the flow itself, no network, no weights."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from torch import nn

from Models.CoherenceNet import CoherenceCriterion, CoherenceNet
from utils import coherence_math as cm

logger = logging.getLogger(__name__)


class ClassicalEM(CoherenceCriterion, nn.Module):
    """Mixture of L parametric motions fitted by EM to each flow, independently
    (:func:`utils.coherence_math.em_segment`; its docstring gives the initialisation and the steps).

    A plain predictor, not a LightningModule: ``prediction(batch)`` adds ``Pred`` (B, L, I, J),
    ``Criterion``/``frame_metrics`` are the trained model's (same loss, same binarisation) and
    ``hparams`` holds its settings. ``model_eval.py`` evaluates it through
    :class:`Models.LitSegmentationModel.LitPredictor`. Built with command-line names, e.g.
    ``ClassicalEM(nAffineMasks=3, param_model='Affine', em_iterations=10)``; names it does not use
    are kept in ``hparams`` and otherwise ignored.
    """

    HPARAM_DEFAULTS: dict[str, Any] = {
        "nAffineMasks": 2,
        "img_size": [128, 224],
        **CoherenceNet.HPARAM_DEFAULTS,
        "em_iterations": 20,
    }
    has_network = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        unknown = sorted(k for k in kwargs if k not in self.HPARAM_DEFAULTS and k != "min_motion")
        if unknown:
            logger.debug("ClassicalEM ignores hyperparameters it does not use: %s", unknown)
        hp = {**self.HPARAM_DEFAULTS, **kwargs}
        hp["img_size"] = [int(s) for s in hp["img_size"]]
        self.hparams: dict[str, Any] = hp
        self.L = int(hp["nAffineMasks"])
        self.em_iterations = int(hp["em_iterations"])
        self.init_criterion(hp)
        # No weights; the basis buffer places the model on a device (``.to``) as the networks' does.
        self.register_buffer("XoT", cm.make_basis(self.param_model, hp["img_size"]))

    @staticmethod
    def add_specific_args(parent_parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parent_parser = CoherenceNet.add_specific_args(parent_parser)
        parent_parser.add_argument("--em_iterations", type=int, default=20, help="ClassicalEM iterations")
        return parent_parser

    def prediction(self, batch: dict) -> dict:
        """Add ``'Pred'`` (B, L, I, J) float32, softmax over L, to the batch (which needs ``'Flow'`` (B, 2, I, J))."""
        batch["Pred"] = cm.em_segment(batch["Flow"], self.L, self.param_model, self.v_distance, self.theta_method,
                                      self.em_iterations)
        return batch
