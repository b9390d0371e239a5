"""The temporal networks: a clip of T flows (B, 2, T, I, J) in, T frames of L soft masks
(B, L, T, I, J) out, softmax over L per frame (docs/METHOD.md §5).

Built when the model's ``clip_length`` T is > 1 (``--clip_length``), by ``--temporal_backbone``:

- ``stack2d`` (default): the frame model's U-Net (``Models/Backbones/unet.UNet``) over the T inputs
  stacked on channels (C·T in, channel c·T + t is input channel c of frame t) and a 1×1 head to L·T
  channels (channel l·T + t is mask l of frame t). Every frame is seen with its neighbours at the cost
  of one frame's U-Net (only the first convolution and the head grow with T); T is fixed by the weights.
- ``unet3d``: a 3-D U-Net (the CVPR 2023 space-time network's kind, Meunier & Bouthemy): the U-Net's
  layout with Conv3d 3×3×3, pooling and upsampling in space only (T stays whole: clips are short), and a
  1×1×1 head to L. Any T works with the same weights; its convolutions cost 3× the 2-D U-Net's per frame
  (a training step: 1.6× the frame model's per frame, stack2d's 0.22×; bench/bench_train_step.py).

The modules keep the frame model's names (``backbone_model.model.layers…``, ``head_model.model.pred_conv``),
so a temporal checkpoint has the frame checkpoint's keys with other shapes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor, nn

from Models.Backbones.FakeModel import FakeModel
from Models.Backbones.unet import UNet
from Models.LitBackbone import Backbone, BatchPreparator
from Models.LitHead import MaskHead

#: --temporal_backbone choices (emseg/core/hparams.TEMPORAL_BACKBONES spells them for the parsers)
TEMPORAL_BACKBONES = ("stack2d", "unet3d")


class ClipBatchPreparator(BatchPreparator):
    """The network input of a clip batch: the ``inputs`` (each (B, C, T, I, J)) concatenated on
    channels → (B, ΣC, T, I, J); ``stacked``: time folded into the channels, (B, ΣC·T, I, J)."""

    def __init__(self, inputs: str | Iterable[str], clip_length: int, stacked: bool) -> None:
        super().__init__(inputs)
        self.T = int(clip_length)
        self.stacked = bool(stacked)

    def check_input(self, name: str, x: Tensor) -> None:
        C = self.TYPES[name]
        if x.dim() != 5 or x.shape[1] != C or x.shape[2] != self.T:
            raise ValueError(f"this model is temporal (--clip_length {self.T}): expected {name} "
                             f"(B, {C}, {self.T}, I, J), a clip of {self.T} frames, got {tuple(x.shape)}")

    def prepare_batch(self, batch: dict) -> Tensor:
        x = self.gather(batch)
        if self.stacked:
            B, C, T, I, J = x.shape
            x = x.reshape(B, C * T, I, J)
        return x


# ------------------------------------------------------------------------------------------------
# Backbone and head
# ------------------------------------------------------------------------------------------------
class TemporalBackbone(nn.Module):
    """The temporal backbone: ``prepare_input(batch)`` (its :class:`ClipBatchPreparator`) and ``model``.

    ``stack2d``: (B, C·T, I, J) → (B, features_backbone, I, J) (``UNet``, or ``FakeModel`` with
    ``backbone='fake'``); ``unet3d``: (B, C, T, I, J) → (B, features_backbone, T, I, J).
    """

    def __init__(self, clip_length: int, temporal_backbone: str = "stack2d", inputs=("Flow",),
                 backbone: str = "unet", features_backbone: int = 32, num_layers: int = 7, features_start: int = 64,
                 bilinear: bool = False, inner_normalisation: str = "InstanceNorm", padding_mode: str = "reflect",
                 train_bn: bool = False) -> None:
        super().__init__()
        if temporal_backbone not in TEMPORAL_BACKBONES:
            raise ValueError(f"--temporal_backbone must be one of {list(TEMPORAL_BACKBONES)}, "
                             f"got {temporal_backbone!r}")
        if int(clip_length) < 2:
            raise ValueError(f"a temporal backbone needs --clip_length >= 2, got {clip_length}")
        self.T = int(clip_length)
        self.kind = temporal_backbone
        stacked = temporal_backbone == "stack2d"
        self.batch_prep = ClipBatchPreparator(inputs, self.T, stacked)
        self.inputs = self.batch_prep.inputs
        in_ch = self.batch_prep.in_batch * (self.T if stacked else 1)
        kw = dict(num_classes=features_backbone, input_channels=in_ch, num_layers=num_layers,
                  features_start=features_start, bilinear=bilinear, inner_normalisation=inner_normalisation,
                  padding_mode=padding_mode, train_bn=train_bn)
        if backbone == "fake":
            if not stacked:
                raise ValueError("--backbone fake has no 3-D form: use --temporal_backbone stack2d")
            self.model: nn.Module = FakeModel(features_backbone, input_channels=in_ch)
        elif backbone == "unet":
            self.model = UNet(**kw, dims=2 if stacked else 3)
        else:
            raise ValueError(f"--backbone must be one of ['unet', 'fake'], got {backbone!r}")

    def prepare_input(self, batch: dict) -> Tensor:
        return self.batch_prep.prepare_batch(batch)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class TemporalHead(nn.Module):
    """A 1×1 convolution (``pred_conv``, the frame head's name) to L masks per frame; softmax over L.

    ``stack2d``: features (B, F, I, J) → L·T channels → (B, L, T, I, J); ``unet3d``: features
    (B, F, T, I, J) → (B, L, T, I, J).
    """

    def __init__(self, features_backbone: int, n_masks: int, clip_length: int, stacked: bool) -> None:
        super().__init__()
        if n_masks < 1:
            raise ValueError(f"--nAffineMasks must be >= 1, got {n_masks}")
        self.L, self.T, self.stacked = int(n_masks), int(clip_length), bool(stacked)
        self.model = nn.Module()
        self.model.pred_conv = (nn.Conv2d(features_backbone, self.L * self.T, kernel_size=1) if stacked
                                else nn.Conv3d(features_backbone, self.L, kernel_size=1))

    def forward(self, x: Tensor) -> Tensor:
        y = self.model.pred_conv(x)
        if self.stacked:
            B, _, I, J = y.shape
            y = y.reshape(B, self.L, self.T, I, J)
        return y.softmax(dim=1)


def temporal_network(hp: dict[str, Any]) -> tuple[TemporalBackbone, TemporalHead]:
    """The backbone and head of a temporal model from its hyperparameters (``emseg/core/hparams.py``'s
    keys, with ``clip_length`` ≥ 2): what ``LitSegmentationModel`` builds when ``clip_length`` > 1."""
    T = int(hp["clip_length"])
    kind = hp["temporal_backbone"]
    backbone = TemporalBackbone(T, kind, inputs=hp["inputs"], backbone=hp["backbone"],
                                features_backbone=int(hp["features_backbone"]), num_layers=int(hp["unet.num_layers"]),
                                features_start=int(hp["unet.features_start"]), bilinear=bool(hp["bilinear"]),
                                inner_normalisation=hp["inner_normalisation"], padding_mode=hp["padding_mode"],
                                train_bn=bool(hp["train_bn"]))
    head = TemporalHead(int(hp["features_backbone"]), int(hp["nAffineMasks"]), T, stacked=kind == "stack2d")
    return backbone, head


def network_from_hparams(hp: dict[str, Any]) -> tuple[nn.Module, nn.Module]:
    """(backbone, head) of the network a model's hyperparameters describe: :func:`temporal_network` when
    ``clip_length`` > 1, else the frame U-Net (``Backbone.from_hparams``) and its mask head. MethodeB's
    and the plain inference network's (``Models/network.py``), so that both have the same modules."""
    if int(hp.get("clip_length") or 1) > 1:
        return temporal_network(hp)
    return Backbone.from_hparams(hp), MaskHead(int(hp["features_backbone"]), int(hp["nAffineMasks"]))
