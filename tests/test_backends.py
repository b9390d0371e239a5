"""Exported models (Models.export) and inference backends (Models.backends): parity with torch fp32
on real flows, dynamic batch and size, the default choice and its fallbacks, the export cache, bf16."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from csvflowdatamodule.CsvDataset import read_flow
from Models import backends as B
from Models import export as E
from Models.CoherenceNets.ClassicalEM import ClassicalEM
from Models.CoherenceNets.MethodeB import MethodeB

REPO = Path(__file__).resolve().parent.parent
CKPT = REPO / "checkpoints" / "em_small.ckpt"
TOL = 1e-4
EXPORTED = [n for n in ("onnxruntime", "openvino") if importlib.util.find_spec(n) is not None]


@pytest.fixture(scope="module")
def model() -> MethodeB:
    return MethodeB.load_from_checkpoint(str(CKPT)).eval()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export_cache")


def blackswan() -> torch.Tensor:
    return torch.from_numpy(np.load(REPO / "tests" / "data" / "blackswan_flow_128x224.npy")).float()[None]


def native_flow() -> torch.Tensor:
    """images/00000.flo at its own size, (1, 2, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(read_flow(REPO / "images" / "00000.flo"))).permute(2, 0, 1)[None]


def flow_cases() -> dict[str, torch.Tensor]:
    f = blackswan()
    mirrored = f.flip(3) * torch.tensor([-1.0, 1.0])[None, :, None, None]  # the scene seen in a mirror
    return {
        "batch1_128x224": f,
        "batch3_128x224": torch.cat([f, -f, mirrored]),
        "batch2_odd_97x171": F.interpolate(torch.cat([f, mirrored]), size=(97, 171), mode="bilinear"),
        "batch1_240x427": F.interpolate(native_flow(), size=(240, 427), mode="bilinear", antialias=True),
    }


def reference(model, flow: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.prediction({"Flow": flow})["Pred"]


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["torch", *EXPORTED])
def test_backend_matches_torch_fp32_on_real_flows(model, cache_dir, name):
    backend = B.make_backend(model, name, cache_dir=cache_dir)
    assert backend.name == name
    for case, flow in flow_cases().items():
        pred = backend(flow)
        ref = reference(model, flow)
        assert pred.shape == ref.shape and pred.dtype == torch.float32, case
        diff = (pred - ref).abs().max().item()
        assert diff <= TOL, f"{name} {case}: max |Δpred| {diff:.2e}"
        assert torch.allclose(pred.sum(1), torch.ones_like(pred[:, 0]), atol=1e-5)


@pytest.mark.parametrize("name", EXPORTED)
def test_exported_backends_stay_exact_on_a_large_map(model, cache_dir, name):
    """images/00000.flo at its own 480 × 854: where the runtimes' own normalisation drifts."""
    flow = native_flow()
    diff = (B.make_backend(model, name, cache_dir=cache_dir)(flow) - reference(model, flow)).abs().max().item()
    assert diff <= TOL, f"{name} at {tuple(flow.shape[2:])}: max |Δpred| {diff:.2e}"


@pytest.mark.parametrize("name", EXPORTED)
def test_a_model_with_batchnorm_and_bilinear_exports_exactly(name, tmp_path):
    torch.manual_seed(3)
    net = MethodeB(**{"unet.num_layers": 3, "unet.features_start": 8, "inner_normalisation": "BatchNorm",
                      "train_bn": True, "bilinear": True, "nAffineMasks": 3, "img_size": [40, 56]})
    for mod in net.modules():  # running statistics that are not the identity
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    net.eval()
    backend = B.make_backend(net, name, cache_dir=tmp_path)
    flow = F.interpolate(blackswan(), size=(45, 61), mode="bilinear").repeat(2, 1, 1, 1)
    assert (backend(flow) - reference(net, flow)).abs().max().item() <= TOL


