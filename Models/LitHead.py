"""Segmentation head: a 1×1 convolution to L masks, softmax over L."""

from __future__ import annotations

from torch import Tensor, nn


class MaskHead(nn.Module):
    def __init__(self, features_backbone: int, n_masks: int) -> None:
        super().__init__()
        self.pred_conv = nn.Conv2d(features_backbone, n_masks, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pred_conv(x).softmax(dim=1)


class LitHead(nn.Module):
    """features (B, features_backbone, I, J) → pred (B, L, I, J), softmax over L."""

    def __init__(self, features_backbone: int = 32, n_masks: int = 2) -> None:
        super().__init__()
        if n_masks < 1:
            raise ValueError(f"--nAffineMasks must be >= 1, got {n_masks}")
        self.model = MaskHead(features_backbone, n_masks)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)
