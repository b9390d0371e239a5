"""The bottom layer: the method's math, flow files, settings, safe writes, figures.

Nothing here imports a project module outside ``emseg.core`` (``tests/test_layers.py`` checks it).
"""
