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
for flow files). Logic: emseg/app/segment/ (settings: emseg/core/hparams.py).
"""

import argparse
import logging
import sys

from emseg.app.segment.options import SegmentOptions, default_gap
from emseg.core import hparams as H

logger = logging.getLogger("segment")

# Only the settings' definitions are imported here: --help answers without torch, and a video's
# decoding and flow (OpenCV, numpy) start before torch, Lightning, the model and the backend load.


def build_parser() -> argparse.ArgumentParser:
    """segment.py's flags, every one from ``emseg/core/hparams.py`` (``SEGMENT_GROUPS``)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    H.add_arguments(p.add_mutually_exclusive_group(required=True), H.SegmentSourceHparams)
    H.add_arguments(p, H.SegmentHparams)
    H.add_arguments(p.add_argument_group("quality (see emseg/app/segment/stages.py)"), H.SegmentQualityHparams)
    H.add_arguments(p.add_argument_group("video flow"), H.SegmentVideoHparams)
    H.add_arguments(p.add_argument_group("outputs"), H.SegmentOutputHparams)
    return p


def options_of(args: argparse.Namespace) -> SegmentOptions:
    """The pipeline's settings from the parsed flags (overlays and probabilities: on for flow files,
    off for a video, unless the flags say; ``--gap``: each source's default, unless given)."""
    files_default = args.video is None
    return SegmentOptions(
        batch_size=args.batch_size, temporal=not args.no_temporal, fusion_weight=args.fusion_weight,
        gap=default_gap(video=not files_default) if args.gap is None else args.gap, refine=not args.no_refine,
        steady=not args.no_steady, min_motion=args.min_motion, track_frames=args.track_frames,
        animation=not args.no_animation,
        overlays=files_default if args.overlays is None else args.overlays,
        save_proba=files_default if args.save_proba is None else args.save_proba,
        max_width=args.max_width, flow_method=args.flow_method, dis_preset=args.dis_preset,
        save_flows=args.save_flows, allow_partial=args.allow_partial, adapt_steps=args.adapt or 0,
        adapt_lr=args.adapt_lr, save_adapted=args.save_adapted, backend=args.backend, precision=args.precision,
        keep_export=not args.no_export_cache, overwrite=args.overwrite)


def early_source(args: argparse.Namespace, opts: SegmentOptions):
    """The video's decode → flow thread, started before the model loads, when the width to compute
    the flow at is known without it (``--max_width``, or the checkpoint's record read without torch);
    None otherwise (and with --adapt, whose flows come first). Opening the video here also reports an
    unreadable one before any loading."""
    from emseg.app.segment.model import CLASSICAL_EM, peek_hparams, recorded_flow_width
    from emseg.app.segment.source import VideoSource

    if args.max_width:
        width = args.max_width
    elif args.ckpt == CLASSICAL_EM:
        width = None  # ClassicalEM records no flow width
    else:
        hp = peek_hparams(args.ckpt)
        if hp is None:
            VideoSource(args.video, opts, None)  # only its checks of the file
            return None
        width = recorded_flow_width(hp, None)
    source = VideoSource(args.video, opts, width)
    return None if opts.adapt_steps > 0 else source.start()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    opts = options_of(args)
    source = None
    try:
        if args.adapt and not args.video:
            raise ValueError("--adapt needs --video (the clip's own flows are the training data)")
        from emseg.app.segment.model import check_save_adapted

        check_save_adapted(args.save_adapted, args.ckpt, args.overwrite)  # before minutes of adaptation
        if args.video:
            source = early_source(args, opts)
        opts.check()
        from emseg.app.segment.app import list_flows, segment_flows, segment_video
        from emseg.app.segment.model import load_segmenter

        flows = None if args.video else list_flows(args.flow, args.flows)
        model = load_segmenter(args.ckpt, args.trust_checkpoint, args.device)
        if args.video:
            res = segment_video(model, args.video, args.out, opts, source=source)
        else:
            res = segment_flows(model, flows, args.out, opts=opts)
    except (OSError, ValueError) as err:  # missing inputs, bad checkpoints or videos: one clear line
        if source is not None:
            source.close()
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
