"""Backbone wrapper: builds the network input from the batch (``--inputs``) and runs the U-Net."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from Models.Backbones.FakeModel import FakeModel
from Models.Backbones.unet import UNet

#: --backbone choices
BACKBONES = ("unet", "fake")


class BatchPreparator:
    """Builds the network input from a batch: the ``inputs`` concatenated on channels, in order.

    Flow (B, 2, I, J), Image (B, 3, I, J) in [-0.5, 0.5], FlowRGB (B, 3, I, J) → (B, C, I, J) with
    C = ``in_batch`` = the sum of their channels.
    """

    TYPES: dict[str, int] = {"Flow": 2, "Image": 3, "FlowRGB": 3}

    def __init__(self, inputs: str | Iterable[str]) -> None:
        self.inputs = self.check_inputs(inputs)
        self.in_batch = self.compute_len(self.inputs)

    @classmethod
    def check_inputs(cls, inputs: str | Iterable[str]) -> list[str]:
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        unknown = [name for name in inputs if name not in cls.TYPES]
        if not inputs or unknown:
            raise ValueError(f"--inputs must name one or more of {list(cls.TYPES)}, got {inputs}")
        return inputs

    def get_lengths(self) -> list[int]:
        """Channels of each input, in order."""
        return [self.TYPES[name] for name in self.inputs]

    @classmethod
    def compute_len(cls, inputs: Iterable[str]) -> int:
        """Total channels of ``inputs``."""
        return sum(cls.TYPES[name] for name in inputs)

    def prepare_batch(self, batch: dict) -> Tensor:
        """The inputs of ``batch`` checked and concatenated: (B, in_batch, I, J)."""
        return self.gather(batch)

    def gather(self, batch: dict) -> Tensor:
        """The inputs of ``batch``, each checked by :meth:`check_input`, concatenated on channels (dim 1)."""
        parts = []
        for name in self.inputs:
            if name not in batch:
                raise KeyError(f"the model's --inputs need {name!r} in the batch; it has {sorted(batch)}")
            self.check_input(name, batch[name])
            parts.append(batch[name])
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def check_input(self, name: str, x: Tensor) -> None:
        """ValueError unless input ``name`` is (B, its channels, I, J)."""
        if x.dim() != 4 or x.shape[1] != self.TYPES[name]:
            raise ValueError(f"expected {name} (B, {self.TYPES[name]}, I, J), got {tuple(x.shape)}")


class Backbone(nn.Module):
    """``model`` is the backbone network; ``prepare_input(batch)`` is its :class:`BatchPreparator`.

    ``backbone='unet'``: the U-Net, input (B, C, I, J) → features (B, features_backbone, I, J).
    ``backbone='fake'``: :class:`FakeModel`, the same shapes without weights.
    """

    def __init__(self, inputs=("Flow",), backbone: str = "unet", features_backbone: int = 32,
                 num_layers: int = 7, features_start: int = 64, bilinear: bool = False,
                 inner_normalisation: str = "InstanceNorm", padding_mode: str = "reflect",
                 train_bn: bool = False) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"--backbone must be one of {list(BACKBONES)}, got {backbone!r}")
        self.batch_prep = BatchPreparator(inputs)
        self.inputs = self.batch_prep.inputs
        in_ch = self.batch_prep.in_batch
        if backbone == "fake":
            self.model: nn.Module = FakeModel(features_backbone, input_channels=in_ch)
        else:
            self.model = UNet(num_classes=features_backbone, input_channels=in_ch, num_layers=num_layers,
                              features_start=features_start, bilinear=bilinear,
                              inner_normalisation=inner_normalisation, padding_mode=padding_mode, train_bn=train_bn)

    @classmethod
    def from_hparams(cls, hp: dict) -> Backbone:
        """The backbone a model's hyperparameters (``emseg/core/hparams.py``'s keys) describe: MethodeB's
        and the plain inference network's, so that both have the same modules."""
        return cls(inputs=hp["inputs"], backbone=hp["backbone"], features_backbone=int(hp["features_backbone"]),
                   num_layers=int(hp["unet.num_layers"]), features_start=int(hp["unet.features_start"]),
                   bilinear=bool(hp["bilinear"]), inner_normalisation=hp["inner_normalisation"],
                   padding_mode=hp["padding_mode"], train_bn=bool(hp["train_bn"]))

    def prepare_input(self, batch: dict) -> Tensor:
        return self.batch_prep.prepare_batch(batch)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


#: the authors' name for it (their scripts and snippets import it)
LitBackbone = Backbone
