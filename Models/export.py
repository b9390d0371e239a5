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
import os
import sys
from collections.abc import Sequence
from pathlib import Path

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
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output file (never the checkpoint being exported)")
    return p.parse_args(argv)


#: what each format writes: the output's required suffix, then the files written beside it
OUTPUT_SUFFIXES = {"onnx": (".onnx",), "openvino": (".xml", ".bin")}


def check_output(ckpt: str | os.PathLike, out: str | os.PathLike, fmt: str, overwrite: bool = False) -> None:
    """Refuse an output that would destroy something: the checkpoint itself (even with ``overwrite``),
    a name without the format's suffix (``.onnx``; ``.xml`` for openvino, whose ``.bin`` goes beside it),
    and an existing file unless ``overwrite``. Raises :class:`ExportError` naming the file."""
    out = Path(out)
    suffixes = OUTPUT_SUFFIXES[fmt]
    if out.suffix != suffixes[0]:
        raise ExportError(f"{out}: an {fmt} export is written to a {suffixes[0]} file"
                          + (f" (with its {suffixes[1]} beside it)" if len(suffixes) > 1 else "")
                          + f", got {out.suffix or 'no suffix'!r}")
    src = Path(ckpt)
    for target in (out.with_suffix(sfx) for sfx in suffixes):
        if target.exists() and src.exists() and os.path.samefile(target, src):
            raise ExportError(f"{target} is the checkpoint being exported; choose another output file")
        if target.exists() and not overwrite:
            raise ExportError(f"{target} exists; pass --overwrite to replace it, or choose another output file")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    a = parse_args(argv)
    from Models.checkpoint_io import CheckpointError
    from Models.CoherenceNets.MethodeB import MethodeB

    try:
        check_output(a.ckpt, a.out, a.format, a.overwrite)
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
