"""The authors' ``utils`` modules: ``Callbacks`` (results and figure callbacks), ``evaluations``
(Jaccard) and ``distance_metrics``.

The project's own modules that used to live here moved to ``emseg.core``, ``emseg.video`` and
``emseg.app`` (CHANGELOG 1.1.0); each old name (``utils.coherence_math``, ``utils.segmentation``, …)
still imports, as the moved module itself, for one more release.
"""
