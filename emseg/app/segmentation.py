"""From flows (or a video) to masks: the logic behind segment.py.

A video goes through, frame pair by frame pair (memory stays flat with the video's length):

1. **decode → downscale → flow** (a background thread): each frame is downscaled (area
   interpolation) to the width the model was trained on (``flow_width`` in its hyperparameters;
   ``--max_width`` overrides), and the flow of frame t → t+1 is computed there, with the flow
   t+1 → t for a per-pixel confidence (forward–backward consistency, ``emseg.video.flow_confidence``);
2. **network**, in batches, on the flows resized to its input size (vectors not rescaled, as in
   training);
3. **temporal consistency** (``emseg.video.temporal``): each frame's masks are matched to the previous
   frame's through the flow, then averaged with the neighbouring frames' carried onto it, weighted
   by the confidence;
4. **motion significance** (``emseg.core.significance``): a foreground region is kept only if
   it moves unlike the background's fitted motion by more than the flow's own noise;
5. **binarise and write**: the probabilities are resized to the frame's size and binarised
   (``exceptbiggest``, by a histogram of the argmax labels) and written, with the animation, by a
   writer thread.

Outputs in ``out``, per frame t with a flow: ``{name}_binary.png`` (0/255 at the frame's — or the
flow file's — own size); optional ``{name}_proba.npy`` (L × I × J float32 at the model's size, after
stages 3–4) and ``{name}_overlay.png`` (the frame, or the flow's colour coding, tinted by label
with the foreground outlined); ``segmentation.mp4`` (video: at the source's frame rate) or
``segmentation.gif`` (flow files) of the overlays; ``manifest.json`` (settings, counts, status);
with ``--save_flows``, ``flows.npz`` (every flow, float16, compressed).
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from csvflowdatamodule.extract_flow import DIS_PRESETS, dis_estimator, make_estimator
from emseg.core.atomic_io import atomic_write, atomic_write_image
from emseg.core.figures import flow_to_rgb
from emseg.core.flow_io import read_flow
from emseg.core.masks import exceptbiggest_labels, labels_at
from emseg.core.significance import DEFAULT_MIN_MOTION, significant_foregrounds, suppress
from emseg.video.flow_confidence import forward_backward_confidence, resize_flow
from emseg.video.temporal import align_identities, carry, fuse
from evaluationmodule.writers import rewrite_rows, write_json, write_npy

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]  # emseg/app/segmentation.py → the repository (or site-packages)
BUNDLED_CKPT = REPO / "checkpoints" / "em_small.ckpt"
FLOW_SUFFIXES = (".flo", ".npy")
PALETTE = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
                    [140, 86, 75], [227, 119, 194], [127, 127, 127]], dtype=np.uint8)
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))  # the 4-neighbourhood
#: hyperparameter recording the width frames were downscaled to before the flow, in training
FLOW_WIDTH_HPARAM = "flow_width"
ANIMATION_WIDTH = 480
LOG_EVERY_S = 10.0


@dataclass
class SegmentOptions:
    """Every setting of the pipeline (module docstring), with its default."""

    batch_size: int = 8
    temporal: bool = True            #: stage 3
    fusion_weight: float = 2.0       #: a neighbour's weight (× its confidence) against the frame's own 1
    min_motion: float = DEFAULT_MIN_MOTION  #: stage 4; 0 turns it off
    overlays: bool = False
    save_proba: bool = False
    animation: bool = True
    # video only
    max_width: int | None = None     #: None: the model's flow_width (else the frame's own width)
    flow_method: str = "dis"
    dis_preset: str = "fast"
    dis_finest_scale: int = 0
    dis_variational: bool = True
    save_flows: bool = False
    allow_partial: bool = False
    adapt_steps: int = 0
    adapt_lr: float = 1e-4
    save_adapted: str | None = None
    backend: str | None = None       #: None: the fastest exact one installed (Models.backends)
    keep_export: bool = True         #: keep the exported network in the cache folder for the next run
    precision: str = "fp32"
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.min_motion < 0:
            raise ValueError(f"--min_motion must be >= 0, got {self.min_motion}")
        if self.fusion_weight < 0:
            raise ValueError(f"--fusion_weight must be >= 0, got {self.fusion_weight}")
        if self.max_width is not None and self.max_width < 8:
            raise ValueError(f"--max_width must be at least 8 pixels, got {self.max_width}")
        if self.dis_preset not in DIS_PRESETS:
            raise ValueError(f"--dis_preset must be one of {list(DIS_PRESETS)}, got {self.dis_preset!r}")
        if self.adapt_steps < 0:
            raise ValueError(f"--adapt must be >= 0 steps, got {self.adapt_steps}")
        if self.backend not in (None, "torch", "onnxruntime", "openvino"):
            raise ValueError(f"--backend must be torch, onnxruntime or openvino, got {self.backend!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"--precision must be fp32 or bf16, got {self.precision!r}")


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
def load_segmenter(ckpt: str | os.PathLike | None = None, trust: bool = False, device: str | None = None):
    """The bundled model by default; ``'ClassicalEM'`` for the EM baseline."""
    from Models.CoherenceNets.ClassicalEM import ClassicalEM
    from Models.CoherenceNets.MethodeB import MethodeB

    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    if ckpt == "ClassicalEM":
        model = ClassicalEM(nAffineMasks=2)
    else:
        path = BUNDLED_CKPT if ckpt is None else Path(ckpt)
        if not path.is_file():
            raise FileNotFoundError(f"--ckpt {path}: no such file")
        model = MethodeB.load_from_checkpoint(str(path), trust_checkpoint=trust)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block, restored after.

    The pipeline's own tensor work (confidence, fusion, significance) is on small grids, where a
    second intra-op thread gains nothing; and while the decode/flow and writer threads keep the
    other core busy, OpenMP's fork-join waits on a thread that is not scheduled: measured on a
    busy 2-core machine, the confidence stage took 600 ms a frame on 2 threads against 7 ms alone.
    """
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def model_device(model) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def make_predictor(model, backend: str | None = None, precision: str = "fp32", threads: int | None = None,
                   keep_export: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """flows (B, 2, I, J) float32 at the model's size → pred (B, L, I, J) float32 on the CPU.

    ``backend`` (``Models.backends``: torch, onnxruntime, openvino; None = the fastest exact one
    installed) runs the network on the CPU with ``threads`` intra-op threads (default: torch's
    count); a model on a GPU always runs in torch there. ``keep_export``: an exported network is
    kept in the cache folder (``Models.backends.export_cache_dir``) for the next run, rather than
    exported again (5 s for the bundled model)."""
    device = model_device(model)
    if device.type != "cpu":
        if backend not in (None, "torch"):
            raise ValueError(f"--backend {backend} runs on the CPU; the model is on {device} (use --backend torch)")

        def predict(flows: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return model.prediction({"Flow": flows.to(device)})["Pred"].float().cpu()

        return predict
    from Models.backends import default_backend_name, export_cache_dir, make_backend

    before = torch.get_num_threads()
    threads = int(threads or before)
    name = backend or default_backend_name(model, precision)  # decided once: the cache is for exports only
    cache = export_cache_dir() if keep_export and name != "torch" else None
    run = make_backend(model, name, precision, threads=threads, cache_dir=cache)
    if torch.get_num_threads() != before:  # the torch backend sets its count process-wide
        torch.set_num_threads(before)
    logger.info("network backend: %s (%s, %d threads)", run.name, precision, threads)

    def predict_cpu(flows: torch.Tensor) -> torch.Tensor:
        if run.name != "torch":  # an exported network has its own thread pool
            return run(flows.float().contiguous())
        with torch_threads(threads):  # the threads it was made with, even inside torch_threads(1)
            return run(flows.float().contiguous())

    return predict_cpu


def flow_width_of(model, override: int | None) -> int | None:
    """The width to downscale frames to before the flow: ``override``, else the model's record."""
    if override:
        return int(override)
    w = getattr(model, "hparams", {}).get(FLOW_WIDTH_HPARAM)
    return int(w) if w else None


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
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


@dataclass
class FramePair:
    """Frame t and the flows between t and t+1 at the flow's resolution (h, w)."""

    t: int
    frame: np.ndarray | None        #: BGR (H, W, 3) at the source's size, when overlays need it
    size: tuple[int, int]           #: (H, W) of the source frame
    forward: np.ndarray             #: (h, w, 2) t → t+1
    backward: np.ndarray | None     #: (h, w, 2) t+1 → t, on frame t+1's grid


class VideoError(ValueError):
    """A video that cannot be read, or is shorter than its header says."""


def open_video(video: str | os.PathLike) -> tuple[cv2.VideoCapture, dict]:
    p = Path(video)
    if not p.is_file():
        raise FileNotFoundError(f"--video {video}: no such file")
    if p.stat().st_size == 0:
        raise VideoError(f"--video {video}: the file is empty")
    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        raise VideoError(f"--video {video}: OpenCV cannot open it as a video (not a video, or an unknown codec)")
    info = {"frames_in_header": int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0),
            "fps": float(cap.get(cv2.CAP_PROP_FPS) or 0.0)}
    return cap, info


class StageTimes:
    """Busy seconds per pipeline stage, summed over frames (stages run on different threads, so
    they add up to more than the wall time when the pipeline overlaps them)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, t0: float) -> float:
        now = time.perf_counter()
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + now - t0
        return now

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.seconds.items()}


def video_pairs(video: str | os.PathLike, opts: SegmentOptions, flow_width: int | None, keep_frames: bool,
                stats: dict, times: StageTimes | None = None) -> Iterator[FramePair]:
    """Decode, downscale and compute the flows of consecutive frames; ``stats`` gets the decoded
    count and the header's (checked by the caller once the generator is exhausted)."""
    times = times or StageTimes()
    cap, info = open_video(video)
    stats.update(info)
    if opts.flow_method == "dis":
        flow_fn = dis_estimator(opts.dis_preset, opts.dis_finest_scale, opts.dis_variational)
    else:
        flow_fn = make_estimator(opts.flow_method)
    need_back = opts.temporal or opts.min_motion > 0
    prev_small = prev_frame = None
    n = 0
    try:
        while True:
            t0 = time.perf_counter()
            ok, frame = cap.read()
            if not ok:
                break
            n += 1
            H, W = frame.shape[:2]
            if flow_width and W > flow_width:
                small = cv2.resize(frame, (flow_width, max(1, round(H * flow_width / W))), interpolation=cv2.INTER_AREA)
            else:
                small = frame
            small = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)  # the estimators take RGB
            t0 = times.add("decode+downscale", t0)
            if prev_small is not None:
                fwd = np.asarray(flow_fn(prev_small, small), np.float32)
                bwd = np.asarray(flow_fn(small, prev_small), np.float32) if need_back else None
                times.add("flow", t0)
                yield FramePair(n - 2, prev_frame if keep_frames else None, (H, W), fwd, bwd)
            prev_small, prev_frame = small, frame
    finally:
        cap.release()
        stats["decoded"] = n


