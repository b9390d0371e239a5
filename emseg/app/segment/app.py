"""The app behind segment.py: flow files or a video through the stages to masks (the package's
docstring says which module does what), with counts, timings and the manifest."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from emseg.app.segment.model import flow_width_of, make_predictor, model_device, save_adapted
from emseg.app.segment.options import FLOW_SUFFIXES, FLOW_WIDTH_HPARAM, FLOWS_GAP, SegmentOptions
from emseg.app.segment.source import VideoError, VideoSource, threaded, video_pairs
from emseg.app.segment.stages import SequenceStages, Step, gap_flow, pairs_to_steps
from emseg.app.segment.windows import frame_windows
from emseg.app.segment.writers import Progress, Writer, write_flows, write_manifest, write_skipped
from emseg.core.flow_io import read_flow
from emseg.video.compose import compose_flows
from emseg.video.flow_confidence import resize_flow

logger = logging.getLogger(__name__)


def list_flows(flow: str | None = None, flows: str | None = None) -> list[Path]:
    if flow is not None:
        p = Path(flow)
        if not p.is_file():
            raise FileNotFoundError(f"--flow {flow}: no such file")
        return [p]
    d = Path(flows)
    if not d.is_dir():
        raise NotADirectoryError(f"--flows {flows}: not a directory")
    found = sorted(p for p in d.iterdir() if p.suffix.lower() in FLOW_SUFFIXES)
    if not found:
        raise FileNotFoundError(f"--flows {flows}: no .flo or .npy files in it")
    stems: dict[str, Path] = {}
    for p in found:
        if p.stem in stems:
            raise ValueError(f"--flows {flows}: {stems[p.stem].name} and {p.name} would write the same outputs "
                             f"({p.stem}_binary.png); keep one of them")
        stems[p.stem] = p
    return found


@contextlib.contextmanager
def output_folder(out: str | os.PathLike, opts: SegmentOptions, inputs: Sequence[str | os.PathLike | None] = ()):
    """``out`` made ready for this run and held by it: a second run into it at the same time is refused
    (``RunLock``), and an earlier segmentation there is moved aside to ``OUT.previous-<UTC time>`` (or
    removed with ``opts.overwrite``; emseg/app/run_folder.py), so the folder and its manifest hold this
    run's files only. ``inputs`` are never moved or removed."""
    from emseg.app.run_folder import SEGMENTATION, RunLock, RunLockError, prepare_run_folder

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(str(out), flag="--out")
    try:
        lock.acquire()
    except RunLockError as err:
        raise ValueError(str(err)) from None
    try:
        prepare_run_folder(out, SEGMENTATION, overwrite=opts.overwrite, keep=inputs)
        yield out
    finally:
        lock.release()


def segment_flows(model, flow_paths: Sequence[Path], out: str | os.PathLike, frames: Sequence[Path] | None = None,
                  batch_size: int = 8, gif: bool = True, progress: bool = True,
                  opts: SegmentOptions | None = None) -> dict:
    """Segment flow files, in order (a sequence, for the temporal stage); a file that cannot be read
    is skipped and recorded in ``skipped.csv`` and the manifest. Returns counts and paths."""
    if opts is None:
        opts = SegmentOptions(batch_size=batch_size, animation=gif, progress=progress, overlays=True, save_proba=True,
                              gap=FLOWS_GAP)
    opts.check()
    with output_folder(out, opts, [*flow_paths, *(frames or [])]) as out:
        return _segment_flows(model, flow_paths, out, frames, opts)


