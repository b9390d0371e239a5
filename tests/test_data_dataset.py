"""CsvDataset, collate_skipping and CsvDataModule (csvflowdatamodule/CsvDataset.py, CsvDataModule.py)."""

from __future__ import annotations

import argparse
import logging

import pytest
import torch
from torch.utils.data import RandomSampler, SequentialSampler

from csvflowdatamodule.CsvDataModule import (
    CsvDataModule,
    collate_skipping,
    default_num_workers,
    resolve_data_path,
)
from csvflowdatamodule.CsvDataset import CsvDataset, DataFileError, read_flow

try:
    from data_helpers import H, W, make_split, write_csv
except ImportError:  # tests/ imported as a package
    from tests.data_helpers import H, W, make_split, write_csv


def _dataset(tmp_path, **kw) -> CsvDataset:
    prefix = make_split(tmp_path)
    kw.setdefault("request", ["Flow", "Image", "GtMask"])
    return CsvDataset(prefix + "_train.csv", tmp_path, kw.pop("img_size", (8, 10)), **kw)


def _corrupt(tmp_path, rel: str) -> None:
    (tmp_path / rel).write_bytes((tmp_path / rel).read_bytes()[:20])


# --------------------------------------------------------------------------------------------
# CsvDataset
# --------------------------------------------------------------------------------------------
def test_items_hold_tensors_paths_and_index(tmp_path):
    ds = _dataset(tmp_path)
    assert len(ds) == 6
    item = ds[2]
    assert item["Flow"].shape == (2, 8, 10) and item["Flow"].dtype == torch.float32
    assert item["Image"].shape == (3, 8, 10) and item["GtMask"].shape == (8, 10)
    assert item["GtMask"].dtype == torch.long
    assert item["FlowPath"] == "flows/00002.flo" and item["ImagePath"] == "images/00002.png"
    assert item["GtMaskPath"] == "masks/00002.png" and item["Index"] == 2
    full = torch.from_numpy(read_flow(tmp_path / "flows/00002.flo")).permute(2, 0, 1)
    assert ds.img_size == (8, 10) and full.shape == (2, H, W)
    assert set(item) == {"Flow", "Image", "GtMask", "FlowPath", "ImagePath", "GtMaskPath", "Index"}


def test_request_subset_and_native_size(tmp_path):
    ds = _dataset(tmp_path, request=["Flow"], img_size=None)
    item = ds[0]
    assert set(item) == {"Flow", "FlowPath", "Index"} and item["Flow"].shape == (2, H, W)


def test_subsample_keeps_csv_row_indices(tmp_path):
    ds = _dataset(tmp_path, subsample=4)
    assert len(ds) == 2 and [ds[i]["Index"] for i in range(2)] == [0, 4]
    with pytest.raises(ValueError, match="subsample"):
        _dataset(tmp_path, subsample=0)


def test_missing_columns_are_errors_naming_them(tmp_path):
    make_split(tmp_path, name="noimg", columns=("Flow", "GtMask"))
    csv_path = tmp_path / "noimg_train.csv"
    with pytest.raises(ValueError) as info:
        CsvDataset(csv_path, tmp_path, None, ["Flow", "Image", "FlowRGB"], optional=())
    assert "Image" in str(info.value) and "FlowRGB" in str(info.value) and str(csv_path) in str(info.value)
    with pytest.raises(ValueError, match="FlowRGB"):  # optional by default: GtMask and Image only
        CsvDataset(csv_path, tmp_path, None, ["Flow", "Image", "FlowRGB"])
    ds = CsvDataset(csv_path, tmp_path, None, ["Flow", "Image", "GtMask"])  # unlabelled-style: Image absent
    assert ds.columns == ["Flow", "GtMask"] and "Image" not in ds[0]
    with pytest.raises(ValueError, match="unknown requested column"):
        CsvDataset(csv_path, tmp_path, None, ["Flow", "Depth"])
    with pytest.raises(FileNotFoundError, match="nothere.csv"):
        CsvDataset(tmp_path / "nothere.csv", tmp_path, None, ["Flow"])


