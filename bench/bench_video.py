"""End-to-end ``segment.py --video``: frames/s, peak memory and where the time goes.

    python bench/bench_video.py --video clip1.mp4 clip2.mp4 [--long 2000] [--threads 2] [-- EXTRA SEGMENT ARGS]

Each run is one ``segment.py --video`` subprocess (so its peak RSS is its own, read with
``os.wait4``); frames/s is the pipeline's own (``manifest.json``: masks written over the wall time
after the model is loaded), and the per-stage busy seconds come from the same manifest (stages
run on different threads, so their shares can add up to more than 100 % of the wall time).
``--long N`` also runs a video of N frames made by looping the first clip (forwards then
backwards, so it stays continuous), to show that memory does not grow with the video's length.

``--short`` also runs a made-up 40-frame 672 × 480 clip (a textured blob over a panning textured
background), where start-up weighs most: its ``e2e frames/s`` column is masks over the wall time of the
whole command (imports, model, backend, flow, writing), after one unmeasured run that warms the export
cache. ``--video`` may then be omitted:

    python bench/bench_video.py --short --repeat 3

``--against DIR`` also runs another checkout's ``segment.py`` (e.g. the code before a change, copied
aside), alternating run by run with this one's, so that both see the same load on a shared machine; each
row names its tree, and a last table gives each tree's median wall time and e2e frames/s per video:

    python bench/bench_video.py --short --repeat 5 --against /tmp/before
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, announce, env_markdown, markdown_table, write_results  # noqa: E402

logger = logging.getLogger("bench_video")
STAGES = ("decode+downscale", "flow", "network", "confidence", "temporal+significance", "binarise", "write")


def loop_video(src: str, n_frames: int, dst: Path) -> Path:
    """``n_frames`` frames of ``src`` played forwards then backwards, repeatedly, as MJPG AVI."""
    cap = cv2.VideoCapture(src)
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    cap.release()
    if len(frames) < 2:
        raise SystemExit(f"bench_video: {src}: fewer than 2 frames decoded")
    cycle = frames + frames[-2:0:-1]
    H, W = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"MJPG"), fps, (W, H))
    for t in range(n_frames):
        writer.write(cycle[t % len(cycle)])
    writer.release()
    return dst


def short_clip(dst: Path, n_frames: int = 40, size: tuple[int, int] = (672, 480), seed: int = 0) -> Path:
    """A synthetic clip (MP4): a textured ellipse moving 7 px/frame right over a textured background
    panning 1.5 px/frame, each texture smooth noise plus fine grain (so DIS has something to track)."""
    rng = np.random.default_rng(seed)
    W, H = size

    def texture(h: int, w: int, cell: int) -> np.ndarray:
        coarse = cv2.resize(rng.random((h // cell + 2, w // cell + 2, 3)).astype(np.float32), (w, h),
                            interpolation=cv2.INTER_CUBIC)
        fine = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 1.5)
        return np.clip(255 * (0.7 * coarse + 0.3 * fine), 0, 255).astype(np.uint8)

    bg, fg = texture(H + 200, W + 200, 24), texture(H, W, 8)
    yy, xx = np.mgrid[0:H, 0:W]
    writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (W, H))
    for t in range(n_frames):
        ox, oy = int(40 + 1.5 * t), int(60 + 0.7 * t)
        frame = bg[oy:oy + H, ox:ox + W].copy()
        inside = ((xx - 180 - 7 * t) / 90.0) ** 2 + ((yy - 200 - 3 * t) / 60.0) ** 2 < 1
        frame[inside] = np.roll(fg, (3 * t, 7 * t), axis=(0, 1))[inside]
        writer.write(frame)
    writer.release()
    return dst


def run_one(video: str, out: Path, threads: int, extra: list[str], root: Path = ROOT) -> dict:
    """One ``segment.py --video`` of the checkout ``root``: its row (frames/s, wall, peak RSS, stage shares)."""
    cmd = [sys.executable, str(root / "segment.py"), "--video", video, "--out", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(root)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stderr = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        raise SystemExit(f"bench_video: {shlex.join(cmd)} failed ({how}):\n{stderr[-3000:]}")
    m = json.loads((out / "manifest.json").read_text())
    cap = cv2.VideoCapture(video)
    W, H = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    cap.release()
    seg_wall = m["n_segmented"] / m["segment_fps"]
    row = {"tree": str(root), "video": Path(video).name, "size": f"{W}x{H}", "frames": m["decoded_frames"],
           "flow_width": m.get("flow_width"), "fps": m["segment_fps"], "wall_s": round(wall, 2),
           "e2e_fps": round(m["n_segmented"] / wall, 2),
           "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}
    for s in STAGES:
        row[s] = round(100 * m.get("stage_seconds", {}).get(s, 0.0) / seg_wall, 1)
    return row


def medians(rows: list[dict]) -> list[dict]:
    """Per (tree, video): the number of runs and the median wall time, e2e and pipeline frames/s."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["tree"], r["video"]), []).append(r)
    return [{"tree": tree, "video": video, "runs": len(rs),
             **{k: statistics.median(r[k] for r in rs) for k in ("wall_s", "e2e_fps", "fps")}}
            for (tree, video), rs in groups.items()]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        k = argv.index("--")
        argv, extra = argv[:k], argv[k + 1:]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", nargs="+", default=[])
    p.add_argument("--long", type=int, default=0, help="also run the first video looped to this many frames")
    p.add_argument("--short", action="store_true", help="also run a synthetic 40-frame 672x480 clip (start-up)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each video (rows), after a warm-up run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--against", type=Path, default=None, metavar="DIR",
                   help="another checkout whose segment.py runs alternately with this one's (before/after)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "video.json"))
    args = p.parse_args(argv)
    if not args.video and not args.short:
        p.error("give --video, --short or both")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        videos = list(args.video)
        if args.long and args.video:
            videos.append(str(loop_video(args.video[0], args.long, Path(tmp) / f"long_{args.long}.avi")))
        if args.short:
            videos.append(str(short_clip(Path(tmp) / "short_672x480.mp4")))
        trees = [ROOT] if args.against is None else [args.against.resolve(), ROOT]
        for k, v in enumerate(videos):
            logger.info("running %s", v)
            for i, root in enumerate(trees):  # the export cache and the OS file cache
                run_one(v, Path(tmp) / f"warm{k}_{i}", args.threads, extra, root)
            rows += [run_one(v, Path(tmp) / f"run{k}_{r}_{i}", args.threads, extra, root)
                     for r in range(args.repeat) for i, root in enumerate(trees)]
    print(env_markdown())
    print(f"segment.py extra arguments: `{shlex.join(extra) or '(defaults)'}`, OMP_NUM_THREADS={args.threads}\n")
    cols = [("tree", "tree")] if args.against is not None else []
    cols += [("video", "video"), ("size", "size"), ("frames", "frames"), ("flow_width", "flow width"),
            ("fps", "frames/s", ".2f"), ("wall_s", "wall s", ".2f"), ("e2e_fps", "e2e frames/s", ".2f"),
            ("peak_rss_mib", "peak RSS MiB", ".0f")]
    cols += [(s, f"{s} %", ".0f") for s in STAGES]
    print(markdown_table(rows, cols))
    if args.against is not None:
        print()
        print(markdown_table(medians(rows), [("tree", "tree"), ("video", "video"), ("runs", "runs"),
                                             ("wall_s", "median wall s", ".2f"),
                                             ("e2e_fps", "median e2e frames/s", ".2f"),
                                             ("fps", "median frames/s", ".2f")]))
    announce(write_results(args.out, rows, {"extra": extra, "threads": args.threads}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