def _segment_flows(model, flow_paths: Sequence[Path], out: Path, frames: Sequence[Path] | None,
                   opts: SegmentOptions) -> dict:
    img_size = tuple(model.hparams["img_size"])
    predict = make_predictor(model, opts.backend, opts.precision, keep_export=opts.keep_export)
    stages = SequenceStages(opts, model.hparams.get("param_model", "Quadratic"))
    writer = Writer(out, opts, fps=None)
    skipped: list[tuple[str, str]] = []
    bar = Progress(len(flow_paths), "segmenting", opts.progress)
    manifest = {"source": {"type": "flows", "files": len(flow_paths)}, "options": asdict(opts),
                "status": "in progress"}
    write_manifest(out, manifest)

    def base_of(k: int, full: np.ndarray):
        def make() -> np.ndarray:
            H, W = full.shape[:2]
            if frames is not None and k < len(frames):
                return np.array(Image.open(frames[k]).convert("RGB").resize((W, H)))
            from emseg.core.figures import flow_to_rgb  # matplotlib: only for flow files' overlays

            return flow_to_rgb(torch.from_numpy(full).permute(2, 0, 1))
        return make

    def emit(steps: list[Step]) -> None:
        for s in steps:
            writer.submit(s.name, s.meta["final"].numpy(), s.meta["size"], s.meta["base"], *s.flows())
            bar.update()

    gap = max(1, int(opts.gap))
    prev_in: torch.Tensor | None = None
    t = 0
    batch: list[_Gapped] = []

    windows = frame_windows(model, predict)
    waiting: deque = deque()  # (file, its flow, network input, its confidence) until their prediction comes

    def as_flow(a: np.ndarray) -> torch.Tensor:
        """(H, W, 2) → (1, 2, H, W) float32."""
        return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float()

    def run(items: list[_Gapped]) -> None:
        flows_in, confs_in, owns = [], [], []
        for g in items:
            own = full_t = as_flow(g.full)
            conf = None
            if len(g.run) > 1:  # the flow over k = len(g.run) frames (emseg/video/compose.py); run[0] is g.full
                full_t, chain = compose_flows([own, *(as_flow(f) for f in g.run[1:])])
                # the test trusts only complete chains: where one left the frame, its extrapolation
                # (k/j × j flows, their noise with them) feeds the network but not the test
                conf = F.interpolate((chain == len(g.run)).float()[None], size=img_size, mode="bilinear",
                                     align_corners=False)[0, 0]
            flows_in.append(F.interpolate(full_t, size=img_size, mode="bilinear", align_corners=False))
            confs_in.append(conf)
            owns.append(own)
        flows_in = torch.cat(flows_in)
        waiting.extend(zip(items, owns, flows_in, confs_in))
        preds, start = [], 0
        for i, g in enumerate(items):
            if g.after_break:  # a temporal model's clips never span a break
                preds += windows.push(flows_in[start:i]) + windows.restart()
                start = i
        preds += windows.push(flows_in[start:])
        emit(stages.push_many(steps_of(preds)))

    def steps_of(preds: list[torch.Tensor]) -> list[Step]:
        nonlocal prev_in, t
        steps = []
        for pr in preds:
            g, own, f_in, conf = waiting.popleft()
            H, W = g.full.shape[:2]
            fwd = resize_flow(own, img_size, rescale=True)[0]
            if g.after_break:
                prev_in = None  # the sequence is broken between this file and the previous readable one
            # Without the backward flow, the flow back to the previous frame is taken as minus its
            # forward flow (exact for a constant motion), and no confidence is known.
            to_prev = -prev_in if prev_in is not None else None
            step = Step(t, g.path.stem, pr, f_in, fwd, to_prev, None, None,
                        meta={"size": (H, W), "base": base_of(g.index, g.full)}, conf_in=conf)
            t += 1
            prev_in = fwd
            steps.append(step)
        return steps

    # today's batches: the readable files among each batch_size files in name order
    for g in _gapped(_read_flows(flow_paths, skipped), gap):
        if batch and g.index // opts.batch_size != batch[0].index // opts.batch_size:
            run(batch)
            batch = []
        batch.append(g)
    if batch:
        run(batch)
    emit(stages.push_many(steps_of(windows.restart())))
    emit(stages.finish())
    anim = writer.close()
    bar.close()
    if skipped:
        write_skipped(out, skipped)
    n_ok = writer.n_written
    manifest.update(status="complete", n_flows=len(flow_paths), n_segmented=n_ok, n_skipped=len(skipped),
                    identity_swaps=stages.swaps, regions_kept=stages.kept_regions,
                    regions_dropped=stages.dropped_regions)
    write_manifest(out, manifest)
    result = {"n_flows": n_ok, "n_skipped": len(skipped), "out": str(out)}
    if "animation" in anim:
        result["gif" if anim["animation"].endswith(".gif") else "animation"] = anim["animation"]
    return result


@dataclass
class _Gapped:
    """A readable flow file (the ``index``-th of the list) and the flows its frame is judged over."""

    index: int
    path: Path
    full: np.ndarray                #: (H, W, 2) its flow, t → t+1
    run: list[np.ndarray]           #: its flow and the next ones of its unbroken run: k = len(run) <= gap
    after_break: bool               #: an unreadable file (or the start) lies between it and the previous one


