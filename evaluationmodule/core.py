"""The evaluation's shared names and summaries, under their former path: ``evaluationmodule.naming``
(paths, sequences, splits), ``evaluationmodule.summaries`` (statistics, the summary table) and the core's
ground-truth rule ``emseg.core.masks.decode_mask``. The project imports those modules themselves."""

from emseg.core.masks import decode_mask  # noqa: F401
from evaluationmodule.naming import *  # noqa: F403
from evaluationmodule.naming import UP, natural_key  # noqa: F401
from evaluationmodule.summaries import *  # noqa: F403
