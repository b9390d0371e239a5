"""Segmentation head: a 1×1 convolution to L masks, softmax over L."""

from __future__ import annotations

from torch import Tensor, nn


class SingleMask(nn.Module):
    """The authors' head network: features (B, in_feats, I, J) → logits (B, out_feats, I, J).

    One 1×1 convolution (``pred_conv``, the name their checkpoints store); the softmax over the
    L = ``out_feats`` masks is applied by :class:`MaskHead`.
    """

    def __init__(self, in_feats: int, out_feats: int) -> None:
        super().__init__()
        self.pred_conv = nn.Conv2d(in_feats, out_feats, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pred_conv(x)


class MaskHead(nn.Module):
    """features (B, features_backbone, I, J) → pred (B, L, I, J), softmax over L."""

    def __init__(self, features_backbone: int = 32, n_masks: int = 2) -> None:
        super().__init__()
        if n_masks < 1:
            raise ValueError(f"--nAffineMasks must be >= 1, got {n_masks}")
        self.model = SingleMask(features_backbone, n_masks)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).softmax(dim=1)


#: the authors' name for it (their scripts and snippets import it)
LitHead = MaskHead
