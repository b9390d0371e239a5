"""The authors' path to the file loaders and the DataSplit dataset (``csvflowdatamodule.dataset``) and,
resolved on first use, to the LightningDataModule (``csvflowdatamodule.CsvDataModule``), which the
authors kept in this file. ``FilesLoaders().load_file`` is importable from here without Lightning."""

from __future__ import annotations

from typing import Any

from csvflowdatamodule.dataset import *  # noqa: F403
from csvflowdatamodule.dataset import MAX_FLOW_MAGNITUDE, MAX_FLOW_SIDE  # noqa: F401
from csvflowdatamodule.dataset import __all__ as _dataset_names

__all__ = list(_dataset_names)


def __getattr__(name: str) -> Any:
    if name == "CsvDataModule":  # Lightning is a slow import: only for those who ask for the data module
        from csvflowdatamodule.CsvDataModule import CsvDataModule

        return CsvDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
