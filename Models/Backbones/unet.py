"""U-Net backbone, with the module layout of the authors' code so their checkpoints load.

``layers`` = [DoubleConv(in, fs)] + (n−1) × Down + (n−1) × Up + [Conv2d(fs, num_classes, 1)].
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emseg.core import hparams as H

NORMALISATIONS = ("InstanceNorm", "BatchNorm", "None")


_NORM_CLASSES = {2: (nn.InstanceNorm2d, nn.BatchNorm2d), 3: (nn.InstanceNorm3d, nn.BatchNorm3d)}


def _norm(kind: str, channels: int, train_bn: bool, dims: int = 2) -> nn.Module | None:
    """The inner normalisation of a ``dims``-D U-Net (2: images, 3: clips)."""
    instance, batch = _NORM_CLASSES[dims]
    if kind == "InstanceNorm":
        return instance(channels, track_running_stats=train_bn)
    if kind == "BatchNorm":
        return batch(channels, track_running_stats=train_bn)
    if kind in ("None", None):
        return None
    raise ValueError(f"inner_normalisation must be one of {list(NORMALISATIONS)}, got {kind!r}")


class DoubleConv(nn.Module):
    """(Conv3×3 → Norm → ReLU) × 2; without normalisation (Conv → ReLU) × 2. ``dims`` 3: Conv3d 3×3×3
    and 3-D norms, (B, in, T, I, J) → (B, out, T, I, J) (the temporal 3-D U-Net's)."""

    def __init__(self, in_ch: int, out_ch: int, inner_normalisation: str = "InstanceNorm",
                 padding_mode: str = "reflect", train_bn: bool = False, dims: int = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        mods: list[nn.Module] = []
        for c_in in (in_ch, out_ch):
            mods.append(conv(c_in, out_ch, kernel_size=3, padding=1, padding_mode=padding_mode))
            norm = _norm(inner_normalisation, out_ch, train_bn, dims)
            if norm is not None:
                mods.append(norm)
            mods.append(nn.ReLU(inplace=True))
        self.net = nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Down(nn.Module):
    """MaxPool2d(2) then DoubleConv(f, 2f); ``dims`` 3: pooled in space only, (1, 2, 2)."""

    def __init__(self, in_ch: int, out_ch: int, dims: int = 2, **conv_kw) -> None:
        super().__init__()
        pool = nn.MaxPool2d(kernel_size=2, stride=2) if dims == 2 else nn.MaxPool3d(kernel_size=(1, 2, 2),
                                                                                      stride=(1, 2, 2))
        self.net = nn.Sequential(pool, DoubleConv(in_ch, out_ch, dims=dims, **conv_kw))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Up(nn.Module):
    """Upsample ×2 (transposed conv, or bilinear + 1×1 conv), pad to the skip, concat, DoubleConv;
    ``dims`` 3: in space only (transposed conv (1, 2, 2), or trilinear + 1×1×1 conv)."""

    def __init__(self, in_ch: int, out_ch: int, bilinear: bool = False, dims: int = 2, **conv_kw) -> None:
        super().__init__()
        scale = 2 if dims == 2 else (1, 2, 2)
        if bilinear:
            self.upsample = nn.Sequential(
                nn.Upsample(scale_factor=scale, mode="bilinear" if dims == 2 else "trilinear", align_corners=True),
                (nn.Conv2d if dims == 2 else nn.Conv3d)(in_ch, in_ch // 2, kernel_size=1),
            )
        else:
            self.upsample = (nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d)(in_ch, in_ch // 2,
                                                                                      kernel_size=scale, stride=scale)
        self.conv = DoubleConv(in_ch, out_ch, dims=dims, **conv_kw)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.upsample(x)
        # Odd sizes lose a row/column at pooling: zero-pad the upsampled map back to the skip's size.
        dh = skip.shape[-2] - x.shape[-2]
        dw = skip.shape[-1] - x.shape[-1]
        # A traced graph (ONNX / OpenVINO export) must keep the pad whatever the example's size, so
        # that it stays right for every size; a zero pad changes nothing.
        if dh or dw or torch.jit.is_tracing():
            x = F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class UNetAbstract(nn.Module):
    """Base of the U-Net backbones: owns the U-Net's command-line flags and their defaults."""

    #: flag destination → default (the authors' names and values), from ``utils/hparams.UNetHparams``
    DEFAULTS: dict[str, Any] = H.defaults(H.UNetHparams)

    @staticmethod
    def add_specific_args(parent_parser: argparse.ArgumentParser,
                          group: Any = None) -> argparse.ArgumentParser:
        """Add ``--unet.num_layers``, ``--unet.features_start``, ``--inner_normalisation`` (``-inm``),
        ``--train_bn``, ``--bilinear`` and ``--padding_mode`` to ``group`` (or the parser)."""
        H.add_arguments(group if group is not None else parent_parser, H.UNetHparams)
        return parent_parser


class UNet(UNetAbstract):
    """U-Net: input (B, input_channels, I, J) → features (B, num_classes, I, J).

    Any I, J work; ``num_layers`` levels (the input is pooled num_layers − 1 times). ``dims`` 3: the
    3-D U-Net of the temporal model, (B, input_channels, T, I, J) → (B, num_classes, T, I, J), Conv3d
    3×3×3 and pooling in space only (any T ≥ 2, ≥ 1 with ``padding_mode='zeros'``).
    """

    def __init__(self, num_classes: int = 32, input_channels: int = 2, num_layers: int = 7,
                 features_start: int = 64, bilinear: bool = False, inner_normalisation: str = "InstanceNorm",
                 padding_mode: str = "reflect", train_bn: bool = False, dims: int = 2) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"unet.num_layers must be >= 1, got {num_layers}")
        if padding_mode not in ("reflect", "zeros", "replicate", "circular"):
            raise ValueError(f"padding_mode must be 'reflect' or 'zeros', got {padding_mode!r}")
        self.num_layers = num_layers
        if dims not in (2, 3):
            raise ValueError(f"a U-Net is 2-D or 3-D, got dims={dims!r}")
        conv_kw = dict(inner_normalisation=inner_normalisation, padding_mode=padding_mode, train_bn=train_bn,
                       dims=dims)
        layers: list[nn.Module] = [DoubleConv(input_channels, features_start, **conv_kw)]
        feats = features_start
        for _ in range(num_layers - 1):
            layers.append(Down(feats, feats * 2, **conv_kw))
            feats *= 2
        for _ in range(num_layers - 1):
            layers.append(Up(feats, feats // 2, bilinear=bilinear, **conv_kw))
            feats //= 2
        layers.append((nn.Conv2d if dims == 2 else nn.Conv3d)(feats, num_classes, kernel_size=1))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        n = self.num_layers
        xi = [self.layers[0](x)]
        for layer in self.layers[1:n]:
            xi.append(layer(xi[-1]))
        y = xi.pop()
        for layer in self.layers[n:-1]:
            y = layer(y, xi.pop())
        return self.layers[-1](y)
