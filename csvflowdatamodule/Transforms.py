"""Per-sample flow transforms: normalisation, global-motion augmentation (docs/METHOD.md §2) and
estimator-like flow noise.

Every transform is callable on an item dict (it replaces ``item['Flow']``) or directly on a flow
tensor (2, I, J) (a leading batch dimension (B, 2, I, J) is accepted too; each sample then gets
its own statistics and, for the augmentation, its own random motion).

Clips (``csvflowdatamodule.clips``): every transform's ``clip`` method (and
:meth:`TransformsComposer.clip`) takes a clip item whose ``'Flow'`` is (2, T, I, J) (``'Image'``
(3, T, I, J)), or a bare (2, T, I, J) tensor, and makes **one random draw per clip**: the same
global motion is added to all T frames, the same noise blobs are placed on all of them, and the
normalisation's statistics are those of the whole clip. With T = 1 ``clip`` gives exactly what
the frame call gives (same random draws, same values). The frame call is never applied to a clip:
a (2, T, I, J) tensor would be read as a batch of T-channel flows.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from emseg.core.coherence_math import basis_from_coords, grid_coords, mean_vector_norm

FLOW_NORMALISATIONS: tuple[str, ...] = ("none", "median", "mean", "max", "znorm")
# Which flow the loss is fitted to when TrFlowNoise corrupts the network's input (TransformsComposer).
FLOW_NOISE_TARGETS: tuple[str, ...] = ("noisy", "clean")
# The item / batch key of the flow the loss is fitted to when it is not 'Flow' (the network's input).
LOSS_FLOW_KEY = "LossFlow"
AUGMENTATION_STRENGTHS: dict[str, float] = {"light": 2.0, "medium": 4.0, "strong": 8.0}
AUGMENTATION_FAMILIES: dict[str, str] = {"globalmotionfullquad": "Quadratic", "globalmotion": "Affine"}
FLOW_AUGMENTATIONS: tuple[str, ...] = ("none",) + tuple(
    fam + strength for fam in ("globalmotion", "globalmotionfullquad") for strength in AUGMENTATION_STRENGTHS
)
# Probability that a `globalmotion*` draw is the pure zoom [[0, a], [a, 0], [0, 0]].
ZOOM_PROBABILITY = 0.4
_EPS = 1e-12


@functools.lru_cache(maxsize=8)
def _centred_basis(param_model: str, I: int, J: int) -> Tensor:
    """Basis at centred coordinates (i, j in [-1, 1]): (I·J, ft) float64. Do not modify."""
    gi, gj = grid_coords((I, J), centered=True, dtype=torch.float64)
    return basis_from_coords(gi.reshape(-1), gj.reshape(-1), param_model)


def _apply_on_flow(x: Any, fn) -> Any:
    if isinstance(x, dict):
        if "Flow" not in x:  # e.g. a skipped sample
            return x
        out = dict(x)
        out["Flow"] = fn(x["Flow"])
        return out
    return fn(x)


def _check_flow(flow: Tensor) -> None:
    if not isinstance(flow, Tensor) or flow.dim() not in (3, 4) or flow.shape[-3] != 2:
        raise ValueError(f"expected a flow (2, I, J) or (B, 2, I, J), got {tuple(getattr(flow, 'shape', ()))}")


def _check_together(flow: Tensor, others: tuple[Tensor, ...]) -> None:
    """Flows normalised with ``flow`` must have its shape."""
    for o in others:
        if o.shape != flow.shape:
            raise ValueError(f"flows normalised together must have one shape, got {tuple(flow.shape)} "
                             f"and {tuple(o.shape)}")


def _check_clip(flow: Tensor) -> None:
    if not isinstance(flow, Tensor) or flow.dim() != 4 or flow.shape[0] != 2:
        raise ValueError(f"expected a clip of flows (2, T, I, J), got {tuple(getattr(flow, 'shape', ()))}")


def _as_one_flow(clip: Tensor) -> Tensor:
    """A clip (2, T, I, J) as one tall flow (2, T·I, J): per-pixel statistics over it are the clip's."""
    return clip.reshape(2, -1, clip.shape[-1])


