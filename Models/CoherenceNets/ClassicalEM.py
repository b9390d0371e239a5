"""ClassicalEM: the non-learned baseline — EM on the flow itself, no network, no weights."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from torch import nn

from emseg.core import coherence_math as cm
from emseg.core import hparams as H
from Models.CoherenceNet import CoherenceCriterion

logger = logging.getLogger(__name__)


class ClassicalEM(CoherenceCriterion, nn.Module):
    """Mixture of L parametric motions fitted by EM to each flow, independently
    (:func:`emseg.core.coherence_math.em_segment`; its docstring gives the initialisation and the steps).

    A plain predictor, not a LightningModule: ``prediction(batch)`` adds ``Pred`` (B, L, I, J),
    ``Criterion``/``frame_metrics`` are the trained model's (same loss, same binarisation) and
    ``hparams`` holds its settings. ``model_eval.py`` evaluates it through
    :class:`Models.LitSegmentationModel.LitPredictor`. Built with command-line names, e.g.
    ``ClassicalEM(nAffineMasks=3, param_model='Affine', em_iterations=10)``; names it does not use
    are kept in ``hparams`` and otherwise ignored.
    """

    #: the settings it uses, which its command line takes (no network, no optimiser)
    CLI_FLAGS = ("nAffineMasks", "param_model", "v_distance", "theta_method", "em_iterations")
    has_network = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        defaults = self.all_hparam_defaults()
        unknown = sorted(k for k in kwargs if k not in defaults and k not in ("min_motion", "track_frames"))
        if unknown:
            logger.debug("ClassicalEM ignores hyperparameters it does not use: %s", unknown)
        hp = {**defaults, **kwargs}
        hp["img_size"] = [int(s) for s in hp["img_size"]]
        self.hparams: dict[str, Any] = hp
        self.L = int(hp["nAffineMasks"])
        self.em_iterations = int(hp["em_iterations"])
        self.init_criterion(hp)
        # No weights; the basis buffer places the model on a device (``.to``) as the networks' does.
        self.register_buffer("XoT", cm.make_basis(self.param_model, hp["img_size"]))

    @classmethod
    def all_hparam_groups(cls) -> tuple[type, ...]:
        """The ``emseg/core/hparams.py`` groups its settings come from."""
        return H.NetworkHparams, H.InputHparams, H.LossHparams, H.ClassicalEMHparams

    @classmethod
    def all_hparam_defaults(cls) -> dict[str, Any]:
        """name → default of every setting it reads: the number of masks and the input size, the
        loss's and its own (from ``emseg/core/hparams.py``)."""
        shared = H.defaults(H.NetworkHparams, H.InputHparams)
        return {"nAffineMasks": shared["nAffineMasks"], "img_size": shared["img_size"],
                **H.defaults(H.LossHparams, H.ClassicalEMHparams)}

    @classmethod
    def own_hparams(cls, config: dict[str, Any]) -> dict[str, Any]:
        """The entries of a run's ``config`` that are its settings."""
        names = cls.all_hparam_defaults()
        return {k: v for k, v in config.items() if k in names}

    @staticmethod
    def add_specific_args(parent_parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """``CLI_FLAGS`` (defaults: ``emseg/core/hparams.py``), in a group of their own."""
        g = parent_parser.add_argument_group("ClassicalEM (with --model ClassicalEM)")
        H.add_arguments(g, *ClassicalEM.all_hparam_groups(), only=ClassicalEM.CLI_FLAGS)
        return parent_parser

    def prediction(self, batch: dict) -> dict:
        """Add ``'Pred'`` (B, L, I, J) float32, softmax over L, to the batch (which needs ``'Flow'`` (B, 2, I, J))."""
        batch["Pred"] = cm.em_segment(batch["Flow"], self.L, self.param_model, self.v_distance, self.theta_method,
                                      self.em_iterations)
        return batch
