"""Every setting of a run, defined once: name, type, default and help.

Each group is a dataclass whose fields are the settings; a field's metadata holds its key (the
name stored in hyperparameters and checkpoints, the authors' spelling, dotted ones included, e.g.
``'unet.num_layers'``), its extra flag spellings (``-L``), its help and, where the value is a
choice, the choices. Everything else derives from these definitions:

- the command-line flags (:func:`add_arguments`; ``--KEY`` is always a spelling of the flag),
- the model classes' defaults (``LitSegmentationModel.all_hparam_defaults``, from their
  ``HPARAM_GROUPS``), ``UNetAbstract.DEFAULTS``, the ``CsvDataModule`` and ``synthetic`` defaults,
- the checks of a replayed configuration (:func:`check_config`).

Groups: the model's own (:class:`NetworkHparams`, :class:`UNetHparams`, :class:`OptimHparams`,
:class:`InputHparams`, :class:`LossHparams`, :class:`ClassicalEMHparams`) are what a checkpoint
stores; the run's (:class:`DataHparams`, :class:`TrainerHparams`, :class:`FitHparams`,
:class:`RunHparams`) are recorded in ``hparams.json`` with them.

Imports nothing of the project but ``emseg.core.method_names`` (for the choice lists; no torch), so that every
layer may read it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any

from emseg.core import method_names as cm  # the choice lists, without torch (coherence_math re-exports them)


class ConfigError(ValueError):
    """A setting that cannot work (a flag, or a key of a configuration file); the message names it."""


# Choice lists of settings whose home is a module above this one; tests/test_hparams.py checks they
# equal the lists those modules accept (Backbone.BACKBONES, unet.NORMALISATIONS, ...).
BACKBONES: tuple[str, ...] = ("unet", "fake")
NORMALISATIONS: tuple[str, ...] = ("InstanceNorm", "BatchNorm", "None")
INPUT_TYPES: tuple[str, ...] = ("Flow", "Image", "FlowRGB")
BINARY_METHODS: tuple[str, ...] = ("exceptbiggest", "fair")
FLOW_NORMALISATIONS: tuple[str, ...] = ("none", "median", "mean", "max", "znorm")
FLOW_AUGMENTATIONS: tuple[str, ...] = ("none",) + tuple(
    fam + strength for fam in ("globalmotion", "globalmotionfullquad") for strength in ("light", "medium", "strong"))
FLOW_NOISE_TARGETS: tuple[str, ...] = ("noisy", "clean")
#: csvflowdatamodule.extract_flow.DIS_PRESETS (keys)
DIS_PRESETS: tuple[str, ...] = ("ultrafast", "fast", "medium")
#: what runs segment.py's network on the CPU, and at which precision: defined here, read by Models/backends.py
INFERENCE_BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "openvino")
INFERENCE_PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
#: the temporal networks (``--clip_length`` > 1): Models/Backbones/temporal.TEMPORAL_BACKBONES
TEMPORAL_BACKBONES: tuple[str, ...] = ("stack2d", "unet3d")
#: how --init_ckpt's frame model starts a stack2d temporal one (Models/temporal.inflate_frame_weights)
INFLATIONS: tuple[str, ...] = ("mean", "centre")


def int_or_float(v: str) -> int | float:
    """``'2'`` → 2 (a count of batches), ``'0.5'`` → 0.5 (a fraction); finite and >= 0."""
    f = float(v)
    if not math.isfinite(f) or f < 0:
        raise ValueError(f"expected a count or a fraction >= 0, got {v!r}")
    return int(f) if f.is_integer() and "." not in str(v) else f


def devices(v: str) -> str | int | list[int]:
    """``auto``, a count (``2``) or ids (``0,1``)."""
    if v == "auto":
        return v
    if "," in v:
        return [int(x) for x in v.split(",") if x != ""]
    return int(v)


class Bounded:
    """A number's parser with its range: ``Bounded(float, low=0)`` takes finite floats >= 0 (NaN and
    infinities refused). Raises ValueError with a message that the flag's name completes
    (:func:`add_arguments` turns it into argparse's one-line error ``--NAME must be …``)."""

    def __init__(self, kind: type, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> None:
        self.kind, self.low, self.high, self.low_open = kind, low, high, low_open

    def _key(self) -> tuple:
        return (self.kind, self.low, self.high, self.low_open)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bounded) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Bounded({self.kind.__name__}, low={self.low}, high={self.high}, low_open={self.low_open})"

    def __call__(self, text: Any) -> Any:
        what = "an integer" if self.kind is int else "a number"
        try:
            v = self.kind(text)
        except (TypeError, ValueError):
            raise ValueError(f"must be {what}, got {text!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"must be a finite number, got {text!r}")
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            raise ValueError(f"must be {'>' if self.low_open else '>='} {self.low:g}, got {v:g}")
        if self.high is not None and v > self.high:
            raise ValueError(f"must be <= {self.high:g}, got {v:g}")
        return v


def hp(default: Any, help: str, *, key: str | None = None, flags: Iterable[str] = (),
       choices: Iterable[Any] | None = None, nargs: int | str | None = None, metavar: Any = None,
       parse: Callable[[str], Any] | None = None, default_help: str | None = None, const: Any = None,
       required: bool = False) -> Any:
    """A setting: ``default``, ``help``; ``key`` when it differs from the field's name (dotted
    names), extra ``flags`` (``-L``), ``choices``, ``nargs`` of a list (or ``'?'`` with ``const``,
    the value of the bare flag), ``parse`` (the string → value conversion, when not the type itself;
    a :class:`Bounded` also checks the range), ``default_help`` (the default in words), ``required``.
    A ``bool | None`` setting is a ``--KEY/--no-KEY`` pair (None: decided later)."""
    meta = {"help": help, "key": key, "flags": tuple(flags), "choices": None if choices is None else tuple(choices),
            "nargs": nargs, "metavar": metavar, "parse": parse, "default_help": default_help, "const": const,
            "required": required}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# ------------------------------------------------------------------------------------------------
# The model's own hyperparameters (stored in its checkpoints)
# ------------------------------------------------------------------------------------------------
@dataclass
class NetworkHparams:
    """The network around the U-Net: masks, backbone, inputs."""

    nAffineMasks: int = hp(2, "number of masks L", flags=["-L"], parse=Bounded(int, low=1))  # noqa: N815 (the authors' name)
    backbone: str = hp("unet", "unet, or fake: no backbone weights (the input channels repeated), only the head "
                       "learns", flags=["-bb"], choices=BACKBONES)
    features_backbone: int = hp(32, "channels of the backbone's output (the head's input)", parse=Bounded(int, low=1))
    inputs: list[str] = hp(["Flow"], "network inputs, concatenated on channels", nargs="+", choices=INPUT_TYPES)
    temporal_backbone: str = hp("stack2d", "the temporal network, built when --clip_length > 1 (a clip of T flows in, "
                                "T frames of L masks out): stack2d, the U-Net over the T inputs stacked on channels "
                                "(2·T in, L·T out; cheap), or unet3d, a 3-D U-Net (Conv3d; pooling in space only)",
                                choices=TEMPORAL_BACKBONES)


@dataclass
class UNetHparams:
    """The U-Net (``Models/Backbones/unet.UNetAbstract`` owns these flags)."""

    unet_num_layers: int = hp(7, "U-Net levels", key="unet.num_layers", parse=Bounded(int, low=1))
    unet_features_start: int = hp(64, "features of the first U-Net level", key="unet.features_start",
                                 parse=Bounded(int, low=1))
    inner_normalisation: str = hp("InstanceNorm", "normalisation inside the U-Net's convolutions", flags=["-inm"],
                                  choices=NORMALISATIONS)
    train_bn: bool = hp(False, "track running statistics in the norms")
    bilinear: bool = hp(False, "bilinear upsampling instead of transposed conv")
    padding_mode: str = hp("reflect", "padding of the convolutions", choices=("reflect", "zeros"))


@dataclass
class OptimHparams:
    """The optimiser and its schedule."""

    optim_name: str = hp("Adam", "optimiser", key="optim.name", choices=("Adam", "RMSprop"))
    optim_lr: float = hp(1e-4, "learning rate", key="optim.lr", parse=Bounded(float, low=0))
    optim_weight_decay: float = hp(0.0, "weight decay", key="optim.weight_decay", parse=Bounded(float, low=0))
    optim_schedule: str = hp("constant", "learning rate over the run: constant (the authors'), or cosine decay to "
                             "zero over max_epochs, stepped every batch", key="optim.schedule",
                             choices=("constant", "cosine"))


@dataclass
class InputHparams:
    """What the model's input is: its size, and the frame width its flows were computed at."""

    img_size: list[int] = hp([128, 224], "size the inputs are resized to", flags=["--image_size"], nargs=2,
                             metavar=("H", "W"), parse=Bounded(int, low=1))
    flow_width: int | None = hp(None, "width the frames were downscaled to before their flows were computed "
                                "(extract_flow --max_width); recorded in the checkpoint, so that segment.py --video "
                                "computes flows at the scale the model was trained on", default_help="not recorded",
                                parse=Bounded(int, low=1))


@dataclass
class LossHparams:
    """The coherence loss (``CoherenceNet``)."""

    param_model: str = hp("Quadratic", "parametric motion model fitted to each mask", choices=tuple(cm.FT))
    v_distance: str = hp("l1", "distance between the flow and each mask's parametric flow",
                         choices=cm.V_DISTANCES)
    theta_method: str = hp("IRLS", "M-step solver: IRLS (robust, fast), OLS (weighted least squares), Optim (the "
                           "original's L-BFGS, slow)", choices=cm.THETA_METHODS)
    entropy_weight: float = hp(0.01, "weight of the entropy term subtracted from the coherence loss",
                               parse=Bounded(float))
    binary_method: str = hp("exceptbiggest", "turning L masks into one foreground mask", choices=BINARY_METHODS)
    st_param_model: str = hp("QuadraticST1", "(--clip_length > 1) space-time motion model fitted to each mask over the "
                             "clip (docs/METHOD.md §4)", choices=tuple(cm.ST_MODELS))
    temporal_weight: float = hp(0.0, "(--clip_length > 1) weight of the temporal term: the flow-gated mean "
                                "|m_t - m_t+1| of the masks of consecutive frames (docs/METHOD.md §5)",
                                parse=Bounded(float, low=0))
    temporal_sigma: float = hp(1.0, "(--clip_length > 1) the temporal term's gate exp(-|f_t+1 - f_t| / SIGMA), "
                               "in the flow's units (pixels): where the flow changes in time, the masks may too",
                               parse=Bounded(float, low=0, low_open=True))


@dataclass
class ClassicalEMHparams:
    """The non-learned EM baseline."""

    em_iterations: int = hp(20, "ClassicalEM iterations", parse=Bounded(int, low=1))


# ------------------------------------------------------------------------------------------------
# The run's other settings (hparams.json, not the model)
# ------------------------------------------------------------------------------------------------
@dataclass
class DataHparams:
    """The data module (``CsvDataModule``)."""

    batch_size: int = hp(10, "samples per batch", parse=Bounded(int, low=1))
    subsample_train: int = hp(1, "keep every n-th training sample", parse=Bounded(int, low=1))
    clip_length: int = hp(1, "frames per sample: > 1 serves clips of that many consecutive flows of one sequence "
                          "(csvflowdatamodule/clips.py; batches (B, 2, T, H, W)); 1: single frames",
                          parse=Bounded(int, low=1))
    clip_stride: int = hp(1, "frames between the starts of two clips of a sequence (with --clip_length > 1)",
                          parse=Bounded(int, low=1))
    base_dir: str | None = hp(None, "directory the DataSplit paths are relative to",
                              default_help="the current directory")
    data_file: str | None = hp(None, "DataSplit prefix (NAME → NAME_{train,val,test}.csv) or a pattern with '{}'",
                               default_help="the built-in synthetic dataset")
    val_augment: bool = hp(False, "augment the validation flows too")
    flow_normalisation: str = hp("none", "normalisation of every flow (all splits)", choices=FLOW_NORMALISATIONS)
    flow_augmentation: str = hp("none", "global motion added to training flows (paper: globalmotionfullquadlight)",
                                choices=FLOW_AUGMENTATIONS)
    flow_noise: float = hp(0.0, "probability that a training flow gets estimator-like noise blobs, placed in "
                           "low-texture regions when the split has images (0: off)",
                           parse=Bounded(float, low=0, high=1))
    flow_noise_target: str = hp("noisy", "the flow the loss is fitted to under --flow_noise: the noisy one the "
                                "network sees, or the clean one from before the noise", choices=FLOW_NOISE_TARGETS)
    num_workers: int | None = hp(None, "DataLoader workers", default_help="the CPUs available, at most 8",
                                 parse=Bounded(int, low=0))
    strict_data: bool = hp(False, "stop at the first missing or corrupt file instead of skipping the sample")


@dataclass
class TrainerHparams:
    """Lightning Trainer settings shared by training and evaluation."""

    gpus: list[str] | None = hp(None, "GPUs to use: a count (--gpus 2) or ids (--gpus 0 2); sets the GPU "
                                "accelerator", nargs="+", default_help="none")
    accelerator: str = hp("auto", "cpu, gpu, auto …")
    devices: str | int | list[int] = hp("auto", "a count, ids like 0,1, or auto", parse=devices)
    strategy: str = hp("auto", "auto, ddp, ddp_spawn …")
    num_nodes: int = hp(1, "machines taking part", parse=Bounded(int, low=1))
    precision: str = hp("32-true", "32-true, bf16-mixed, 16-mixed …")
    limit_val_batches: int | float = hp(1.0, "validation batches per epoch: a count, or a fraction",
                                        parse=int_or_float)
    limit_test_batches: int | float = hp(1.0, "test batches: a count, or a fraction", parse=int_or_float)
    deterministic: bool = hp(False, "use deterministic algorithms")
    seed: int = hp(123, "seed of every random generator", parse=Bounded(int, low=0))
    logger: str = hp("csv", "where metrics and figures go (wandb runs offline, no account needed)",
                     choices=("csv", "tensorboard", "wandb", "none"))


#: the paper's training length, when --data_file is given and --max_epochs is not
PAPER_MAX_EPOCHS = 100

#: the built-in demo: what a 2-core CPU trains in a few minutes (used when no --data_file is given,
#: for every flag the user did not set)
DEMO_DEFAULTS: dict[str, Any] = {
    "unet.num_layers": 4,
    "unet.features_start": 16,
    "max_epochs": 4,
    "flow_augmentation": "globalmotionfullquadlight",
    "optim.lr": 1e-3,
}


@dataclass
class FitHparams:
    """Trainer settings of training only."""

    max_epochs: int | None = hp(None, "epochs to train (-1: no limit)",
                                default_help=f"{PAPER_MAX_EPOCHS} (the paper's), {DEMO_DEFAULTS['max_epochs']} in "
                                             "the demo", parse=Bounded(int, low=-1))
    max_steps: int = hp(-1, "optimiser steps to train (-1: no limit)", parse=Bounded(int, low=-1))
    max_time: str | None = hp(None, "stop after this wall time, DD:HH:MM:SS (checkpoints kept)",
                              default_help="no limit")
    limit_train_batches: int | float = hp(1.0, "training batches per epoch: a count, or a fraction",
                                          parse=int_or_float)
    check_val_every_n_epoch: int = hp(1, "validate every n epochs", parse=Bounded(int, low=1))
    log_every_n_steps: int = hp(50, "log the training metrics every n steps", parse=Bounded(int, low=1))
    fast_dev_run: int | float = hp(0, "run N batches of train and val to check the setup (nothing saved)",
                                   parse=int_or_float)
    ckpt_path: str | None = hp(None, "resume from a checkpoint; 'last' = PATH_SAVE_MODEL/last.ckpt",
                               default_help="a new run")


@dataclass
class RunHparams:
    """Where a training run goes and what it starts from."""

    path_save_model: str | None = hp(None, "directory for checkpoints, results.csv, logs and hyperparameters",
                                     default_help="runs/DATE-TIME")
    model_type: str = hp("coherence_B", "the authors' name for MethodeB", choices=("coherence_B",))
    init_ckpt: str | None = hp(None, "start from these weights (fine-tuning: fresh optimiser and epoch count; the "
                               "architecture flags must match); unlike --ckpt_path, which resumes a run",
                               default_help="fresh weights")
    trust_checkpoint: bool = hp(False, "allow --init_ckpt to need arbitrary unpickling (the authors' legacy files)")
    inflate: str = hp("mean", "(--init_ckpt a frame model, --clip_length > 1, stack2d) how its first convolution is "
                      "spread over the clip's frames: mean (each frame's weights / T: masks of the clip's mean "
                      "flow) or centre (all on the central frame: the frame model's masks of the central frame)",
                      choices=INFLATIONS)


# ------------------------------------------------------------------------------------------------
# segment.py (emseg/app/segment/): its flags, and the defaults of SegmentOptions
# ------------------------------------------------------------------------------------------------
#: segment.py --adapt without a number: test-time adaptation steps (emseg.video.adaptation.DEFAULT_ADAPT_STEPS;
#: why 5: that module's docstring)
ADAPT_STEPS = 5
#: the bundled checkpoint, relative to the repository (emseg/app/segment/model.py:BUNDLED_CKPT)
BUNDLED_CKPT_NAME = "checkpoints/em_small.ckpt"


@dataclass
class SegmentSourceHparams:
    """What segment.py reads (one of ``--flow``, ``--flows``, ``--video``) and where it writes."""

    flow: str | None = hp(None, "one .flo (or .npy H×W×2) file")
    flows: str | None = hp(None, "a directory of .flo/.npy files (a sequence, in name order)")
    video: str | None = hp(None, "a video file (flow computed with OpenCV)")


@dataclass
class SegmentHparams:
    """segment.py's model, network and run settings."""

    out: str | None = hp(None, "output directory", required=True)
    overwrite: bool = hp(False, "a run into an --out holding an earlier segmentation removes that one's files first "
                         "(default: they are moved aside to OUT.previous-<UTC time>); also lets --save_adapted "
                         "replace an existing file (never the checkpoint being used)")
    ckpt: str | None = hp(None, "checkpoint, or ClassicalEM (the EM baseline)",
                          default_help=f"the bundled {BUNDLED_CKPT_NAME}")
    trust_checkpoint: bool = hp(False, "allow a legacy checkpoint you trust")
    batch_size: int = hp(8, "flows per network batch", parse=Bounded(int, low=1))
    device: str | None = hp(None, "cpu or cuda", default_help="cuda if available")
    backend: str | None = hp(None, "what runs the network on the CPU", choices=INFERENCE_BACKENDS,
                             default_help="the fastest exact one installed")
    precision: str = hp("fp32", "bf16 is an opt-in that is not exact (argmax agreement ≥ 99 %, see bench/README.md)",
                        choices=INFERENCE_PRECISIONS)
    no_export_cache: bool = hp(False, "export the network for onnxruntime/openvino into a temporary folder, "
                               "instead of keeping it for the next run in ~/.cache/em_motion_segmentation/exports "
                               "($XDG_CACHE_HOME)")


@dataclass
class SegmentQualityHparams:
    """The video-quality stages (emseg/app/segment/stages.py)."""

    no_temporal: bool = hp(False, "segment every frame alone (no identity matching, no fusion with the neighbours)")
    # None: the source's own default (emseg/app/segment/options.py: VIDEO_GAP, FLOWS_GAP)
    gap: int | None = hp(None, "judge motion over this many frames: the network and the significance test read the "
                         "flow from frame t to t+GAP (a video: its own, where its forward-backward check holds, "
                         "elsewhere GAP times the flow to t+1; flow files: the GAP consecutive flows composed), so a "
                         "slow mover is seen on GAP times its displacement; 1: consecutive frames",
                         default_help="4 for --video, 2 for flow files", parse=Bounded(int, low=1, high=16))
    no_refine: bool = hp(False, "(--video) plain bilinear upsampling of the probabilities to the frame's size, "
                         "instead of masks that follow the frame's edges (guided-filtered by the frame, "
                         "emseg/video/refine.py)")
    no_steady: bool = hp(False, "binarise every frame's mask alone, instead of with its neighbours (a pixel near "
                         "the decision level keeps its previous label; each label is the majority of the previous, "
                         "this and the next frame's, carried by the flow: emseg/video/steady.py)")
    fusion_weight: float = hp(2.0, "weight of each neighbouring frame (× its flow confidence) against the frame's "
                              "own 1", parse=Bounded(float, low=0))
    # emseg.core.significance.DEFAULT_MIN_MOTION (tests/test_hparams.py checks they agree); checked
    # again by its check_min_motion in SegmentOptions.check
    min_motion: float = hp(2.0, "keep a foreground region only if it departs from the background's fitted motion "
                           "by more than this many times the flow's noise; 0 turns it off",
                           parse=Bounded(float, low=0))
    track_frames: int = hp(3, "judge a foreground region by its track: keep it only if its track appears in at "
                           "least this many of the 7 frames around it and its median score over them passes the "
                           "--min_motion test (emseg/core/tracks.py); 1: each frame alone",
                           parse=Bounded(int, low=1, high=7))
    adapt: int = hp(0, f"(--video) first fine-tune a copy of the model on the video's flows for STEPS steps "
                    f"({ADAPT_STEPS} when given without a number)", nargs="?", const=ADAPT_STEPS, metavar="STEPS",
                    parse=Bounded(int, low=0))
    adapt_lr: float = hp(1e-4, "learning rate of --adapt (Adam)", parse=Bounded(float, low=0, low_open=True))
    save_adapted: str | None = hp(None, "keep the adapted weights (a checkpoint)", metavar="PATH",
                                  default_help="not kept")


@dataclass
class SegmentVideoHparams:
    """How a video's flow is computed."""

    max_width: int | None = hp(None, "downscale frames to this width before the flow", parse=Bounded(int, low=1),
                               default_help="the width the model was trained on, recorded in its checkpoint")
    flow_method: str = hp("dis", "optical flow estimator (OpenCV)", choices=("dis", "farneback"))
    dis_preset: str = hp("fast", "OpenCV DIS preset", choices=DIS_PRESETS)
    allow_partial: bool = hp(False, "accept a video that decodes to fewer frames than its header says")


@dataclass
class SegmentOutputHparams:
    """What segment.py writes besides the masks."""

    overlays: bool | None = hp(None, "{name}_overlay.png per frame", default_help="on for flow files, off for a video")
    save_proba: bool | None = hp(None, "{name}_proba.npy per frame", default_help="on for flow files, off for a video")
    save_flows: bool = hp(False, "(--video) keep the flows, in flows.npz (float16)")
    no_animation: bool = hp(False, "no segmentation.mp4 / segmentation.gif", flags=["--no_gif"])


#: segment.py's groups, in the order of its --help
SEGMENT_GROUPS: tuple[type, ...] = (SegmentSourceHparams, SegmentHparams, SegmentQualityHparams,
                                    SegmentVideoHparams, SegmentOutputHparams)


# ------------------------------------------------------------------------------------------------
# Reading the definitions
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spec:
    """One setting, as its dataclass field defines it."""

    key: str
    attr: str
    type: Any
    field: dataclasses.Field

    @property
    def meta(self) -> Mapping[str, Any]:
        return self.field.metadata

    @property
    def default(self) -> Any:
        f = self.field
        return f.default_factory() if f.default is MISSING else f.default

    @property
    def flag(self) -> str:
        return f"--{self.key}"


def specs(group: type) -> list[Spec]:
    """The settings of one group (a dataclass above), in order."""
    hints = typing.get_type_hints(group)
    return [Spec(f.metadata.get("key") or f.name, f.name, hints[f.name], f) for f in dataclasses.fields(group)]


def spec_map(*groups: type) -> dict[str, Spec]:
    """key → Spec over ``groups``."""
    return {s.key: s for g in groups for s in specs(g)}


def defaults(*groups: type) -> dict[str, Any]:
    """key → default of every setting of ``groups`` (fresh lists)."""
    return {s.key: s.default for g in groups for s in specs(g)}


def default(key: str, *groups: type) -> Any:
    """The default of one setting (searched in ``groups``, or every group)."""
    return spec_map(*(groups or ALL_GROUPS))[key].default


def show_value(value: Any) -> str:
    """A setting's value as it is typed on the command line (``[128, 224]`` → ``128 224``)."""
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


def add_arguments(parser: Any, *groups: type, only: Iterable[str] | None = None,
                  exclude: Iterable[str] = ()) -> Any:
    """Add the flags of ``groups`` (restricted to the keys ``only``, minus ``exclude``) to
    ``parser`` (a parser or an argument group); each flag's help ends with its default."""
    keep = None if only is None else set(only)
    drop = set(exclude)
    for group in groups:
        for s in specs(group):
            if (keep is not None and s.key not in keep) or s.key in drop:
                continue
            parser.add_argument(s.flag, *s.meta["flags"], **_argparse_kwargs(s))
    return parser


def _argparse_kwargs(s: Spec) -> dict[str, Any]:
    m = s.meta
    text = m["help"].replace("%", "%%")
    kw: dict[str, Any] = {"dest": s.key, "default": s.default}
    if m.get("required"):
        kw["required"] = True
    if s.type is bool:
        kw["action"] = "store_true"
        kw["help"] = text
        return kw
    if _union_args(s.type) == (bool, type(None)):  # --KEY / --no-KEY, None when neither is given
        kw["action"] = argparse.BooleanOptionalAction
        kw["help"] = text + (f" (default: {m['default_help']})".replace("%", "%%") if m["default_help"] else "")
        return kw
    if m["default_help"] is not None:
        text += f" (default: {m['default_help']})".replace("%", "%%")
    elif s.default is not None:
        text += f" (default: {show_value(s.default)})".replace("%", "%%")
    kw["help"] = text
    item = _list_item(s.type)
    kw["type"] = m["parse"] or (item if item is not None else _scalar_of(s.type))
    if isinstance(kw["type"], Bounded):
        kw["type"] = flag_type(kw["type"], s.flag)
    if kw["type"] is str:
        del kw["type"]
    if m["nargs"] is not None:
        kw["nargs"] = m["nargs"]
    if m.get("const") is not None:
        kw["const"] = m["const"]
    if m["choices"] is not None:
        kw["choices"] = list(m["choices"])
    if m["metavar"] is not None:
        kw["metavar"] = m["metavar"]
    return kw


class flag_type:  # noqa: N801 - used like a function, argparse's ``type=``
    """``parse`` for argparse: its ValueError becomes the one-line ``FLAG must be …``. Two of them are
    equal when they parse alike (parsers built twice compare equal)."""

    def __init__(self, parse: Bounded, flag: str) -> None:
        self.parse, self.flag = parse, flag
        self.__name__ = parse.kind.__name__  # argparse names the type in some messages

    def __call__(self, text: str) -> Any:
        try:
            return self.parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{self.flag} {err}") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, flag_type) and (self.parse, self.flag) == (other.parse, other.flag)

    def __hash__(self) -> int:
        return hash((self.parse, self.flag))

    def __repr__(self) -> str:
        return f"flag_type({self.parse!r}, {self.flag!r})"


def _union_args(t: Any) -> tuple[Any, ...]:
    if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
        return typing.get_args(t)
    return (t,)


def _list_item(t: Any) -> Any:
    for a in _union_args(t):
        if typing.get_origin(a) is list:
            return typing.get_args(a)[0]
    return None


def _scalar_of(t: Any) -> Any:
    args = [a for a in _union_args(t) if a is not type(None)]
    return args[0] if len(args) == 1 else str


# ------------------------------------------------------------------------------------------------
# Values from files
# ------------------------------------------------------------------------------------------------
def coerce(s: Spec, value: Any) -> Any:
    """``value`` (read from a JSON/YAML file) as setting ``s`` takes it; ValueError if it cannot."""
    if isinstance(value, str) and s.meta["parse"] is not None and not isinstance(s.meta["parse"], Bounded):
        value = s.meta["parse"](value)  # a flag's text form (devices "0,1"); a number must be a number
    out = _as_type(value, s.type)
    if out is _NO:
        raise ValueError(f"expected {_type_name(s.type)}, got {value!r}")
    parse = s.meta["parse"]
    if isinstance(parse, Bounded) or parse is int_or_float:
        # a number read from a file gets the flag's range check too (JSON's NaN and Infinity included)
        check = parse if isinstance(parse, Bounded) else (lambda v: int_or_float(repr(v)))
        for v in (out if isinstance(out, list) else [out]):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                check(v)
    choices = s.meta["choices"]
    if choices is not None:
        bad = [v for v in (out if isinstance(out, list) else [out]) if v not in choices]
        if bad:
            raise ValueError(f"{bad[0]!r} is not one of {list(choices)}")
    n = s.meta["nargs"]
    if isinstance(n, int) and isinstance(out, list) and len(out) != n:
        raise ValueError(f"expected {n} values, got {len(out)}")
    if n == "+" and isinstance(out, list) and not out:
        raise ValueError("expected at least one value")
    return out


_NO = object()


def _as_type(value: Any, t: Any) -> Any:
    for a in _union_args(t):
        if a is type(None):
            if value is None:
                return None
        elif a is bool:
            if isinstance(value, bool):
                return value
        elif a is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif a is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif a is str:
            if isinstance(value, str):
                return value
        elif typing.get_origin(a) is list and isinstance(value, (list, tuple)):
            item = typing.get_args(a)[0]
            out = [_as_type(v, item) for v in value]
            if all(v is not _NO for v in out):
                return out
    return _NO


def _type_name(t: Any) -> str:
    names = []
    for a in _union_args(t):
        names.append("null" if a is type(None) else getattr(a, "__name__", str(a)) if typing.get_origin(a) is None
                     else f"a list of {_type_name(typing.get_args(a)[0])}")
    return " or ".join(names)


#: the largest settings file read (a run's hparams.json is a few kB)
MAX_CONFIG_BYTES = 1 << 20
#: how deep a settings file may nest (settings are flat: a value is a scalar or a short list)
MAX_CONFIG_DEPTH = 8
#: YAML aliases a settings file may use (Lightning's hparams.yaml uses none; a few cost nothing, an
#: "alias bomb" of nested aliases would expand to gigabytes)
MAX_YAML_ALIASES = 32


def _json_depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` in JSON ``text`` (strings skipped), without parsing it."""
    depth = deepest = 0
    in_str = escaped = False
    for ch in text:
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup is not None:
        raise ValueError(f"the key {dup!r} appears more than once")
    return dict(pairs)


def _yaml_load(text: str) -> Any:
    """``yaml.safe_load`` with duplicate keys refused and aliases and nesting bounded (ValueError)."""
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent, index):  # noqa: ANN001 - yaml's signature
            if self.check_event(yaml.AliasEvent):
                BoundedLoader.aliases += 1
                if BoundedLoader.aliases > MAX_YAML_ALIASES:
                    raise ValueError(f"more than {MAX_YAML_ALIASES} YAML aliases")
            self._depth = getattr(self, "_depth", 0) + 1
            try:
                if self._depth > MAX_CONFIG_DEPTH:
                    raise ValueError(f"nested deeper than {MAX_CONFIG_DEPTH} levels")
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

        def construct_mapping(self, node, deep=False):  # noqa: ANN001 - yaml's signature
            if isinstance(node, yaml.MappingNode):
                seen: set[Any] = set()
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep=True)
                    if key in seen:
                        raise ValueError(f"the key {key!r} appears more than once")
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

    BoundedLoader.aliases = 0
    return yaml.load(text, Loader=BoundedLoader)  # noqa: S506 - a SafeLoader subclass


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The settings a run recorded: its ``hparams.json``, or a Lightning ``hparams.yaml``.

    Read safely: at most :data:`MAX_CONFIG_BYTES`, nested at most :data:`MAX_CONFIG_DEPTH` levels, YAML
    through a safe loader with at most :data:`MAX_YAML_ALIASES` aliases; a key given twice is refused
    (JSON and YAML would silently keep the last). Any of these is a one-line ConfigError."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"--config {path}: {size} bytes; a settings file is at most {MAX_CONFIG_BYTES} bytes")
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as err:
        raise ConfigError(f"--config {path}: cannot read it ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"--config {path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    is_yaml = path.endswith((".yaml", ".yml"))
    kind = "YAML" if is_yaml else "JSON"
    try:
        if is_yaml:
            data = _yaml_load(text)
        else:
            if _json_depth(text) > MAX_CONFIG_DEPTH:
                raise ValueError(f"nested deeper than {MAX_CONFIG_DEPTH} levels")
            data = json.loads(text, object_pairs_hook=_unique_pairs)
    except (ValueError, RecursionError) as err:  # yaml.YAMLError is not a ValueError: caught below
        raise ConfigError(f"--config {path}: not valid {kind} "
                          f"({(str(err).splitlines() or [type(err).__name__])[0][:200]})") from None
    except Exception as err:  # noqa: BLE001 - yaml.YAMLError, without importing yaml for JSON files
        if type(err).__module__.split(".")[0] != "yaml":
            raise
        raise ConfigError(f"--config {path}: not valid {kind} "
                          f"({(str(err).splitlines() or [type(err).__name__])[0][:200]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of setting → value, got {type(data).__name__}")
    return data


def check_config(config: Mapping[str, Any], path: str, known: Mapping[str, Spec]) -> dict[str, Any]:
    """``config`` with every value as its setting takes it; an unknown key or a bad value is a
    ConfigError naming the key and the file."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        s = known.get(key)
        if s is None:
            raise ConfigError(f"--config {path}: unknown setting {key!r} (not a flag of this command)")
        try:
            out[key] = coerce(s, value)
        except ValueError as err:
            raise ConfigError(f"--config {path}: {key}: {err}") from None
    return out


#: the model's own groups: what a checkpoint stores
MODEL_GROUPS: tuple[type, ...] = (NetworkHparams, UNetHparams, OptimHparams, InputHparams, LossHparams,
                                  ClassicalEMHparams)
#: every group
ALL_GROUPS: tuple[type, ...] = MODEL_GROUPS + (DataHparams, TrainerHparams, FitHparams, RunHparams)