class TrNormaliseFlow:
    """Normalise a flow (2, I, J) (or (B, 2, I, J), per sample).

    ``median`` / ``mean`` / ``max``: divide by that statistic of the per-pixel vector norms;
    ``znorm``: per channel, subtract the mean and divide by the standard deviation; ``none``:
    unchanged. A (near-)zero statistic leaves the flow unscaled rather than dividing by zero.
    """

    def __init__(self, mode: str = "none") -> None:
        if mode not in FLOW_NORMALISATIONS:
            raise ValueError(f"flow_normalisation must be one of {list(FLOW_NORMALISATIONS)}, got {mode!r}")
        self.mode = mode

    def statistics(self, flow: Tensor) -> tuple[Tensor, Tensor]:
        """(shift, scale), each (B, 2 or 1, 1, 1), such that the normalised flow is
        ``(flow - shift) / scale``; ``flow`` is (B, 2, I, J)."""
        if self.mode == "znorm":
            shift = flow.mean(dim=(2, 3), keepdim=True)
            std = flow.std(dim=(2, 3), keepdim=True)
            return shift, torch.where(std > _EPS, std, torch.ones_like(std))
        norms = torch.linalg.vector_norm(flow, dim=1).flatten(1)  # (B, I·J)
        if self.mode == "median":
            stat = norms.median(dim=1).values
        elif self.mode == "mean":
            stat = norms.mean(dim=1)
        else:
            stat = norms.max(dim=1).values
        stat = torch.where(stat > _EPS, stat, torch.ones_like(stat))
        return torch.zeros_like(stat)[:, None, None, None], stat[:, None, None, None]

    def normalise(self, flow: Tensor, *others: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Normalise ``flow`` by its own statistics; flows in ``others`` (same shape) get the
        same shift and scale, so that they stay in ``flow``'s units. Returns the normalised
        ``flow``, or the tuple (flow, *others) when ``others`` are given."""
        _check_flow(flow)
        _check_together(flow, others)
        if self.mode == "none":
            return (flow, *others) if others else flow
        batched = flow.dim() == 4
        shift, scale = self.statistics(flow if batched else flow[None])
        if not batched:
            shift, scale = shift[0], scale[0]
        outs = tuple((f - shift) / scale for f in (flow, *others))
        return outs if others else outs[0]

    def normalise_clip(self, flow: Tensor, *others: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Normalise a clip (2, T, I, J) by the statistics of the whole clip (one shift and scale
        for its T frames, so that their relative magnitudes are kept); ``others`` as in
        :meth:`normalise`. With T = 1 this is :meth:`normalise` of the frame."""
        _check_clip(flow)
        _check_together(flow, others)
        if self.mode == "none":
            return (flow, *others) if others else flow
        outs = self.normalise(_as_one_flow(flow), *(_as_one_flow(o) for o in others))
        if not others:
            return outs.reshape(flow.shape)
        return tuple(o.reshape(flow.shape) for o in outs)

    def __call__(self, x: Any) -> Any:
        return self._apply(x, self.normalise)

    def clip(self, x: Any) -> Any:
        """:meth:`__call__` for a clip item (``'Flow'`` (2, T, I, J)) or tensor: clip statistics."""
        return self._apply(x, self.normalise_clip)

    @staticmethod
    def _apply(x: Any, normalise) -> Any:
        if isinstance(x, dict) and LOSS_FLOW_KEY in x:  # the loss's flow stays in the network's units
            out = dict(x)
            out["Flow"], out[LOSS_FLOW_KEY] = normalise(x["Flow"], x[LOSS_FLOW_KEY])
            return out
        return _apply_on_flow(x, normalise)

    def __repr__(self) -> str:
        return f"TrNormaliseFlow({self.mode!r})"


class TrAugmentFlow:
    """Add a random global (camera-like) motion to a flow (2, I, J) (docs/METHOD.md §2).

    With row i and column j scaled to [-1, 1]:

    - ``globalmotion{light,medium,strong}``: affine basis [i, j, 1], parameters U(-1, 1) (3 × 2);
      with probability 0.4 instead [[0, a], [a, 0], [0, 0]] with a ∈ U(-1, 1) (a zoom);
    - ``globalmotionfullquad{light,medium,strong}``: quadratic basis [i·j, i², j², i, j, 1],
      parameters U(-1, 1) (6 × 2);
    - ``none``: the flow is returned unchanged.

    The added field is rescaled to the input flow's mean vector norm, then multiplied by
    U(0, 1) · α with α = 2, 4, 8 for light, medium, strong. The bases come from
    ``emseg.core.coherence_math``. Random numbers come from ``generator`` if given, else torch's
    global RNG (so ``seed_everything`` and DataLoader worker seeding make runs reproducible).
    """

    def __init__(self, name: str = "none", generator: torch.Generator | None = None) -> None:
        if name not in FLOW_AUGMENTATIONS:
            raise ValueError(f"flow_augmentation must be one of {list(FLOW_AUGMENTATIONS)}, got {name!r}")
        self.name = name
        self.generator = generator
        self.param_model: str | None = None
        self.alpha = 0.0
        if name != "none":
            for family, param_model in AUGMENTATION_FAMILIES.items():  # longest prefix first
                if name.startswith(family):
                    self.param_model = param_model
                    self.alpha = AUGMENTATION_STRENGTHS[name[len(family):]]
                    break

    def _rand(self, *shape: int) -> Tensor:
        return torch.rand(*shape, generator=self.generator, dtype=torch.float64)

    def draw_params(self) -> Tensor:
        """One draw of the motion parameters θ (ft, 2), float64 (before rescaling)."""
        if self.param_model == "Quadratic":
            return self._rand(6, 2) * 2 - 1
        zoom = float(self._rand(1)) < ZOOM_PROBABILITY
        if zoom:
            a = float(self._rand(1)) * 2 - 1
            return torch.tensor([[0.0, a], [a, 0.0], [0.0, 0.0]], dtype=torch.float64)
        return self._rand(3, 2) * 2 - 1

    def global_motion(self, img_size: tuple[int, int], target_norm: float) -> Tensor:
        """A random global motion (2, I, J), float64, with mean vector norm ≤ α · target_norm."""
        I, J = img_size
        X = _centred_basis(self.param_model, I, J)  # (I·J, ft)
        theta = self.draw_params()
        field = (X @ theta).T.reshape(2, I, J)
        norm = float(mean_vector_norm(field[None])[0])
        scale = float(self._rand(1)) * self.alpha
        if norm <= _EPS:
            return torch.zeros_like(field)
        return field * (target_norm / norm * scale)

    def augment(self, flow: Tensor) -> Tensor:
        _check_flow(flow)
        if self.param_model is None:
            return flow
        if flow.dim() == 4:
            return torch.stack([self.augment(f) for f in flow])
        target = float(mean_vector_norm(flow[None].double())[0])
        field = self.global_motion((int(flow.shape[-2]), int(flow.shape[-1])), target)
        return (flow.double() + field).to(flow.dtype)

    def augment_clip(self, flow: Tensor) -> Tensor:
        """A clip (2, T, I, J) plus **one** random global motion (2, I, J), the same for its T
        frames, rescaled to the clip's mean vector norm (with T = 1: :meth:`augment`)."""
        _check_clip(flow)
        if self.param_model is None:
            return flow
        target = float(mean_vector_norm(_as_one_flow(flow)[None].double())[0])
        field = self.global_motion((int(flow.shape[-2]), int(flow.shape[-1])), target)
        return (flow.double() + field[:, None]).to(flow.dtype)

    def __call__(self, x: Any) -> Any:
        return _apply_on_flow(x, self.augment)

    def clip(self, x: Any) -> Any:
        """:meth:`__call__` for a clip item (``'Flow'`` (2, T, I, J)) or tensor: one draw per clip."""
        return _apply_on_flow(x, self.augment_clip)

    def __repr__(self) -> str:
        return f"TrAugmentFlow({self.name!r})"


class TrFlowNoise:
    """Corrupt a flow (2, I, J) with a flow estimator's typical failure: smooth wrong vectors in a
    few blobs, placed preferably where the frame has little texture.

    Where a frame is textureless (sky, wall, grass in shade) an estimator such as DIS returns a
    smooth but arbitrary field, which a network trained on clean synthetic flows takes for an
    object. With probability ``probability`` per sample, 1–3 elliptic blobs (together 2–15 % of
    the image) get a smooth random field added: a 4 × 4 normal grid upsampled bicubically, zero
    mean inside each blob (so it is *not* a coherent motion), of amplitude U(0.5, 2) × (the flow's
    mean vector norm + 0.5 px). When the item has an ``'Image'`` (3, I, J), blob centres are drawn
    among the 30 % least textured pixels (image gradient magnitude).

    With ``keep_clean``, an item also gets ``'LossFlow'``: its flow from before the noise (the
    flow itself when no noise was drawn, so that items batch together), for the loss to be fitted
    to (:class:`TransformsComposer`, ``flow_noise_target='clean'``).
    """

    def __init__(self, probability: float = 0.0, generator: torch.Generator | None = None,
                 keep_clean: bool = False) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"flow_noise must be a probability in [0, 1], got {probability}")
        self.probability = float(probability)
        self.generator = generator
        self.keep_clean = bool(keep_clean)

    def _rand(self, *shape: int) -> Tensor:
        return torch.rand(*shape, generator=self.generator, dtype=torch.float64)

    def noise(self, flow: Tensor, image: Tensor | None = None) -> Tensor:
        """Noisy copy of a flow (2, I, J) (image (3, I, J) or None), or per sample of (B, 2, I, J)."""
        _check_flow(flow)
        if flow.dim() == 4:
            return torch.stack([self.noise(f, None if image is None else image[k]) for k, f in enumerate(flow)])
        return self._noise(flow, image)

    def noise_clip(self, flow: Tensor, image: Tensor | None = None) -> Tensor:
        """Noisy copy of a clip (2, T, I, J): **one** draw (the same blobs and fields on all T
        frames, amplitude from the clip's mean vector norm, blob centres from the first frame of
        ``image`` (3, T, I, J) if given). With T = 1: :meth:`noise` of the frame."""
        _check_clip(flow)
        return self._noise(flow, None if image is None else image[:, 0])

    def _noise(self, flow: Tensor, image: Tensor | None) -> Tensor:
        """``flow`` (2, I, J) or a clip (2, T, I, J); ``image`` (3, I, J) or None."""
        if self.probability == 0 or float(self._rand(1)) >= self.probability:
            return flow
        I, J = int(flow.shape[-2]), int(flow.shape[-1])
        ii, jj = torch.meshgrid(torch.arange(I, dtype=torch.float64), torch.arange(J, dtype=torch.float64),
                                indexing="ij")
        candidates = None
        if image is not None and image.shape[-2:] == flow.shape[-2:]:
            g = image.double().mean(0)
            grad = (g.diff(dim=0, prepend=g[:1]).abs() + g.diff(dim=1, prepend=g[:, :1]).abs()).flatten()
            candidates = torch.argsort(grad)[: max(1, int(0.3 * I * J))]
        n_blobs = 1 + int(self._rand(1) * 3)
        total = 0.02 + 0.13 * float(self._rand(1))
        amp_base = float(mean_vector_norm(_as_one_flow(flow)[None].double())[0]) + 0.5
        out = flow.double().clone()
        frames = (1,) * (flow.dim() - 3)  # a clip's time axis: the same field on every frame
        for _ in range(n_blobs):
            if candidates is not None:
                c = int(candidates[int(self._rand(1) * len(candidates)) % len(candidates)])
                ci, cj = c // J, c % J
            else:
                ci, cj = float(self._rand(1)) * I, float(self._rand(1)) * J
            area = total / n_blobs * I * J
            aspect = 0.5 + float(self._rand(1))
            a = (area / torch.pi / aspect) ** 0.5
            b = a * aspect
            blob = ((ii - ci) / a) ** 2 + ((jj - cj) / b) ** 2 <= 1
            if not blob.any():
                continue
            coarse = torch.randn(1, 2, 4, 4, generator=self.generator, dtype=torch.float64)
            field = torch.nn.functional.interpolate(coarse, size=(I, J), mode="bicubic", align_corners=True)[0]
            field = field - field[:, blob].mean(1)[:, None, None]
            field = field / field[:, blob].abs().mean().clamp_min(_EPS)
            amp = amp_base * (0.5 + 1.5 * float(self._rand(1)))
            out[..., blob] += amp * field[:, blob].reshape(2, *frames, -1)
        return out.to(flow.dtype)

    def __call__(self, x: Any) -> Any:
        return self._apply(x, self.noise)

    def clip(self, x: Any) -> Any:
        """:meth:`__call__` for a clip item (``'Flow'`` (2, T, I, J), ``'Image'`` (3, T, I, J)) or
        tensor: one draw per clip."""
        return self._apply(x, self.noise_clip)

    def _apply(self, x: Any, noise) -> Any:
        if isinstance(x, dict):
            if "Flow" not in x:
                return x
            out = dict(x)
            out["Flow"] = noise(x["Flow"], x.get("Image"))
            if self.keep_clean:
                out[LOSS_FLOW_KEY] = x["Flow"]
            return out
        return noise(x)

    def __repr__(self) -> str:
        return f"TrFlowNoise({self.probability}{', keep_clean=True' if self.keep_clean else ''})"


