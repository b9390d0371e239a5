"""Vector distances between flow fields: the authors' ``utils.distance_metrics.VectorDistance``,
kept at their import path for code written against it. The models compute the same distances
through ``emseg.core.coherence_math.vector_distance`` (``residual_distance``)."""

from __future__ import annotations

from torch import Tensor

from emseg.core.coherence_math import check_v_distance, vector_distance


class VectorDistance:
    """Per-element distance between two vector fields along ``dim``, the vector components: the
    last axis by default, as in the authors' code (``(..., 2)`` with (u, v) last).

    ``squared``: Σ_c (a_c − b_c)²; ``l2``: sqrt(Σ_c (a_c − b_c)²); ``l1``: Σ_c |a_c − b_c|.
    ``VectorDistance('l1')(a, b)`` with a, b (B, I, J, 2) → (B, I, J); with ``dim=1`` the
    channel-first layout of this project, (B, 2, I, J) → (B, I, J).
    """

    def __init__(self, name: str = "l1", dim: int = -1) -> None:
        check_v_distance(name)
        self.name = name  # the authors' attribute
        self.dim = dim

    def __call__(self, f1: Tensor, f2: Tensor) -> Tensor:
        if f1.shape[self.dim] != f2.shape[self.dim]:
            raise ValueError(f"VectorDistance: the fields have {f1.shape[self.dim]} and {f2.shape[self.dim]} "
                             f"components along dim {self.dim} (shapes {tuple(f1.shape)}, {tuple(f2.shape)})")
        return vector_distance(f1, f2, self.name, self.dim)