def threaded(it: Iterator, depth: int = 16) -> Iterator:
    """Run an iterator in a background thread (OpenCV's decoder and DIS release the GIL), keeping at
    most ``depth`` items ahead; exceptions are re-raised in the consumer."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as err:  # handed to the consumer
            q.put(err)

    th = threading.Thread(target=work, daemon=True, name="decode-flow")
    th.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


# --------------------------------------------------------------------------------------------
# Stages 3–4 over a sequence
# --------------------------------------------------------------------------------------------
@dataclass
class Step:
    """One frame's tensors on the model's grid (I, J) for stages 3–4."""

    t: int
    name: str
    pred: torch.Tensor              #: (L, I, J)
    flow_in: torch.Tensor           #: (2, I, J) the network's input (vectors not rescaled)
    forward: torch.Tensor | None    #: (2, I, J) t → t+1 in pixels of (I, J)
    to_prev: torch.Tensor | None    #: (2, I, J) t → t−1 in pixels of (I, J), None for the first frame
    conf_forward: torch.Tensor | None   #: (I, J)
    conf_to_prev: torch.Tensor | None   #: (I, J)
    meta: dict = field(default_factory=dict)


class SequenceStages:
    """Streams :class:`Step` s through identity alignment, fusion (one frame of look-ahead) and
    significance: ``push`` returns the steps now finished, ``finish`` the last one."""

    def __init__(self, opts: SegmentOptions, param_model: str = "Quadratic") -> None:
        self.opts = opts
        self.param_model = param_model
        self.last: Step | None = None      # the previous frame (finished), a neighbour of ``pending``
        self.pending: Step | None = None   # waits for its next frame
        self.swaps = 0                     # frames whose mask order changed from the previous frame's
        self._perm: list[int] | None = None
        self.dropped_regions = 0
        self.kept_regions = 0

    def push(self, step: Step) -> list[Step]:
        """The steps finished by this one (at most one: the previous frame, once its next is known)."""
        return self.push_many([step])

    def push_many(self, steps: Sequence[Step]) -> list[Step]:
        """:meth:`push` of consecutive steps (a network batch): the finished ones' significance
        tests run as one batched fit. On one torch thread (:func:`torch_threads`)."""
        with torch_threads(1):
            out = []
            for step in steps:
                out += self._advance(step)
            return self._settle(out)

    def finish(self) -> list[Step]:
        if self.pending is None:
            return []
        with torch_threads(1):
            out = [self._fuse(self.pending, self.last, None)]
            self.pending = self.last = None
            return self._settle(out)

    def _advance(self, step: Step) -> list[Step]:
        if not self.opts.temporal:
            return [self._fuse(step, None, None)]
        ref = self.pending
        if ref is not None and step.to_prev is not None:
            step.pred, perm = align_identities(step.pred, ref.pred, step.to_prev, step.conf_to_prev)
            self.swaps += self._perm is not None and perm != self._perm
            self._perm = perm
        out = []
        if ref is not None:
            linked = step.to_prev is not None  # else the sequence is broken between them
            out.append(self._fuse(ref, self.last, step if linked else None))
            self.last = ref if linked else None
        self.pending = step
        return out

    def _fuse(self, target: Step, prev: Step | None, nxt: Step | None) -> Step:
        fused = target.pred
        if self.opts.temporal and self.opts.fusion_weight > 0:
            neighbours = []
            if prev is not None and target.to_prev is not None:
                p, inside = carry(prev.pred, target.to_prev)
                neighbours.append((p, _conf(target.conf_to_prev, inside)))
            if nxt is not None and target.forward is not None:
                p, inside = carry(nxt.pred, target.forward)
                neighbours.append((p, _conf(target.conf_forward, inside)))
            if neighbours:
                fused = fuse(target.pred, neighbours, self.opts.fusion_weight)
        target.meta["final"] = fused
        return target

    def _settle(self, steps: list[Step]) -> list[Step]:
        """Stage 4 on fused steps: their dropped regions go to the background."""
        if self.opts.min_motion <= 0 or not steps:
            return steps
        fused = [s.meta["final"] for s in steps]
        sigs = significant_foregrounds(fused, [s.flow_in for s in steps], [s.conf_forward for s in steps],
                                       min_motion=self.opts.min_motion, param_model=self.param_model)
        for s, f, sig in zip(steps, fused, sigs):
            dropped = ~sig.foreground & (sig.regions > 0)
            n_kept = sum(sig.kept.values())
            self.kept_regions += n_kept
            self.dropped_regions += len(sig.kept) - n_kept
            s.meta["final"] = suppress(f, dropped, sig.foreground)
        return steps


def _conf(conf: torch.Tensor | None, inside: torch.Tensor) -> torch.Tensor:
    c = inside.float()
    return c if conf is None else c * conf.float()


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------
def overlay(base: np.ndarray, labels: np.ndarray, binary: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """base uint8 (H, W, 3) RGB, labels (H, W) int (:func:`labels_at`), binary (H, W) bool → uint8
    (H, W, 3): each pixel ``(1 − alpha) · base + alpha · colour of its label`` (rounded), the
    foreground's boundary (its pixels with a 4-neighbour outside it) drawn white."""
    # In uint8 through OpenCV: the float32 blend cost half the writer thread's time per frame.
    tint = np.take(PALETTE, labels, axis=0, mode="wrap")
    out = cv2.addWeighted(np.ascontiguousarray(base), 1 - alpha, tint, alpha, 0.0)
    mask = binary.astype(np.uint8)
    out[mask > cv2.erode(mask, _CROSS, borderType=cv2.BORDER_REPLICATE)] = 255
    return out


