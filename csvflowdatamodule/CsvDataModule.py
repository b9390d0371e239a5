"""The Lightning DataModule over a DataSplit (``NAME_train.csv``, ``NAME_val.csv``, ``NAME_test.csv``).

Batches (from :func:`collate_skipping`): ``'Flow'`` (B, 2, H, W), ``'Image'`` (B, 3, H, W),
``'GtMask'`` (B, H, W) int64, ``'FlowRGB'`` (B, 3, H, W) (those requested that the CSV has),
``'{Type}Path'`` lists of B strings, ``'Index'`` (B,) int64 and ``'Skipped'`` a list of
``(index, path, reason)`` for the samples of the batch whose files were bad. A batch whose
every sample was skipped is ``{'Skipped': [...]}`` alone (no ``'Flow'``): the model skips it.

With ``clip_length`` T > 1 the samples are clips of T consecutive flows of one sequence
(``csvflowdatamodule.clips``): ``'Flow'`` (B, 2, T, H, W), ``'Image'`` (B, 3, T, H, W),
``'GtMask'`` (B, T, H, W), ``'FlowPath'``… lists of B lists of T paths, ``'Index'`` (B,) the
clips' numbers, ``'Sequence'`` B names, ``'FrameIndices'`` and ``'RowIndices'`` (B, T) int64.
With T = 1 (the default) the module is the frame module above, unchanged.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from csvflowdatamodule.clips import CsvClipDataset
from csvflowdatamodule.dataset import CsvDataset
from csvflowdatamodule.Transforms import (
    FLOW_AUGMENTATIONS,
    FLOW_NOISE_TARGETS,
    FLOW_NORMALISATIONS,
    TransformsComposer,
)
from emseg.core import hparams as H
from emseg.core.datasplit import STEPS, split_pattern

logger = logging.getLogger(__name__)

# the constructor's defaults are the flags' (emseg/core/hparams.py)
_DATA = H.DataHparams()
_INPUT = H.InputHparams()

STAGE_STEPS: dict[str | None, tuple[str, ...]] = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
}


def default_num_workers() -> int:
    """The CPUs this process may use, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(0, min(8, n))


#: ``--data_file`` → the DataSplit's ``'{}'`` pattern (``emseg.core.datasplit``, the one rule)
resolve_data_path = split_pattern


