"""Segment flows or a video with a trained model (the bundled one by default).

    python segment.py --video my_clip.mp4 --out out/my_clip           # flow computed first (OpenCV DIS)
    python segment.py --video my_clip.mp4 --out out/my_clip --adapt   # fine-tune on the clip first
    python segment.py --flow images/00000.flo --out out/blackswan
    python segment.py --flows data/my_clip/flows --out out/my_clip
    python segment.py --flow x.flo --ckpt runs/exp1/last.ckpt --out out/x
    python segment.py --flow x.flo --ckpt ClassicalEM --out out/x_em  # the EM baseline
    emseg-segment --flow x.flo --out out/x                            # once installed (pip install -e .)

Writes per frame {name}_binary.png, and segmentation.mp4 (video) or segmentation.gif (flow files) of
the overlays; --save_proba and --overlays add {name}_proba.npy and {name}_overlay.png (on by default
for flow files). Logic: emseg/app/segmentation.py.
"""

import argparse
import logging
import sys

from emseg.app.segmentation import (
    BUNDLED_CKPT,
    DIS_PRESETS,
    SegmentOptions,
    list_flows,
    load_segmenter,
    segment_flows,
    segment_video,
)
from emseg.video.adaptation import DEFAULT_ADAPT_LR, DEFAULT_ADAPT_STEPS

D = SegmentOptions()


def _positive_int(name: str):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {s!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {v}")
        return v
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--flow", help="one .flo (or .npy H×W×2) file")
    src.add_argument("--flows", help="a directory of .flo/.npy files (a sequence, in name order)")
    src.add_argument("--video", help="a video file (flow computed with OpenCV)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--ckpt", default=None, help=f"checkpoint (default: the bundled {BUNDLED_CKPT.name}) or ClassicalEM")
    p.add_argument("--trust_checkpoint", action="store_true", help="allow a legacy checkpoint you trust")
    p.add_argument("--batch_size", type=_positive_int("--batch_size"), default=D.batch_size)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--backend", default=None, choices=["torch", "onnxruntime", "openvino"],
                   help="what runs the network on the CPU (default: the fastest exact one installed)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16 is an opt-in that is not exact (argmax agreement ≥ 99 %%, see bench/README.md)")
    p.add_argument("--no_export_cache", dest="keep_export", action="store_false",
                   help="export the network for onnxruntime/openvino into a temporary folder, instead of keeping "
                        "it for the next run in ~/.cache/em_motion_segmentation/exports ($XDG_CACHE_HOME)")
    g = p.add_argument_group("quality (see emseg/app/segmentation.py)")
    g.add_argument("--no_temporal", action="store_true",
                   help="segment every frame alone (no identity matching, no fusion with the neighbours)")
    g.add_argument("--fusion_weight", type=float, default=D.fusion_weight,
                   help="weight of each neighbouring frame (× its flow confidence) against the frame's own 1")
    g.add_argument("--min_motion", type=float, default=D.min_motion,
                   help="keep a foreground region only if it departs from the background's fitted motion by "
                        "more than this many times the flow's noise; 0 turns it off")
    g.add_argument("--adapt", type=int, nargs="?", const=DEFAULT_ADAPT_STEPS, default=0, metavar="STEPS",
                   help=f"(--video) first fine-tune a copy of the model on the video's flows for STEPS steps "
                        f"(default {DEFAULT_ADAPT_STEPS} when given without a number)")
    g.add_argument("--adapt_lr", type=float, default=DEFAULT_ADAPT_LR)
    g.add_argument("--save_adapted", default=None, metavar="PATH", help="keep the adapted weights (a checkpoint)")
    v = p.add_argument_group("video flow")
    v.add_argument("--max_width", type=_positive_int("--max_width"), default=None,
                   help="downscale frames to this width before the flow (default: the width the model was "
                        "trained on, recorded in its checkpoint)")
    v.add_argument("--flow_method", default=D.flow_method, choices=["dis", "farneback"])
    v.add_argument("--dis_preset", default=D.dis_preset, choices=list(DIS_PRESETS))
    v.add_argument("--allow_partial", action="store_true",
                   help="accept a video that decodes to fewer frames than its header says")
    o = p.add_argument_group("outputs")
    o.add_argument("--overlays", action=argparse.BooleanOptionalAction, default=None,
                   help="{name}_overlay.png per frame (default: on for flow files, off for a video)")
    o.add_argument("--save_proba", action=argparse.BooleanOptionalAction, default=None,
                   help="{name}_proba.npy per frame (default: on for flow files, off for a video)")
    o.add_argument("--save_flows", action="store_true", help="(--video) keep the flows, in flows.npz (float16)")
    o.add_argument("--no_gif", "--no_animation", dest="no_animation", action="store_true",
                   help="no segmentation.mp4 / segmentation.gif")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    files_default = args.video is None
    opts = SegmentOptions(
        batch_size=args.batch_size, temporal=not args.no_temporal, fusion_weight=args.fusion_weight,
        min_motion=args.min_motion, animation=not args.no_animation,
        overlays=files_default if args.overlays is None else args.overlays,
        save_proba=files_default if args.save_proba is None else args.save_proba,
        max_width=args.max_width, flow_method=args.flow_method, dis_preset=args.dis_preset,
        save_flows=args.save_flows, allow_partial=args.allow_partial, adapt_steps=args.adapt or 0,
        adapt_lr=args.adapt_lr, save_adapted=args.save_adapted, backend=args.backend, precision=args.precision,
        keep_export=args.keep_export)
    try:
        opts.check()
        if args.adapt and not args.video:
            raise ValueError("--adapt needs --video (the clip's own flows are the training data)")
        flows = None if args.video else list_flows(args.flow, args.flows)
        model = load_segmenter(args.ckpt, args.trust_checkpoint, args.device)
        if args.video:
            res = segment_video(model, args.video, args.out, opts)
        else:
            res = segment_flows(model, flows, args.out, opts=opts)
    except (OSError, ValueError) as err:  # missing inputs, bad checkpoints or videos: one clear line
        raise SystemExit(f"segment.py: {err}") from None
    anim = res.get("animation") or res.get("gif")
    extra = f" (animation: {anim})" if anim else ""
    if res.get("n_skipped"):
        extra += f"; {res['n_skipped']} unreadable file(s) skipped, listed in {res['out']}/skipped.csv"
    if res.get("fps"):
        extra += f"; {res['fps']:.1f} frames/s"
    print(f"segmented {res['n_flows']} flow(s) → {res['out']}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