def _png(path: Path, image: np.ndarray) -> None:
    """A PNG with fast compression (masks compress well anyway)."""
    atomic_write_image(path, image, (cv2.IMWRITE_PNG_COMPRESSION, 1))


class Writer:
    """Writes every output in order on one background thread (PNG encoding releases the GIL);
    the animation is streamed, never held in memory."""

    def __init__(self, out: Path, opts: SegmentOptions, fps: float | None, times: StageTimes | None = None) -> None:
        self.out, self.opts, self.fps = out, opts, fps
        self.times = times or StageTimes()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        self.pending: deque = deque()
        self.mp4: cv2.VideoWriter | None = None
        self.mp4_tmp: Path | None = None
        self.gif_frames: list[Image.Image] = []
        self.n_written = 0

    def submit(self, name: str, final: np.ndarray, size: tuple[int, int], base: Callable[[], np.ndarray] | None):
        self.pending.append(self.pool.submit(self._write, name, final, size, base))
        while len(self.pending) > 32:  # back-pressure: memory stays flat
            self.pending.popleft().result()

    def _write(self, name: str, final: np.ndarray, size: tuple[int, int], base) -> None:
        t0 = time.perf_counter()
        labels = labels_at(final, size)  # once: the mask and the overlay both use it
        binary = exceptbiggest_labels(labels, final.shape[0])
        t0 = self.times.add("binarise", t0)
        _png(self.out / f"{name}_binary.png", binary.astype(np.uint8) * 255)
        if self.opts.save_proba:
            write_npy(final.astype(np.float32), self.out / f"{name}_proba.npy")
        if self.opts.overlays:
            ov = overlay(base(), labels, binary)
            _png(self.out / f"{name}_overlay.png", cv2.cvtColor(ov, cv2.COLOR_RGB2BGR))
            if self.opts.animation:
                self._animate(cv2.resize(ov, self._animation_size(ov.shape), interpolation=cv2.INTER_AREA))
        elif self.opts.animation:
            # Drawn at the animation's size: a full-size overlay would cost three times as much.
            anim = self._animation_size(labels.shape)
            small_base = cv2.resize(base(), anim, interpolation=cv2.INTER_AREA)
            small_labels = cv2.resize(labels.astype(np.uint8), anim, interpolation=cv2.INTER_NEAREST)
            small_binary = cv2.resize(binary.astype(np.uint8), anim, interpolation=cv2.INTER_NEAREST) > 0
            self._animate(overlay(small_base, small_labels, small_binary))
        self.times.add("write", t0)
        self.n_written += 1

    @staticmethod
    def _animation_size(shape: tuple[int, ...]) -> tuple[int, int]:
        """(width, height) of the animation for frames of ``shape`` (H, W, ...): at most
        ``ANIMATION_WIDTH`` wide, even sides (the MP4 encoder needs them)."""
        scale = min(1.0, ANIMATION_WIDTH / shape[1])
        return max(2, int(shape[1] * scale)) // 2 * 2, max(2, int(shape[0] * scale)) // 2 * 2

    def _animate(self, small: np.ndarray) -> None:
        """Append one RGB frame, already at :meth:`_animation_size`."""
        size = (small.shape[1], small.shape[0])
        if self.fps is None:  # flow files: a GIF (few frames)
            self.gif_frames.append(Image.fromarray(small))
            return
        if self.mp4 is None:
            self.mp4_tmp = self.out / "segmentation.tmp.mp4"
            self.mp4 = cv2.VideoWriter(str(self.mp4_tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, size)
        self.mp4.write(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))

    def close(self) -> dict:
        for f in self.pending:
            f.result()
        self.pool.shutdown(wait=True)
        res = {}
        if self.mp4 is not None:
            self.mp4.release()
            os.replace(self.mp4_tmp, self.out / "segmentation.mp4")
            res["animation"] = str(self.out / "segmentation.mp4")
        elif len(self.gif_frames) > 1:
            imgs = self.gif_frames
            atomic_write(self.out / "segmentation.gif", lambda p: imgs[0].save(
                p, format="GIF", save_all=True, append_images=imgs[1:], duration=80, loop=0))
            res["animation"] = str(self.out / "segmentation.gif")
        return res


