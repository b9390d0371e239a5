"""MethodeB: the paper's model — a U-Net trained by the EM coherence loss, θ fitted per batch."""

from __future__ import annotations

import argparse
from typing import Any

from Models.CoherenceNet import CoherenceNet


class MethodeB(CoherenceNet):
    """The authors' ``MethodeB``. Build it with command-line names::

        MethodeB(**{'nAffineMasks': 2, 'unet.num_layers': 4, 'unet.features_start': 16,
                    'img_size': [128, 224]})

    ``prediction({'Flow': flow})['Pred']`` is (B, L, I, J); ``Criterion(batch)`` returns the loss
    terms and θ (``emseg.core.coherence_math.em_loss``).
    The M-step solver is ``theta_method`` (IRLS by default; OLS and the original's Optim remain).
    """

    HPARAM_DEFAULTS: dict[str, Any] = {}

    @staticmethod
    def add_specific_args(parent_parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """Add every model flag (network, optimiser, loss) to ``parent_parser``."""
        return CoherenceNet.add_specific_args(parent_parser)
