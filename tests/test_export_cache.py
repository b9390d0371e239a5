"""The export cache is verified, not trusted (Models/backends.py), and the export command destroys nothing
(Models/export.py): fault injection on the cached files, two processes exporting at once."""

from __future__ import annotations

import copy
import importlib.util
import json
import multiprocessing as mp
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from Models import backends as B
from Models import export as E
from Models.CoherenceNets.MethodeB import MethodeB

REPO = Path(__file__).resolve().parent.parent
CKPT = REPO / "checkpoints" / "em_small.ckpt"
EXPORTED = [n for n in ("onnxruntime", "openvino") if importlib.util.find_spec(n) is not None]
SUFFIX = {"onnxruntime": ".onnx", "openvino": ".xml"}
TOL = 1e-4


SMALL = {"unet.num_layers": 3, "unet.features_start": 8, "img_size": [32, 48]}


def small_model() -> MethodeB:
    """A small network (exports in a fraction of the bundled model's time; the cache does not care)."""
    torch.manual_seed(0)
    return MethodeB(**SMALL).eval()


@pytest.fixture(scope="module")
def model() -> MethodeB:
    return small_model()


@pytest.fixture(scope="module")
def other(model) -> MethodeB:
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.head_model.model.pred_conv.bias.add_(torch.tensor([2.0, -2.0]))
    return changed


def flow() -> torch.Tensor:
    f = torch.from_numpy(np.load(REPO / "tests" / "data" / "blackswan_flow_128x224.npy")).float()[None]
    return torch.nn.functional.interpolate(f, size=(32, 48), mode="bilinear", antialias=True)


def reference(model, f: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.prediction({"Flow": f})["Pred"]


def rewrite(path, data: bytes) -> None:
    """Damage a cached file as a new file under its name: a runtime that still maps the old file (OpenVINO
    maps weights and compiled blobs) would die of SIGBUS if the same inode were truncated under it."""
    tmp = path.with_name(path.name + ".damaged")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def cached(model, name: str, folder: Path) -> Path:
    return folder / f"{B.model_digest(model)}{SUFFIX[name]}"


@pytest.mark.parametrize("name", EXPORTED or [pytest.param("none", marks=pytest.mark.skip("no exporter"))])
def test_a_cached_file_replaced_by_another_models_export_is_not_used(model, other, name, tmp_path, caplog):
    B.make_backend(model, name, cache_dir=tmp_path)
    B.make_backend(other, name, cache_dir=tmp_path)
    mine, theirs = cached(model, name, tmp_path), cached(other, name, tmp_path)
    assert B.verify_export(mine, name) is None
    for sfx in ([".onnx"] if name == "onnxruntime" else [".xml", ".bin"]):
        rewrite(mine.with_suffix(sfx), theirs.with_suffix(sfx).read_bytes())  # same name, another model's bytes
    assert "SHA-256 differs" in B.verify_export(mine, name)
    backend = B.make_backend(model, name, cache_dir=tmp_path)
    assert "is not used" in caplog.text and "exporting the network again" in caplog.text
    f = flow()
    assert (backend(f) - reference(model, f)).abs().max().item() <= TOL
    assert B.verify_export(mine, name) is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_seal", "garble_seal"])
def test_a_damaged_cached_export_is_exported_again(model, damage, tmp_path, caplog):
    # openvino's .bin for the damage to the weights, onnxruntime's single file for the seal's
    want = "openvino" if damage in ("truncate", "flip") else "onnxruntime"
    name = want if want in EXPORTED else pytest.skip(f"{want} not installed")
    B.make_backend(model, name, cache_dir=tmp_path)
    path = cached(model, name, tmp_path)
    victim = path.with_suffix(".bin") if name == "openvino" else path
    data = victim.read_bytes()
    seal = path.with_name(path.name + ".sha256.json")
    if damage == "truncate":
        rewrite(victim, data[: len(data) // 3])
    elif damage == "flip":
        rewrite(victim, data[:-100] + bytes(b ^ 0xFF for b in data[-100:]))
    elif damage == "delete_seal":
        seal.unlink()
    else:
        seal.write_text("{not json")
    assert B.verify_export(path, name) is not None
    backend = B.make_backend(model, name, cache_dir=tmp_path)
    assert "exporting the network again" in caplog.text
    f = flow()
    assert (backend(f) - reference(model, f)).abs().max().item() <= TOL
    assert B.verify_export(path, name) is None and json.loads(seal.read_text())["sha256"]


def test_a_sealed_export_is_reused_without_exporting(model, tmp_path, monkeypatch):
    name = EXPORTED[0] if EXPORTED else pytest.skip("no onnxruntime nor openvino installed")
    B.make_backend(model, name, cache_dir=tmp_path)

    def no_export(*args, **kwargs):
        raise AssertionError("a verified export must be reused")

    monkeypatch.setattr(B, "export_onnx", no_export)
    monkeypatch.setattr(B, "export_openvino", no_export)
    B.make_backend(model, name, cache_dir=tmp_path)
    # nothing but the export's files, its seal and its lock is left in the cache
    leftovers = [p.name for p in tmp_path.iterdir() if not p.name.startswith(B.model_digest(model))]
    assert leftovers == []


def _export_in_a_process(folder: str, name: str, out: mp.Queue) -> None:
    torch.set_num_threads(1)
    m = small_model()
    backend = B.make_backend(m, name, cache_dir=folder)
    f = flow()
    out.put(float((backend(f) - reference(m, f)).abs().max()))


def test_two_processes_exporting_at_once_do_not_tear_the_cache(tmp_path):
    name = EXPORTED[-1] if EXPORTED else pytest.skip("no onnxruntime nor openvino installed")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_export_in_a_process, args=(str(tmp_path), name, q)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    assert max(q.get(timeout=5) for _ in procs) <= TOL
    (path,) = [p for p in tmp_path.iterdir() if p.suffix == SUFFIX[name]]
    assert B.verify_export(path, name) is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export_")]


# ------------------------------------------------------------------------------------------------ Models.export
def test_export_never_writes_over_its_checkpoint(tmp_path):
    ckpt = tmp_path / "m.ckpt"
    shutil.copyfile(CKPT, ckpt)
    before = ckpt.read_bytes()
    for args in (["--format", "onnx", str(ckpt), str(ckpt)],
                 ["--format", "onnx", str(ckpt), str(ckpt), "--overwrite"]):
        with pytest.raises(SystemExit, match=r"error: .*m\.ckpt"):
            E.main(args)
        assert ckpt.read_bytes() == before
    onnx_named = tmp_path / "same.onnx"
    shutil.copyfile(CKPT, onnx_named)  # the checkpoint under an export's name: still the input
    with pytest.raises(SystemExit, match="is the checkpoint being exported"):
        E.main(["--format", "onnx", str(onnx_named), str(onnx_named), "--overwrite", "--no-check"])


def test_export_refuses_an_existing_output_without_overwrite(tmp_path):
    pytest.importorskip("onnx")
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep me")
    with pytest.raises(SystemExit, match=r"m\.onnx exists; pass --overwrite"):
        E.main(["--format", "onnx", str(CKPT), str(out), "--no-check"])
    assert out.read_bytes() == b"keep me"
    assert E.main(["--format", "onnx", str(CKPT), str(out), "--no-check", "--overwrite"]) == 0
    assert out.read_bytes() != b"keep me"
