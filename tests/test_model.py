"""The model: authors' layout and checkpoints, hyperparameters, a CPU training step, safe loading."""

from __future__ import annotations

import argparse
import os

import numpy as np
import pytest
import torch

from emseg.core import coherence_math as cm
from evaluationmodule.BinarisationModule import BinarisationModule
from Models.checkpoint_io import CheckpointError, UnsafeCheckpointError
from Models.CoherenceNets.ClassicalEM import ClassicalEM
from Models.CoherenceNets.MethodeB import MethodeB
from Models.convert_checkpoint import convert_checkpoint

DATA = os.path.join(os.path.dirname(__file__), "data")
LEGACY = os.path.join(DATA, "legacy_small.ckpt")
SMALL = {"unet.num_layers": 4, "unet.features_start": 16, "img_size": [128, 224]}


@pytest.fixture(scope="module")
def legacy():
    return torch.load(LEGACY, map_location="cpu", weights_only=False)


def test_state_dict_layout_matches_authors(legacy):
    hp = legacy["hyper_parameters"]
    model = MethodeB(**hp)  # every stored flag, Trainer ones included, is accepted
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in legacy["state_dict"].items()}
    assert mine == theirs
    assert torch.equal(model.XoT, legacy["state_dict"]["XoT"])


def test_legacy_checkpoint_loads_safely_and_predicts_like_authors(tmp_path):
    class Payload:
        def __reduce__(self):
            return (exec, ("raise SystemExit('code ran')",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": Payload()}, evil)
    with pytest.raises(UnsafeCheckpointError, match="--trust_checkpoint") as err:
        MethodeB.load_from_checkpoint(str(evil))
    assert "convert_checkpoint" in str(err.value) and "builtins.exec" in str(err.value)
    # the authors' file needs no opt-in: its class references are on the allow-list
    model = MethodeB.load_from_checkpoint(LEGACY).eval()
    flow = torch.tensor(np.load(os.path.join(DATA, "blackswan_flow_128x224.npy")))
    ref = np.load(os.path.join(DATA, "blackswan_pred_legacy_small.npy"))
    with torch.no_grad():
        pred = model.prediction({"Flow": flow[None]})["Pred"][0].numpy()
    assert pred.shape == ref.shape == (3, 128, 224)
    assert np.abs(pred - ref).max() < 1e-5


def test_converted_checkpoint_loads_safely_and_predicts_identically(tmp_path):
    out = tmp_path / "safe.ckpt"
    convert_checkpoint(LEGACY, str(out))
    torch.load(out, map_location="cpu", weights_only=True)  # no unpickling needed
    a = MethodeB.load_from_checkpoint(LEGACY, weights_only=False).eval()
    b = MethodeB.load_from_checkpoint(str(out)).eval()
    flow = torch.randn(1, 2, 128, 224)
    with torch.no_grad():
        assert torch.equal(a.prediction({"Flow": flow})["Pred"], b.prediction({"Flow": flow})["Pred"])
    with pytest.raises(FileExistsError):
        convert_checkpoint(LEGACY, str(out))


def test_own_checkpoint_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    model = MethodeB(**SMALL, nAffineMasks=3, param_model="Affine").eval()
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    again = MethodeB.load_from_checkpoint(str(path)).eval()
    assert again.hparams["nAffineMasks"] == 3 and again.param_model == "Affine"
    flow = torch.randn(2, 2, 128, 224)
    with torch.no_grad():
        assert torch.equal(model.prediction({"Flow": flow})["Pred"], again.prediction({"Flow": flow})["Pred"])


def test_bad_checkpoints_say_what_is_wrong(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        MethodeB.load_from_checkpoint(str(tmp_path / "missing.ckpt"))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint: it is a text file"):
        MethodeB.load_from_checkpoint(str(junk))
    weights_only = tmp_path / "weights.pt"
    torch.save({"layer.weight": torch.zeros(2)}, weights_only)
    with pytest.raises(CheckpointError, match="no 'state_dict'"):
        MethodeB.load_from_checkpoint(str(weights_only))
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"encoder.conv.weight": torch.zeros(3)}, "hyper_parameters": {}}, other)
    with pytest.raises(CheckpointError, match="checkpoint of another model"):
        MethodeB.load_from_checkpoint(str(other))
    mismatch = tmp_path / "mismatch.ckpt"
    sd = MethodeB(**SMALL).state_dict()
    torch.save({"state_dict": sd, "hyper_parameters": {**SMALL, "unet.features_start": 8}}, mismatch)
    with pytest.raises(CheckpointError, match="does not fit"):
        MethodeB.load_from_checkpoint(str(mismatch))


