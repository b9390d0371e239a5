"""Is the ground truth where training leads? Put the network at the truth, then train it on its loss.

``loss_check`` compares two fixed partitions; this asks the dynamic question behind it, on each sequence
of the video benchmark with objects:

1. **to the truth**: a copy of the model is fitted, with labels, to the sequence's ground truth
   (``truth_steps`` of Adam at ``truth_lr`` on the negative log-likelihood of the true background /
   foreground labels, the foreground on the layer the model already gives it most of). This is the
   network *at the truth*: its J is the start.
2. **then the loss alone**: from there, the model's own training criterion (``Criterion``: robust M-step,
   mask-weighted residual, entropy term; for a temporal model the space-time coherence over its clips and
   ``temporal_weight`` × the temporal term), without labels, as ``segment.py --adapt`` or training
   would apply it, for the ``steps`` milestones (Adam at ``lr``, one optimiser throughout).

If the truth were a minimum of the loss on these flows, J would stay near the start. Where it falls back
towards the untouched model's J, the loss itself leads away from the truth, and no network, optimiser or
longer training of that loss can be expected to reach it: the gap is the loss's on these flows.

The flows are the network's own input: the defaults of ``segment.py --video`` (DIS over ``--gap`` frames,
``emseg.app.segment.app.video_flows_at_model_size``), at the model's input size; the truth is brought to
that grid by area (``loss_check.to_grid``). J is measured on that grid with the binarisation of the
benchmark's runs (``exceptbiggest``), per frame (a temporal model's: the centre of the clip centred on the
frame, ``evaluationmodule.clip_frames.clip_window``), both empty → 1; the loss is the mean criterion over
the sequence's frames (or clips).

Usage::

    python -m emseg.app.video_benchmark truth_drift --bench data/videobench --split test \\
        --ckpt checkpoints/em_small.ckpt [--steps 25 100 300] [--out drift.csv]
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from emseg.app.segment.app import video_flows_at_model_size
from emseg.app.segment.options import SegmentOptions
from emseg.app.video_benchmark.layout import BenchmarkError, load_manifest, split_sequences
from emseg.app.video_benchmark.loss_check import to_grid
from emseg.app.video_benchmark.score import read_mask
from emseg.core import hparams as H
from emseg.core.masks import exceptbiggest
from emseg.video.adaptation import DEFAULT_ADAPT_BATCH, EpochBatches
from evaluationmodule.clip_frames import clip_window
from evaluationmodule.writers import write_csv

logger = logging.getLogger(__name__)

#: the stage names of the table: the untouched model, the model fitted to the truth, then the loss's steps
MODEL, TRUTH = "model", "truth"


@dataclass(frozen=True)
class DriftSettings:
    """The two phases' budgets (module docstring)."""

    steps: tuple[int, ...] = (25, 100, 300)
    truth_steps: int = 150
    truth_lr: float = 1e-3
    lr: float = H.default("adapt_lr", H.SegmentQualityHparams)
    batch_size: int = DEFAULT_ADAPT_BATCH
    seed: int = 0
    #: None: the model's own; a number: that weight of the temporal term (temporal models only)
    temporal_weight: float | None = None

    def check(self) -> None:
        steps = list(self.steps)
        if not steps or any(isinstance(s, bool) or int(s) != s or s < 1 for s in steps) or steps != sorted(set(steps)):
            raise ValueError(f"--steps must be increasing integers >= 1, got {self.steps!r}")
        for name in ("truth_steps", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"--{name} must be an integer >= 1, got {v!r}")
        for name in ("truth_lr", "lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name} must be > 0, got {getattr(self, name)!r}")
        if self.temporal_weight is not None and not self.temporal_weight >= 0:
            raise ValueError(f"--temporal_weight must be >= 0, got {self.temporal_weight!r}")


def check_drift(settings: DriftSettings, model) -> None:
    """ValueError naming the flag when ``settings`` are out of range or do not fit ``model``."""
    settings.check()
    if settings.temporal_weight is not None and clip_length_of(model) == 1:
        raise ValueError("--temporal_weight: the model is a frame model (clip_length 1); it has no temporal term")


def clip_length_of(model) -> int:
    return int(getattr(model, "clip_length", 1) or 1)


def windows_of(n: int, clip_length: int) -> tuple[list[list[int]], int]:
    """Frame t's input frames for t = 0 … n − 1 (``[t]`` for a frame model, its centred clip otherwise) and
    the place of t in each."""
    if clip_length == 1:
        return [[t] for t in range(n)], 0
    wins = [clip_window(t, n, clip_length)[0] for t in range(n)]
    return wins, clip_window(0, n, clip_length)[1]


def batch_of(flows: Tensor, wins: Sequence[Sequence[int]], clip_length: int) -> dict:
    """The model's batch for the frames whose windows are ``wins``: Flow (B, 2, I, J), or (B, 2, T, I, J)."""
    if clip_length == 1:
        return {"Flow": flows[[w[0] for w in wins]]}
    return {"Flow": torch.stack([flows[list(w)] for w in wins]).transpose(1, 2).contiguous()}