def _write_manifest(out: Path, manifest: dict) -> None:
    write_json(manifest, out / "manifest.json")


class _Progress:
    """tqdm on a terminal; a log line every ``LOG_EVERY_S`` seconds otherwise (CI logs, nohup)."""

    def __init__(self, total: int | None, desc: str, enabled: bool) -> None:
        self.tty = enabled and sys.stderr.isatty()
        self.enabled = enabled
        self.bar = tqdm(total=total, desc=desc, unit="frame", disable=not self.tty)
        self.total, self.desc, self.n = total, desc, 0
        self.t0 = self.last = time.perf_counter()

    def update(self, k: int = 1) -> None:
        self.n += k
        self.bar.update(k)
        now = time.perf_counter()
        if self.enabled and not self.tty and now - self.last >= LOG_EVERY_S:
            self.last = now
            of = f"/{self.total}" if self.total else ""
            logger.info("%s: %d%s frames, %.1f frames/s", self.desc, self.n, of, self.n / (now - self.t0))

    def close(self) -> None:
        self.bar.close()


# --------------------------------------------------------------------------------------------
# Flow files
# --------------------------------------------------------------------------------------------
def segment_flows(model, flow_paths: Sequence[Path], out: str | os.PathLike, frames: Sequence[Path] | None = None,
                  batch_size: int = 8, gif: bool = True, progress: bool = True,
                  opts: SegmentOptions | None = None) -> dict:
    """Segment flow files, in order (a sequence, for the temporal stage); a file that cannot be read
    is skipped and recorded in ``skipped.csv`` and the manifest. Returns counts and paths."""
    if opts is None:
        opts = SegmentOptions(batch_size=batch_size, animation=gif, progress=progress, overlays=True, save_proba=True)
    opts.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    img_size = tuple(model.hparams["img_size"])
    predict = make_predictor(model, opts.backend, opts.precision, keep_export=opts.keep_export)
    stages = SequenceStages(opts, model.hparams.get("param_model", "Quadratic"))
    writer = Writer(out, opts, fps=None)
    skipped: list[tuple[str, str]] = []
    bar = _Progress(len(flow_paths), "segmenting", opts.progress)
    prev_in: torch.Tensor | None = None
    manifest = {"source": {"type": "flows", "files": len(flow_paths)}, "options": asdict(opts),
                "status": "in progress"}
    _write_manifest(out, manifest)

    def base_of(k: int, full: np.ndarray):
        def make() -> np.ndarray:
            H, W = full.shape[:2]
            if frames is not None and k < len(frames):
                return np.array(Image.open(frames[k]).convert("RGB").resize((W, H)))
            return flow_to_rgb(torch.from_numpy(full).permute(2, 0, 1))
        return make

    def emit(steps: list[Step]) -> None:
        for s in steps:
            writer.submit(s.name, s.meta["final"].numpy(), s.meta["size"], s.meta["base"])
            bar.update()

    t = 0
    for start in range(0, len(flow_paths), opts.batch_size):
        chunk, fulls = [], []
        for k, p in enumerate(flow_paths[start:start + opts.batch_size], start):
            try:
                full = read_flow(str(p))
                if full.ndim != 3 or full.shape[2] != 2:
                    raise ValueError(f"expected a flow (H, W, 2), got {full.shape}")
                if not np.isfinite(full).all():
                    raise ValueError("non-finite values")
            except (OSError, ValueError, EOFError) as err:
                logger.warning("skipped %s: %s", p, err)
                skipped.append((str(p), str(err)))
                prev_in = None  # the sequence is broken here
                continue
            chunk.append((k, p))
            fulls.append(full)
        if not chunk:
            continue
        full_t = [torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1)[None].float() for f in fulls]
        flows_in = torch.cat([F.interpolate(f, size=img_size, mode="bilinear", align_corners=False)
                              for f in full_t])
        pred = predict(flows_in)
        steps = []
        for (k, p), full, f_in, pr in zip(chunk, fulls, flows_in, pred):
            H, W = full.shape[:2]
            fwd = resize_flow(torch.from_numpy(full).permute(2, 0, 1)[None].float(), img_size, rescale=True)[0]
            # Without the backward flow, the flow back to the previous frame is taken as minus its
            # forward flow (exact for a constant motion), and no confidence is known.
            to_prev = -prev_in if prev_in is not None else None
            step = Step(t, p.stem, pr, f_in, fwd, to_prev, None, None,
                        meta={"size": (H, W), "base": base_of(k, full)})
            t += 1
            prev_in = fwd
            steps.append(step)
        emit(stages.push_many(steps))
    emit(stages.finish())
    anim = writer.close()
    bar.close()
    if skipped:
        _write_skipped(out, skipped)
    n_ok = writer.n_written
    manifest.update(status="complete", n_flows=len(flow_paths), n_segmented=n_ok, n_skipped=len(skipped),
                    identity_swaps=stages.swaps, regions_kept=stages.kept_regions,
                    regions_dropped=stages.dropped_regions)
    _write_manifest(out, manifest)
    result = {"n_flows": n_ok, "n_skipped": len(skipped), "out": str(out)}
    if "animation" in anim:
        result["gif" if anim["animation"].endswith(".gif") else "animation"] = anim["animation"]
    return result


