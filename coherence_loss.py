"""Use the EM coherence loss in your own project.

>>> from coherence_loss import coherence_loss
>>> losses = coherence_loss(pred, flow, param_model='Quadratic', v_distance='l1')  # (B,)
>>> losses.mean().backward()  # gradients reach pred only
"""

from __future__ import annotations

from torch import Tensor

from emseg.core.coherence_math import em_loss


def coherence_loss(pred: Tensor, flow: Tensor, param_model: str = "Quadratic", v_distance: str = "l1",
                   theta_method: str = "IRLS") -> Tensor:
    """Coherence loss of soft segments with respect to an optical flow.

    Parameters
    ----------
    pred : (B, L, I, J) mask probabilities (softmax over L), any L >= 1, float32 or float64.
    flow : (B, 2, I, J) optical flow, channel 0 horizontal (u), channel 1 vertical (v).
    param_model : ``'Affine'`` or ``'Quadratic'`` motion model fitted to each mask.
    v_distance : ``'l1'``, ``'l2'`` or ``'squared'`` distance between the flow and the fit.
    theta_method : how θ is fitted (M-step): ``'IRLS'`` (robust, default), ``'OLS'`` (weighted
        least squares, what the fixtures of the original code use) or ``'Optim'`` (L-BFGS).

    Returns
    -------
    (B,) coherence loss per sample: (1 / (I·J)) Σ_k Σ_i pred_k(i) · d(flow(i), X θ_k(i)), with θ
    fitted to each mask then detached, so the loss is differentiable with respect to ``pred``.
    It is the ``coherence_losses`` term of :func:`emseg.core.coherence_math.em_loss`, the criterion
    the models train on (there without the entropy term).
    """
    return em_loss(pred, flow, param_model, v_distance, theta_method, entropy_weight=0.0)["coherence_losses"]
