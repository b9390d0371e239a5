"""A backbone without weights (the authors' ``--backbone fake``).

The authors used it to run models whose masks do not come from a network (ClassicalEM). Here it is
a fixed, parameter-free feature map: the input channels are repeated (cyclically) to the requested
number of features, so ``--backbone fake`` leaves only the 1×1 head to learn — a per-pixel linear
classifier of the flow, useful as a trivial baseline and to exercise the training plumbing fast.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FakeModel(nn.Module):
    """x (B, input_channels, I, J) → features (B, L, I, J): channel k is input channel k mod C."""

    def __init__(self, L: int, input_channels: int) -> None:
        super().__init__()
        if L < 1 or input_channels < 1:
            raise ValueError(f"FakeModel needs L >= 1 features and >= 1 input channel, got {L}, {input_channels}")
        self.L, self.input_channels = int(L), int(input_channels)
        # A buffer not saved in state_dict: checkpoints of a fake backbone hold only the head.
        self.register_buffer("channels", torch.arange(self.L) % self.input_channels, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.input_channels:
            raise ValueError(f"FakeModel expects (B, {self.input_channels}, I, J), got {tuple(x.shape)}")
        return x.index_select(1, self.channels)