def _read_flows(flow_paths: Sequence[Path],
                skipped: list[tuple[str, str]]) -> Iterator[tuple[int, Path, np.ndarray] | None]:
    """Each file's flow (H, W, 2) in order, or None for a file that cannot be read (recorded in ``skipped``)."""
    for k, p in enumerate(flow_paths):
        try:
            full = read_flow(str(p))
            if full.ndim != 3 or full.shape[2] != 2:
                raise ValueError(f"expected a flow (H, W, 2), got {full.shape}")
            if not np.isfinite(full).all():
                raise ValueError("non-finite values")
        except (OSError, ValueError, EOFError) as err:
            logger.warning("skipped %s: %s", p, err)
            skipped.append((str(p), str(err)))
            yield None
            continue
        yield k, p, full


def _gapped(flows: Iterator[tuple[int, Path, np.ndarray] | None], gap: int) -> Iterator[_Gapped]:
    """The readable flows in order, each with the next ones of its run (``_Gapped.run``): k = min(gap, the
    flows left in the run), a run ending at an unreadable file (None), at a change of grid, or at the end.
    Holds at most ``gap`` flows (a read-ahead of gap − 1)."""
    window: deque[tuple[int, Path, np.ndarray, bool]] = deque()
    after_break = True

    def head() -> _Gapped:
        k, p, full, brk = window[0]
        return _Gapped(k, p, full, [f for _, _, f, _ in window], brk)

    for item in flows:
        if item is not None and window and item[2].shape != window[0][2].shape:
            while window:  # flows of another size cannot be composed with these
                yield head()
                window.popleft()
        if item is None:
            while window:
                yield head()
                window.popleft()
            after_break = True
            continue
        window.append((*item, after_break))
        after_break = False
        if len(window) == gap:
            yield head()
            window.popleft()
    while window:
        yield head()
        window.popleft()


def video_flows_at_model_size(video: str | os.PathLike, model, opts: SegmentOptions) -> torch.Tensor:
    """Every flow of the video as the network reads them: (N, 2, I, J) float32 (for adaptation), over
    ``opts.gap`` frames (``stages.gap_flow``; the last frames: the longest gap left)."""
    img_size = tuple(model.hparams["img_size"])
    stats: dict = {}
    flows = []
    bar = Progress(None, "flows for adaptation", opts.progress)
    lite = SegmentOptions(**{**asdict(opts), "temporal": False, "min_motion": 0.0})
    for p in threaded(video_pairs(video, lite, flow_width_of(model, opts.max_width), False, stats)):
        # the network's own input (the flow over the gap): adapting on the one-frame flow would fit the
        # network to motions about gap times smaller than those it then segments
        f, _ = gap_flow(p, torch.from_numpy(p.forward).permute(2, 0, 1)[None], img_size)
        flows.append(F.interpolate(f, size=img_size, mode="bilinear", align_corners=False)[0])
        bar.update()
    bar.close()
    if not flows:
        raise VideoError(f"--video {video}: fewer than 2 frames decoded, no flow to adapt on")
    return torch.stack(flows)


def segment_video(model, video: str | os.PathLike, out: str | os.PathLike, opts: SegmentOptions | None = None,
                  source: VideoSource | None = None, **kw) -> dict:
    """Segment every frame of ``video`` (the package's docstring); returns counts, timings and paths.

    ``source``: the video's frame pairs already being computed (segment.py starts them before the
    model loads), used when its flow width is the model's (else stopped, and the video read again).

    Raises :class:`VideoError` when the video decodes to fewer frames than its header announces
    (after writing what it decoded, with the manifest's status ``partial``), unless
    ``opts.allow_partial``.
    """
    if opts is None:
        opts = SegmentOptions(**kw)
    opts.check()
    clip_length = int(getattr(model, "clip_length", 1))
    if opts.adapt_steps > 0 and clip_length > 1:
        raise ValueError(f"--adapt fine-tunes a frame model on the video's flows; this model is temporal "
                         f"(clip_length {clip_length}): run it without --adapt")
    try:
        with output_folder(out, opts, [video, opts.save_adapted]) as out:
            return _segment_video(model, video, out, opts, source)
    finally:
        if source is not None:
            source.close()