def _write_skipped(out: Path, skipped: list[tuple[str, str]]) -> None:
    rewrite_rows(out / "skipped.csv", [{"file": f, "reason": r} for f, r in skipped], ["file", "reason"])


# --------------------------------------------------------------------------------------------
# Videos
# --------------------------------------------------------------------------------------------
def _pairs_to_steps(pairs: Iterator[FramePair], img_size: tuple[int, int], predict, batch: int,
                    keep_flows: list | None, times: StageTimes | None = None) -> Iterator[list[Step]]:
    """Batches the network over frame pairs; yields each batch's :class:`Step` s (one per frame), in order."""
    times = times or StageTimes()
    prev_back: torch.Tensor | None = None       # frame t+1's flow back to t (from pair t) ...
    prev_conf_back: torch.Tensor | None = None  # ... and its confidence
    buf: list[FramePair] = []

    def run(items: list[FramePair]) -> list[Step]:
        t0 = time.perf_counter()
        fwd = [torch.from_numpy(p.forward).permute(2, 0, 1)[None] for p in items]
        flows_in = torch.cat([F.interpolate(f, size=img_size, mode="bilinear", align_corners=False) for f in fwd])
        pred = predict(flows_in)
        times.add("network", t0)
        with torch_threads(1):
            return [step_of(p, f, f_in, pr) for p, f, f_in, pr in zip(items, fwd, flows_in, pred)]

    def step_of(p: FramePair, f: torch.Tensor, f_in: torch.Tensor, pr: torch.Tensor) -> Step:
        nonlocal prev_back, prev_conf_back
        t0 = time.perf_counter()
        if keep_flows is not None:
            keep_flows.append(p.forward.astype(np.float16))
        f_m = resize_flow(f, img_size, rescale=True)[0]
        conf_f = conf_b = b_m = None
        if p.backward is not None:
            b = torch.from_numpy(p.backward).permute(2, 0, 1)[None]
            conf_f = forward_backward_confidence(f, b)
            conf_b = forward_backward_confidence(b, f)
            conf_f = F.interpolate(conf_f[None], size=img_size, mode="bilinear", align_corners=False)[0, 0]
            conf_b = F.interpolate(conf_b[None], size=img_size, mode="bilinear", align_corners=False)[0, 0]
            b_m = resize_flow(b, img_size, rescale=True)[0]
        times.add("confidence", t0)
        frame = p.frame
        step = Step(p.t, f"{p.t:05d}", pr, f_in, f_m, prev_back, conf_f, prev_conf_back,
                    meta={"size": p.size,
                          "base": (lambda fr=frame: cv2.cvtColor(fr, cv2.COLOR_BGR2RGB)) if frame is not None
                          else None})
        # frame t+1's flow back to t is this pair's backward flow, on frame t+1's grid
        prev_back, prev_conf_back = b_m, conf_b
        return step

    for p in pairs:
        buf.append(p)
        if len(buf) == batch:
            yield run(buf)
            buf = []
    if buf:
        yield run(buf)


