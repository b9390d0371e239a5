"""From L soft masks to one binary foreground: the authors' path to ``emseg.core.binarisation``.

The rules themselves live in the core (``emseg/core/masks.py``, ``emseg/core/significance.py``),
because the model, the evaluation and the video path all binarise.
"""

from emseg.core.binarisation import BINARY_METHODS, Binariser

__all__ = ["BINARY_METHODS", "Binariser", "BinarisationModule"]

#: the authors' name for it (their scripts and snippets import it)
BinarisationModule = Binariser