def test_hyperparameters_defaults_and_parser():
    parser = MethodeB.add_specific_args(argparse.ArgumentParser())
    args = vars(parser.parse_args([]))
    expected = {"nAffineMasks": 2, "param_model": "Quadratic", "v_distance": "l1", "theta_method": "IRLS",
                "entropy_weight": 0.01, "binary_method": "exceptbiggest", "unet.num_layers": 7,
                "unet.features_start": 64, "features_backbone": 32, "backbone": "unet",
                "inner_normalisation": "InstanceNorm", "train_bn": False, "bilinear": False,
                "padding_mode": "reflect", "inputs": ["Flow"], "optim.name": "Adam", "optim.lr": 1e-4,
                "optim.weight_decay": 0.0}
    for key, value in expected.items():
        assert args[key] == value, key
    short = vars(parser.parse_args(["-L", "4", "-inm", "None", "--theta_method", "Optim"]))
    assert short["nAffineMasks"] == 4 and short["inner_normalisation"] == "None"
    model = MethodeB(**{**short, **SMALL, "max_epochs": 3, "gpus": 1})  # unknown names are ignored
    assert model.L == 4 and model.theta_method == "Optim"
    assert not any(isinstance(m, torch.nn.InstanceNorm2d) for m in model.modules())
    with pytest.raises(ValueError, match="v_distance"):
        MethodeB(v_distance="l7", **SMALL)


def test_inputs_are_concatenated_in_order():
    model = MethodeB(**SMALL, inputs=["Image", "Flow"])
    assert model.backbone_model.model.layers[0].net[0].in_channels == 5
    batch = {"Flow": torch.randn(2, 2, 64, 96), "Image": torch.rand(2, 3, 64, 96) - 0.5}
    x = model.backbone_model.prepare_input(batch)
    assert torch.equal(x[:, :3], batch["Image"]) and torch.equal(x[:, 3:], batch["Flow"])
    with pytest.raises(KeyError, match="Image"):
        model.prediction({"Flow": batch["Flow"]})
    with pytest.raises(ValueError, match=r"expected Flow \(B, 2, I, J\)"):
        MethodeB(**SMALL).prediction({"Flow": torch.randn(2, 3, 64, 96)})


def test_bilinear_and_batchnorm_variants_build_and_run():
    model = MethodeB(**SMALL, bilinear=True, inner_normalisation="BatchNorm", train_bn=True)
    out = model.prediction({"Flow": torch.randn(2, 2, 37, 53)})["Pred"]  # odd sizes are padded back
    assert out.shape == (2, 2, 37, 53)
    assert torch.allclose(out.sum(1), torch.ones(2, 37, 53), atol=1e-5)


def test_default_configuration_size():
    model = MethodeB()  # the paper's network: build it, do not train it
    n = sum(p.numel() for p in model.parameters())
    assert 490e6 < n < 505e6, n


def test_small_training_step_on_cpu():
    torch.manual_seed(0)
    model = MethodeB(**SMALL)
    opt = model.configure_optimizers()
    flow = torch.randn(10, 2, 128, 224)
    gt = (torch.rand(10, 128, 224) > 0.5).long()
    before = [p.detach().clone() for p in model.parameters()]
    batch = {"Flow": flow, "GtMask": gt}
    batch = model.prediction(batch)
    crit = model.Criterion(batch)
    for key in ("losses", "coherence_losses", "entropies"):
        assert crit[key].shape == (10,) and torch.isfinite(crit[key]).all()
    assert crit["theta"].shape == (10, 2, 6, 2)
    assert crit["ParametricFlow"].shape == (10, 2, 128, 224)
    assert sorted(batch) == ["Flow", "GtMask", "Pred"]  # the Criterion wrote nothing into the batch
    opt.zero_grad()
    crit["losses"].mean().backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    metrics = model.frame_metrics(batch)
    assert batch["PredMask"].shape == (10, 128, 224) and batch["PredMask"].dtype == torch.bool
    assert metrics["masks_usages"].shape == (10, 2)
    assert torch.allclose(metrics["masks_usages"].sum(1), torch.ones(10), atol=1e-4)
    assert ((metrics["jaccs"] >= 0) & (metrics["jaccs"] <= 1)).all()


