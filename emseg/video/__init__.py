"""The video stages of ``segment.py``: flow confidence, temporal consistency, motion significance,
test-time adaptation. A building block beside ``Models``, ``csvflowdatamodule`` and ``evaluationmodule``:
it imports ``emseg.core`` and them, never ``emseg.app``.
"""
