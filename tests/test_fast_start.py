"""segment.py's fast start (issue 20): the trained model's network without Lightning
(Models/network.py) predicts exactly what the MethodeB does, shares its digest and cached exports, and
the segmentation path never imports Lightning; --adapt still gets the full MethodeB."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from emseg.app.segment.model import load_segmenter, make_predictor
from Models import backends as B
from Models.checkpoint_io import CheckpointError
from Models.CoherenceNets.MethodeB import MethodeB
from Models.exporting import PredictionGraph, is_exportable
from Models.network import METHODE_B_HPARAM_GROUPS, SegmentationNetwork, as_methode_b, methode_b_hparams

REPO = Path(__file__).resolve().parent.parent
CKPT = REPO / "checkpoints" / "em_small.ckpt"
LEGACY = REPO / "tests" / "data" / "legacy_small.ckpt"
SMALL = {"unet.num_layers": 3, "unet.features_start": 8, "img_size": [32, 48]}
EXPORTED = [n for n in ("onnxruntime", "openvino") if importlib.util.find_spec(n) is not None]


def flows() -> torch.Tensor:
    """Three real flows at the bundled model's size (blackswan, its opposite, its mirror image): (3, 2, 128, 224)."""
    f = torch.from_numpy(np.load(REPO / "tests" / "data" / "blackswan_flow_128x224.npy")).float()[None]
    mirrored = f.flip(3) * torch.tensor([-1.0, 1.0])[None, :, None, None]
    return torch.cat([f, -f, mirrored])


def predict(model, flow: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.prediction({"Flow": flow})["Pred"]


@pytest.fixture(scope="module")
def pair() -> tuple[MethodeB, SegmentationNetwork]:
    return (MethodeB.load_from_checkpoint(str(CKPT)).eval(),
            SegmentationNetwork.load_from_checkpoint(CKPT))


def test_hparam_groups_and_defaults_are_methode_bs():
    assert METHODE_B_HPARAM_GROUPS == MethodeB.all_hparam_groups()
    assert methode_b_hparams({}) == MethodeB(**{}).hparams  # defaults, normalised
    odd = {**SMALL, "inner_normalisation": None, "inputs": "Flow", "img_size": ("32", 48.0), "unknown_flag": 3}
    assert SegmentationNetwork(**odd).hparams == dict(MethodeB(**odd).hparams)


@pytest.mark.parametrize("ckpt", [CKPT, LEGACY], ids=["bundled", "legacy_pl12"])
def test_the_network_is_methode_b_key_for_key(ckpt):
    """Same hyperparameters, the same state dict (keys in order, values), hence the same digest:
    the MethodeB's cached export is the network's."""
    model = MethodeB.load_from_checkpoint(str(ckpt)).eval()
    net = SegmentationNetwork.load_from_checkpoint(ckpt)
    assert net.hparams == dict(model.hparams) and net.L == model.L
    a, b = model.state_dict(), net.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert B.model_digest(net) == B.model_digest(model)
    assert not net.training


def test_predictions_are_bit_identical_to_methode_bs(pair):
    model, net = pair
    f = flows()
    assert torch.equal(predict(net, f), predict(model, f))
    odd = F.interpolate(f[:2], size=(97, 171), mode="bilinear", align_corners=False)  # sizes the U-Net pads
    assert torch.equal(predict(net, odd), predict(model, odd))
    with torch.no_grad():
        assert torch.equal(net(f), model(f))


def test_the_torch_backend_of_the_network_is_the_methode_bs(pair):
    model, net = pair
    f = flows()
    assert torch.equal(B.make_backend(net, "torch")(f), B.make_backend(model, "torch")(f))


@pytest.mark.parametrize("name", EXPORTED)
def test_the_network_exports_and_shares_the_methode_bs_cached_export(pair, name, tmp_path, monkeypatch):
    model, net = pair
    assert is_exportable(net) and B.default_backend_name(net) == B.default_backend_name(model)
    graph = PredictionGraph(net)
    assert graph.n_masks == 2 and graph.img_size == [128, 224]
    f = flows()
    ref = B.make_backend(model, name, cache_dir=tmp_path)(f)
    exported = sorted(p.name for p in tmp_path.iterdir())

    def no_export(*args, **kwargs):
        raise AssertionError("the network's export is the MethodeB's: it must be found in the cache")

    monkeypatch.setattr(B, "_export_sealed", no_export)
    assert torch.equal(B.make_backend(net, name, cache_dir=tmp_path)(f), ref)
    assert sorted(p.name for p in tmp_path.iterdir()) == exported


def test_a_subclass_with_its_own_prediction_is_not_exportable():
    class Other(SegmentationNetwork):
        def prediction(self, batch: dict) -> dict:
            batch["Pred"] = torch.zeros(1)
            return batch

    assert is_exportable(SegmentationNetwork(**SMALL))
    assert not is_exportable(Other(**SMALL))
    assert not is_exportable(torch.nn.Conv2d(2, 2, 1))


def test_as_methode_b_keeps_weights_mode_and_predictions(pair):
    model, net = pair
    full = as_methode_b(net)
    assert type(full) is MethodeB and not full.training
    assert dict(full.hparams) == dict(model.hparams)
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), model.state_dict().values()))
    assert torch.equal(predict(full, flows()), predict(model, flows()))
    assert as_methode_b(model) is model


def test_load_segmenter_gives_the_network_unless_trainable():
    assert type(load_segmenter(str(CKPT), device="cpu")) is SegmentationNetwork
    assert type(load_segmenter(str(CKPT), device="cpu", trainable=True)) is MethodeB


