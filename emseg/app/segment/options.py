"""The settings of the segmentation pipeline (:class:`SegmentOptions`), with their defaults from
``emseg/core/hparams.py`` (segment.py's flags, ``SEGMENT_GROUPS``).

No torch here: segment.py reads it to parse its command line before anything heavy is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from emseg.core import hparams as H

#: hyperparameter recording the width frames were downscaled to before the flow, in training
FLOW_WIDTH_HPARAM = "flow_width"
FLOW_SUFFIXES = (".flo", ".npy")
#: ``--gap``'s default for a video and for flow files (segment.py's ``--gap`` left out), chosen on the dev
#: split of the video benchmark: a video's flow over the gap is estimated directly, flow files' composed
#: from consecutive flows, whose estimator errors add up with the gap (docs/METHOD.md, "Gap")
VIDEO_GAP = 4
FLOWS_GAP = 2


def default_gap(video: bool) -> int:
    """``--gap``'s default: :data:`VIDEO_GAP` for a video, :data:`FLOWS_GAP` for flow files."""
    return VIDEO_GAP if video else FLOWS_GAP


def _default(key: str):
    return H.default(key, *H.SEGMENT_GROUPS)


@dataclass
class SegmentOptions:
    """Every setting of the pipeline (``emseg.app.segment``'s docstring), with its default."""

    batch_size: int = _default("batch_size")
    temporal: bool = not _default("no_temporal")    #: stage 3
    #: frames the network and the significance test judge motion over; a video's default (``segment_flows``
    #: without options, and segment.py for flow files without ``--gap``, take :data:`FLOWS_GAP`)
    gap: int = VIDEO_GAP
    refine: bool = not _default("no_refine")        #: edge-aware upsampling by the frame (video)
    steady: bool = not _default("no_steady")        #: stage 5: masks binarised with their neighbours'
    fusion_weight: float = _default("fusion_weight")  #: a neighbour's weight (× its confidence) against the frame's 1
    min_motion: float = _default("min_motion")      #: stage 4; 0 turns it off
    track_frames: int = _default("track_frames")  #: stage 4 over tracks; 1: each frame alone
    overlays: bool = False   #: --overlays' default (None) for a video; flow files turn it on
    save_proba: bool = False  #: likewise
    animation: bool = not _default("no_animation")
    # video only
    max_width: int | None = _default("max_width")   #: None: the model's flow_width (else the frame's own width)
    flow_method: str = _default("flow_method")
    dis_preset: str = _default("dis_preset")
    dis_finest_scale: int = 0
    dis_variational: bool = True
    save_flows: bool = _default("save_flows")
    allow_partial: bool = _default("allow_partial")
    adapt_steps: int = _default("adapt")
    adapt_lr: float = _default("adapt_lr")
    save_adapted: str | None = _default("save_adapted")
    backend: str | None = _default("backend")       #: None: the fastest exact one installed (Models.backends)
    keep_export: bool = not _default("no_export_cache")  #: keep the exported network in the cache for the next run
    precision: str = _default("precision")
    overwrite: bool = _default("overwrite")         #: remove an earlier run in --out (else moved aside)
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        """ValueError naming the flag of the first setting that cannot work."""
        from emseg.core.significance import check_min_motion  # torch: only once a run starts

        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {self.batch_size}")
        _in_range("gap", self.gap)
        _in_range("track_frames", self.track_frames)
        check_min_motion(self.min_motion, "--min_motion")
        _finite_at_least(self.fusion_weight, 0, "--fusion_weight")
        if self.max_width is not None and self.max_width < 8:
            raise ValueError(f"--max_width must be at least 8 pixels, got {self.max_width}")
        if self.dis_preset not in H.DIS_PRESETS:
            raise ValueError(f"--dis_preset must be one of {list(H.DIS_PRESETS)}, got {self.dis_preset!r}")
        if self.adapt_steps < 0:
            raise ValueError(f"--adapt must be >= 0 steps, got {self.adapt_steps}")
        if self.adapt_steps > 0:
            _finite_at_least(self.adapt_lr, 0, "--adapt_lr", open_=True)
        if self.backend not in (None, *H.INFERENCE_BACKENDS):
            raise ValueError(f"--backend must be one of {list(H.INFERENCE_BACKENDS)}, got {self.backend!r}")
        if self.precision not in H.INFERENCE_PRECISIONS:
            raise ValueError(f"--precision must be one of {list(H.INFERENCE_PRECISIONS)}, got {self.precision!r}")


def _in_range(key: str, value: float) -> None:
    """``value`` checked by the range its flag declares in ``emseg/core/hparams.py`` (one bound, not a copy)."""
    spec = H.spec_map(*H.SEGMENT_GROUPS)[key]
    try:
        spec.meta["parse"](value)
    except ValueError as err:
        raise ValueError(f"{spec.flag} {err}") from None


def _finite_at_least(value: float, low: float, flag: str, open_: bool = False) -> None:
    try:
        H.Bounded(float, low=low, low_open=open_)(value)
    except ValueError as err:
        raise ValueError(f"{flag} {err}") from None
