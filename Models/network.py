"""The trained model's network for inference alone: a plain ``nn.Module``, no Lightning.

``segment.py`` only runs ``MethodeB``'s network, yet building a ``MethodeB`` imports PyTorch Lightning
(a ``LightningModule``: 1.7–3.4 s of a 40-frame clip's 7–9 s, bench/README.md). A
:class:`SegmentationNetwork` holds the same torch modules under the same names (``backbone_model``,
``head_model``, the ``XoT`` basis buffer), so:

* its state dict is ``MethodeB``'s, key for key: a ``MethodeB`` checkpoint loads into it strictly, and
  ``Models.backends.model_digest`` gives the same digest (the class it stands for is :attr:`MODEL_CLASS`),
  so both share the sealed exports of the cache;
* ``prediction({'Flow': flow})['Pred']`` runs the same modules in the same order as
  ``LitSegmentationModel.prediction``: bit-identical predictions (``tests/test_fast_start.py``);
* ``hparams`` is the dict ``MethodeB`` would hold (its defaults from ``emseg/core/hparams.py``, the
  checkpoint's values over them, the same normalisation).

What needs the LightningModule (training, ``--adapt``'s fine-tuning, ``Criterion``) builds a ``MethodeB``
from it: :func:`as_methode_b`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import Tensor, nn

from emseg.core import coherence_math as cm
from emseg.core import hparams as H
from Models.Backbones.temporal import network_from_hparams
from Models.checkpoint_io import CheckpointError, read_checkpoint

logger = logging.getLogger(__name__)

#: ``MethodeB.all_hparam_groups()``, base class first (LitSegmentationModel's, then CoherenceNet's);
#: written out here so that reading them needs no Lightning (tests/test_fast_start.py checks they agree)
METHODE_B_HPARAM_GROUPS: tuple[type, ...] = (H.NetworkHparams, H.UNetHparams, H.OptimHparams, H.InputHparams,
                                             H.LossHparams)
#: ``MethodeB.DATA_HPARAMS``: the data settings its network is built for (tests/test_temporal_model.py: they agree)
METHODE_B_DATA_HPARAMS: tuple[str, ...] = ("clip_length",)
#: the module prefixes of a network's weights in a checkpoint's state dict
NETWORK_PREFIXES = ("backbone_model.", "head_model.")


def methode_b_hparams(stored: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters a ``MethodeB`` built from ``stored`` (a checkpoint's ``hyper_parameters``)
    holds: every default of :data:`METHODE_B_HPARAM_GROUPS`, ``stored`` over them, normalised as
    ``LitSegmentationModel.__init__`` does (``inner_normalisation`` None → ``'None'``, ``img_size``
    a list of ints, ``inputs`` a list). Unknown names are kept, as there."""
    hp = {**H.defaults(*METHODE_B_HPARAM_GROUPS), **{k: H.default(k, H.DataHparams) for k in METHODE_B_DATA_HPARAMS},
          **stored}
    if hp.get("inner_normalisation") is None:
        hp["inner_normalisation"] = "None"
    hp["img_size"] = [int(s) for s in hp["img_size"]]
    if isinstance(hp["inputs"], str):
        hp["inputs"] = [hp["inputs"]]
    return hp