@pytest.mark.parametrize("kind", ["instance", "instance_affine_running", "batch", "batch_running"])
def test_explicit_norm_is_the_layer_in_eval_mode(kind):
    torch.manual_seed(0)
    C = 5
    norm = {"instance": torch.nn.InstanceNorm2d(C),
            "instance_affine_running": torch.nn.InstanceNorm2d(C, affine=True, track_running_stats=True),
            "batch": torch.nn.BatchNorm2d(C, track_running_stats=False),
            "batch_running": torch.nn.BatchNorm2d(C)}[kind]
    for name, buf in list(norm.named_parameters()) + list(norm.named_buffers()):
        if name in ("running_var",):
            buf.data.uniform_(0.5, 2.0)
        elif buf.dtype.is_floating_point:
            buf.data.uniform_(-1.0, 1.0)
    norm.eval()
    x = 3.0 + 2.0 * torch.randn(3, C, 17, 23)
    with torch.no_grad():
        assert torch.allclose(E.ExplicitNorm(norm)(x), norm(x), atol=2e-5)


# ------------------------------------------------------------------------------------------------
def test_export_cli_onnx_has_dynamic_batch_and_size(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    out = tmp_path / "m.onnx"
    check = [] if "onnxruntime" in EXPORTED else ["--no-check"]
    assert E.main(["--format", "onnx", str(CKPT), str(out), *check]) == 0
    graph = onnx.load(str(out)).graph
    (inp,), (outp,) = graph.input, graph.output
    assert (inp.name, outp.name) == ("flow", "pred")
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 2, "height", "width"]
    if "onnxruntime" in EXPORTED:
        assert "max |Δpred| against torch" in capsys.readouterr().out


def test_export_cli_openvino_writes_xml_and_bin(model, tmp_path):
    ov = pytest.importorskip("openvino")
    out = tmp_path / "m.xml"
    assert E.main(["--format", "openvino", str(CKPT), str(out), "--no-check"]) == 0
    assert out.is_file() and out.with_suffix(".bin").is_file()
    ov_model = ov.Core().read_model(str(out))
    assert ov_model.input(0).get_partial_shape().to_string() == "[?,2,?,?]"
    flow = flow_cases()["batch2_odd_97x171"]
    pred = B.backend_from_file(out, "openvino")(flow)
    assert (pred - reference(model, flow)).abs().max().item() <= TOL
    # The weights stay fp32 (save_model's default would compress them to fp16).
    assert out.with_suffix(".bin").stat().st_size > 4 * sum(p.numel() for p in model.parameters()) * 0.99


def test_export_errors_are_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"error: checkpoint .*nope\.ckpt.* does not exist"):
        E.main(["--format", "onnx", str(tmp_path / "nope.ckpt"), str(tmp_path / "m.onnx")])
    if "openvino" in EXPORTED:
        with pytest.raises(SystemExit, match=r"\.xml"):
            E.main(["--format", "openvino", str(CKPT), str(tmp_path / "m.onnx")])
    with pytest.raises(E.ExportError, match="ClassicalEM cannot be exported"):
        E.PredictionGraph(ClassicalEM(nAffineMasks=2))


# ------------------------------------------------------------------------------------------------
def test_default_is_the_first_installed_of_the_measured_order(model, cache_dir):
    installed = B.available_backends()
    assert installed[0] == "torch" and set(installed) == {"torch", *EXPORTED}
    expected = next(n for n in B.PREFERENCE if n in installed)
    backend = B.make_backend(model, cache_dir=cache_dir)
    assert backend.name == expected
    flow = blackswan()
    assert (backend(flow) - reference(model, flow)).abs().max().item() <= TOL


def test_models_that_are_not_plain_networks_fall_back_to_torch():
    em = ClassicalEM(nAffineMasks=2, em_iterations=3).eval()
    backend = B.make_backend(em)
    assert backend.name == "torch"
    flow = F.interpolate(blackswan(), size=(48, 84), mode="bilinear")
    assert torch.equal(backend(flow), em.prediction({"Flow": flow})["Pred"])
    for name in EXPORTED:
        with pytest.raises(B.BackendError, match="ClassicalEM"):
            B.make_backend(em, name)


