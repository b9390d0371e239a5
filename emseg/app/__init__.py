"""The application layer: the wiring behind the command lines (training, evaluation, segmentation)
and the run's results files. Nothing below it imports it; the entry scripts call it.
"""