def video_flows_at_model_size(video: str | os.PathLike, model, opts: SegmentOptions) -> torch.Tensor:
    """Every flow of the video as the network reads them: (N, 2, I, J) float32 (for adaptation)."""
    img_size = tuple(model.hparams["img_size"])
    stats: dict = {}
    flows = []
    bar = _Progress(None, "flows for adaptation", opts.progress)
    lite = SegmentOptions(**{**asdict(opts), "temporal": False, "min_motion": 0.0})
    for p in threaded(video_pairs(video, lite, flow_width_of(model, opts.max_width), False, stats)):
        f = torch.from_numpy(p.forward).permute(2, 0, 1)[None]
        flows.append(F.interpolate(f, size=img_size, mode="bilinear", align_corners=False)[0])
        bar.update()
    bar.close()
    if not flows:
        raise VideoError(f"--video {video}: fewer than 2 frames decoded, no flow to adapt on")
    return torch.stack(flows)


def segment_video(model, video: str | os.PathLike, out: str | os.PathLike, opts: SegmentOptions | None = None,
                  **kw) -> dict:
    """Segment every frame of ``video`` (module docstring); returns counts, timings and paths.

    Raises :class:`VideoError` when the video decodes to fewer frames than its header announces
    (after writing what it decoded, with the manifest's status ``partial``), unless
    ``opts.allow_partial``.
    """
    if opts is None:
        opts = SegmentOptions(**kw)
    opts.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cap, info = open_video(video)  # fail before any work on an unreadable file
    cap.release()
    adapt_summary = None
    if opts.adapt_steps > 0:
        from emseg.video.adaptation import adapt

        flows = video_flows_at_model_size(video, model, opts)
        model, adapt_summary = adapt(model, flows, steps=opts.adapt_steps, lr=opts.adapt_lr, progress=opts.progress)
        if opts.save_adapted:
            save_adapted(model, opts.save_adapted)
        del flows
    t_seg = time.perf_counter()
    img_size = tuple(model.hparams["img_size"])
    flow_width = flow_width_of(model, opts.max_width)
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
    times = StageTimes()
    writer = Writer(out, opts, fps=info["fps"] or 25.0, times=times)
    keep = [] if opts.save_flows else None
    manifest = {"source": {"type": "video", "path": str(Path(video).resolve()), **info},
                "options": asdict(opts), "flow_width": flow_width, "network_threads": net_threads,
                "status": "in progress"}
    _write_manifest(out, manifest)
    stats: dict = {}
    total = info["frames_in_header"] - 1 if info["frames_in_header"] > 1 else None
    bar = _Progress(total, "segmenting", opts.progress)
    pairs = threaded(video_pairs(video, opts, flow_width, opts.overlays or opts.animation, stats, times))
    n = 0

    def emit(steps: list[Step]) -> None:
        nonlocal n
        for s in steps:
            writer.submit(s.name, s.meta["final"].numpy(), s.meta["size"], s.meta["base"])
            n += 1
            bar.update()

    for batch in _pairs_to_steps(pairs, img_size, predict, opts.batch_size, keep, times):
        t0 = time.perf_counter()
        done = stages.push_many(batch)
        times.add("temporal+significance", t0)
        emit(done)
    emit(stages.finish())
    anim = writer.close()
    bar.close()
    if keep:
        np.savez_compressed(out / "flows.tmp.npz", flows=np.stack(keep))
        os.replace(out / "flows.tmp.npz", out / "flows.npz")
    decoded, header = stats.get("decoded", 0), info["frames_in_header"]
    if decoded < 2:
        manifest.update(status="failed", decoded_frames=decoded)
        _write_manifest(out, manifest)
        raise VideoError(f"--video {video}: {decoded} frame(s) decoded, need at least 2")
    partial = header > 0 and decoded < header
    seconds = time.perf_counter() - t0
    manifest.update(status="partial" if partial else "complete", decoded_frames=decoded, n_segmented=n,
                    identity_swaps=stages.swaps, regions_kept=stages.kept_regions,
                    regions_dropped=stages.dropped_regions, seconds=round(seconds, 3),
                    segment_fps=round(n / max(time.perf_counter() - t_seg, 1e-9), 3), adaptation=adapt_summary,
                    stage_seconds=times.as_dict())
    _write_manifest(out, manifest)
    if partial and not opts.allow_partial:
        raise VideoError(f"--video {video}: decoded {decoded} of the {header} frames its header announces "
                         f"(truncated or damaged file); the {n} masks written are in {out}. "
                         f"Pass --allow_partial to accept a short video")
    res = {"n_flows": n, "n_frames": decoded, "out": str(out), "seconds": seconds,
           "fps": manifest["segment_fps"], "adaptation": adapt_summary, "stage_seconds": times.as_dict()}
    res.update(anim)
    return res


def save_adapted(model, path: str | os.PathLike) -> None:
    """The adapted weights as a checkpoint that ``--ckpt`` (and ``MethodeB.load_from_checkpoint``) reads."""
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(path), lambda p: torch.save(ckpt, p))