def test_missing_packages_fall_back_to_torch(model, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(B.importlib.util, "find_spec",
                        lambda n, *a: None if n in ("onnxruntime", "openvino") else real(n, *a))
    assert B.available_backends() == ["torch"]
    assert B.make_backend(model).name == "torch"
    with pytest.raises(B.BackendError, match="'openvino' is not installed"):
        B.make_backend(model, "openvino")


def test_bad_names_precisions_and_inputs(model):
    with pytest.raises(ValueError, match="backend must be one of"):
        B.make_backend(model, "tensorrt")
    with pytest.raises(ValueError, match="precision must be one of"):
        B.make_backend(model, "torch", precision="fp16")
    backend = B.make_backend(model, "torch")
    with pytest.raises(ValueError, match=r"flow \(B, 2, I, J\) or, for a temporal model, a clip "
                                         r"\(B, 2, T, I, J\), got shape \(1, 3, 8, 8\)"):
        backend(torch.zeros(1, 3, 8, 8))
    with pytest.raises(TypeError, match="ndarray"):
        backend(np.zeros((1, 2, 8, 8), np.float32))


# ------------------------------------------------------------------------------------------------
def test_exports_are_cached_by_content(model, tmp_path, monkeypatch):
    name = EXPORTED[0] if EXPORTED else pytest.skip("no onnxruntime nor openvino installed")
    B.make_backend(model, name, cache_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len([f for f in files if f.endswith((".onnx", ".xml"))]) == 1

    def no_export(*args, **kwargs):
        raise AssertionError("the cached export should have been reused")

    monkeypatch.setattr(B, "export_onnx", no_export)
    monkeypatch.setattr(B, "export_openvino", no_export)
    B.make_backend(model, name, cache_dir=tmp_path)
    monkeypatch.undo()

    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.head_model.model.pred_conv.bias.add_(0.5)
    assert B.model_digest(changed) != B.model_digest(model)
    backend = B.make_backend(changed, name, cache_dir=tmp_path)
    assert len([p for p in tmp_path.iterdir() if p.suffix in (".onnx", ".xml")]) == 2
    flow = blackswan()
    assert (backend(flow) - reference(changed, flow)).abs().max().item() <= TOL


def test_without_a_cache_dir_no_file_is_left(model, tmp_path, monkeypatch):
    name = EXPORTED[0] if EXPORTED else pytest.skip("no onnxruntime nor openvino installed")
    monkeypatch.setattr(B.tempfile, "tempdir", str(tmp_path))
    backend = B.make_backend(model, name)
    assert list(tmp_path.iterdir()) == []
    assert backend(blackswan()).shape == (1, 2, 128, 224)


# ------------------------------------------------------------------------------------------------
def test_bf16_is_opt_in_and_stays_close(model):
    # Half size: without native bf16 (AVX2 CPUs) oneDNN's bf16 convolutions are slow.
    flow = F.interpolate(blackswan(), size=(64, 112), mode="bilinear", antialias=True)
    fp32 = B.make_backend(model, "torch")(flow)
    bf16 = B.make_backend(model, "torch", precision="bf16")
    assert bf16.precision == "bf16"
    pred = bf16(flow)
    assert pred.dtype == torch.float32 and not torch.equal(pred, fp32)
    agreement = (pred.argmax(1) == fp32.argmax(1)).float().mean().item()
    assert agreement >= 0.99, f"bf16 argmax agreement {agreement:.4f}"
    assert B.default_backend_name(model, "bf16") == "torch"
    if "onnxruntime" in EXPORTED:
        with pytest.raises(B.BackendError, match="fp32 only"):
            B.make_backend(model, "onnxruntime", precision="bf16")
    if "openvino" in EXPORTED:
        import openvino as ov

        if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            with pytest.raises(B.BackendError, match="no bf16 on this CPU"):
                B.make_backend(model, "openvino", precision="bf16")


def test_readme_backend_snippet_runs(model, cache_dir):
    import re

    text = (REPO / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "make_backend" in b)
    flow = blackswan()[0]
    scope = {"model": model, "flow": flow}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - our own README
    assert scope["backend"].name == B.default_backend_name(model)
    assert (scope["pred"] - reference(model, flow[None])).abs().max().item() <= TOL


def test_export_cache_dir_is_in_the_project_cache_or_none(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert B.export_cache_dir() == tmp_path / "em_motion_segmentation" / "exports"
    assert (tmp_path / "em_motion_segmentation" / "exports").is_dir()
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert B.export_cache_dir() is None
    assert "temporary folder" in caplog.text
