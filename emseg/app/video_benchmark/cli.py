"""A real-footage video benchmark with exact ground truth: real photographs composited into videos.

Each sequence is rendered: the background is a real photograph seen by a moving camera (a smooth,
bounded affine path — translation, zoom, small rotation — whose window always lies inside the
photograph, so no border ever comes into view), and 0–5 foreground objects are smooth irregular
blobs (Fourier-perturbed ellipses) textured from other real photographs, each with its own smooth
motion relative to the scene. Objects are composited with an anti-aliased alpha; the ground truth
is exact: a pixel is foreground where its centre lies inside an object's analytic shape (the
object's alpha > 0.5; the union of the objects). Mild sensor noise is added and each sequence is
written as an MP4 video (25 fps) with its masks.

    python -m emseg.app.video_benchmark make --out data/videobench [--textures DIR] [--seed 0]
    python -m emseg.app.video_benchmark score --bench data/videobench --split test \\
        --out runs/videobench/NAME [--label NAME] [-- <extra segment.py args>]
    python -m emseg.app.video_benchmark compare runs/videobench/A runs/videobench/B ...
    python -m emseg.app.video_benchmark loss_check --bench data/videobench --split dev \\
        --runs runs/videobench/A [runs/videobench/B ...] [--clip_length 3] [--out loss_check.csv]
    python -m emseg.app.video_benchmark truth_drift --bench data/videobench --split test \\
        --ckpt checkpoints/em_small.ckpt [--steps 25 100 300] [--out truth_drift.csv]

Layout written by ``make``: ``{out}/manifest.json``, ``{out}/{split}/{sequence}/video.mp4``,
``{out}/{split}/{sequence}/masks/00000.png`` ... (0 / 255, the video's size) and
``{out}/{split}/{sequence}/sequence.json`` (its description).

``score`` runs ``segment.py --video {video} --out {out}/{sequence} <extra args>`` per sequence and
scores ``{out}/{sequence}/{t:05d}_binary.png`` for t = 0 … N − 2 (N frames; frame N − 1 too when
present) against the ground truth: per-frame J (``utils.evaluations.db_eval_iou``, both empty → 1),
boundary F (``evaluationmodule.davis_metrics``), flicker (the share of the foreground changing label
between frames once the exact motion is accounted for; the ground truth's floor beside it) and regions
(ground-truth regions found at ≥ 30 % coverage, predicted regions < 10 % on the ground truth), means per
sequence and over the split's original seven sequences (core7), the new ones and all.

``loss_check`` asks whether the training loss prefers the ground truth to the runs' masks: on each run's
own flows, the loss (θ refitted) of the true partition against the run's, frame by frame (``loss_check.py``).
``truth_drift`` asks where training leads from the truth: a copy of the model fitted with labels to each
sequence's ground truth, then trained on its own loss alone, J along the way (``truth_drift.py``).

``python -m evaluationmodule.video_benchmark`` (the module's former path) runs the same command.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from emseg.app.video_benchmark.layout import DEFAULT_TEXTURES, SPLITS, BenchmarkError
from emseg.core import hparams as H

#: the training loss's settings ``loss_check`` takes (``emseg.core.hparams.LossHparams``' flags)
LOSS_KEYS = ("param_model", "st_param_model", "v_distance", "theta_method", "temporal_sigma")

PROG = "python -m emseg.app.video_benchmark"


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """The command line (``make``, ``score``, ``compare``, ``loss_check``, ``truth_drift``); ``prog`` is the
    command the help shows (the old module path passes its own). Returns 0; a bad input exits with one line
    naming the file."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log_level", default="INFO")
    sub = p.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="render the benchmark")
    mk.add_argument("--out", required=True)
    mk.add_argument("--textures", default=str(DEFAULT_TEXTURES), help="folder of the photographs (opencv-doc's)")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--n_frames", type=int, default=48)
    mk.add_argument("--overwrite", action="store_true", help="replace a benchmark made with other settings")
    sc = sub.add_parser("score", help="run segment.py --video on a split and score it (extra args after --)")
    sc.add_argument("--bench", required=True)
    sc.add_argument("--split", default="test", choices=list(SPLITS))
    sc.add_argument("--out", required=True, help="run folder (one subfolder per sequence)")
    sc.add_argument("--label", default=None, help="name in tables and plots (default: the folder's name)")
    sc.add_argument("--rerun", action="store_true", help="run again sequences already done with the same command")
    sc.add_argument("--score_only", action="store_true", help="score the masks already in --out, run nothing")
    sc.add_argument("--bound_th", type=float, default=0.008)
    cp = sub.add_parser("compare", help="per-sequence J / F of several scored runs side by side")
    cp.add_argument("runs", nargs="+")
    cp.add_argument("--plot", default=None, help="bar plot PNG (default: compare_J.png beside the first run)")
    cp.add_argument("--frames", nargs="+", default=None, metavar="SEQUENCE:FRAME",
                    help="also draw these frames, one row each, with every run's outline (e.g. zoom_rotate:30)")
    cp.add_argument("--frames_out", default=None,
                    help="the frames' figure (PNG; default: compare_frames.png beside the first run)")
    lc = sub.add_parser("loss_check", help="does the training loss prefer the ground truth to the runs' masks? "
                                           "(on each run's own flows)")
    lc.add_argument("--bench", required=True)
    lc.add_argument("--split", default="dev", choices=list(SPLITS))
    lc.add_argument("--runs", nargs="+", required=True, help="run folders of score (segment.py --video's outputs)")
    lc.add_argument("--labels", nargs="+", default=None, help="their names in the table (default: the folders')")
    lc.add_argument("--clip_length", type=int, default=1,
                    help="1: the frame model's loss; T > 1: the temporal model's over clips of T frames")
    H.add_arguments(lc, H.LossHparams, only=LOSS_KEYS)
    lc.add_argument("--out", default=None, help="per-frame CSV (and {stem}_per_sequence.csv beside it)")
    td = sub.add_parser("truth_drift", help="fit a copy of the model to the truth, then train it on its loss "
                                            "alone: does J stay? (per sequence with objects)")
    td.add_argument("--bench", required=True)
    td.add_argument("--split", default="dev", choices=list(SPLITS))
    td.add_argument("--ckpt", default=None, help="the model (default: the bundled one); a temporal one too")
    td.add_argument("--sequences", nargs="+", default=None, help="only these sequences (default: all with objects)")
    td.add_argument("--steps", nargs="+", type=int, default=[25, 100, 300],
                    help="milestones (steps of the loss alone) at which J is measured")
    td.add_argument("--truth_steps", type=int, default=150, help="supervised steps fitting the model to the truth")
    td.add_argument("--truth_lr", type=float, default=1e-3)
    td.add_argument("--lr", type=float, default=None, help="learning rate of the loss's steps (default: --adapt's)")
    td.add_argument("--batch_size", type=int, default=None, help="frames (or clips) per step (default: --adapt's)")
    td.add_argument("--seed", type=int, default=0)
    td.add_argument("--temporal_weight", type=float, default=None,
                    help="a temporal model: this weight of the temporal term instead of its own")
    td.add_argument("--out", default=None, help="CSV of the table (and {stem}.png, J against steps, beside it)")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if extra and args.cmd != "score":
        p.error("arguments after -- are only for score (they go to segment.py)")
    # the job's module only now: --help and a bad argument need none of numpy, pandas, torch, matplotlib
    try:
        if args.cmd == "make":
            from emseg.app.video_benchmark.make import make_benchmark
            man = make_benchmark(args.out, args.textures, args.seed, args.n_frames, args.overwrite)
            n = sum(len(v) for v in man["sequences"].values())
            print(f"benchmark: {n} sequences ({', '.join(man['sequences'])}) → {args.out}")
        elif args.cmd == "score":
            from emseg.app.video_benchmark.run import run_benchmark
            from emseg.app.video_benchmark.score import format_table

            res = run_benchmark(args.bench, args.split, args.out, extra, label=args.label, rerun=args.rerun,
                                score_only=args.score_only, bound_th=args.bound_th)
            print(format_table(res.per_sequence, res.summary))
            print(f"→ {Path(args.out) / 'summary.json'}")
        elif args.cmd == "loss_check":
            from emseg.app.video_benchmark.loss_check import LossSettings, format_loss_table, loss_check

            settings = LossSettings(clip_length=args.clip_length, **{k: getattr(args, k) for k in LOSS_KEYS})
            _, per_seq = loss_check(args.bench, args.split, args.runs, args.labels, settings, args.out)
            print(format_loss_table(per_seq, settings))
            if args.out:
                print(f"→ {args.out}")
        elif args.cmd == "truth_drift":
            from emseg.app.segment.model import load_segmenter
            from emseg.app.video_benchmark import truth_drift as drift

            given = {k: getattr(args, k) for k in ("lr", "batch_size") if getattr(args, k) is not None}
            settings = drift.DriftSettings(steps=tuple(args.steps), truth_steps=args.truth_steps,
                                           truth_lr=args.truth_lr, seed=args.seed,
                                           temporal_weight=args.temporal_weight, **given)
            model = load_segmenter(args.ckpt, trainable=True, device="cpu")
            try:
                drift.check_drift(settings, model)
            except ValueError as err:
                p.error(str(err))
            df = drift.truth_drift(args.bench, args.split, model, settings, args.sequences, args.out)
            print(drift.format_drift_table(df))
            if args.out:
                print(f"→ {args.out}, {drift.plot_drift(df, Path(args.out).with_suffix('.png'))}")
        else:
            from emseg.app.video_benchmark.compare import compare_frames, compare_runs

            plot = args.plot or str(Path(args.runs[0]).resolve().parent / "compare_J.png")
            print(compare_runs(args.runs, plot))
            print(f"plot → {plot}")
            if args.frames:
                out = args.frames_out or str(Path(args.runs[0]).resolve().parent / "compare_frames.png")
                print(f"frames → {compare_frames(args.runs, args.frames, out)}")
    except (BenchmarkError, OSError) as err:
        raise SystemExit(f"video_benchmark: {err}") from None
    return 0

