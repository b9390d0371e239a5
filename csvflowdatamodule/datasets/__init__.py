"""Benchmarks on disk → flows, binary ground truth and DataSplit CSVs.

``python -m csvflowdatamodule.datasets prepare NAME --root DIR`` (NAME: ``davis2016``, ``davis2017``,
``segtrackv2``, ``fbms59``) reads the dataset in its published folder layout under ``DIR``
(:mod:`csvflowdatamodule.datasets.layouts`), computes a flow for every frame it needs with
``extract_flow``'s estimators, merges the ground truth into one binary foreground where the benchmark
defines it so, and writes ``DIR/DataSplit/{NAME}_{train,val,test}.csv`` with paths relative to ``DIR``
(:mod:`csvflowdatamodule.datasets.prepare`). DAVIS flows go where the authors' DataSplits expect
them: ``DAVIS/OpticalFlow020321/480p/<seq>/<k>.flo`` and ``<k>.flo.png``.
"""

from csvflowdatamodule.datasets.layouts import DATASETS, FBMS_SETS, Layout, LayoutError
from csvflowdatamodule.datasets.prepare import PreparationMismatchError, merge_gt, prepare

__all__ = ["DATASETS", "FBMS_SETS", "Layout", "LayoutError", "PreparationMismatchError", "merge_gt", "prepare"]
