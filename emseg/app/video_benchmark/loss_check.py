"""Does the training loss prefer the ground truth? The loss of the true partition against a run's masks,
on the very flows the run's network read.

A model trained without labels moves towards what its loss prefers. Where the loss scores a run's masks
*lower* than the ground truth, a model closer to the truth would have a higher loss: a better optimiser,
network or training of that loss has no reason to go there, and the gap to the truth is the loss's (or the
flow's), not the model's. This command measures it on the video benchmark, per frame:

- **the flows** are the run's own: each sequence's ``manifest.json`` (written by ``segment.py``) records the
  flow's width, the gap and the estimator, and the pipeline's own code computes them again
  (``emseg.app.segment.source.video_pairs``, then ``emseg.app.segment.stages.gap_flow``): frame t's flow
  runs from t to t + gap where its forward-backward check holds, gap times the flow to t + 1 elsewhere (the
  last frames: the longest gap left), as the network read it, at the flow's grid.
- **two hard partitions** of that flow's grid, background / foreground: the ground truth's mask and the
  run's ``{t:05d}_binary.png``, both brought to the flow's grid by area (a flow pixel is foreground when
  at least half of it is).
- **the loss** of each, its θ refitted by the loss's own M-step (``emseg.core.coherence_math``; l1, IRLS
  unless told). ``clip_length`` 1: the frame model's coherence (``param_model``, default Quadratic).
  ``clip_length`` T > 1: the temporal model's, over the clip of T frames centred on t (its ends repeated,
  ``evaluationmodule.clip_frames.clip_window``, as ``segment.py`` reads it): the space-time coherence
  (``st_param_model``) and the flow-gated temporal term (``Models.temporal.temporal_term``). The entropy
  term is zero for hard masks, so it does not enter.

Per sequence with objects and per run: the mean loss of the truth and of the run, the share of frames
where the run's is lower (**prefers run**), and, for T > 1, the median ``temporal_weight`` that would make
the loss prefer the truth on those frames (where the truth is steadier; ∞ where it is not).

Usage::

    python -m emseg.app.video_benchmark loss_check --bench data/videobench --split dev \\
        --runs runs/videobench/frame runs/videobench/temporal [--clip_length 3] [--out loss_check.csv]
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

from emseg.app.segment.options import SegmentOptions
from emseg.app.segment.source import video_pairs
from emseg.app.segment.stages import gap_flow
from emseg.app.video_benchmark.layout import BenchmarkError, load_manifest, split_sequences
from emseg.app.video_benchmark.score import read_mask
from emseg.core import coherence_math as cm
from emseg.core import hparams as H
from evaluationmodule.clip_frames import clip_window
from evaluationmodule.writers import write_csv
from Models.temporal import temporal_term

logger = logging.getLogger(__name__)

#: the flow settings of a run's ``manifest.json`` that decide the flows its network read
FLOW_OPTIONS = ("gap", "flow_method", "dis_preset", "dis_finest_scale", "dis_variational")


@dataclass(frozen=True)
class LossSettings:
    """The loss to judge partitions by (the training loss's settings, ``emseg.core.hparams.LossHparams``)."""

    clip_length: int = 1
    param_model: str = H.default("param_model", H.LossHparams)
    st_param_model: str = H.default("st_param_model", H.LossHparams)
    v_distance: str = H.default("v_distance", H.LossHparams)
    theta_method: str = H.default("theta_method", H.LossHparams)
    temporal_sigma: float = H.default("temporal_sigma", H.LossHparams)

    def check(self) -> None:
        if isinstance(self.clip_length, bool) or int(self.clip_length) != self.clip_length or self.clip_length < 1:
            raise ValueError(f"--clip_length must be an integer >= 1, got {self.clip_length!r}")
        cm.check_param_model(self.param_model)
        cm.check_v_distance(self.v_distance)
        cm.check_theta_method(self.theta_method)
        if self.clip_length > 1:
            cm.temporal_ft(self.st_param_model, int(self.clip_length))  # ValueError naming the model and T


def partition_loss(masks: torch.Tensor, flow: torch.Tensor, settings: LossSettings) -> tuple[float, float]:
    """(coherence, temporal term) of a hard background / foreground partition under ``settings``' loss.

    masks (T, I, J) bool (the foreground), flow (2, T, I, J) in pixels of that grid; T = 1 is the frame
    model's loss (temporal term 0), T > 1 the temporal model's over the clip. θ is refitted per layer.
    """
    if masks.dim() != 3 or flow.dim() != 4 or flow.shape[0] != 2 or flow.shape[1:] != masks.shape:
        raise ValueError(f"expected masks (T, I, J) and flow (2, T, I, J) on the same grid, got "
                         f"{tuple(masks.shape)} and {tuple(flow.shape)}")
    fg = masks.to(flow.dtype)
    pred = torch.stack([1 - fg, fg])[None]  # (1, 2, T, I, J)
    f = flow[None]
    if masks.shape[0] == 1:
        theta, Xc, _ = cm.fit_theta(pred[:, :, 0], f[:, :, 0], settings.param_model, settings.v_distance,
                                    settings.theta_method)
        return float(cm.coherence_terms(pred[:, :, 0], f[:, :, 0], Xc, theta, settings.v_distance)[0]), 0.0
    theta, Xc, _ = cm.fit_theta_clip(pred, f, settings.st_param_model, settings.v_distance, settings.theta_method)
    coherence = float(cm.coherence_terms_clip(pred, f, Xc, theta, settings.v_distance)[0])
    return coherence, float(temporal_term(pred, f, settings.temporal_sigma)[0])


def to_grid(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A bool mask (H, W) on a grid of ``size`` (h, w): foreground where at least half of the cell is."""
    h, w = size
    if mask.shape == (h, w):
        return mask.astype(bool)
    return cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) >= 0.5


def run_flow_options(run_dir: Path, sequence: str) -> dict[str, Any]:
    """The flow settings a run's sequence was segmented with (its ``manifest.json``): FLOW_OPTIONS and
    ``flow_width``. BenchmarkError naming the file when it is missing or lacks them."""
    path = run_dir / sequence / "manifest.json"
    try:
        man = json.loads(path.read_text())
        opts = man["options"]
        return {**{k: opts[k] for k in FLOW_OPTIONS}, "flow_width": man.get("flow_width")}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BenchmarkError(f"{path}: not segment.py's manifest of a video run ({type(err).__name__}: {err}); "
                             "the loss check needs the flow settings it records") from None


def sequence_flows(video: Path, flow: dict[str, Any]) -> list[np.ndarray]:
    """Frame t's flow (h, w, 2) for t = 0 … N − 2 as the network read it with the settings ``flow``
    (``run_flow_options``): ``gap_flow`` of the frame pairs, at the flow's width (not resized)."""
    opts = SegmentOptions(**{k: flow[k] for k in FLOW_OPTIONS}, temporal=False, min_motion=0.0)
    flows = []
    for p in video_pairs(video, opts, flow["flow_width"], keep_frames=False, stats={}):
        f, _ = gap_flow(p, torch.from_numpy(p.forward).permute(2, 0, 1)[None], p.forward.shape[:2])
        flows.append(f[0].permute(1, 2, 0).numpy())
    return flows


def check_sequence(entry: dict, bench: Path, runs: Sequence[Path], labels: Sequence[str],
                   settings: LossSettings) -> pd.DataFrame:
    """Per frame of one sequence: ``truth_coherence``, ``truth_temporal`` and, per run label,
    ``{label}_coherence``, ``{label}_temporal`` (``partition_loss`` on the run's flows)."""
    name = entry["name"]
    flows_of = [run_flow_options(r, name) for r in runs]
    for r, fl in zip(runs[1:], flows_of[1:]):
        if fl != flows_of[0]:
            raise BenchmarkError(f"{r / name / 'manifest.json'}: flow settings {fl} differ from "
                                 f"{runs[0] / name / 'manifest.json'}'s {flows_of[0]}: runs are compared on the "
                                 "same flows; check them one at a time")
    flows = sequence_flows(bench / entry["path"] / "video.mp4", flows_of[0])
    n = len(flows)
    if n == 0:
        raise BenchmarkError(f"{bench / entry['path'] / 'video.mp4'}: no frame pair to compute a flow from")
    grid = flows[0].shape[:2]
    size = (int(entry["size"][1]), int(entry["size"][0]))
    gt_dir = bench / entry["path"] / entry.get("masks", "masks")
    truth = [to_grid(read_mask(gt_dir / f"{t:05d}.png", size, "ground-truth mask"), grid) for t in range(n)]
    preds = []
    for r in runs:
        pred = []
        for t in range(n):
            path = r / name / f"{t:05d}_binary.png"
            if not path.is_file():
                raise BenchmarkError(f"{path}: expected mask missing (the run must have every frame 0 … {n - 1})")
            pred.append(to_grid(read_mask(path, size, "predicted mask"), grid))
        preds.append(pred)
    T = int(settings.clip_length)
    rows = []
    for t in range(n):
        window = clip_window(t, n, T)[0] if T > 1 else [t]
        flow = torch.from_numpy(np.stack([flows[k] for k in window])).permute(3, 0, 1, 2).contiguous()
        c, tt = partition_loss(torch.from_numpy(np.stack([truth[k] for k in window])), flow, settings)
        row: dict[str, Any] = {"sequence": name, "frame": t, "truth_coherence": c, "truth_temporal": tt}
        for label, pred in zip(labels, preds):
            c, tt = partition_loss(torch.from_numpy(np.stack([pred[k] for k in window])), flow, settings)
            row[f"{label}_coherence"], row[f"{label}_temporal"] = c, tt
        rows.append(row)
    return pd.DataFrame(rows)


def flip_weight(truth_c: np.ndarray, truth_t: np.ndarray, run_c: np.ndarray, run_t: np.ndarray) -> float:
    """The median over the frames where the loss prefers the run of the temporal weight w at which
    coherence + w · temporal would prefer the truth: (truth_c − run_c) / (run_t − truth_t), ∞ on a frame
    where the run is no less steady than the truth; NaN when no frame prefers the run."""
    prefer = run_c < truth_c
    if not prefer.any():
        return float("nan")
    dt = (run_t - truth_t)[prefer]
    dc = (truth_c - run_c)[prefer]
    w = np.where(dt > 0, dc / np.where(dt > 0, dt, 1.0), np.inf)
    return float(np.median(w))


def summarise(per_frame: pd.DataFrame, labels: Sequence[str], temporal: bool) -> pd.DataFrame:
    """One row per sequence and run: mean losses, the share of frames preferring the run, the flip weight."""
    rows = []
    for name, df in per_frame.groupby("sequence", sort=False):
        tc, tt = df["truth_coherence"].to_numpy(), df["truth_temporal"].to_numpy()
        for label in labels:
            rc, rt = df[f"{label}_coherence"].to_numpy(), df[f"{label}_temporal"].to_numpy()
            rows.append({"sequence": name, "run": label, "frames": len(df), "truth_coherence": tc.mean(),
                         "run_coherence": rc.mean(), "truth_temporal": tt.mean() if temporal else None,
                         "run_temporal": rt.mean() if temporal else None,
                         "prefers_run": float((rc < tc).mean()),
                         "flip_weight": flip_weight(tc, tt, rc, rt) if temporal else None})
    return pd.DataFrame(rows)


def loss_check(bench: str | os.PathLike, split: str, runs: Sequence[str | os.PathLike],
               labels: Sequence[str] | None = None, settings: LossSettings | None = None,
               out: str | os.PathLike | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The module docstring's measurement over the split's sequences with objects → (per frame, per
    sequence and run); ``out`` writes the per-frame CSV there and the summary beside it
    (``{stem}_per_sequence.csv``)."""
    settings = settings or LossSettings()
    settings.check()
    bench, run_dirs = Path(bench), [Path(r) for r in runs]
    if not run_dirs:
        raise ValueError("loss_check: name at least one run folder (--runs)")
    labels = list(labels) if labels else [r.name for r in run_dirs]
    if len(labels) != len(run_dirs) or len(set(labels)) != len(labels) or "truth" in labels:
        raise ValueError(f"loss_check: one distinct label per run, not 'truth', got {labels} "
                         f"for {len(run_dirs)} run(s)")
    for r in run_dirs:
        if not r.is_dir():
            raise BenchmarkError(f"{r}: no such run folder")
    seqs = [s for s in split_sequences(load_manifest(bench), split, bench) if s.get("objects")]
    if not seqs:
        raise BenchmarkError(f"{bench}: the {split} split has no sequence with objects")
    frames = []
    for k, entry in enumerate(seqs, 1):
        frames.append(check_sequence(entry, bench, run_dirs, labels, settings))
        logger.info("[%d/%d] %s: %d frames", k, len(seqs), entry["name"], len(frames[-1]))
    per_frame = pd.concat(frames, ignore_index=True)
    per_seq = summarise(per_frame, labels, settings.clip_length > 1)
    if out is not None:
        out = Path(out)
        write_csv(per_frame, out)
        write_csv(per_seq, out.with_name(f"{out.stem}_per_sequence.csv"))
    return per_frame, per_seq


def format_loss_table(per_seq: pd.DataFrame, settings: LossSettings) -> str:
    """The per-sequence table, one line per sequence and run, and the mean share over sequences per run."""
    temporal = settings.clip_length > 1
    loss = (f"{settings.st_param_model} over clips of {settings.clip_length}, + temporal term" if temporal
            else f"{settings.param_model}, frame by frame")
    lines = [f"loss: {loss} ({settings.v_distance}, {settings.theta_method}); lower is preferred",
             f"{'sequence':16s}{'run':18s}{'truth':>9s}{'run':>9s}{'prefers run':>13s}"
             + (f"{'tt truth':>10s}{'tt run':>9s}{'w to flip':>11s}" if temporal else "")]
    for r in per_seq.itertuples():
        line = f"{r.sequence:16s}{r.run[:17]:18s}{r.truth_coherence:9.4f}{r.run_coherence:9.4f}{r.prefers_run:13.2f}"
        if temporal:
            w = r.flip_weight
            line += (f"{r.truth_temporal:10.4f}{r.run_temporal:9.4f}"
                     + (f"{w:11.1f}" if math.isfinite(w) else f"{'∞' if w == math.inf else '-':>11s}"))
        lines.append(line)
    lines.append("")
    for label, df in per_seq.groupby("run", sort=False):
        lines.append(f"{label}: the loss prefers the run's masks to the truth on {df['prefers_run'].mean():.0%} of "
                     f"the frames (mean over {len(df)} sequences with objects)")
    return "\n".join(lines)