def test_bad_file_skips_the_sample_with_one_warning(tmp_path, caplog):
    ds = _dataset(tmp_path)
    _corrupt(tmp_path, "flows/00001.flo")
    (tmp_path / "masks/00003.png").unlink()
    with caplog.at_level(logging.WARNING, logger="csvflowdatamodule.CsvDataset"):
        items = [ds[i] for i in range(len(ds))] + [ds[1], ds[1]]
    skipped = [it["Skipped"] for it in items if "Skipped" in it]
    assert [s[0] for s in skipped] == [1, 3, 1, 1]
    assert skipped[0][1] == str(tmp_path / "flows/00001.flo") and "truncated" in skipped[0][2]
    assert skipped[1][1] == str(tmp_path / "masks/00003.png") and "missing file" in skipped[1][2]
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 2  # once per file, not once per access
    assert "flows/00001.flo" in lines[0] and "truncated" in lines[0]
    assert "masks/00003.png" in lines[1] and "missing file" in lines[1]
    report = ds.skipped_report()
    assert report["count"] == 2 and [s[0] for s in report["samples"]] == [1, 3]


def test_empty_cell_is_a_skipped_sample(tmp_path):
    make_split(tmp_path)
    write_csv(tmp_path / "holes.csv", ["Flow", "GtMask"], [["flows/00000.flo", ""], ["flows/00001.flo",
                                                                                      "masks/00001.png"]])
    ds = CsvDataset(tmp_path / "holes.csv", tmp_path, None, ["Flow", "GtMask"])
    assert "Skipped" in ds[0] and "empty path in column GtMask" in ds[0]["Skipped"][2]
    assert "Flow" in ds[1]


def test_strict_mode_raises_on_the_first_bad_file(tmp_path):
    ds = _dataset(tmp_path, strict=True)
    ds[0]
    _corrupt(tmp_path, "images/00000.png")
    with pytest.raises(DataFileError, match="images/00000.png.*unreadable image"):
        ds[0]


def test_columns_of_different_sizes_are_skipped_at_native_size(tmp_path):
    make_split(tmp_path)
    big = make_split(tmp_path / "big", h=H + 2, w=W)
    write_csv(tmp_path / "mixed.csv", ["Flow", "GtMask"], [["flows/00000.flo", "big/masks/00000.png"]])
    assert big
    ds = CsvDataset(tmp_path / "mixed.csv", tmp_path, None, ["Flow", "GtMask"])
    assert "disagree in size" in ds[0]["Skipped"][2]
    ds = CsvDataset(tmp_path / "mixed.csv", tmp_path, (8, 8), ["Flow", "GtMask"])
    assert ds[0]["Flow"].shape == (2, 8, 8)


# --------------------------------------------------------------------------------------------
# collate_skipping
# --------------------------------------------------------------------------------------------
def test_collate_skipping(tmp_path):
    ds = _dataset(tmp_path)
    _corrupt(tmp_path, "flows/00001.flo")
    batch = collate_skipping([ds[0], ds[1], ds[2]])
    assert batch["Flow"].shape == (2, 2, 8, 10) and batch["GtMask"].dtype == torch.long
    assert batch["FlowPath"] == ["flows/00000.flo", "flows/00002.flo"]
    assert torch.equal(batch["Index"], torch.tensor([0, 2]))
    assert len(batch["Skipped"]) == 1 and batch["Skipped"][0][0] == 1
    good = collate_skipping([ds[0], ds[2]])
    assert good["Skipped"] == []
    all_bad = collate_skipping([ds[1], ds[1]])
    assert set(all_bad) == {"Skipped"} and len(all_bad["Skipped"]) == 2


# --------------------------------------------------------------------------------------------
# CsvDataModule
# --------------------------------------------------------------------------------------------
def test_resolve_data_path():
    assert resolve_data_path("DataSplit/Exp6_Split") == "DataSplit/Exp6_Split_{}.csv"
    assert resolve_data_path("DataSplit/Exp6_Split_{}.csv") == "DataSplit/Exp6_Split_{}.csv"
    assert resolve_data_path("DataSplit/Exp6_Split_val.csv") == "DataSplit/Exp6_Split_{}.csv"
    with pytest.raises(ValueError):
        resolve_data_path("DataSplit/whatever.csv")


