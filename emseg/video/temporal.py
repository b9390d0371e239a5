"""Temporal consistency of a video's soft masks: stable mask identities, and fusion over neighbours.

The loss is the same under any permutation of the L masks, so a network segmenting frames one at a
time may swap which mask is which from one frame to the next. :func:`align_identities` undoes
that by matching each frame's masks to the previous frame's, carried along by the flow;
:func:`fuse` then averages a frame's probabilities with its neighbours', warped onto it and
weighted by the flow's confidence, which removes flicker and single-frame noise.

Conventions: pred (L, I, J) softmax over L; flows (2, I, J) in pixels of that grid (see
``emseg.video.flow_confidence``); confidences (I, J) in [0, 1].
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from emseg.video.flow_confidence import warp

MAX_EXHAUSTIVE_L = 6  # 720 permutations; beyond, a greedy assignment


def best_permutation(overlap: Tensor) -> list[int]:
    """overlap (L, L): ``overlap[a, b]`` = agreement of previous mask a with current mask b →
    ``perm`` with current mask ``perm[a]`` becoming mask a, maximising Σ_a overlap[a, perm[a]]."""
    L = overlap.shape[0]
    if overlap.shape != (L, L):
        raise ValueError(f"expected overlap (L, L), got {tuple(overlap.shape)}")
    if L <= MAX_EXHAUSTIVE_L:
        rows = torch.arange(L)
        best, best_score = list(range(L)), None
        for perm in itertools.permutations(range(L)):
            score = float(overlap[rows, torch.tensor(perm)].sum())
            if best_score is None or score > best_score + 1e-12:
                best, best_score = list(perm), score
        return best
    perm = [-1] * L
    free_rows, free_cols = set(range(L)), set(range(L))
    for flat in torch.argsort(overlap.flatten(), descending=True).tolist():
        a, b = divmod(flat, L)
        if a in free_rows and b in free_cols:
            perm[a] = b
            free_rows.discard(a)
            free_cols.discard(b)
    return perm


def carry(prev: Tensor, flow_to_prev: Tensor) -> tuple[Tensor, Tensor]:
    """Bring the previous frame's pred (L, I, J) onto the current frame, with the flow from the
    current frame to the previous one (2, I, J) → (pred (L, I, J), inside (I, J))."""
    out, inside = warp(prev[None], flow_to_prev[None])
    return out[0], inside[0]


def align_identities(pred: Tensor, prev_aligned: Tensor, flow_to_prev: Tensor,
                     confidence: Tensor | None = None) -> tuple[Tensor, list[int]]:
    """Permute the masks of ``pred`` (L, I, J) to match ``prev_aligned`` (the previous frame's,
    already aligned), carried by ``flow_to_prev`` (2, I, J) and weighted by ``confidence`` (I, J)
    → (permuted pred, perm)."""
    if pred.dim() != 3 or prev_aligned.shape != pred.shape:
        raise ValueError(f"expected pred and prev_aligned (L, I, J) of one shape, got {tuple(pred.shape)} "
                         f"and {tuple(prev_aligned.shape)}")
    carried, inside = carry(prev_aligned, flow_to_prev)
    w = inside.to(pred.dtype)
    if confidence is not None:
        w = w * confidence.to(pred.dtype)
    L = pred.shape[0]
    overlap = torch.einsum("aij,bij,ij->ab", carried.double(), pred.double(), w.double())
    perm = best_permutation(overlap)
    if perm == list(range(L)):
        return pred, perm
    return pred[perm], perm


def fuse(center: Tensor, neighbours: list[tuple[Tensor, Tensor]], weight: float = 1.0) -> Tensor:
    """Confidence-weighted average of a frame's pred with its neighbours' carried onto it.

    center (L, I, J); neighbours: (pred (L, I, J) already on the centre frame's grid, confidence
    (I, J)) pairs; each neighbour counts ``weight · confidence`` against the centre's 1, so where the
    flow is unreliable the frame keeps its own prediction. The result is still a softmax over L.
    """
    num = center.clone()
    den = torch.ones_like(center[:1])
    for p, c in neighbours:
        if p.shape != center.shape or c.shape != center.shape[1:]:
            raise ValueError(f"neighbour pred {tuple(p.shape)} / confidence {tuple(c.shape)} do not fit the "
                             f"centre {tuple(center.shape)}")
        wc = weight * c.to(center.dtype)[None]
        num = num + wc * p
        den = den + wc
    return num / den