def frame_preds(out: Tensor, clip_length: int, centre: int) -> Tensor:
    """The prediction of each window's own frame: (B, L, I, J) from (B, L, I, J) or (B, L, T, I, J)."""
    return out if clip_length == 1 else out[:, :, centre]


@torch.no_grad()
def evaluate(net, flows: Tensor, truth: Tensor, batch_size: int = 16) -> tuple[float, float]:
    """(mean J over frames, mean criterion over frames or clips) of ``net`` (eval mode) on flows (N, 2, I, J)
    against truth (N, I, J) bool."""
    was = net.training
    net.eval()
    T = clip_length_of(net)
    wins, centre = windows_of(len(flows), T)
    js, loss = [], 0.0
    for s in range(0, len(wins), batch_size):
        batch = net.prediction(batch_of(flows, wins[s:s + batch_size], T))
        loss += float(net.Criterion(batch, with_parametric_flow=False)["losses"].sum())
        fg = exceptbiggest(frame_preds(batch["Pred"], T, centre))
        gt = truth[s:s + batch_size]
        inter, union = (fg & gt).sum((1, 2)).double(), (fg | gt).sum((1, 2)).double()
        js.append(torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)))
    net.train(was)
    return float(torch.cat(js).mean()), loss / max(len(wins), 1)


def foreground_layer(net, flows: Tensor, truth: Tensor) -> int:
    """The layer on which ``net`` already puts most of the truth's foreground (the supervised target's)."""
    T = clip_length_of(net)
    wins, centre = windows_of(len(flows), T)
    with torch.no_grad():
        share = 0.0
        for s in range(0, len(wins), 16):
            pred = frame_preds(net.prediction(batch_of(flows, wins[s:s + 16], T))["Pred"], T, centre)
            share = share + (pred * truth[s:s + 16, None]).sum((0, 2, 3)) / pred.sum((0, 2, 3)).clamp(min=1e-9)
    return int(torch.as_tensor(share).argmax())


