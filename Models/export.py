"""Export a segmentation network to ONNX or OpenVINO IR, for the inference backends.

    python -m Models.export --format onnx checkpoints/em_small.ckpt em_small.onnx
    python -m Models.export --format openvino checkpoints/em_small.ckpt em_small.xml   # + em_small.bin

The command line over ``Models/exporting.py`` (the exporters, re-exported here), with a parity check
against torch by ``Models/backends.py``. The exported graph takes ``flow`` (B, 2, I, J) float32 and
returns ``pred`` (B, L, I, J), softmax over L, as ``model.prediction({'Flow': flow})['Pred']``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from Models.exporting import (  # noqa: F401  (the exporters' names, importable from here as before)
    FORMATS,
    OPSET,
    ExplicitNorm,
    ExportError,
    PredictionGraph,
    export,
    export_onnx,
    export_openvino,
    is_exportable,
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m Models.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx, or openvino (IR .xml + .bin)")
    p.add_argument("ckpt", help="a MethodeB checkpoint (e.g. checkpoints/em_small.ckpt)")
    p.add_argument("out", help="the output file: .onnx, or .xml for openvino")
    p.add_argument("--trust_checkpoint", action="store_true",
                   help="allow arbitrary unpickling (the authors' legacy checkpoints); only for files you trust")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip comparing the exported graph with torch on a synthetic flow")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    a = parse_args(argv)
    from Models.checkpoint_io import CheckpointError
    from Models.CoherenceNets.MethodeB import MethodeB

    try:
        model = MethodeB.load_from_checkpoint(a.ckpt, trust_checkpoint=a.trust_checkpoint).eval()
        out = export(model, a.out, a.format)
    except (CheckpointError, ExportError) as err:
        raise SystemExit(f"error: {err}") from None
    summary = f"wrote {out}"
    if a.check:
        from Models.backends import BackendError, parity

        name = "onnxruntime" if a.format == "onnx" else "openvino"
        try:
            diff = parity(model, out, name)
            summary += f" (max |Δpred| against torch on a synthetic flow: {diff:.2e}, {name})"
        except BackendError as err:
            summary += f" (not checked: {err})"
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
