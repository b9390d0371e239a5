"""Stages 2–4 over a sequence: the network in batches (:func:`pairs_to_steps`), then identity
alignment, fusion with the neighbours and motion significance (:class:`SequenceStages`), on the
model's grid (I, J)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from emseg.app.segment.model import torch_threads
from emseg.app.segment.options import SegmentOptions
from emseg.app.segment.source import FramePair, StageTimes
from emseg.app.segment.windows import FrameWindows
from emseg.core.significance import significant_foregrounds, suppress
from emseg.core.tracks import TrackGate, kept_foreground
from emseg.video.flow_confidence import forward_backward_confidence, resize_flow
from emseg.video.temporal import align_identities, carry, fuse

#: a pixel's flow to t+gap is used where its forward-backward confidence is at least this
GAP_CONFIDENT = 0.5


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
    #: (I, J) the confidence of ``flow_in`` where it is not the flow to t+1 (``--gap`` > 1), else None
    conf_in: torch.Tensor | None = None

    def flows(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(to_prev, forward) as arrays (2, I, J) (None where absent), for stage 5 (the writer)."""
        return tuple(None if f is None else f.detach().cpu().numpy() for f in (self.to_prev, self.forward))


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
        # a region is judged over its track unless frames are segmented alone
        self.gate = (TrackGate(min_frames=opts.track_frames)
                     if opts.temporal and opts.min_motion > 0 and opts.track_frames > 1 else None)

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
        with torch_threads(1):
            out = [] if self.pending is None else [self._fuse(self.pending, self.last, None)]
            self.pending = self.last = None
            return self._settle(out, final=True)

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

    def _settle(self, steps: list[Step], final: bool = False) -> list[Step]:
        """Stage 4 on fused steps: their dropped regions go to the background. With the track gate,
        the steps come out ``horizon`` frames later, judged over their tracks."""
        if self.opts.min_motion <= 0 or (not steps and self.gate is None):
            return steps
        sigs = []
        if steps:
            confs = [s.conf_forward if s.conf_in is None else s.conf_in for s in steps]
            sigs = significant_foregrounds([s.meta["final"] for s in steps], [s.flow_in for s in steps], confs,
                                           min_motion=self.opts.min_motion, param_model=self.param_model)
        if self.gate is None:
            return [self._apply(s, sig, sig.kept) for s, sig in zip(steps, sigs)]
        decided = []
        for s, sig in zip(steps, sigs):
            decided += self.gate.push(sig.regions, len(sig.kept) + 1, sig.scores(), s.to_prev, (s, sig))
        if final:
            decided += self.gate.finish()
        return [self._apply(s, sig, keep) for (s, sig), keep in decided]

    def _apply(self, step: Step, sig, keep: dict[int, bool]) -> Step:
        fg = kept_foreground(sig.regions, keep)
        dropped = ~fg & (sig.regions > 0)
        n_kept = sum(keep.values())
        self.kept_regions += n_kept
        self.dropped_regions += len(sig.kept) - n_kept
        step.meta["final"] = suppress(step.meta["final"], dropped, fg)
        return step


def _conf(conf: torch.Tensor | None, inside: torch.Tensor) -> torch.Tensor:
    c = inside.float()
    return c if conf is None else c * conf.float()


def gap_flow(p: FramePair, f: torch.Tensor,
             img_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The network's input flow (1, 2, h, w) at the flow's grid and its confidence (I, J) at ``img_size``,
    or (f, None) without a gap: the flow to t+k where its forward-backward check holds, k times the flow to
    t+1 (``f`` (1, 2, h, w)) elsewhere. Also what ``--adapt`` fine-tunes on (``video_flows_at_model_size``)."""
    if p.gap <= 1 or p.gap_forward is None:
        return f, None
    g = torch.from_numpy(p.gap_forward).permute(2, 0, 1)[None]
    conf = forward_backward_confidence(g, torch.from_numpy(p.gap_backward).permute(2, 0, 1)[None])
    held = conf[:, None] >= GAP_CONFIDENT
    mixed = torch.where(held, g, p.gap * f)
    # the significance test trusts only the long flow's own check: where it failed, k × the short flow
    # (its noise k-fold too) feeds the network but not the test, where it would look like motion
    conf = F.interpolate(conf[None], size=img_size, mode="bilinear", align_corners=False)[0, 0]
    return mixed, conf


def pairs_to_steps(pairs: Iterator[FramePair], img_size: tuple[int, int], predict, batch: int,
                   keep_flows: list | None, times: StageTimes | None = None) -> Iterator[list[Step]]:
    """Batches the network over frame pairs; yields :class:`Step` s (one per frame), in order, as their
    predictions come. ``predict``: flows (n, 2, I, J) → pred (n, L, I, J), or a stream of predictions
    (``emseg.app.segment.windows``: a temporal model's frames come out half a clip late)."""
    times = times or StageTimes()
    windows = predict if hasattr(predict, "push") else FrameWindows(predict)
    prev_back: torch.Tensor | None = None       # frame t+1's flow back to t (from pair t) ...
    prev_conf_back: torch.Tensor | None = None  # ... and its confidence
    buf: list[FramePair] = []
    waiting: deque = deque()  # (pair, flow to t+1, network input, its confidence) until their prediction comes

    def run(items: list[FramePair]) -> list[Step]:
        t0 = time.perf_counter()
        fwd = [torch.from_numpy(p.forward).permute(2, 0, 1)[None] for p in items]
        with torch_threads(1):
            gapped = [gap_flow(p, f, img_size) for p, f in zip(items, fwd)]
        t1 = times.add("confidence", t0)
        flows_in = torch.cat([F.interpolate(g, size=img_size, mode="bilinear", align_corners=False)
                              for g, _ in gapped])
        waiting.extend(zip(items, fwd, flows_in, (c for _, c in gapped)))
        preds = windows.push(flows_in)
        times.add("network", t1)
        return steps_of(preds)

    def steps_of(preds: list[torch.Tensor]) -> list[Step]:
        out = []
        with torch_threads(1):
            for pr in preds:
                p, f, f_in, conf = waiting.popleft()
                out.append(step_of(p, f, f_in, pr, conf))
        return out

    def step_of(p: FramePair, f: torch.Tensor, f_in: torch.Tensor, pr: torch.Tensor,
                conf_in: torch.Tensor | None = None) -> Step:
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
                          else None}, conf_in=conf_in)
        # frame t+1's flow back to t is this pair's backward flow, on frame t+1's grid
        prev_back, prev_conf_back = b_m, conf_b
        return step

    for p in pairs:
        buf.append(p)
        if len(buf) == batch:
            if out := run(buf):
                yield out
            buf = []
    last = run(buf) if buf else []
    t0 = time.perf_counter()
    last += steps_of(windows.restart())
    times.add("network", t0)
    if last:
        yield last
