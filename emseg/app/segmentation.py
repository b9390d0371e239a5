"""The segment.py app's former single module, now the package :mod:`emseg.app.segment` (one job
per module: ``options``, ``source``, ``model``, ``stages``, ``writers``, ``app``, ``cli``).

Every name this module had is re-exported here, so that existing imports (tests, benchmarks, the
notebook, users' scripts) keep working; new code imports the package's modules. Importing this
module loads torch (the stages need it); segment.py itself imports only what each step needs.
"""

from __future__ import annotations

import logging

from csvflowdatamodule.extract_flow import DIS_PRESETS, dis_estimator, make_estimator  # noqa: F401
from emseg.app.segment.app import list_flows, segment_flows, segment_video, video_flows_at_model_size  # noqa: F401
from emseg.app.segment.model import (  # noqa: F401
    BUNDLED_CKPT,
    REPO,
    flow_width_of,
    load_segmenter,
    make_predictor,
    model_device,
    save_adapted,
    torch_threads,
)
from emseg.app.segment.options import FLOW_SUFFIXES, FLOW_WIDTH_HPARAM, SegmentOptions  # noqa: F401
from emseg.app.segment.source import FramePair, StageTimes, VideoError, open_video, threaded, video_pairs  # noqa: F401
from emseg.app.segment.stages import SequenceStages, Step, _conf  # noqa: F401
from emseg.app.segment.stages import pairs_to_steps as _pairs_to_steps  # noqa: F401
from emseg.app.segment.writers import (  # noqa: F401
    _CROSS,
    ANIMATION_WIDTH,
    LOG_EVERY_S,
    PALETTE,
    Writer,
    _png,
    overlay,
)
from emseg.app.segment.writers import Progress as _Progress  # noqa: F401
from emseg.app.segment.writers import write_manifest as _write_manifest  # noqa: F401
from emseg.app.segment.writers import write_skipped as _write_skipped  # noqa: F401
from emseg.core.atomic_io import atomic_write, atomic_write_image  # noqa: F401
from emseg.core.figures import flow_to_rgb  # noqa: F401
from emseg.core.flow_io import read_flow  # noqa: F401
from emseg.core.masks import exceptbiggest_labels, labels_at  # noqa: F401
from emseg.core.significance import DEFAULT_MIN_MOTION, significant_foregrounds, suppress  # noqa: F401
from emseg.video.flow_confidence import forward_backward_confidence, resize_flow  # noqa: F401
from emseg.video.temporal import align_identities, carry, fuse  # noqa: F401
from evaluationmodule.writers import rewrite_rows, write_json, write_npy  # noqa: F401

logger = logging.getLogger(__name__)
