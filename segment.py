"""Segment flows or a video with a trained model (the bundled one by default).

    python segment.py --flow images/00000.flo --out out/blackswan
    python segment.py --flows data/my_clip/flows --out out/my_clip
    python segment.py --video my_clip.mp4 --out out/my_clip           # computes the flow first (OpenCV DIS)
    python segment.py --flow x.flo --ckpt runs/exp1/last.ckpt --out out/x
    python segment.py --flow x.flo --ckpt ClassicalEM --out out/x_em  # the EM baseline
    emseg-segment --flow x.flo --out out/x                            # once installed (pip install -e .)

Writes per frame: *_proba.npy, *_binary.png, *_overlay.png, and segmentation.gif. Logic: utils/segmentation.py.
"""

import argparse
import logging
import sys

from utils.segmentation import BUNDLED_CKPT, list_flows, load_segmenter, segment_flows, segment_video


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--flow", help="one .flo (or .npy H×W×2) file")
    src.add_argument("--flows", help="a directory of .flo/.npy files")
    src.add_argument("--video", help="a video file (flow computed with OpenCV DIS)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--ckpt", default=None, help=f"checkpoint (default: the bundled {BUNDLED_CKPT.name}) or ClassicalEM")
    p.add_argument("--trust_checkpoint", action="store_true", help="allow a legacy checkpoint you trust")
    p.add_argument("--flow_method", default="dis", choices=["dis", "farneback"], help="flow method for --video")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--no_gif", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        flows = None if args.video else list_flows(args.flow, args.flows)
        model = load_segmenter(args.ckpt, args.trust_checkpoint, args.device)
    except (OSError, ValueError) as err:  # missing inputs, bad checkpoints: one clear line, no traceback
        raise SystemExit(f"segment.py: {err}") from None
    if args.video:
        res = segment_video(model, args.video, args.out, method=args.flow_method, batch_size=args.batch_size,
                            gif=not args.no_gif)
    else:
        res = segment_flows(model, flows, args.out, batch_size=args.batch_size, gif=not args.no_gif)
    gif = f" (animation: {res['gif']})" if "gif" in res else ""
    print(f"segmented {res['n_flows']} flow(s) → {res['out']}{gif}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
