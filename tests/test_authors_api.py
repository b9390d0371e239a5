"""The authors' public names import from their paths and do their job in this design."""

from __future__ import annotations

import argparse
import csv
import os

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from Models.Backbones.FakeModel import FakeModel
from Models.Backbones.unet import UNet, UNetAbstract
from Models.CoherenceNets.MethodeB import MethodeB
from Models.LitBackbone import BatchPreparator, LitBackbone
from Models.LitHead import LitHead, SingleMask
from utils.Callbacks import ResultsLogger, SaveResultsFig

TINY = {"unet.num_layers": 2, "unet.features_start": 4, "features_backbone": 8, "img_size": [64, 112]}


def test_single_mask_is_the_heads_logits():
    torch.manual_seed(0)
    head = LitHead(features_backbone=6, n_masks=3)
    assert isinstance(head.model, SingleMask)
    assert sorted(head.state_dict()) == ["model.pred_conv.bias", "model.pred_conv.weight"]  # the authors' keys
    x = torch.randn(2, 6, 5, 7)
    logits = head.model(x)
    assert logits.shape == (2, 3, 5, 7)
    assert not torch.allclose(logits.sum(1), torch.ones(2, 5, 7))  # logits, not probabilities
    assert torch.equal(head(x), logits.softmax(1))
    with pytest.raises(ValueError, match="nAffineMasks"):
        LitHead(6, 0)


def test_batch_preparator_concatenates_inputs_in_order():
    prep = BatchPreparator(["FlowRGB", "Flow"])
    assert prep.in_batch == 5 and prep.get_lengths() == [3, 2]
    assert BatchPreparator.compute_len(["Image", "Flow", "FlowRGB"]) == 8
    batch = {"Flow": torch.randn(2, 2, 4, 6), "FlowRGB": torch.rand(2, 3, 4, 6), "Image": torch.rand(2, 3, 4, 6)}
    x = prep.prepare_batch(batch)
    assert torch.equal(x, torch.cat([batch["FlowRGB"], batch["Flow"]], 1))
    assert BatchPreparator("Flow").inputs == ["Flow"]
    with pytest.raises(ValueError, match="--inputs"):
        BatchPreparator(["Depth"])
    with pytest.raises(KeyError, match="FlowRGB"):
        prep.prepare_batch({"Flow": batch["Flow"]})
    with pytest.raises(ValueError, match=r"expected Flow \(B, 2, I, J\)"):
        prep.prepare_batch({"FlowRGB": batch["FlowRGB"], "Flow": batch["Image"]})
    backbone = LitBackbone(inputs=["FlowRGB", "Flow"], num_layers=2, features_start=4)
    assert isinstance(backbone.batch_prep, BatchPreparator)
    assert torch.equal(backbone.prepare_input(batch), x)


