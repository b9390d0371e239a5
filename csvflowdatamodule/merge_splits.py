"""Merge several DataSplits (each with its own base dir) into one, for training on all of them.

    python -m csvflowdatamodule.merge_splits --out data/mixed/mixed \
        --split ~/.cache/em_motion_segmentation/synthetic_v1 ~/.cache/em_motion_segmentation/synthetic_v1/synthetic \
        --split data/bikes data/bikes/flow

writes ``data/mixed/mixed_{train,val,test}.csv`` whose paths are absolute (use ``--base_dir /``)
or, with ``--relative_to DIR``, relative to DIR. Only the columns every merged split has are kept
(a warning names the others); a step missing from a split is skipped with a warning naming it.
Rows are never dropped: the counts are logged and returned.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import pandas as pd

from csvflowdatamodule.CsvDataModule import resolve_data_path
from emseg.core.atomic_io import atomic_write

logger = logging.getLogger(__name__)

FILE_COLUMNS = ("Flow", "Image", "GtMask", "FlowRGB")


def merge_splits(out_prefix: str, splits: list[tuple[str, str]], relative_to: str | None = None,
                 steps: tuple[str, ...] = ("train", "val", "test")) -> dict[str, int]:
    """Merge ``splits`` [(base_dir, data_file), …] into ``{out_prefix}_{step}.csv``; returns row counts."""
    counts: dict[str, int] = {}
    os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
    for step in steps:
        frames = []
        for base_dir, data_file in splits:
            path = resolve_data_path(data_file).format(step)
            if not os.path.isfile(path):
                logger.warning("%s: no %s split (%s), nothing taken from it for %s", data_file, step, path, step)
                continue
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
            if "Flow" not in df.columns:
                raise ValueError(f"{path}: no 'Flow' column (columns: {list(df.columns)})")
            for col in FILE_COLUMNS:
                if col in df.columns:
                    full = df[col].map(lambda p, b=base_dir: os.path.abspath(os.path.join(os.path.expanduser(b), p))
                                       if p else p)
                    df[col] = full.map(lambda p: os.path.relpath(p, relative_to) if p and relative_to else p)
            frames.append(df)
        if not frames:
            continue
        # A column only some splits have (masks of the labelled ones) would leave empty cells, which
        # the loader reports as bad samples: keep only the columns every split has.
        common = [c for c in frames[0].columns if all(c in f.columns for f in frames)]
        dropped = sorted({c for f in frames for c in f.columns} - set(common))
        if dropped:
            logger.warning("%s: dropping column(s) %s that not every split has", step, dropped)
        merged = pd.concat([f[common] for f in frames], ignore_index=True)
        target = f"{out_prefix}_{step}.csv"
        atomic_write(target, lambda p, df=merged: df.to_csv(p, index=False))
        counts[step] = len(merged)
        logger.info("%s: %d rows from %d splits", target, len(merged), len(frames))
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output prefix: OUT_{train,val,test}.csv")
    p.add_argument("--split", nargs=2, action="append", required=True, metavar=("BASE_DIR", "DATA_FILE"),
                   help="a DataSplit to merge (repeat the flag)")
    p.add_argument("--relative_to", default=None, help="write paths relative to this directory (default: absolute)")
    p.add_argument("--steps", nargs="+", default=["train", "val", "test"], choices=["train", "val", "test"],
                   help="which split files to write (default all three)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    counts = merge_splits(args.out, [tuple(s) for s in args.split], args.relative_to, tuple(args.steps))
    print(f"wrote {args.out}_{{{','.join(counts)}}}.csv: {counts}; train with --base_dir "
          f"{args.relative_to or '/'} --data_file {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
