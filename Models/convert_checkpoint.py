"""Convert a checkpoint (e.g. the authors' PyTorch Lightning 1.2 files) into one that loads with a
plain ``torch.load(weights_only=True)`` and predicts identically.

    python -m Models.convert_checkpoint OLD.ckpt NEW.ckpt
    python -m Models.convert_checkpoint --trust_checkpoint OLD.ckpt NEW.ckpt   # a file you trust

OLD is read weights-only with the allow-list of ``Models.checkpoint_io`` (the authors' files pass);
a file referencing other Python objects is refused unless ``--trust_checkpoint`` is given, which
unpickles it in full (it can run code: only for a file you trust).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from Models.checkpoint_io import CheckpointError, read_checkpoint, sanitise_for_safe_load, save_checkpoint_file

INFERENCE_KEYS = ("state_dict", "hyper_parameters", "epoch", "global_step", "pytorch-lightning_version")


def convert_checkpoint(src: str, dst: str, overwrite: bool = False, inference_only: bool = False,
                       trust: bool = False) -> dict:
    """Read ``src`` (arbitrary unpickling only with ``trust``), keep its weights, hyperparameters and
    training counters, write ``dst``.

    ``inference_only`` also drops the optimiser and loop states (a third of the size with Adam):
    the result predicts identically but cannot resume training.
    """
    if os.path.exists(dst) and not overwrite:
        raise FileExistsError(f"{dst!r} exists; pass --overwrite to replace it")
    ckpt = sanitise_for_safe_load(read_checkpoint(src, trust=trust))
    if inference_only:
        ckpt = {k: v for k, v in ckpt.items() if k in INFERENCE_KEYS}
    # written then renamed, and proved to load weights-only before it is published; a full disk is
    # DiskFullError (one line naming dst), and dst, if it was there, is left as it was
    save_checkpoint_file(ckpt, dst, verify=True)
    return ckpt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="checkpoint to convert")
    parser.add_argument("dst", help="where to write the safe checkpoint")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--inference_only", action="store_true",
                        help="keep only weights and hyperparameters (smaller; cannot resume training)")
    parser.add_argument("--trust_checkpoint", action="store_true",
                        help="allow SRC to reference any Python object (full unpickling: it can run code)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        ckpt = convert_checkpoint(args.src, args.dst, args.overwrite, args.inference_only, args.trust_checkpoint)
    except (CheckpointError, OSError) as err:  # OSError: FileExistsError, DiskFullError, unreadable SRC
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst}: {len(ckpt['state_dict'])} tensors, keys {sorted(ckpt)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