def collate_skipping(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Collate dataset items, setting skipped samples aside.

    Tensors are stacked, strings kept as lists, ``'Index'`` becomes an int64 tensor (B,), and the
    skipped samples' ``(index, path, reason)`` go to ``'Skipped'`` (always present, maybe empty).
    If every sample was skipped the batch is ``{'Skipped': [...]}`` only.
    """
    skipped = [it["Skipped"] for it in items if "Skipped" in it]
    good = [it for it in items if "Skipped" not in it]
    if not good:
        return {"Skipped": skipped}
    keys = list(good[0].keys())
    for it in good[1:]:
        if set(it.keys()) != set(keys):
            raise ValueError(f"items disagree on their keys: {sorted(keys)} vs {sorted(it.keys())}")
    batch: dict[str, Any] = {}
    for key in keys:
        values = [it[key] for it in good]
        if key == "Index":
            batch[key] = torch.as_tensor(values, dtype=torch.long)
        elif isinstance(values[0], torch.Tensor):
            try:
                batch[key] = torch.stack(values)
            except RuntimeError as exc:
                shapes = sorted({tuple(v.shape) for v in values})
                raise ValueError(
                    f"cannot batch {key!r} tensors of different shapes {shapes}: set img_size"
                ) from exc
        else:
            batch[key] = values
    batch["Skipped"] = skipped
    return batch


class CsvDataModule(pl.LightningDataModule):
    """Train/val/test DataLoaders over a DataSplit.

    Parameters
    ----------
    data_path: the split files as a pattern with ``'{}'`` (→ train, val, test), e.g.
        ``'DataSplit/Exp6_Split_{}.csv'``, or the authors' prefix ``'DataSplit/Exp6_Split'``.
    base_dir: the directory the CSVs' paths are relative to.
    batch_size: samples per batch.
    request: columns to load, e.g. ``('Flow', 'Image', 'GtMask')``.
    img_size: (H, W) every tensor is resized to (None keeps the files' sizes; the batch then
        needs equal sizes).
    subsample_train: keep every n-th training row.
    shuffle_fit: shuffle the training loader.
    num_workers: DataLoader worker processes (persistent when > 0).
    flow_normalisation: none, median, mean, max or znorm (all splits).
    flow_augmentation: none or ``globalmotion*`` / ``globalmotionfullquad*`` (train only,
        val too with ``val_augment``).
    flow_noise: probability that a training flow gets estimator-like noise blobs
        (``Transforms.TrFlowNoise``; train only).
    flow_noise_target: ``'noisy'`` (the loss is fitted to the noisy flow the network sees) or
        ``'clean'`` (to the flow before the noise: training batches then carry ``'LossFlow'``);
        see ``Transforms.TransformsComposer``.
    strict_data: a bad file raises instead of being skipped.
    optional_columns: requested columns a CSV may lack (not loaded then): by default GtMask
        and Image, so unlabelled splits train; pass ``()`` to require every requested column.
    clip_length: T; > 1 serves clips of T consecutive flows of one sequence
        (:class:`csvflowdatamodule.clips.CsvClipDataset`, every split; ``subsample_train`` then
        keeps every n-th training clip); 1 serves single frames (:class:`CsvDataset`).
    clip_stride: frames between the starts of two clips of a sequence (only with T > 1).
    """

    def __init__(self, data_path: str, base_dir: str, batch_size: int = _DATA.batch_size,
                 request: Iterable[str] = ("Flow", "Image", "GtMask"),
                 img_size: Sequence[int] | None = tuple(_INPUT.img_size),
                 subsample_train: int = _DATA.subsample_train, shuffle_fit: bool = True,
                 num_workers: int | None = _DATA.num_workers, flow_normalisation: str = _DATA.flow_normalisation,
                 flow_augmentation: str = _DATA.flow_augmentation, val_augment: bool = _DATA.val_augment,
                 strict_data: bool = _DATA.strict_data, optional_columns: Iterable[str] = ("GtMask", "Image"),
                 pin_memory: bool = False, flow_noise: float = _DATA.flow_noise,
                 flow_noise_target: str = _DATA.flow_noise_target, clip_length: int = _DATA.clip_length,
                 clip_stride: int = _DATA.clip_stride) -> None:
        super().__init__()
        if flow_normalisation not in FLOW_NORMALISATIONS:
            raise ValueError(f"flow_normalisation must be one of {list(FLOW_NORMALISATIONS)}, "
                             f"got {flow_normalisation!r}")
        if flow_augmentation not in FLOW_AUGMENTATIONS:
            raise ValueError(f"flow_augmentation must be one of {list(FLOW_AUGMENTATIONS)}, "
                             f"got {flow_augmentation!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data_path = resolve_data_path(data_path)
        self.base_dir = os.fspath(base_dir) if base_dir is not None else ""
        self.batch_size = int(batch_size)
        self.request = list(request)
        self.img_size = None if img_size is None else tuple(int(s) for s in img_size)
        self.subsample_train = int(subsample_train)
        self.shuffle_fit = bool(shuffle_fit)
        self.num_workers = default_num_workers() if num_workers is None else int(num_workers)
        self.flow_normalisation = flow_normalisation
        self.flow_augmentation = flow_augmentation
        self.val_augment = bool(val_augment)
        self.flow_noise = float(flow_noise)
        if not 0.0 <= self.flow_noise <= 1.0:
            raise ValueError(f"--flow_noise must be a probability in [0, 1], got {flow_noise}")
        if flow_noise_target not in FLOW_NOISE_TARGETS:
            raise ValueError(f"--flow_noise_target must be one of {list(FLOW_NOISE_TARGETS)}, "
                             f"got {flow_noise_target!r}")
        self.flow_noise_target = flow_noise_target
        self.strict_data = bool(strict_data)
        self.optional_columns = tuple(optional_columns)
        self.pin_memory = bool(pin_memory)
        for name, value in (("clip_length", clip_length), ("clip_stride", clip_stride)):
            if isinstance(value, bool) or int(value) != value or int(value) < 1:
                raise ValueError(f"--{name} must be an integer >= 1, got {value!r}")
        self.clip_length = int(clip_length)
        self.clip_stride = int(clip_stride)
        if self.clip_length == 1 and self.clip_stride != 1:
            logger.warning("--clip_stride %d has no effect with --clip_length 1 (single frames)", self.clip_stride)
        self.datasets: dict[str, CsvDataset | CsvClipDataset] = {}

    # ----------------------------------------------------------------------------------------
    def split_path(self, step: str) -> str:
        """The CSV file of ``step`` ('train', 'val' or 'test')."""
        if step not in STEPS:
            raise ValueError(f"step must be one of {list(STEPS)}, got {step!r}")
        return self.data_path.format(step)

    def transform_for(self, step: str) -> TransformsComposer:
        augment = step == "train" or (step == "val" and self.val_augment)
        return TransformsComposer(self.flow_normalisation, self.flow_augmentation if augment else "none",
                                  flow_noise=self.flow_noise if step == "train" else 0.0,
                                  flow_noise_target=self.flow_noise_target)

    def setup_dataset(self, step: str) -> CsvDataset | CsvClipDataset:
        """Build (or rebuild) the dataset of ``step``: frames, or clips when ``clip_length`` > 1."""
        ds: CsvDataset | CsvClipDataset
        if self.clip_length > 1:
            ds = CsvClipDataset(
                self.split_path(step), self.base_dir, self.img_size, self.request,
                clip_length=self.clip_length, clip_stride=self.clip_stride,
                subsample=self.subsample_train if step == "train" else 1,
                transform=self.transform_for(step), optional=self.optional_columns, strict=self.strict_data,
            )
        else:
            ds = CsvDataset(
                self.split_path(step), self.base_dir, self.img_size, self.request,
                subsample=self.subsample_train if step == "train" else 1,
                transform=self.transform_for(step), optional=self.optional_columns, strict=self.strict_data,
            )
        self.datasets[step] = ds
        logger.info("%s: %s", step, ds)
        return ds

    def setup(self, stage: str | None = None) -> None:
        """'fit' → train + val, 'validate' → val, 'test'/'predict' → test, None → every split
        whose CSV exists. Already built splits are kept."""
        if stage is None:
            steps = tuple(s for s in STEPS if os.path.isfile(self.split_path(s)))
            if not steps:
                raise FileNotFoundError(f"no DataSplit CSV matches {self.data_path}")
        elif stage in STAGE_STEPS:
            steps = STAGE_STEPS[stage]
        else:
            raise ValueError(f"unknown stage {stage!r}; expected one of {[k for k in STAGE_STEPS if k]}")
        for step in steps:
            if step not in self.datasets:
                self.setup_dataset(step)

    def get_dataloader(self, step: str) -> DataLoader:
        ds = self.datasets[step] if step in self.datasets else self.setup_dataset(step)
        return DataLoader(
            ds, batch_size=self.batch_size, shuffle=(step == "train" and self.shuffle_fit),
            num_workers=self.num_workers, collate_fn=collate_skipping,
            persistent_workers=self.num_workers > 0, pin_memory=self.pin_memory, drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self.get_dataloader("train")

    def val_dataloader(self) -> DataLoader:
        return self.get_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.get_dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.get_dataloader("test")

    def skipped_report(self) -> dict[str, dict[str, Any]]:
        """Skips recorded by this process's datasets: ``{step: {'count', 'samples'}}`` (clips also
        have ``'left_out'``: what gave no clip, ``CsvClipDataset.skipped_report``).

        Only complete with ``num_workers=0``: worker processes keep their own records, so the
        authoritative record is each batch's ``'Skipped'`` list.
        """
        return {step: ds.skipped_report() for step, ds in self.datasets.items()}

    # ----------------------------------------------------------------------------------------
    @staticmethod
    def add_specific_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """Add the data flags to ``parser`` and return it."""
        g = parser.add_argument_group("CsvDataModule")
        H.add_arguments(g, H.DataHparams, only=["batch_size", "subsample_train"])
        H.add_arguments(g, H.InputHparams, only=["img_size"])
        H.add_arguments(g, H.DataHparams, exclude=["batch_size", "subsample_train"])
        return parser

    @classmethod
    def from_args(cls, args: argparse.Namespace | dict[str, Any], **overrides: Any) -> CsvDataModule:
        """Build from parsed arguments (unknown keys ignored); ``overrides`` win (e.g. ``request``).

        Without ``data_file`` the built-in synthetic dataset is used (generated once and cached).
        """
        kw = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
        kw.update(overrides)
        data_path = kw.pop("data_path", None) or kw.pop("data_file", None)
        if data_path is None:
            if kw.get("base_dir") is not None:
                raise ValueError(f"--base_dir {kw['base_dir']} given without --data_file: name the DataSplit "
                                 "(--data_file), or give neither to use the built-in synthetic dataset")
            from csvflowdatamodule.synthetic import default_synthetic_split

            kw["base_dir"], data_path = default_synthetic_split()
            logger.info("no --data_file: using the built-in synthetic dataset %s", data_path)
        params = inspect.signature(cls.__init__).parameters
        accepted = {k: v for k, v in kw.items() if k in params and k not in ("self", "data_path")}
        if accepted.get("base_dir") is None:
            accepted["base_dir"] = ""
        return cls(data_path=data_path, **accepted)