def test_unet_abstract_owns_the_unet_flags():
    assert issubclass(UNet, UNetAbstract)
    parser = UNetAbstract.add_specific_args(argparse.ArgumentParser())
    args = vars(parser.parse_args([]))
    assert args == {"unet.num_layers": 7, "unet.features_start": 64, "inner_normalisation": "InstanceNorm",
                    "train_bn": False, "bilinear": False, "padding_mode": "reflect"}
    args = vars(parser.parse_args(["--unet.num_layers", "3", "-inm", "None", "--bilinear", "--train_bn"]))
    assert args["unet.num_layers"] == 3 and args["inner_normalisation"] == "None" and args["bilinear"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--padding_mode", "mirror"])
    # the model's parser and defaults come from the same place
    model_args = vars(MethodeB.add_specific_args(argparse.ArgumentParser()).parse_args([]))
    assert {k: model_args[k] for k in UNetAbstract.DEFAULTS} == UNetAbstract.DEFAULTS
    assert {k: MethodeB.all_hparam_defaults()[k] for k in UNetAbstract.DEFAULTS} == UNetAbstract.DEFAULTS


def test_fake_model_is_a_weightless_backbone():
    fake = FakeModel(5, input_channels=2)
    assert not list(fake.parameters()) and not fake.state_dict()
    x = torch.randn(3, 2, 4, 6)
    y = fake(x)
    assert y.shape == (3, 5, 4, 6)
    for k in range(5):
        assert torch.equal(y[:, k], x[:, k % 2])
    with pytest.raises(ValueError, match=r"\(B, 2, I, J\)"):
        fake(torch.randn(3, 3, 4, 6))
    with pytest.raises(ValueError, match="FakeModel"):
        FakeModel(0, 2)


def test_fake_backbone_trains_only_the_head_and_round_trips():
    torch.manual_seed(0)
    parser = MethodeB.add_specific_args(argparse.ArgumentParser())
    assert parser.parse_args(["-bb", "fake"]).backbone == "fake"
    model = MethodeB(backbone="fake", features_backbone=4, img_size=[32, 48])
    assert isinstance(model.backbone_model.model, FakeModel)
    assert sorted(n for n, _ in model.named_parameters()) == ["head_model.model.pred_conv.bias",
                                                               "head_model.model.pred_conv.weight"]
    batch = model.prediction({"Flow": torch.randn(2, 2, 32, 48)})
    loss = model.Criterion(batch)["losses"].mean()
    loss.backward()
    assert model.head_model.model.pred_conv.weight.grad.abs().sum() > 0
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    again = MethodeB.from_checkpoint_dict(ckpt)
    flow = torch.randn(1, 2, 32, 48)
    with torch.no_grad():
        assert torch.equal(again.prediction({"Flow": flow})["Pred"], model.prediction({"Flow": flow})["Pred"])


def test_csv_data_module_from_the_authors_path():
    import importlib

    from csvflowdatamodule.CsvDataset import CsvDataModule

    assert CsvDataModule is importlib.import_module("csvflowdatamodule.CsvDataModule").CsvDataModule
    with pytest.raises(AttributeError, match="NoSuchThing"):
        importlib.import_module("csvflowdatamodule.CsvDataset").NoSuchThing  # noqa: B018


def _read(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_results_logger_and_save_results_fig_on_a_tiny_split(tiny_split, tmp_path):
    from csvflowdatamodule.CsvDataModule import CsvDataModule

    base, prefix = tiny_split
    pl.seed_everything(0)
    dm = CsvDataModule(prefix, base, batch_size=4, img_size=(64, 112), num_workers=0)
    model = MethodeB(**TINY)
    out = tmp_path / "out"
    results = ResultsLogger(out / "results.csv")
    assert results.fp == str(out / "results.csv")
    kw = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
                         callbacks=[results], **kw)
    trainer.fit(model, datamodule=dm)
    rows = _read(out / "results.csv")
    assert list(rows[0]) == ["epoch", "step_label", "file_name", "losses", "jaccs", "masks_usages"]
    assert [r["step_label"] for r in rows].count("train") == 8 and [r["step_label"] for r in rows].count("val") == 4

    figs = SaveResultsFig(out / "frames", save_npy=True)
    tester = pl.Trainer(callbacks=[ResultsLogger(out / "test.csv"), figs], inference_mode=False, **kw)
    tester.test(model, datamodule=dm, verbose=False)
    test_rows = _read(out / "test.csv")
    assert len(test_rows) == 8 and {r["step_label"] for r in test_rows} == {"test"}
    summary = (out / "test_summary.tsv").read_text().splitlines()
    assert summary[0].split("\t")[:2] == ["level", "name"] and summary[-2].startswith("overall\tall_frames\t8\t")
    losses = np.mean([float(r["losses"]) for r in test_rows])
    assert float(summary[-2].split("\t")[3]) == pytest.approx(losses, abs=1e-5)
    for r in test_rows:
        stem = os.path.join(out / "frames", os.path.splitext(r["file_name"])[0])
        proba = np.load(f"{stem}_proba.npy")
        assert proba.shape == (2, 64, 112) and np.allclose(proba.sum(0), 1, atol=1e-4)
        mask = np.array(Image.open(f"{stem}_binary.png"))
        assert mask.shape == (64, 112) and set(np.unique(mask)) <= {0, 255}
        with Image.open(f"{stem}_fig.png") as im:
            assert im.size[0] > 300  # six panels: image, flow, masks, binary, GT, parametric flow


def test_results_logger_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(ValueError, match="keys"):
        ResultsLogger(tmp_path / "r.csv", keys=["losses"])
    with pytest.raises(ValueError, match=r"\.csv"):
        ResultsLogger(tmp_path / "r.txt")


def test_classes_are_named_for_what_they_are_and_keep_the_authors_names():
    """A ``*Module`` class here is not a torch/Lightning module and ``Lit*`` is not a LightningModule; each has
    a name that says what it is, and the authors' name is the same class."""
    import pytorch_lightning as pl
    from torch import nn

    from evaluationmodule.BinarisationModule import BinarisationModule, Binariser
    from evaluationmodule.DataLoadingModule import DataLoadingModule, PredictionLoader
    from evaluationmodule.SaveModule import EvaluationSaver, SaveModule
    from evaluationmodule.ScoreModule import FrameScorer, ScoreModule
    from Models.LitBackbone import Backbone, LitBackbone
    from Models.LitHead import LitHead, MaskHead

    pairs = {"BinarisationModule": (BinarisationModule, Binariser), "DataLoadingModule": (DataLoadingModule,
             PredictionLoader), "SaveModule": (SaveModule, EvaluationSaver), "ScoreModule": (ScoreModule, FrameScorer),
             "LitBackbone": (LitBackbone, Backbone), "LitHead": (LitHead, MaskHead)}
    for name, (old, new) in pairs.items():
        assert old is new and new.__name__ != name
    for cls in (Binariser, PredictionLoader, EvaluationSaver, FrameScorer):
        assert not issubclass(cls, nn.Module)
    for cls in (Backbone, MaskHead):
        assert issubclass(cls, nn.Module) and not issubclass(cls, pl.LightningModule)
