"""Test-time adaptation: fine-tune a copy of a model on one video's own flows, without labels.

The method's loss needs no ground truth, so the video to segment is itself training data: steps of
the usual criterion (the model's own ``Criterion``: robust M-step, mask-weighted residual, entropy
term) on the clip's flows fit the network to that camera, scene and flow estimator. The original
model is left untouched.

The default budget, ``DEFAULT_ADAPT_STEPS`` = 5 steps of 4 flows, was chosen on the dev split of the
repository's video benchmark (``checkpoints/MODEL_CARD.md``), once the adaptation read the flows the
network reads (over ``--gap`` frames; it read the one-frame flows before): 5 steps gave J 0.794 over the
nine sequences against 0.786 without adaptation, 0.784 for 10 and 0.764 for 25, whose fit to the clip's
flow puts the estimator's noise into the static empty scene (J 1.000, 0.872, 0.681).
"""

from __future__ import annotations

import copy
import logging
import time

import torch
from torch import Tensor
from tqdm import tqdm

from emseg.core import hparams as H

logger = logging.getLogger(__name__)

# segment.py's --adapt and --adapt_lr: defined once, with its other settings (emseg/core/hparams.py)
DEFAULT_ADAPT_STEPS = H.ADAPT_STEPS
DEFAULT_ADAPT_LR = H.default("adapt_lr", H.SegmentQualityHparams)
DEFAULT_ADAPT_BATCH = 4


class EpochBatches:
    """Mini-batches of indices in 0 … n − 1 drawn without replacement, an epoch at a time, from a generator
    seeded with ``seed`` (a rerun draws the same batches; with n < batch_size, a batch is one epoch)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size = n, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.order: list[int] = []

    def next(self) -> list[int]:
        if len(self.order) < self.batch_size:
            self.order += torch.randperm(self.n, generator=self.gen).tolist()
        idx, self.order = self.order[:self.batch_size], self.order[self.batch_size:]
        return idx


def adapt(model, flows: Tensor, steps: int = DEFAULT_ADAPT_STEPS, lr: float = DEFAULT_ADAPT_LR,
          batch_size: int = DEFAULT_ADAPT_BATCH, seed: int = 0, progress: bool = True) -> tuple[object, dict]:
    """Fine-tune a deep copy of ``model`` on ``flows`` (N, 2, I, J) at the model's input size, as the
    network reads them; returns (adapted model in eval mode, a summary with the loss before and after
    — each the mean criterion over all N flows — the steps and seconds).

    Adam at ``lr`` on mini-batches of ``batch_size`` flows drawn without replacement (an epoch at a
    time) with a fixed ``seed``, so a rerun gives the same weights.
    """
    if not getattr(model, "has_network", True):
        raise ValueError(f"{type(model).__name__} has no network to adapt")
    if flows.dim() != 4 or flows.shape[1] != 2:
        raise ValueError(f"expected flows (N, 2, I, J), got {tuple(flows.shape)}")
    size = tuple(model.hparams["img_size"])
    if tuple(flows.shape[2:]) != size:
        raise ValueError(f"expected flows at the model's size {size}, got {tuple(flows.shape[2:])}")
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"adapt needs steps >= 1, batch_size >= 1 and lr > 0, got {steps}, {batch_size}, {lr}")
    t0 = time.perf_counter()
    device = next(iter(model.parameters())).device
    net = copy.deepcopy(model).to(device)
    before = mean_loss(net, flows)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    batches = EpochBatches(len(flows), batch_size, seed)
    bar = tqdm(range(steps), desc="adapting", unit="step", disable=not progress)
    for _ in bar:
        batch = {"Flow": flows[batches.next()].to(device)}
        net.prediction(batch)
        loss = net.Criterion(batch, with_parametric_flow=False)["losses"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    net.eval()
    after = mean_loss(net, flows)
    summary = {"steps": steps, "lr": lr, "batch_size": batch_size, "loss_before": before, "loss_after": after,
               "seconds": time.perf_counter() - t0}
    logger.info("adapted on %d flows: %d steps, loss %.4f → %.4f, %.1f s", len(flows), steps, before, after,
                summary["seconds"])
    return net, summary


@torch.no_grad()
def mean_loss(model, flows: Tensor, batch_size: int = 16) -> float:
    """Mean criterion of ``model`` (eval mode) over flows (N, 2, I, J)."""
    was_training = model.training
    model.eval()
    device = next(iter(model.parameters())).device
    total = 0.0
    for s in range(0, len(flows), batch_size):
        batch = {"Flow": flows[s:s + batch_size].to(device)}
        model.prediction(batch)
        total += float(model.Criterion(batch, with_parametric_flow=False)["losses"].sum())
    model.train(was_training)
    return total / max(len(flows), 1)
