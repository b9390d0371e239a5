"""Vector distances between flow fields (the original's ``VectorDistance``)."""

from __future__ import annotations

from torch import Tensor, nn

from utils.coherence_math import check_v_distance, vector_distance


class VectorDistance(nn.Module):
    """Per-pixel distance between two vector fields along ``dim`` (the components).

    ``squared``: Σ_c (a_c − b_c)²; ``l2``: sqrt(Σ_c (a_c − b_c)²); ``l1``: Σ_c |a_c − b_c|.
    ``VectorDistance('l1')(a, b)`` with a, b (B, 2, I, J) → (B, I, J).
    """

    def __init__(self, v_distance: str = "l1", dim: int = 1) -> None:
        super().__init__()
        check_v_distance(v_distance)
        self.v_distance = v_distance
        self.dim = dim

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return vector_distance(a, b, self.v_distance, self.dim)