def test_criterion_loss_is_the_math_modules():
    model = MethodeB(**SMALL, theta_method="OLS", nAffineMasks=3)
    pred = torch.softmax(torch.randn(2, 3, 32, 48), 1)
    flow = torch.randn(2, 2, 32, 48)
    crit = model.Criterion({"Pred": pred, "Flow": flow})
    ref = cm.em_loss(pred, flow, "Quadratic", "l1", "OLS", entropy_weight=0.01)
    assert torch.allclose(crit["losses"], ref["losses"])


def test_criterion_fits_the_loss_flow_when_the_batch_has_one():
    """--flow_noise_target clean: the network sees a noisy flow, the loss the clean one. On the
    exact partition of a flow made of two quadratic motions, the clean flow's loss is ~0 (the
    masks' 1e-6 leak), and the noise blob costs only when it is the flow being fitted."""
    I, J = 32, 48
    X = cm.make_basis("Quadratic", (I, J), centered=True, dtype=torch.float64)
    obj = torch.zeros(I, J, dtype=torch.bool)
    obj[8:20, 10:30] = True
    th_bg = torch.tensor([[0.1, 0.0], [0.0, 0.2], [0.0, 0.0], [0.5, 0.1], [0.0, 0.3], [1.0, -0.5]], dtype=torch.float64)
    th_obj = torch.tensor([[0.0] * 2] * 5 + [[-2.0, 1.5]], dtype=torch.float64)
    clean = torch.where(obj.flatten()[:, None], X @ th_obj, X @ th_bg).T.reshape(1, 2, I, J)
    noisy = clean.clone()
    noisy[0, :, 24:30, 34:44] += torch.tensor([1.0, -1.0], dtype=torch.float64)[:, None, None]
    pred = torch.stack([(~obj).double(), obj.double()])[None] * (1 - 2e-6) + 1e-6
    model = MethodeB(**SMALL, theta_method="OLS", entropy_weight=0.0)
    on_clean = model.Criterion({"Pred": pred, "Flow": clean})["losses"]
    assert float(on_clean) < 1e-4
    with_loss_flow = model.Criterion({"Pred": pred, "Flow": noisy, "LossFlow": clean})["losses"]
    torch.testing.assert_close(with_loss_flow, on_clean)
    assert float(model.Criterion({"Pred": pred, "Flow": noisy})["losses"]) > 1e-2


def test_binarisation_methods_by_hand():
    pred = torch.zeros(1, 3, 2, 4)
    labels = torch.tensor([[0, 0, 0, 1], [0, 0, 2, 2]])  # label 0 is the biggest
    pred[0] = torch.nn.functional.one_hot(labels, 3).permute(2, 0, 1).float()
    fg = BinarisationModule.exceptbiggest(pred)[0]
    assert torch.equal(fg, labels != 0)
    gt = torch.tensor([[[0, 0, 0, 1], [0, 0, 1, 0]]])  # label 1 fully inside, label 2 half inside
    fair = BinarisationModule.fair(pred, gt)[0]
    assert torch.equal(fair, labels == 1)
    d = BinarisationModule("fair").binarise({"Pred": pred, "GtMask": gt})
    assert torch.equal(d["PredMask"], fair[None])
    with pytest.raises(KeyError, match="GtMask"):
        BinarisationModule("fair").binarise({"Pred": pred})
    with pytest.raises(ValueError, match="binary_method"):
        BinarisationModule("largest")


def test_classical_em_separates_two_motions():
    I, J = 48, 64
    flow = torch.zeros(1, 2, I, J)
    flow[0, 0] = 0.5  # background translates right
    obj = torch.zeros(I, J, dtype=torch.bool)
    obj[12:30, 20:44] = True
    flow[0, 1][obj] = -2.0  # object moves up
    flow[0, 0][obj] = 0.0
    flow += 0.05 * torch.randn(flow.shape, generator=torch.Generator().manual_seed(0))
    model = ClassicalEM(nAffineMasks=2, img_size=[I, J])
    batch = model.prediction({"Flow": flow, "GtMask": obj[None].long()})
    jacc = model.frame_metrics(batch)["jaccs"].item()
    assert jacc > 0.95
    again = model.prediction({"Flow": flow})["Pred"]
    assert torch.equal(again, batch["Pred"])  # deterministic