def fit_to_truth(net, flows: Tensor, truth: Tensor, settings: DriftSettings, progress: bool = False) -> None:
    """Phase 1 (in place): ``truth_steps`` of supervised Adam on the true labels, every frame of a clip."""
    T = clip_length_of(net)
    wins, _ = windows_of(len(flows), T)
    fg = foreground_layer(net, flows, truth)
    batches = EpochBatches(len(flows), settings.batch_size, settings.seed)
    opt = torch.optim.Adam(net.parameters(), lr=settings.truth_lr)
    net.train()
    for _ in tqdm(range(settings.truth_steps), desc="to the truth", unit="step", disable=not progress, leave=False):
        idx = batches.next()
        pred = net.prediction(batch_of(flows, [wins[i] for i in idx], T))["Pred"]
        # every frame of each clip is supervised (the truth of the frames the clip holds)
        gt = truth[[wins[i][0] for i in idx]] if T == 1 else torch.stack([truth[wins[i]] for i in idx])
        target = torch.where(gt, fg, 1 if fg == 0 else 0).long()  # the background: the first other layer
        loss = F.nll_loss(torch.log(pred.clamp(min=1e-6)), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def drift_sequence(model, flows: Tensor, truth: Tensor, settings: DriftSettings,
                   progress: bool = False) -> list[dict]:
    """Both phases on one sequence's flows (N, 2, I, J) and truth (N, I, J) bool → rows (stage, steps, J, loss):
    the untouched model, the model at the truth, then after each of ``settings.steps`` steps of the loss."""
    if flows.dim() != 4 or flows.shape[1] != 2 or truth.shape != (flows.shape[0], *flows.shape[2:]):
        raise ValueError(f"expected flows (N, 2, I, J) and truth (N, I, J), got {tuple(flows.shape)} and "
                         f"{tuple(truth.shape)}")
    check_drift(settings, model)
    net = copy.deepcopy(model)
    if settings.temporal_weight is not None:
        net.temporal_weight = float(settings.temporal_weight)
    rows = []
    j, loss = evaluate(net, flows, truth)
    rows.append({"stage": MODEL, "steps": 0, "J": j, "loss": loss})
    fit_to_truth(net, flows, truth, settings, progress)
    j, loss = evaluate(net, flows, truth)
    rows.append({"stage": TRUTH, "steps": 0, "J": j, "loss": loss})
    T = clip_length_of(net)
    wins, _ = windows_of(len(flows), T)
    batches = EpochBatches(len(flows), settings.batch_size, settings.seed + 1)
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
    done = 0
    bar = tqdm(total=settings.steps[-1], desc="the loss alone", unit="step", disable=not progress, leave=False)
    for milestone in settings.steps:
        net.train()
        for _ in range(milestone - done):
            batch = net.prediction(batch_of(flows, [wins[i] for i in batches.next()], T))
            loss_t = net.Criterion(batch, with_parametric_flow=False)["losses"].mean()
            opt.zero_grad(set_to_none=True)
            loss_t.backward()
            opt.step()
            bar.update()
        done = milestone
        j, loss = evaluate(net, flows, truth)
        rows.append({"stage": "loss", "steps": milestone, "J": j, "loss": loss})
    bar.close()
    return rows


def sequence_truth(bench: Path, entry: dict, n: int, grid: tuple[int, int]) -> Tensor:
    """The sequence's first ``n`` ground-truth masks on ``grid`` (I, J): (n, I, J) bool."""
    size = (int(entry["size"][1]), int(entry["size"][0]))
    gt_dir = bench / entry["path"] / entry.get("masks", "masks")
    return torch.from_numpy(np.stack([to_grid(read_mask(gt_dir / f"{t:05d}.png", size, "ground-truth mask"), grid)
                                      for t in range(n)]))


def truth_drift(bench: str | os.PathLike, split: str, model, settings: DriftSettings | None = None,
                sequences: Sequence[str] | None = None, out: str | os.PathLike | None = None,
                progress: bool = True) -> pd.DataFrame:
    """The module docstring's measurement over the split's sequences with objects (or the named ones) for
    ``model`` (a trainable MethodeB) → one row per sequence and stage: sequence, stage, steps, J, loss,
    seconds; ``out`` writes it as CSV."""
    settings = settings or DriftSettings()
    check_drift(settings, model)
    bench = Path(bench)
    seqs = [s for s in split_sequences(load_manifest(bench), split, bench) if s.get("objects")]
    if sequences:
        names = [s["name"] for s in seqs]
        unknown = [n for n in sequences if n not in names]
        if unknown:
            raise BenchmarkError(f"{bench}: no sequence with objects named {unknown} in the {split} split "
                                 f"(it has {names})")
        seqs = [s for s in seqs if s["name"] in sequences]
    if not seqs:
        raise BenchmarkError(f"{bench}: the {split} split has no sequence with objects")
    grid = tuple(int(v) for v in model.hparams["img_size"])
    opts = SegmentOptions(progress=False)
    rows = []
    for k, entry in enumerate(seqs, 1):
        t0 = time.perf_counter()
        flows = video_flows_at_model_size(bench / entry["path"] / "video.mp4", model, opts)
        truth = sequence_truth(bench, entry, len(flows), grid)
        for r in drift_sequence(model, flows, truth, settings, progress):
            rows.append({"sequence": entry["name"], **r})
        rows[-1]["seconds"] = time.perf_counter() - t0
        logger.info("[%d/%d] %s: J model %.3f, at the truth %.3f, after %d steps of the loss %.3f", k, len(seqs),
                    entry["name"], rows[-2 - len(settings.steps)]["J"], rows[-1 - len(settings.steps)]["J"],
                    settings.steps[-1], rows[-1]["J"])
    df = pd.DataFrame(rows)
    if out is not None:
        write_csv(df, Path(out))
    return df


def format_drift_table(df: pd.DataFrame) -> str:
    """One line per sequence: J (and loss) of the model, at the truth, after each milestone; then the means."""
    stages = [(MODEL, 0), (TRUTH, 0)] + [("loss", int(s)) for s in sorted(df.loc[df.stage == "loss", "steps"].unique())]
    heads = ["model", "at truth"] + [f"+{s} steps" for _, s in stages[2:]]
    lines = ["J on the model's grid (loss in brackets; lower is preferred by training)",
             f"{'sequence':16s}" + "".join(f"{h:>18s}" for h in heads)]

    def cell(sub: pd.DataFrame, stage: str, steps: int) -> pd.Series:
        return sub[(sub.stage == stage) & (sub.steps == steps)].iloc[0]

    for name, sub in df.groupby("sequence", sort=False):
        cells = [cell(sub, st, s) for st, s in stages]
        lines.append(f"{name:16s}" + "".join(f"{c.J:9.3f} ({c.loss:.4f})" for c in cells))
    means = [df[(df.stage == st) & (df.steps == s)] for st, s in stages]
    lines.append(f"{'mean':16s}" + "".join(f"{m.J.mean():9.3f} ({m.loss.mean():.4f})" for m in means))
    return "\n".join(lines)


def plot_drift(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """J against the loss's steps per sequence (from the truth), the untouched model's J dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for k, (name, sub) in enumerate(df.groupby("sequence", sort=False)):
        color = f"C{k % 10}"
        path_df = sub[sub.stage != MODEL]
        ax.plot(path_df.steps, path_df.J, marker="o", color=color, label=name)
        ax.axhline(float(sub[sub.stage == MODEL].J.iloc[0]), color=color, linestyle=":", linewidth=1)
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("steps of the loss alone, from the truth")
    ax.set_ylabel("J (model grid)")
    ax.set_ylim(0, 1.02)
    ax.set_title("Does training on the loss keep the truth? (dotted: the model untouched)", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