class SegmentationNetwork(nn.Module):
    """``MethodeB``'s network as a plain module: flow (B, 2, I, J) → pred (B, L, I, J), softmax over L;
    a temporal model's (``clip_length`` T > 1): clip (B, 2, T, I, J) → pred (B, L, T, I, J).

    Build it with the command-line names, as ``MethodeB``::

        SegmentationNetwork(**{'nAffineMasks': 2, 'unet.num_layers': 4, 'img_size': [128, 224]})

    or from a checkpoint (:meth:`load_from_checkpoint`, weights-only). ``hparams`` (a dict), ``L``,
    ``backbone_model``, ``head_model``, ``prediction`` and ``forward`` are ``MethodeB``'s; there is no
    loss, optimiser or training step.
    """

    #: the LightningModule whose network this is: the class name in ``Models.backends.model_digest``
    MODEL_CLASS = "MethodeB"
    has_network = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        hp = methode_b_hparams(kwargs)
        self.hparams: dict[str, Any] = hp
        self.L = int(hp["nAffineMasks"])
        # The checks CoherenceNet.init_criterion makes, so a checkpoint MethodeB refuses is refused here too.
        cm.check_param_model(hp["param_model"])
        cm.check_v_distance(hp["v_distance"])
        cm.check_theta_method(hp["theta_method"])
        # Registered first, as CoherenceNet's: a module's own buffers come first in its state dict,
        # so the keys are MethodeB's in MethodeB's order (the digest hashes them in order).
        self.register_buffer("XoT", cm.make_basis(hp["param_model"], hp["img_size"]))
        #: T > 1: a temporal model, clips (B, 2, T, I, J) in, pred (B, L, T, I, J) out (docs/METHOD.md §5)
        self.clip_length = int(hp["clip_length"])
        self.backbone_model, self.head_model = network_from_hparams(hp)

    @property
    def device(self) -> torch.device:
        """Where the weights are (the CPU for a network without any)."""
        return next((t.device for t in self.parameters()), torch.device("cpu"))

    def forward(self, x: Tensor) -> Tensor:
        """Network input (B, C, I, J) → pred (B, L, I, J), softmax over L."""
        return self.head_model(self.backbone_model(x))

    def prediction(self, batch: dict) -> dict:
        """Add ``'Pred'`` (B, L, I, J), softmax over L, to the batch (which must hold ``--inputs``):
        ``LitSegmentationModel.prediction``, line for line."""
        if not isinstance(batch, dict):
            raise TypeError(f"prediction expects a batch dict such as {{'Flow': flow}}, got {type(batch).__name__}")
        x = self.backbone_model.prepare_input(batch)
        batch["Pred"] = self(x.to(self.device))
        return batch

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | os.PathLike, map_location: Any = "cpu",
                             trust_checkpoint: bool = False) -> SegmentationNetwork:
        """The network of a ``MethodeB`` checkpoint, read weights-only (``Models.checkpoint_io``;
        ``trust_checkpoint`` is the explicit opt-in to full unpickling), in eval mode."""
        ckpt = read_checkpoint(checkpoint_path, map_location=map_location, trust=trust_checkpoint)
        return cls.from_checkpoint_dict(ckpt, source=str(checkpoint_path)).eval()

    @classmethod
    def from_checkpoint_dict(cls, ckpt: dict, source: str = "checkpoint") -> SegmentationNetwork:
        """Built from ``ckpt['hyper_parameters']``, its ``state_dict`` loaded strictly; the errors are
        ``MethodeB.from_checkpoint_dict``'s (:class:`~Models.checkpoint_io.CheckpointError`)."""
        sd = ckpt["state_dict"]
        if not any(k.startswith(NETWORK_PREFIXES) for k in sd):
            raise CheckpointError(
                f"{source} is a checkpoint of another model: its weights have none of the keys "
                f"{cls.MODEL_CLASS} expects (first keys: {list(sd)[:4]})")
        net = cls(**dict(ckpt.get("hyper_parameters") or {}))
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"{source} does not fit {cls.MODEL_CLASS} built from its own hyperparameters: "
                                  f"{str(err)[:600]}") from None
        return net


def as_methode_b(net: nn.Module) -> nn.Module:
    """The full ``MethodeB`` (a LightningModule: loss, training) with ``net``'s hyperparameters and
    weights, on its device and in its train/eval mode; any other model is returned as it is. Imports
    Lightning: for what needs it (``--adapt``), never for inference."""
    if not isinstance(net, SegmentationNetwork):
        return net
    from Models.CoherenceNets.MethodeB import MethodeB

    model = MethodeB(**net.hparams)
    model.load_state_dict(net.state_dict(), strict=True)
    return model.to(net.device).train(net.training)