# ------------------------------------------------------------------------------------------------
# The step computes and returns; callbacks record (the module keeps no books)
# ------------------------------------------------------------------------------------------------
TINY = {"unet.num_layers": 2, "unet.features_start": 4, "img_size": [32, 48], "theta_method": "OLS"}


def tiny_batch(B: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"Flow": torch.randn(B, 2, 32, 48, generator=g), "GtMask": (torch.rand(B, 32, 48, generator=g) > 0.5).long(),
            "FlowPath": [f"seq/{i:05d}.flo" for i in range(B)], "Index": torch.arange(10, 10 + B),
            "Skipped": [(99, "seq/bad.flo", "unreadable")]}


class FakeTrainer:
    sanity_checking = False
    is_global_zero = True

    def __init__(self, epoch: int = 0, loggers=()):
        self.current_epoch = epoch
        self.loggers = list(loggers)


@pytest.mark.filterwarnings("ignore:.*self.log.*")
def test_step_returns_per_frame_outputs_and_the_writer_records_them(tmp_path):
    from emseg.app.results import ResultsWriter, read_rows

    torch.manual_seed(0)
    model = MethodeB(**TINY)
    batch = tiny_batch()
    out = model.validation_step(batch, 0)
    for name in ("frame_rows", "take_frame_rows", "figure_batch", "skipped_samples", "collect_frame_rows"):
        assert not hasattr(model, name), name  # nothing of the results lives on the module
    assert out["loss"].requires_grad and out["loss"].shape == ()
    assert out["losses"].shape == out["jaccs"].shape == (3,) and not out["losses"].requires_grad
    assert out["masks_usages"].shape == (3, 2) and out["PredMask"].dtype == torch.bool
    assert out["file_name"] == batch["FlowPath"] and torch.equal(out["index"], batch["Index"])
    assert torch.equal(out["loss"].detach(), out["losses"].mean())
    writer = ResultsWriter(str(tmp_path))
    # pl_module=None: the writer may only use what the step returned and the batch
    writer.on_validation_batch_end(FakeTrainer(epoch=4), None, out, batch, 0)
    writer.on_validation_batch_end(FakeTrainer(epoch=4), None, None, {"Skipped": [(7, "seq/x.flo", "nan")]}, 1)
    assert len(writer.flush(FakeTrainer(epoch=4), None)) == 3
    rows = read_rows(str(tmp_path / "results.csv"))
    assert [r["file_name"] for r in rows] == batch["FlowPath"] and {r["epoch"] for r in rows} == {"4"}
    assert [float(r["losses"]) for r in rows] == pytest.approx(out["losses"].tolist(), rel=1e-6)
    assert [float(r["jaccs"]) for r in rows] == pytest.approx(out["jaccs"].tolist(), rel=1e-6)
    assert {r["step_label"] for r in rows} == {"val"}
    skipped = read_rows(str(tmp_path / "skipped.csv"))
    assert [(r["step_label"], r["index"]) for r in skipped] == [("val", "99"), ("val", "7")]
    assert writer.flush(FakeTrainer(epoch=4), None) == []  # recorded once, then forgotten


@pytest.mark.filterwarnings("ignore:.*self.log.*")
def test_a_training_step_does_not_binarise(monkeypatch):
    torch.manual_seed(0)
    model = MethodeB(**TINY)
    batch = tiny_batch()
    val = model.validation_step(dict(batch), 0)
    calls = []
    monkeypatch.setattr(model, "generate_binary_mask", lambda b: calls.append(b))
    out = model.training_step(dict(batch), 0)
    assert calls == [] and "PredMask" not in out and "jaccs" not in out
    assert torch.equal(out["masks_usages"], out["Pred"].mean((2, 3)))
    torch.testing.assert_close(out["losses"], val["losses"])  # the same loss, with or without the masks
    assert out["loss"].requires_grad and out["file_name"] == batch["FlowPath"]