def _segment_video(model, video: str | os.PathLike, out: Path, opts: SegmentOptions,
                   source: VideoSource | None) -> dict:
    t_start = time.perf_counter()
    if source is not None and (opts.adapt_steps > 0 or source.flow_width != flow_width_of(model, opts.max_width)):
        logger.info("the flow was started at another width than the model's: computing it again")
        source.close()
        source = None
    if source is None:
        source = VideoSource(video, opts, flow_width_of(model, opts.max_width))  # fails early on a bad file
    info = source.info
    adapt_summary = None
    if opts.adapt_steps > 0:
        from emseg.video.adaptation import adapt
        from Models.network import as_methode_b

        flows = video_flows_at_model_size(video, model, opts)
        model = as_methode_b(model)  # fine-tuning needs the LightningModule's loss
        model, adapt_summary = adapt(model, flows, steps=opts.adapt_steps, lr=opts.adapt_lr, progress=opts.progress)
        if opts.save_adapted:
            save_adapted(model, opts.save_adapted, overwrite=opts.overwrite)
        del flows
    t_seg = time.perf_counter()
    img_size = tuple(model.hparams["img_size"])
    flow_width = source.flow_width
    if flow_width is None:
        logger.warning("the model records no %s and --max_width is not set: the flow is computed at the frames' "
                       "own size", FLOW_WIDTH_HPARAM)
    # The decode/flow thread keeps one core busy, so the network gets the others: on 2 cores, one
    # network thread instead of two took a 720×528 clip from 7.4 to 8.0 frames/s (bench/README.md).
    net_threads = max(1, torch.get_num_threads() - 1) if model_device(model).type == "cpu" else None
    # An adapted network is this run's alone: kept, every adapted run would add its export (8 MB) to the cache.
    keep_export = opts.keep_export and adapt_summary is None
    predict = make_predictor(model, opts.backend, opts.precision, threads=net_threads, keep_export=keep_export)
    stages = SequenceStages(opts, model.hparams.get("param_model", "Quadratic"))
    times = source.times
    writer = Writer(out, opts, fps=info["fps"] or 25.0, times=times)
    keep = [] if opts.save_flows else None
    manifest = {"source": {"type": "video", "path": str(Path(video).resolve()), **info},
                "options": asdict(opts), "flow_width": flow_width, "network_threads": net_threads,
                "status": "in progress"}
    write_manifest(out, manifest)
    stats = source.stats
    total = info["frames_in_header"] - 1 if info["frames_in_header"] > 1 else None
    bar = Progress(total, "segmenting", opts.progress)
    pairs = source.pairs()
    n = 0

    def emit(steps: list[Step]) -> None:
        nonlocal n
        for s in steps:
            writer.submit(s.name, s.meta["final"].numpy(), s.meta["size"], s.meta["base"], *s.flows())
            n += 1
            bar.update()

    for batch in pairs_to_steps(pairs, img_size, frame_windows(model, predict), opts.batch_size, keep, times):
        t0 = time.perf_counter()
        done = stages.push_many(batch)
        times.add("temporal+significance", t0)
        emit(done)
    emit(stages.finish())
    anim = writer.close()
    bar.close()
    if keep:
        write_flows(out, keep)
    decoded, header = stats.get("decoded", 0), info["frames_in_header"]
    if decoded < 2:
        manifest.update(status="failed", decoded_frames=decoded)
        write_manifest(out, manifest)
        raise VideoError(f"--video {video}: {decoded} frame(s) decoded, need at least 2")
    partial = header > 0 and decoded < header
    seconds = time.perf_counter() - t_start
    manifest.update(status="partial" if partial else "complete", decoded_frames=decoded, n_segmented=n,
                    identity_swaps=stages.swaps, regions_kept=stages.kept_regions,
                    regions_dropped=stages.dropped_regions, seconds=round(seconds, 3),
                    segment_fps=round(n / max(time.perf_counter() - t_seg, 1e-9), 3), adaptation=adapt_summary,
                    stage_seconds=times.as_dict())
    write_manifest(out, manifest)
    if partial and not opts.allow_partial:
        raise VideoError(f"--video {video}: decoded {decoded} of the {header} frames its header announces "
                         f"(truncated or damaged file); the {n} masks written are in {out}. "
                         f"Pass --allow_partial to accept a short video")
    res = {"n_flows": n, "n_frames": decoded, "out": str(out), "seconds": seconds,
           "fps": manifest["segment_fps"], "adaptation": adapt_summary, "stage_seconds": times.as_dict()}
    res.update(anim)
    return res
