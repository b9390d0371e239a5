"""Backbone wrapper: builds the network input from the batch (``--inputs``) and runs the U-Net."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from Models.Backbones.unet import UNet

INPUT_CHANNELS = {"Flow": 2, "Image": 3, "FlowRGB": 3}


def check_inputs(inputs) -> list[str]:
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    unknown = [name for name in inputs if name not in INPUT_CHANNELS]
    if not inputs or unknown:
        raise ValueError(f"--inputs must name one or more of {list(INPUT_CHANNELS)}, got {inputs}")
    return inputs


class LitBackbone(nn.Module):
    """``model`` is the U-Net; ``prepare_input(batch)`` concatenates the ``inputs`` on channels.

    Flow (B, 2, I, J), Image (B, 3, I, J) in [-0.5, 0.5], FlowRGB (B, 3, I, J) → (B, C, I, J).
    """

    def __init__(self, inputs=("Flow",), backbone: str = "unet", features_backbone: int = 32,
                 num_layers: int = 7, features_start: int = 64, bilinear: bool = False,
                 inner_normalisation: str = "InstanceNorm", padding_mode: str = "reflect",
                 train_bn: bool = False) -> None:
        super().__init__()
        if backbone != "unet":
            raise ValueError(f"--backbone must be 'unet', got {backbone!r}")
        self.inputs = check_inputs(inputs)
        in_ch = sum(INPUT_CHANNELS[name] for name in self.inputs)
        self.model = UNet(num_classes=features_backbone, input_channels=in_ch, num_layers=num_layers,
                          features_start=features_start, bilinear=bilinear,
                          inner_normalisation=inner_normalisation, padding_mode=padding_mode, train_bn=train_bn)

    def prepare_input(self, batch: dict) -> Tensor:
        parts = []
        for name in self.inputs:
            if name not in batch:
                raise KeyError(f"the model's --inputs need {name!r} in the batch; it has {sorted(batch)}")
            x = batch[name]
            if x.dim() != 4 or x.shape[1] != INPUT_CHANNELS[name]:
                raise ValueError(f"expected {name} (B, {INPUT_CHANNELS[name]}, I, J), got {tuple(x.shape)}")
            parts.append(x)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)
