"""Distribution metadata of the ``emseg`` package: the one definition of its version.

``pyproject.toml`` reads ``__version__`` from here (``[tool.setuptools.dynamic]``); CHANGELOG.md and
CITATION.cff name the same number (tests/test_packaging.py checks that they agree).
"""

__version__ = "1.0.0"