@pytest.mark.filterwarnings("ignore:.*self.log.*")
def test_validation_figure_callback_draws_the_first_batch(tmp_path):
    from utils.Callbacks import ValidationFigure

    class Logger:  # anything with a log_dir gets the figure as a PNG
        log_dir = str(tmp_path)

    model = MethodeB(**TINY)
    fig = ValidationFigure(n_frames=1)
    trainer = FakeTrainer(epoch=3, loggers=[Logger()])
    fig.on_validation_epoch_start(trainer, model)
    first = tiny_batch(seed=1)
    fig.on_validation_batch_end(trainer, model, model.validation_step(first, 0), first, 0)
    second = tiny_batch(seed=2)
    fig.on_validation_batch_end(trainer, model, model.validation_step(second, 1), second, 1)
    kept = fig.frames
    assert kept["FlowPath"] == first["FlowPath"][:1] and torch.equal(kept["Flow"], first["Flow"][:1])
    for key in ("Pred", "PredMask", "GtMask", "ParametricFlow"):
        assert kept[key].shape[0] == 1 and kept[key].device.type == "cpu", key
    fig.on_validation_epoch_end(trainer, model)
    assert (tmp_path / "figures" / "val_frames_epoch0003.png").is_file()


def test_criterion_leaves_the_batch_unchanged_and_returns_theta():
    model = MethodeB(**TINY, nAffineMasks=3)
    pred = torch.softmax(torch.randn(2, 3, 32, 48), 1)
    flow = torch.randn(2, 2, 32, 48)
    batch = {"Pred": pred, "Flow": flow}
    before = {k: v.clone() for k, v in batch.items()}
    crit = model.Criterion(batch)
    assert sorted(batch) == ["Flow", "Pred"] and all(torch.equal(batch[k], before[k]) for k in before)
    assert crit["theta"].shape == (2, 3, 6, 2) and crit["ParametricFlow"].shape == (2, 2, 32, 48)
    assert "ParametricFlow" not in model.Criterion(batch, with_parametric_flow=False)
    # what figure callbacks compute from the step's θ is the Criterion's parametric flow
    assert torch.allclose(cm.parametric_flow_of(pred, crit["theta"]), crit["ParametricFlow"], atol=1e-4)


@pytest.mark.parametrize("theta_method", ["OLS", "IRLS"])
def test_coherence_loss_and_criterion_are_the_one_assembly(theta_method):
    from coherence_loss import coherence_loss

    model = MethodeB(**{**TINY, "theta_method": theta_method}, entropy_weight=0.05)
    pred = torch.softmax(torch.randn(2, 2, 32, 48), 1).requires_grad_(True)
    flow = torch.randn(2, 2, 32, 48)
    ref = cm.em_loss(pred, flow, "Quadratic", "l1", theta_method, entropy_weight=0.05)
    crit = model.Criterion({"Pred": pred, "Flow": flow})
    for key in ("losses", "coherence_losses", "entropies", "theta"):
        assert torch.equal(crit[key], ref[key]), key
    assert torch.equal(coherence_loss(pred, flow, "Quadratic", "l1", theta_method), ref["coherence_losses"])


def test_binarisation_is_set_by_hyperparameters():
    model = MethodeB(**TINY, binary_method="fair", min_motion=2.0)
    assert (model.binary_method, model.binariser.binary_method, model.binariser.min_motion) == ("fair", "fair", 2.0)
    em = ClassicalEM(binary_method="fair")
    assert em.binariser.binary_method == "fair" and em.binariser.min_motion == 0.0
    with pytest.raises(ValueError, match="min_motion"):
        ClassicalEM(min_motion=-1)


def test_classical_em_is_a_plain_predictor_that_evaluates(tmp_path):
    import pytorch_lightning as pl

    from emseg.app.results import read_rows
    from Models.LitSegmentationModel import LitPredictor
    from utils.Callbacks import ResultsLogger

    em = ClassicalEM(nAffineMasks=2, em_iterations=3, img_size=[32, 48])
    assert isinstance(em, torch.nn.Module) and not isinstance(em, pl.LightningModule)
    batch = tiny_batch()
    expected = em.frame_metrics(em.prediction({k: batch[k] for k in ("Flow", "GtMask")}))["jaccs"]
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[ResultsLogger(tmp_path / "test.csv")])
    loader = torch.utils.data.DataLoader([tiny_batch()], batch_size=None)  # the batch as it is
    trainer.test(LitPredictor(em), dataloaders=loader, verbose=False)
    rows = read_rows(str(tmp_path / "test.csv"))
    assert [r["file_name"] for r in rows] == batch["FlowPath"]
    assert [float(r["jaccs"]) for r in rows] == pytest.approx(expected.tolist(), abs=1e-6)
    with pytest.raises(RuntimeError, match="no weights to train"):
        LitPredictor(em).training_step(batch, 0)
