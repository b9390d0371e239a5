"""``python -m csvflowdatamodule.datasets prepare NAME --root DIR [...]``: see ``csvflowdatamodule/README.md``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from csvflowdatamodule.datasets.layouts import DATASETS, FBMS_SETS
from csvflowdatamodule.extract_flow import METHODS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m csvflowdatamodule.datasets",
                                description="Prepare a benchmark (flows, binary ground truth, DataSplit CSVs).")
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("prepare", help="flows, ground truth and DataSplit CSVs of one dataset",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("name", choices=list(DATASETS), help="the dataset")
    q.add_argument("--root", required=True, help="folder holding the dataset's folder (DAVIS/, SegTrackv2/, "
                                                  "FBMS59/): the DataSplits' --base_dir")
    q.add_argument("--out", help="folder of the DataSplit CSVs (default: ROOT/DataSplit)")
    q.add_argument("--method", choices=list(METHODS), default="dis",
                   help="flow estimator (the paper: raft; dis works offline)")
    q.add_argument("--raft_weights", help="torchvision RAFT-large state-dict file (for --method raft)")
    q.add_argument("--raft_iters", type=int, default=12, help="RAFT refinement iterations")
    q.add_argument("--gap", type=int, default=1, help="flow from frame t to frame t + gap")
    q.add_argument("--device", help="torch device for RAFT, e.g. cuda (default: cuda if available)")
    q.add_argument("--batch_size", type=int, default=8, help="frame pairs per RAFT forward pass")
    q.add_argument("--flow_dir", help="flow folder name (default: OpticalFlow020321 for DAVIS, OpticalFlow "
                                      "otherwise; _gap{g} appended for --gap other than 1)")
    q.add_argument("--fbms_set", choices=list(FBMS_SETS), default="test",
                   help="fbms59: Testset (the evaluation set), Trainingset, or both")
    q.add_argument("--all_frames", action="store_true", help="fbms59: a flow for every frame, not only annotated ones")
    q.add_argument("--no_flowrgb", action="store_true", help="no .flo.png colour coding, no FlowRGB column")
    q.add_argument("--sequences", nargs="+", help="only these sequences")
    q.add_argument("--overwrite", action="store_true", help="replace flows made with other settings")
    q.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; 0 on success, 2 with a one-line message on bad input."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from csvflowdatamodule.datasets.prepare import prepare

    try:
        s = prepare(args.name, args.root, out=args.out, method=args.method, gap=args.gap,
                    raft_weights=args.raft_weights, raft_iters=args.raft_iters, device=args.device,
                    batch_size=args.batch_size, flow_dir=args.flow_dir, fbms_set=args.fbms_set,
                    all_frames=args.all_frames, flow_rgb=not args.no_flowrgb, sequences=args.sequences,
                    overwrite=args.overwrite, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as err:  # LayoutError, PreparationMismatchError, bad arguments
        print(f"prepare: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    rows = ", ".join(f"{k} {v}" for k, v in s["n_rows"].items())
    print(f"{s['dataset']}: {s['n_sequences']} sequences; flows {s['computed']} computed, {s['reused']} already "
          f"there; {s['masks_written']} masks written; {len(s['skipped'])} skipped ({s['skipped_csv']}); rows: {rows}; "
          f"{s['seconds']:.1f} s.\nUse: --base_dir {s['base_dir']} --data_file {s['data_file']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