def test_checkpoints_it_cannot_be_built_from_are_refused_as_methode_b_refuses_them(tmp_path):
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}, "hyper_parameters": {}}, other)
    for load in (SegmentationNetwork.load_from_checkpoint, MethodeB.load_from_checkpoint):
        with pytest.raises(CheckpointError, match="checkpoint of another model"):
            load(str(other))
    model = MethodeB(**SMALL)
    misfit = tmp_path / "misfit.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {**model.hparams, "unet.features_start": 4}},
               misfit)
    for load in (SegmentationNetwork.load_from_checkpoint, MethodeB.load_from_checkpoint):
        with pytest.raises(CheckpointError, match="does not fit MethodeB"):
            load(str(misfit))


def test_make_predictor_on_the_network_equals_the_methode_bs(pair, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model, net = pair
    f = flows()
    assert torch.equal(make_predictor(net, threads=1)(f), make_predictor(model, threads=1)(f))


PROBE = r"""
import runpy, sys
sys.argv = ["segment.py", *sys.argv[1:]]
try:
    runpy.run_path("segment.py", run_name="__main__")
except SystemExit as stop:
    assert stop.code in (0, None), stop.code
print("LOADED", sorted(m for m in ("pytorch_lightning", "lightning_fabric", "lightning", "torchmetrics",
                                   "matplotlib", "pandas") if m in sys.modules))
"""


def test_segmenting_never_imports_lightning(tmp_path):
    """A video and a flow file segmented by segment.py, in fresh interpreters: no Lightning, no
    matplotlib or pandas on the way (the overlays of a flow file need matplotlib's colour wheel only)."""
    from tests.test_segment import write_clip

    video = write_clip(tmp_path / "clip.avi", n_frames=4)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    for args, allowed in ((["--video", video, "--out", str(tmp_path / "v")], []),
                          (["--flow", str(REPO / "images" / "00000.flo"), "--out", str(tmp_path / "f"),
                            "--no_animation"], ["matplotlib"])):
        proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=REPO, capture_output=True, text=True,
                              timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("LOADED"))
        loaded = json.loads(line[len("LOADED "):].replace("'", '"'))
        assert [m for m in loaded if m not in allowed] == [], (args, loaded)


# OpenVINO's compiled networks, kept beside a cached export (Models/backends.py): sealed, verified before use.

def small_network() -> SegmentationNetwork:
    torch.manual_seed(0)
    return SegmentationNetwork(**SMALL).eval()


def small_flow() -> torch.Tensor:
    return F.interpolate(flows(), size=(32, 48), mode="bilinear", antialias=True)


needs_openvino = pytest.mark.skipif("openvino" not in EXPORTED, reason="openvino not installed")

def rewrite(path, data: bytes) -> None:
    """Damage a cached file as a new file under its name: a runtime that still maps the old file (OpenVINO
    maps weights and compiled blobs) would die of SIGBUS if the same inode were truncated under it."""
    tmp = path.with_name(path.name + ".damaged")
    tmp.write_bytes(data)
    os.replace(tmp, path)



@needs_openvino
def test_the_compiled_network_is_kept_sealed_and_gives_the_same_outputs(tmp_path, monkeypatch):
    net, f = small_network(), small_flow()
    fresh = B.make_backend(net, "openvino")(f)  # a temporary export, no compiled cache
    first = B.make_backend(net, "openvino", cache_dir=tmp_path)(f)
    folder = tmp_path / f"{B.model_digest(net)}.openvino.compiled"
    blobs = sorted(p.name for p in folder.iterdir())
    assert blobs and B.verify_compiled(folder) is None

    def no_export(*args, **kwargs):
        raise AssertionError("a verified export must be reused")

    monkeypatch.setattr(B, "_export_sealed", no_export)
    again = B.make_backend(net, "openvino", cache_dir=tmp_path)(f)
    assert sorted(p.name for p in folder.iterdir()) == blobs  # read, not written again
    assert torch.equal(first, fresh) and torch.equal(again, fresh)


@needs_openvino
@pytest.mark.parametrize("damage", ["flip", "truncate", "delete_seal", "garble_seal", "foreign_file"])
def test_a_compiled_network_that_does_not_match_its_seal_is_not_used(damage, tmp_path, caplog):
    net, f = small_network(), small_flow()
    ref = B.make_backend(net, "openvino", cache_dir=tmp_path)(f)
    folder = tmp_path / f"{B.model_digest(net)}.openvino.compiled"
    seal = tmp_path / f"{folder.name}.sha256.json"
    (blob,) = list(folder.iterdir())
    data = blob.read_bytes()
    if damage == "flip":
        rewrite(blob, data[:-64] + bytes(b ^ 0xFF for b in data[-64:]))
    elif damage == "truncate":
        rewrite(blob, data[: len(data) // 2])
    elif damage == "delete_seal":
        seal.unlink()
    elif damage == "garble_seal":
        seal.write_text("{not json")
    else:
        (folder / "0000.blob").write_bytes(b"not OpenVINO's")
    assert B.verify_compiled(folder) is not None
    out = B.make_backend(net, "openvino", cache_dir=tmp_path)(f)
    assert "is not used" in caplog.text and "compiling anew" in caplog.text
    assert torch.equal(out, ref)
    assert B.verify_compiled(folder) is None and not (folder / "0000.blob").exists()
    assert json.loads(seal.read_text())["sha256"] == {p.name: B._sha256(p) for p in folder.iterdir()}
