"""Export a segmentation network to ONNX or OpenVINO IR, for the inference backends (the command line
is ``python -m Models.export``, in ``Models/export.py``; ``Models/backends.py`` exports through here too).

The exported graph takes ``flow`` (B, 2, I, J) float32, any B, I, J, and returns ``pred``
(B, L, I, J), softmax over L: exactly what ``model.prediction({'Flow': flow})['Pred']`` computes
(the model applies no input normalisation of its own; the data modules' ``flow_normalisation``
is the caller's business, as for ``prediction``).

Two things differ from a plain trace of the network:

* the U-Net's crop-or-pad step between levels is traced for every size (``Up.forward`` keeps the
  pad under tracing), so sizes not divisible by 2^(levels − 1) stay right;
* normalisation layers are written out as explicit mean/variance operations arranged to keep
  fp32 precision on large maps (:class:`ExplicitNorm`): with the runtimes' own instance
  normalisation, the bundled model's masks moved by up to 2e-2 (OpenVINO) and 9e-4
  (onnxruntime) against torch at 720 × 1280.

Only models whose ``prediction`` is the network itself can be exported (``has_network``, inputs
``['Flow']``); ``ClassicalEM`` runs EM in Python and stays on torch.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from emseg.core.atomic_io import atomic_write

FORMATS = ("onnx", "openvino")
#: ONNX opset of the exported graphs (supported by onnxruntime and OpenVINO's ONNX reader)
OPSET = 17


class ExportError(ValueError):
    """The model cannot be exported, or an export tool is missing; the message says why."""


def is_exportable(model: nn.Module) -> bool:
    """True when ``model.prediction({'Flow': flow})['Pred']`` is the network alone, on ``inputs ['Flow']``:
    a :class:`~Models.network.SegmentationNetwork`, or a
    :class:`~Models.LitSegmentationModel.LitSegmentationModel` with a network and the base class's
    ``prediction`` (not, e.g., ``ClassicalEM``'s EM loop)."""
    from Models.network import SegmentationNetwork

    if isinstance(model, SegmentationNetwork):
        base = SegmentationNetwork
    else:
        # An instance of a class needs its module imported: where Models.LitSegmentationModel is not,
        # the model is none of its subclasses, and the answer needs no Lightning import (1.7 s).
        lit = sys.modules.get("Models.LitSegmentationModel")
        if lit is None or not isinstance(model, lit.LitSegmentationModel) or not getattr(model, "has_network", False):
            return False
        base = lit.LitSegmentationModel
    if type(model).prediction is not base.prediction:
        return False
    return list(model.backbone_model.inputs) == ["Flow"]


class ExplicitNorm(nn.Module):
    """An eval-mode ``InstanceNorm2d`` / ``BatchNorm2d`` as explicit mean/variance operations.

    Statistics are per (sample, channel) over (I, J) for instance norm, per channel over
    (B, I, J) for batch norm, or the running ones where the layer uses them in eval mode; then
    the optional affine weight and bias. x (B, C, I, J) → (B, C, I, J).

    The runtimes sum a reduction in long single-precision runs: one mean over a 480 × 854 map
    moved the bundled model's masks by 1.2e-4 (onnxruntime) and 3e-3 (OpenVINO) against a
    float64 reference, 9e-4 and 2e-2 at 720 × 1280, where torch stays within 4.3e-5. Here every
    reduction runs one axis at a time (runs of at most the width), and the mean is corrected by a
    second pass (the mean of the centred values, exact algebra): ≤ 4.5e-5 for both up to 720p.
    The sum of squares is one ``ReduceL2`` per row rather than a squared copy of the map, which
    keeps the graph within a few per cent of the runtimes' own fused normalisation.
    """

    def __init__(self, norm: nn.InstanceNorm2d | nn.BatchNorm2d) -> None:
        super().__init__()
        self.eps = float(norm.eps)
        self.per_sample = isinstance(norm, nn.InstanceNorm2d)
        running = norm.track_running_stats and norm.running_mean is not None
        self.register_buffer("running_mean", norm.running_mean.detach().clone() if running else None)
        self.register_buffer("running_var", norm.running_var.detach().clone() if running else None)
        affine = norm.affine and norm.weight is not None
        self.register_buffer("weight", norm.weight.detach().clone() if affine else None)
        self.register_buffer("bias", norm.bias.detach().clone() if affine else None)

    def _mean(self, x: Tensor) -> Tensor:
        m = x.mean(3, keepdim=True).mean(2, keepdim=True)
        return m if self.per_sample else m.mean(0, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        if self.running_mean is not None:
            y = (x - self.running_mean[:, None, None]) / torch.sqrt(self.running_var[:, None, None] + self.eps)
        else:
            d = x - self._mean(x)
            c = self._mean(d)  # what the first mean's rounding left: ~0
            row_norm = torch.linalg.vector_norm(d, 2, dim=3, keepdim=True)  # (B, C, I, 1)
            var = self._mean(row_norm * row_norm) / x.shape[3] - c * c
            y = (d - c) / torch.sqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight[:, None, None] + self.bias[:, None, None]
        return y


def _explicit_norms(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, (nn.InstanceNorm2d, nn.BatchNorm2d)):
            setattr(module, name, ExplicitNorm(child))
        else:
            _explicit_norms(child)
    return module


class PredictionGraph(nn.Module):
    """The network of ``model`` as a plain module: flow (B, 2, I, J) → pred (B, L, I, J), softmax
    over L, in eval mode, with :class:`ExplicitNorm` layers. A copy: ``model`` is not changed."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not is_exportable(model):
            raise ExportError(
                f"{type(model).__name__} cannot be exported: only networks whose prediction is the network "
                "itself on the flow (inputs ['Flow']) can; run it with the torch backend")
        backbone = copy.deepcopy(model.backbone_model).float().cpu().eval()
        head = copy.deepcopy(model.head_model).float().cpu().eval()
        self.backbone = _explicit_norms(backbone)
        self.head = head
        self.n_masks = int(model.L)
        self.img_size = [int(s) for s in model.hparams["img_size"]]
        #: a temporal model's clip length T (> 1: flow (B, 2, T, I, J) → pred (B, L, T, I, J)), else 1
        self.clip_length = int(getattr(model, "clip_length", 1))
        # the 2-D temporal network reads the clip's frames stacked on channels, as its batch preparator stacks them
        self.stacked = self.clip_length > 1 and getattr(model.backbone_model, "kind", "") == "stack2d"

    def forward(self, flow: Tensor) -> Tensor:
        if self.stacked:
            B, C, T, I, J = flow.shape
            flow = flow.reshape(B, C * T, I, J)
        return self.head(self.backbone(flow))

    def example_flow(self) -> Tensor:
        """A flow of the graph's input shape: (2, 2, I, J), or (2, 2, T, I, J) for a temporal model."""
        g = torch.Generator().manual_seed(0)
        clip = (self.clip_length,) if self.clip_length > 1 else ()
        return torch.randn(2, 2, *clip, *self.img_size, generator=g)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Batch, height and width dynamic (a temporal model's T is fixed by its weights)."""
        h = 3 if self.clip_length > 1 else 2
        axes = {0: "batch", h: "height", h + 1: "width"}
        return {"flow": axes, "pred": dict(axes)}


def _write_onnx(graph: PredictionGraph, path: Path) -> None:
    with warnings.catch_warnings():
        # The TorchScript exporter warns about shape-to-bool conversions (the pad, kept under
        # tracing) and about its own deprecation; neither affects the graph.
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(
                graph, (graph.example_flow(),), str(path), input_names=["flow"], output_names=["pred"],
                dynamic_axes=graph.dynamic_axes(), opset_version=OPSET, do_constant_folding=True, dynamo=False)


def export_onnx(model: nn.Module, out: str | os.PathLike) -> Path:
    """Write ``model``'s network as ONNX to ``out`` (atomically): input ``flow`` (B, 2, I, J),
    output ``pred`` (B, L, I, J), B, I and J dynamic; a temporal model's (B, 2, T, I, J) → (B, L, T, I, J)."""
    graph = PredictionGraph(model)
    return atomic_write(out, lambda tmp: _write_onnx(graph, tmp))


def _require_openvino():
    try:
        import openvino
    except ImportError:
        raise ExportError("the OpenVINO export needs the 'openvino' package (pip install openvino)") from None
    return openvino


def export_openvino(model: nn.Module, out: str | os.PathLike) -> Path:
    """Write ``model``'s network as OpenVINO IR: ``out`` (.xml, the graph) and the .bin beside it
    (the weights, kept fp32). Made from the ONNX graph, so both formats compute the same."""
    ov = _require_openvino()
    out = Path(out)
    if out.suffix != ".xml":
        raise ExportError(f"an OpenVINO IR is an .xml file (with its .bin beside it); got {str(out)!r}")
    with tempfile.TemporaryDirectory(prefix="export_ov_") as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "model.onnx")
        ov_model = ov.convert_model(str(onnx_path))
        staged = Path(tmp) / "model.xml"
        # compress_to_fp16 defaults to True: it would halve the weights' precision.
        ov.save_model(ov_model, str(staged), compress_to_fp16=False)
        # The .bin first: an .xml is never seen without its weights.
        atomic_write(out.with_suffix(".bin"), lambda t: shutil.copyfile(staged.with_suffix(".bin"), t))
        atomic_write(out, lambda t: shutil.copyfile(staged, t))
    return out


def export(model: nn.Module, out: str | os.PathLike, fmt: str) -> Path:
    """``export_onnx`` or ``export_openvino`` by ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "onnx":
        return export_onnx(model, out)
    if fmt == "openvino":
        return export_openvino(model, out)
    raise ExportError(f"--format must be one of {list(FORMATS)}, got {fmt!r}")
