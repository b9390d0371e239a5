"""The LightningModule shell: hyperparameters, network, optimiser, one shared train/val/test step.

The step computes and logs; it keeps nothing. What it returns (``loss`` and per-frame tensors) is
what callbacks record: ``emseg.app.results.ResultsWriter`` (results.csv), ``utils.Callbacks`` (figures,
per-frame files).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from emseg.core import hparams as H
from Models.Backbones.unet import UNetAbstract
from Models.checkpoint_io import CheckpointError, read_checkpoint

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """A batch's loss is NaN or infinite; the message names the batch's files."""


def collect_rng_states() -> dict:
    """torch, CUDA, NumPy and Python RNG states as tensors and lists (weights-only loadable)."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, pystate, gauss = random.getstate()
    out = {"torch": torch.get_rng_state(),
           "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
           "python": [version, list(pystate), gauss]}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng_states(states: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(states["torch"].cpu())
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, pystate, gauss = states["python"]
    random.setstate((version, tuple(pystate), gauss))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def masks_usages(pred: Tensor) -> Tensor:
    """Each mask's share of the frame: ``pred`` (B, L, I, J) → (B, L) float32, detached."""
    return pred.detach().float().mean((2, 3))


class SegmentationSteps:
    """The one train/val/test step, for a LightningModule whose ``prediction(batch)`` adds ``Pred``,
    ``Criterion(batch)`` returns per-sample ``losses``, ``coherence_losses``, ``entropies`` (B,) and
    ``theta``, and ``frame_metrics(batch)`` adds ``PredMask`` and returns per-frame ``masks_usages``
    (B, L) and, with ``GtMask``, ``jaccs`` (B,).
    """

    def _step(self, batch: dict, stage: str, batch_idx: int = 0) -> dict | None:
        """Predict, loss, check, log; return the outputs (None when every sample was skipped):

        ``loss`` (the mean, with its graph), and per frame, detached and on the batch's device
        (no host sync): ``losses``, ``coherence_losses``, ``entropies`` (B,), ``theta`` (B, L, ft,
        2), ``Pred`` (B, L, I, J), ``masks_usages`` (B, L), ``index`` (B,) or None, and
        ``file_name`` (B strings); in validation and test also ``PredMask`` (B, I, J) bool and,
        when the batch has ``GtMask``, ``jaccs`` (B,).

        A training step does not binarise: the masks and their J are evaluation's, and on a GPU
        they cost the tiny network's step more than the network itself (many small kernels).

        The temporal model (``clip_length`` > 1) computes its loss per clip and returns these per
        frame (:meth:`_clip_step`): a batch of B clips of T frames gives B·T rows.
        """
        if "Flow" not in batch:
            logger.warning("%s batch %d: every sample was skipped (%d), step skipped", stage, batch_idx,
                           len(batch.get("Skipped") or []))
            return None
        if int(getattr(self, "clip_length", 1)) > 1:
            return self._clip_step(batch, stage, batch_idx)
        batch = self.prediction(batch)
        crit = self.Criterion(batch, with_parametric_flow=False)
        losses = crit["losses"]
        self.check_finite(losses, batch, stage, batch_idx)
        return self._frame_outputs(batch, losses.mean(), crit, stage, batch_idx, batch["Flow"].shape[0])

    def _frame_outputs(self, batch: dict, loss: Tensor, crit: dict, stage: str, batch_idx: int,
                       batch_size: int) -> dict:
        """The step's outputs from the per-frame batch (``Pred`` (B, L, I, J) in it) and per-frame
        ``crit`` (``losses``, ``coherence_losses``, ``entropies`` (B,), ``theta``); logs them."""
        with torch.no_grad():
            metrics = {"masks_usages": masks_usages(batch["Pred"])} if stage == "train" else self.frame_metrics(batch)
        B = batch["Flow"].shape[0]
        out = {"loss": loss, "losses": crit["losses"].detach(),
               "coherence_losses": crit["coherence_losses"].detach(), "entropies": crit["entropies"].detach(),
               "theta": crit["theta"], "Pred": batch["Pred"].detach(),
               "masks_usages": metrics["masks_usages"], "index": batch.get("Index"),
               "file_name": list(batch.get("FlowPath") or [f"{stage}_{batch_idx}_{i}" for i in range(B)])}
        if "PredMask" in batch:
            out["PredMask"] = batch["PredMask"]
        if "jaccs" in metrics:
            out["jaccs"] = metrics["jaccs"]
        self.log_step(out, stage, batch_size)
        if "temporal_losses" in crit:
            self.log(f"{stage}/temporal", crit["temporal_losses"].mean(), on_step=False, on_epoch=True,
                     batch_size=batch_size, sync_dist=stage != "train")
        return out

    def _clip_step(self, batch: dict, stage: str, batch_idx: int) -> dict:
        """The step of a temporal model (``clip_length`` T > 1), its outputs per frame as
        :meth:`_step`'s, so that rows, metrics and per-frame files are the frame model's.

        A clip batch (``Flow`` (B, 2, T, I, J), ``csvflowdatamodule/clips.py``) is predicted and its
        loss computed per clip (``loss``: their mean, with its graph), then the batch becomes, in place,
        the batch of its B·T frames (``Models.temporal.clips_as_frames``: ``Index`` each frame's CSV
        row, ``FlowPath`` its path): every output is per frame. A frame batch in which each frame
        brings its clip (``ClipFlow`` (B, 2, T, I, J) and ``ClipFrame`` (B,), the frame's place in it:
        ``evaluationmodule/clip_frames.py``, what ``model_eval.py`` serves) gets frame ``ClipFrame`` of
        its clip's prediction and loss terms.
        """
        from Models.temporal import CLIP_VOLUMES, clips_as_frames, frame_of_clip, per_frame

        T = int(self.clip_length)
        at = batch.get("ClipFrame")
        if at is not None:
            at = torch.as_tensor(at, dtype=torch.long)
            clips = {name: batch["Clip" + name] for name in CLIP_VOLUMES if "Clip" + name in batch}
            names = list(batch.get("FlowPath") or [])
        else:
            clips = batch
            names = [f"{p[0]} … {p[-1]}" for p in batch.get("FlowPath") or []]
        clips = self.prediction(clips)
        crit = self.Criterion(clips, with_parametric_flow=False)
        self.check_finite(crit["losses"], {"FlowPath": names} if names else {}, stage, batch_idx)
        n_clips = int(crit["losses"].shape[0])
        if at is not None:
            batch["Pred"] = frame_of_clip(clips["Pred"], at)
        else:
            clips_as_frames(batch, T)
        frames = {"losses": per_frame(crit["frame_losses"], at),
                  "coherence_losses": per_frame(crit["frame_coherence"], at),
                  "entropies": per_frame(crit["frame_entropies"], at),
                  "theta": per_frame(crit["frame_theta"], at), "temporal_losses": crit["temporal_losses"]}
        return self._frame_outputs(batch, crit["losses"].mean(), frames, stage, batch_idx, n_clips)

    def log_step(self, out: dict, stage: str, batch_size: int) -> None:
        """``{stage}/loss``, ``/coherence``, ``/entropy``, ``/jacc`` (with ground truth) and, in
        validation, ``epoch_val_loss`` (what the best checkpoint is chosen by)."""
        on_step = stage == "train"
        sync = stage != "train"
        kw = dict(on_epoch=True, batch_size=batch_size, sync_dist=sync)
        self.log(f"{stage}/loss", out["loss"], on_step=on_step, prog_bar=True, **kw)
        self.log(f"{stage}/coherence", out["coherence_losses"].mean(), on_step=False, **kw)
        self.log(f"{stage}/entropy", out["entropies"].mean(), on_step=False, **kw)
        if stage == "val":
            self.log("epoch_val_loss", out["loss"], on_step=False, on_epoch=True, batch_size=batch_size,
                     sync_dist=True)
        if "jaccs" in out:
            self.log(f"{stage}/jacc", out["jaccs"].float().mean(), on_step=False, prog_bar=stage != "train", **kw)

    def check_finite(self, losses: Tensor, batch: dict, stage: str, batch_idx: int) -> None:
        """Stop the run on a NaN or infinite loss (B,), naming the frames: one such step would turn
        every weight into NaN, and every later loss, mask and J with it. (Bad flow files are
        already set aside by the loader, so what remains is divergence, e.g. too high a rate.)"""
        finite = torch.isfinite(losses.detach())
        if bool(finite.all()):  # one host sync per step, the price of never training on NaN
            return
        names = list(batch.get("FlowPath") or [f"sample {i}" for i in range(len(losses))])
        values = losses.detach().float().cpu().tolist()
        bad = [f"{names[i]} ({values[i]})" for i in range(len(names)) if not bool(finite[i])]
        raise NonFiniteLossError(
            f"non-finite {stage} loss at epoch {int(self.current_epoch)}, batch {batch_idx}: "
            f"{', '.join(bad[:5])}{f' and {len(bad) - 5} more' if len(bad) > 5 else ''}; stopped. "
            "The last completed epoch is in last.ckpt; lower --optim.lr, or check these flows")

    def training_step(self, batch: dict, batch_idx: int):
        return self._step(batch, "train", batch_idx)

    def validation_step(self, batch: dict, batch_idx: int):
        return self._step(batch, "val", batch_idx)

    def test_step(self, batch: dict, batch_idx: int):
        """The step's outputs over the batch's own entries (``Flow``, ``Image``, ``GtMask``, paths),
        for callbacks that write per-frame files; None when every sample was skipped."""
        out = self._step(batch, "test", batch_idx)
        return None if out is None else {**batch, **out}


class LitSegmentationModel(SegmentationSteps, pl.LightningModule):
    """Network (``backbone_model`` U-Net + ``head_model``) and the training loop plumbing.

    Subclasses define ``Criterion(batch)``. Hyperparameters are the command-line names of the
    authors' code (dotted ones included, e.g. ``'unet.num_layers'``), defined with their defaults
    in ``emseg/core/hparams.py`` (the groups named by each class's ``HPARAM_GROUPS``); unknown names (a
    Trainer or data flag an older checkpoint stored) are kept in ``hparams`` but otherwise ignored.
    """

    #: the groups of ``emseg/core/hparams.py`` whose settings this class reads (subclasses add theirs)
    HPARAM_GROUPS: tuple[type, ...] = (H.NetworkHparams, H.UNetHparams, H.OptimHparams, H.InputHparams)
    #: settings of ``H.DataHparams`` that are also the model's (stored in its checkpoints): the clip length
    #: T it reads (> 1: the temporal model)
    DATA_HPARAMS: tuple[str, ...] = ("clip_length",)
    has_network = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        defaults = self.all_hparam_defaults()
        unknown = sorted(k for k in kwargs if k not in defaults)
        if unknown:
            logger.debug("%s ignores hyperparameters it does not use: %s", type(self).__name__, unknown)
        hp = {**defaults, **kwargs}
        if hp.get("inner_normalisation") is None:
            hp["inner_normalisation"] = "None"
        hp["img_size"] = [int(s) for s in hp["img_size"]]
        if isinstance(hp["inputs"], str):
            hp["inputs"] = [hp["inputs"]]
        self.save_hyperparameters(hp)
        self.L = int(hp["nAffineMasks"])
        #: frames per sample: > 1 is the temporal model (Models/Backbones/temporal.py), 1 the frame model
        self.clip_length = int(hp["clip_length"])
        if self.clip_length < 1:
            raise ValueError(f"--clip_length must be >= 1, got {self.clip_length}")
        if self.has_network:
            from Models.Backbones.temporal import network_from_hparams

            self.backbone_model, self.head_model = network_from_hparams(hp)

    @classmethod
    def all_hparam_defaults(cls) -> dict[str, Any]:
        """name → default of every hyperparameter this class reads (read from ``emseg/core/hparams.py``
        at each call)."""
        out = H.defaults(*cls.all_hparam_groups())
        # the data settings the network is built for (clip_length: T > 1 builds the temporal model)
        out.update({key: H.default(key, H.DataHparams) for key in cls.DATA_HPARAMS})
        for klass in reversed(cls.__mro__):
            out.update(vars(klass).get("HPARAM_DEFAULTS", {}))  # a subclass's own, outside utils/hparams
        return out

    @classmethod
    def all_hparam_groups(cls) -> tuple[type, ...]:
        """The ``emseg/core/hparams.py`` groups of this class and its bases, base first."""
        out: list[type] = []
        for klass in reversed(cls.__mro__):
            out += [g for g in vars(klass).get("HPARAM_GROUPS", ()) if g not in out]
        return tuple(out)

    @classmethod
    def own_hparams(cls, config: dict[str, Any]) -> dict[str, Any]:
        """The entries of a run's ``config`` that are this model's hyperparameters (not Trainer or data flags)."""
        names = cls.all_hparam_defaults()
        return {k: v for k, v in config.items() if k in names}

    # ----------------------------------------------------------------------------------------
    # Command line
    # ----------------------------------------------------------------------------------------
    @staticmethod
    def add_specific_args(parent_parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """Network and optimiser flags, with the authors' names (defaults: ``emseg/core/hparams.py``)."""
        g = parent_parser.add_argument_group("network")
        H.add_arguments(g, H.NetworkHparams, exclude=["inputs"])
        UNetAbstract.add_specific_args(parent_parser, g)
        H.add_arguments(g, H.NetworkHparams, only=["inputs"])
        H.add_arguments(g, H.OptimHparams)
        return parent_parser

    # ----------------------------------------------------------------------------------------
    # Checkpoints
    # ----------------------------------------------------------------------------------------
    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | os.PathLike, map_location: Any = "cpu",
                             hparams_file: Any = None, strict: bool | None = True,
                             weights_only: bool | None = None, trust_checkpoint: bool = False,
                             **kwargs: Any):
        """Rebuild the model from a checkpoint's hyperparameters and load its weights.

        Reading is weights-only (no code runs), with the allow-list of ``Models.checkpoint_io`` that
        admits the authors' PL 1.2 files. ``weights_only=False`` (or ``trust_checkpoint=True``) is
        the explicit opt-in for files that reference other Python objects (full unpickling).
        ``kwargs`` override stored hyperparameters.
        """
        if hparams_file is not None:
            raise NotImplementedError("hparams_file is not supported: hyperparameters live in the checkpoint")
        trust = trust_checkpoint or weights_only is False
        ckpt = read_checkpoint(checkpoint_path, map_location=map_location, trust=trust)
        return cls.from_checkpoint_dict(ckpt, strict=True if strict is None else strict, source=str(checkpoint_path),
                                        **kwargs)

    @classmethod
    def from_checkpoint_dict(cls, ckpt: dict, strict: bool = True, source: str = "checkpoint", **overrides: Any):
        sd = ckpt["state_dict"]
        prefixes = ("backbone_model.", "head_model.") if cls.has_network else ()
        if prefixes and not any(k.startswith(prefixes) for k in sd):
            raise CheckpointError(
                f"{source} is a checkpoint of another model: its weights have none of the keys "
                f"{cls.__name__} expects (first keys: {list(sd)[:4]})")
        hp = dict(ckpt.get("hyper_parameters") or {})
        hp.update(overrides)
        model = cls(**hp)
        try:
            missing, unexpected = model.load_state_dict(sd, strict=strict)
        except RuntimeError as err:
            raise CheckpointError(f"{source} does not fit {cls.__name__} built from its own hyperparameters: "
                                  f"{str(err)[:600]}") from None
        if missing or unexpected:
            logger.warning("loaded %s non-strictly: missing %s, unexpected %s", source, missing, unexpected)
        return model

    # RNG states travel with the checkpoint (as plain data, so it still loads weights-only), so a
    # resumed run draws the same augmentations as an uninterrupted one would from that point.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng_states"] = collect_rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "rng_states" in checkpoint:
            restore_rng_states(checkpoint["rng_states"])

    # ----------------------------------------------------------------------------------------
    # Forward
    # ----------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Network input (B, C, I, J) → pred (B, L, I, J), softmax over L; the temporal model's
        (``clip_length`` T > 1): (B, C·T, I, J) (stack2d) or (B, C, T, I, J) (unet3d) → (B, L, T, I, J)."""
        return self.head_model(self.backbone_model(x))

    def prediction(self, batch: dict) -> dict:
        """Add ``'Pred'`` (B, L, I, J), softmax over L, to the batch (which must hold ``--inputs``); the
        temporal model's: (B, L, T, I, J) from a clip batch (``Flow`` (B, 2, T, I, J))."""
        if not isinstance(batch, dict):
            raise TypeError(f"prediction expects a batch dict such as {{'Flow': flow}}, got {type(batch).__name__}")
        x = self.backbone_model.prepare_input(batch)
        batch["Pred"] = self(x.to(self.device))
        return batch

    # ----------------------------------------------------------------------------------------
    # Training plumbing
    # ----------------------------------------------------------------------------------------
    def configure_optimizers(self):
        name = self.hparams["optim.name"]
        kw = dict(lr=float(self.hparams["optim.lr"]), weight_decay=float(self.hparams["optim.weight_decay"]))
        if name == "Adam":
            opt = torch.optim.Adam(self.parameters(), **kw)
        elif name == "RMSprop":
            opt = torch.optim.RMSprop(self.parameters(), **kw)
        else:
            raise ValueError(f"--optim.name must be 'Adam' or 'RMSprop', got {name!r}")
        schedule = self.hparams.get("optim.schedule", "constant")
        if schedule == "constant":
            return opt
        if schedule != "cosine":
            raise ValueError(f"--optim.schedule must be 'constant' or 'cosine', got {schedule!r}")
        # Sized from max_epochs; a run cut short by --max_time simply ends before lr reaches zero.
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total < 1:
            raise ValueError("--optim.schedule cosine needs a finite --max_epochs (or max_steps)")
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def Criterion(self, batch: dict, with_parametric_flow: bool = True) -> dict:  # noqa: N802 (authors' name)
        raise NotImplementedError

    def frame_metrics(self, batch: dict) -> dict:
        raise NotImplementedError


class LitPredictor(SegmentationSteps, pl.LightningModule):
    """A plain predictor (e.g. ``ClassicalEM``: ``prediction``, ``Criterion``, ``frame_metrics``,
    ``hparams``, no weights to train) as a LightningModule that validates and tests with the same
    step as :class:`LitSegmentationModel`, so ``trainer.test`` and its callbacks evaluate it."""

    def __init__(self, predictor: nn.Module) -> None:
        super().__init__()
        self.predictor = predictor
        self.save_hyperparameters(dict(predictor.hparams))

    def prediction(self, batch: dict) -> dict:
        return self.predictor.prediction(batch)

    def Criterion(self, batch: dict, with_parametric_flow: bool = True) -> dict:  # noqa: N802 (authors' name)
        return self.predictor.Criterion(batch, with_parametric_flow=with_parametric_flow)

    def frame_metrics(self, batch: dict) -> dict:
        return self.predictor.frame_metrics(batch)

    def training_step(self, batch: dict, batch_idx: int):
        raise RuntimeError(f"{type(self.predictor).__name__} has no weights to train; evaluate it "
                           "(model_eval.py --model ClassicalEM)")

    def configure_optimizers(self):
        return None