class TransformsComposer:
    """The dataset's per-sample transform: flow noise and augmentation (if any), then
    normalisation (if any), so that the network always sees a normalised flow.

    Callable on an item dict (returns a new dict with the transformed ``'Flow'``; other keys are
    kept) or on a flow tensor. Without noise, the loss is computed on the same (augmented,
    normalised) flow the network sees.

    ``flow_noise_target`` says which flow the loss is fitted to when ``flow_noise`` > 0:

    - ``'noisy'``: the corrupted flow the network sees (noise, augmentation, normalisation, in
      that order). Where a scene has no second motion, a blob then lowers the loss by taking
      the free mask: the network is taught to segment the noise.
    - ``'clean'``: the flow before the noise (augmentation, noise, normalisation). Items get
      ``'LossFlow'`` (2, I, J) from :class:`TrFlowNoise`: the augmented flow without the noise,
      normalised with the noisy flow's statistics (the ones the network's input gets), which
      the loss (``CoherenceCriterion.Criterion``) fits in place of ``'Flow'``. A blob is then
      only ever explained by the motion around it. On a bare tensor the noisy flow is returned.
    """

    def __init__(self, flow_normalisation: str = "none", flow_augmentation: str = "none",
                 generator: torch.Generator | None = None, flow_noise: float = 0.0,
                 flow_noise_target: str = "noisy") -> None:
        if flow_noise_target not in FLOW_NOISE_TARGETS:
            raise ValueError(f"flow_noise_target must be one of {list(FLOW_NOISE_TARGETS)}, "
                             f"got {flow_noise_target!r}")
        self.normalise = TrNormaliseFlow(flow_normalisation)
        self.augment = TrAugmentFlow(flow_augmentation, generator=generator)
        self.clean_target = flow_noise > 0 and flow_noise_target == "clean"
        self.noise = TrFlowNoise(flow_noise, generator=generator, keep_clean=self.clean_target)
        order = ((self.augment, flow_augmentation != "none"), (self.noise, flow_noise > 0)) if self.clean_target \
            else ((self.noise, flow_noise > 0), (self.augment, flow_augmentation != "none"))
        self.transforms = [t for t, active in order + ((self.normalise, flow_normalisation != "none"),) if active]

    def __call__(self, x: Any) -> Any:
        for tr in self.transforms:
            x = tr(x)
        return x

    def clip(self, x: Any) -> Any:
        """The same transforms on a clip item (``'Flow'`` (2, T, I, J)) or a (2, T, I, J) tensor,
        with one random draw per transform per clip (see the module docstring)."""
        for tr in self.transforms:
            x = tr.clip(x)
        return x

    def __repr__(self) -> str:
        return f"TransformsComposer({self.transforms})"
