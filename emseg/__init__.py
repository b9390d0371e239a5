"""The project's own package, in three layers (docs/ARCHITECTURE.md):

- ``emseg.core``: the method's math (``coherence_math``), flow files (``flow_io``), every setting and its
  default (``hparams``), safe writes (``atomic_io``), figures, library log filters;
- ``emseg.video``: the video stages of ``segment.py`` (confidence, temporal consistency, motion
  significance, test-time adaptation), beside the authors' ``Models``, ``csvflowdatamodule`` and
  ``evaluationmodule``;
- ``emseg.app``: the wiring behind ``model_train.py``, ``model_eval.py`` and ``segment.py``, and the
  run's results files.

A module imports only from its own layer or below (``tests/test_layers.py``). This file is also the one
definition of the version: ``pyproject.toml`` reads ``__version__`` (``[tool.setuptools.dynamic]``);
CHANGELOG.md and CITATION.cff name the same number (``tests/test_packaging.py`` checks that they agree).
"""

__version__ = "1.1.0"