def test_datamodule_stages_loaders_and_augmentation(tmp_path):
    prefix = make_split(tmp_path)
    dm = CsvDataModule(prefix, tmp_path, batch_size=4, request=["Flow", "GtMask"], img_size=(8, 10),
                       num_workers=0, flow_augmentation="globalmotionfullquadlight")
    dm.setup("fit")
    assert set(dm.datasets) == {"train", "val"}
    dm.setup("test")
    assert set(dm.datasets) == {"train", "val", "test"}
    train, val, test = dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()
    assert isinstance(train.sampler, RandomSampler)
    assert isinstance(val.sampler, SequentialSampler) and isinstance(test.sampler, SequentialSampler)
    batches = list(val)
    assert [len(b["Index"]) for b in batches] == [4, 2]
    assert batches[0]["Flow"].shape == (4, 2, 8, 10) and batches[0]["Skipped"] == []
    # Augmentation on train only: val flows are the files' flows, train flows are not.
    raw = dm.datasets["val"].loaders.load_file(tmp_path / batches[0]["FlowPath"][0], "Flow", (8, 10))
    assert torch.equal(batches[0]["Flow"][0], raw)
    tr_item = dm.datasets["train"][0]
    raw_tr = dm.datasets["train"].loaders.load_file(tmp_path / tr_item["FlowPath"], "Flow", (8, 10))
    assert not torch.equal(tr_item["Flow"], raw_tr)
    assert dm.transform_for("val").transforms == [] and dm.transform_for("test").transforms == []
    dm2 = CsvDataModule(prefix, tmp_path, request=["Flow"], num_workers=0, val_augment=True,
                        flow_augmentation="globalmotionlight", flow_normalisation="max", shuffle_fit=False)
    assert len(dm2.transform_for("val").transforms) == 2 and len(dm2.transform_for("test").transforms) == 1
    assert isinstance(dm2.train_dataloader().sampler, SequentialSampler)
    with pytest.raises(ValueError):
        dm.setup("nonsense")


def test_clean_noise_target_gives_training_batches_the_loss_flow(tmp_path):
    prefix = make_split(tmp_path)
    torch.manual_seed(0)  # the noise draws
    args = {"batch_size": 4, "flow_noise": 1.0, "flow_noise_target": "clean", "num_workers": 0,
            "img_size": (24, 32), "base_dir": str(tmp_path)}
    dm = CsvDataModule.from_args({**args, "data_file": prefix}, request=["Flow"])
    dm.setup("fit")
    train = next(iter(dm.train_dataloader()))
    assert train["LossFlow"].shape == train["Flow"].shape == (4, 2, 24, 32)
    raw = torch.stack([dm.datasets["train"].loaders.load_file(tmp_path / p, "Flow", (24, 32))
                       for p in train["FlowPath"]])
    assert torch.equal(train["LossFlow"], raw)  # no augmentation: the loss sees the files' flows
    assert not torch.equal(train["Flow"], raw)
    assert "LossFlow" not in next(iter(dm.val_dataloader()))  # noise is for training only
    with pytest.raises(ValueError, match="--flow_noise_target"):
        CsvDataModule(prefix, tmp_path, flow_noise=0.3, flow_noise_target="none")


def test_datamodule_subsample_and_missing_split(tmp_path):
    prefix = make_split(tmp_path)
    dm = CsvDataModule(prefix, tmp_path, request=["Flow"], num_workers=0, subsample_train=3)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 2 and len(dm.datasets["val"]) == 6
    (tmp_path / "split_test.csv").unlink()
    with pytest.raises(FileNotFoundError, match="split_test.csv"):
        dm.setup("test")


def test_invalid_options_are_errors(tmp_path):
    prefix = make_split(tmp_path)
    with pytest.raises(ValueError, match="flow_normalisation"):
        CsvDataModule(prefix, tmp_path, flow_normalisation="l2")
    with pytest.raises(ValueError, match="flow_augmentation"):
        CsvDataModule(prefix, tmp_path, flow_augmentation="globalmotion")


def test_all_skipped_batch_does_not_crash_and_report(tmp_path):
    prefix = make_split(tmp_path)
    for k in (100, 101):  # the first two val samples
        _corrupt(tmp_path, f"flows/{k:05d}.flo")
    dm = CsvDataModule(prefix, tmp_path, batch_size=2, request=["Flow"], img_size=(8, 10), num_workers=0)
    batches = list(dm.val_dataloader())
    assert set(batches[0]) == {"Skipped"} and len(batches[0]["Skipped"]) == 2
    assert all("Flow" in b for b in batches[1:])
    report = dm.skipped_report()
    assert report["val"]["count"] == 2


def test_worker_processes_carry_skips_in_batches(tmp_path):
    prefix = make_split(tmp_path, n=4)
    _corrupt(tmp_path, "flows/00102.flo")
    dm = CsvDataModule(prefix, tmp_path, batch_size=4, request=["Flow"], img_size=(8, 10), num_workers=1)
    loader = dm.val_dataloader()
    assert loader.persistent_workers
    (batch,) = list(loader)
    assert batch["Flow"].shape[0] == 3 and [s[0] for s in batch["Skipped"]] == [2]


def test_strict_datamodule_raises(tmp_path):
    prefix = make_split(tmp_path)
    _corrupt(tmp_path, "flows/00100.flo")
    dm = CsvDataModule(prefix, tmp_path, request=["Flow"], num_workers=0, strict_data=True)
    with pytest.raises(DataFileError, match="00100.flo"):
        next(iter(dm.val_dataloader()))


def test_add_specific_args_and_from_args(tmp_path):
    parser = CsvDataModule.add_specific_args(argparse.ArgumentParser())
    d = parser.parse_args([])
    assert d.batch_size == 10 and d.img_size == [128, 224] and d.subsample_train == 1
    assert d.flow_normalisation == "none" and d.flow_augmentation == "none"
    assert not d.val_augment and not d.strict_data and d.data_file is None and d.base_dir is None
    assert d.num_workers is None  # "the CPUs available", resolved by the data module:
    assert CsvDataModule("x_{}.csv", "").num_workers == default_num_workers() and 0 <= default_num_workers() <= 8
    assert parser.parse_args(["--image_size", "64", "112"]).img_size == [64, 112]
    with pytest.raises(SystemExit):
        parser.parse_args(["--flow_augmentation", "globalmotionhuge"])
    prefix = make_split(tmp_path)
    args = parser.parse_args(["--data_file", prefix, "--base_dir", str(tmp_path), "--img_size", "8", "10",
                              "--num_workers", "0", "--strict_data", "--batch_size", "3",
                              "--flow_augmentation", "globalmotionfullquadlight"])
    args.unrelated_model_flag = 5
    dm = CsvDataModule.from_args(args, request=["Flow", "Image"])
    assert dm.data_path == prefix + "_{}.csv" and dm.img_size == (8, 10) and dm.batch_size == 3
    assert dm.strict_data and dm.request == ["Flow", "Image"] and dm.num_workers == 0
    batch = next(iter(dm.train_dataloader()))
    assert batch["Flow"].shape == (3, 2, 8, 10) and batch["Image"].shape == (3, 3, 8, 10)


def test_from_args_defaults_to_the_synthetic_dataset(tmp_path, monkeypatch):
    import csvflowdatamodule.synthetic as synthetic

    small = make_split(tmp_path)
    monkeypatch.setattr(synthetic, "default_synthetic_split", lambda cache_dir=None: (str(tmp_path), small))
    args = CsvDataModule.add_specific_args(argparse.ArgumentParser()).parse_args(["--num_workers", "0"])
    dm = CsvDataModule.from_args(args, request=["Flow"])
    assert dm.base_dir == str(tmp_path) and dm.data_path == small + "_{}.csv"
    args.base_dir = "/somewhere"
    with pytest.raises(ValueError, match="without --data_file"):
        CsvDataModule.from_args(args)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lightning_trainer_consumes_batches_with_skips(tmp_path):
    import pytorch_lightning as pl

    prefix = make_split(tmp_path, n=4)
    for k in (0, 1):
        _corrupt(tmp_path, f"flows/{k:05d}.flo")
    seen = {"steps": 0, "skipped": []}

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            seen["skipped"] += batch["Skipped"]
            if "Flow" not in batch:
                return None
            seen["steps"] += 1
            return (batch["Flow"].mean() - self.w).pow(2)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = CsvDataModule(prefix, tmp_path, batch_size=2, request=["Flow"], img_size=(8, 10), num_workers=0,
                       shuffle_fit=False)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=tmp_path)
    trainer.fit(Tiny(), datamodule=dm)
    assert seen["steps"] == 1 and sorted(s[0] for s in seen["skipped"]) == [0, 1]
