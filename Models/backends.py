"""Inference backends: the same segmentation network run by torch, onnxruntime or OpenVINO.

    backend = make_backend(model)            # the fastest exact one installed
    pred = backend(flow)                     # flow (B, 2, I, J) float32 → pred (B, L, I, J), softmax over L

Every backend computes ``model.prediction({'Flow': flow})['Pred']`` in fp32 to max |Δ| ≤ 1e-4
(the tests check it on real flows, batch and size varying); ``precision='bf16'`` is an opt-in
that is not exact (argmax labels agree on ≥ 99 % of pixels).

* ``torch``: the model itself under ``torch.inference_mode``, contiguous (NCHW) memory. Every
  other torch variant measured was slower or no faster on this project's 2-core AMD EPYC
  (AVX2): channels_last, ``torch.jit.trace`` + ``freeze`` and ``optimize_for_inference`` (and they
  cost seconds to start). Also the only backend for models that are not plain networks
  (``ClassicalEM``), and the only one that runs bf16 on CPUs without native bf16.
* ``onnxruntime``: the ONNX export of :mod:`Models.export`, CPU execution provider, all graph
  optimisations, threads that sleep rather than spin between calls (spinning threads steal the
  cores from the rest of a pipeline on a 2-core machine).
* ``openvino``: the OpenVINO IR of the same graph, CPU plugin, ``f32`` inference precision
  (its default on CPUs with bf16 units would be bf16), latency hint.

``make_backend(model)`` with no name takes the first installed of :data:`PREFERENCE`: openvino,
then onnxruntime, then torch. The order is measured by ``bench/bench_inference.py`` for the
bundled model at 128 × 224 on this project's 2-core AMD EPYC (figures in bench/README.md), as
× the authors' eager fp32 at batch 1 / 8: openvino 1.68 / 1.48, onnxruntime 1.67 / 1.35,
torch 0.93 / 1.20 (1 thread, interleaved rounds, a loaded machine); at batch 8, the video app's,
and on 2 threads openvino was the faster of the two in every run. Models that cannot be exported
get torch.

Exports are made on demand into ``cache_dir`` (kept, named by a hash of the weights and the
network's hyperparameters, so a changed or adapted model gets a new file) or, without one, into
a temporary folder removed once the graph is loaded. A kept export is verified, not trusted: its
files are sealed by the SHA-256 of the exact bytes written (``<file>.sha256.json``, written last),
checked before every use; a file that does not match (replaced by another model's export,
truncated, corrupted) or does not load is exported again with a warning. A lock per export
(``<digest>.<backend>.lock``) keeps two processes from exporting or reading half-written files at once.
OpenVINO's compiled network (its ``CACHE_DIR``: the CPU plugin's graph after its own transformations) is
kept beside a cached export too, in ``<digest>.openvino.compiled/``, sealed the same way
(``<digest>.openvino.compiled.sha256.json``): compiling the bundled model from it takes 0.1–1 s instead of
0.6–2 s, the same outputs to the bit; a folder whose files do not match its seal is emptied, never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from emseg.core.cache import cache_root
from emseg.core.hparams import INFERENCE_BACKENDS, INFERENCE_PRECISIONS
from Models.exporting import ExportError, export_onnx, export_openvino, is_exportable

logger = logging.getLogger(__name__)

#: the backend and precision names are defined with segment.py's settings (emseg/core/hparams.py)
BACKENDS = INFERENCE_BACKENDS
#: the order ``make_backend(model)`` tries, fastest exact first (measured; see the module docstring)
PREFERENCE = ("openvino", "onnxruntime", "torch")
PRECISIONS = INFERENCE_PRECISIONS
_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
#: bumped when the exported graph changes, so cached files of an older export are not reused
EXPORT_VERSION = 1
_OV_NO_BF16 = "openvino has no bf16 on this CPU (no native bf16 instructions); use the torch backend for bf16"
_ORT_FP32_ONLY = ("the onnxruntime backend runs fp32 only (its CPU provider has no bf16 convolutions); "
                  "use the torch backend for bf16")


class BackendError(RuntimeError):
    """A backend cannot run this model or precision here; the message says why."""


def available_backends() -> list[str]:
    """The backends whose package is installed, in :data:`BACKENDS` order (torch always)."""
    return [name for name in BACKENDS if name == "torch" or importlib.util.find_spec(_PACKAGES[name]) is not None]


def _check_flow(flow: Tensor) -> Tensor:
    if not isinstance(flow, Tensor):
        raise TypeError(f"a backend takes flow as a torch.Tensor (B, 2, I, J), got {type(flow).__name__}")
    # (B, 2, T, I, J): a clip, for a temporal model (the network checks T against its own)
    if flow.dim() not in (4, 5) or flow.shape[1] != 2:
        raise ValueError(f"a backend takes flow (B, 2, I, J) or, for a temporal model, a clip (B, 2, T, I, J), "
                         f"got shape {tuple(flow.shape)}")
    return flow.detach().to(device="cpu", dtype=torch.float32).contiguous()


class Backend:
    """Callable: flow (B, 2, I, J) float32 → pred (B, L, I, J) float32 on the CPU, softmax over L.

    ``name`` is one of :data:`BACKENDS`, ``precision`` one of :data:`PRECISIONS`, ``threads`` the
    intra-op threads it uses.
    """

    name = "backend"

    def __init__(self, precision: str, threads: int) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        self.threads = int(threads)

    def __call__(self, flow: Tensor) -> Tensor:
        return self._run(_check_flow(flow))

    def _run(self, flow: Tensor) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, precision={self.precision!r}, threads={self.threads})"


class TorchBackend(Backend):
    """``model.prediction`` under ``torch.inference_mode`` (``no_grad`` for models that are not
    plain networks; bf16: autocast). ``threads`` sets torch's intra-op threads (process-wide)
    when given."""

    name = "torch"

    def __init__(self, model: nn.Module, precision: str = "fp32", threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(int(threads))
        super().__init__(precision, torch.get_num_threads())
        self.model = model.eval()
        self.plain = is_exportable(model)
        self.device = next((p.device for p in model.parameters()), torch.device("cpu"))

    def _run(self, flow: Tensor) -> Tensor:
        bf16 = self.precision == "bf16"
        # inference_mode only for plain networks: ClassicalEM's θ solver keeps scratch buffers that
        # later (training) code updates in place, which inference tensors refuse.
        grad_off = torch.inference_mode() if self.plain else torch.no_grad()
        with grad_off, torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = self.model.prediction({"Flow": flow.to(self.device)})["Pred"]
        return pred.float().cpu()


class OnnxRuntimeBackend(Backend):
    """An ONNX graph of :mod:`Models.export` (input ``flow``, output ``pred``) on onnxruntime's CPU
    provider. fp32 only: its CPU provider has no bf16 convolutions."""

    name = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike, precision: str = "fp32", threads: int | None = None) -> None:
        super().__init__(precision, threads or torch.get_num_threads())
        if precision != "fp32":
            raise BackendError(_ORT_FP32_ONLY)
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("the onnxruntime backend needs the 'onnxruntime' package") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])

    def _run(self, flow: Tensor) -> Tensor:
        (pred,) = self.session.run(["pred"], {"flow": flow.numpy()})
        return torch.from_numpy(pred)


def openvino_has_bf16(core=None) -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively on this CPU (False without openvino)."""
    if core is None:
        try:
            import openvino as ov
        except ImportError:
            return False
        core = ov.Core()
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoBackend(Backend):
    """An OpenVINO IR (.xml) or ONNX graph of :mod:`Models.export` on OpenVINO's CPU plugin.
    bf16 only where the CPU has native bf16 (OpenVINO would silently run fp32 otherwise)."""

    name = "openvino"

    def __init__(self, model_path: str | os.PathLike, precision: str = "fp32", threads: int | None = None,
                 compiled_cache: str | os.PathLike | None = None) -> None:
        """``compiled_cache``: a folder for OpenVINO's compiled networks (its ``CACHE_DIR``), read when it
        holds this network's, written when not; the caller vouches for its files (:func:`_sealed_compiled`)."""
        super().__init__(precision, threads or torch.get_num_threads())
        try:
            import openvino as ov
        except ImportError:
            raise BackendError("the openvino backend needs the 'openvino' package") from None
        core = ov.Core()
        if precision == "bf16" and not openvino_has_bf16(core):
            raise BackendError(_OV_NO_BF16)
        if compiled_cache is not None:
            core.set_property({"CACHE_DIR": str(compiled_cache)})
        config = {"INFERENCE_PRECISION_HINT": "f32" if precision == "fp32" else "bf16",
                  "INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = core.compile_model(core.read_model(str(model_path)), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def _run(self, flow: Tensor) -> Tensor:
        # share_outputs=False: the request reuses its output buffer on the next call.
        result = self.request.infer({0: flow.numpy()}, share_inputs=True, share_outputs=False)
        return torch.from_numpy(np.asarray(result[0], dtype=np.float32))


def model_digest(model: nn.Module) -> str:
    """A hex digest of what the exported graph depends on: the export version, the model's class,
    the network's hyperparameters and every weight and buffer (names, dtypes, shapes, values).

    The class is the one the model stands for: a :class:`~Models.network.SegmentationNetwork` is
    ``MethodeB``'s network (its ``MODEL_CLASS``), the same modules under the same names, so a
    ``MethodeB`` and the network loaded from its checkpoint share one digest, and one cached export."""
    h = hashlib.sha256()
    hp = dict(getattr(model, "hparams", {}))
    keys = ("nAffineMasks", "backbone", "features_backbone", "unet.num_layers", "unet.features_start",
            "inner_normalisation", "train_bn", "bilinear", "padding_mode", "inputs")
    cls = getattr(type(model), "MODEL_CLASS", type(model).__name__)
    h.update(repr((EXPORT_VERSION, cls, [(k, hp.get(k)) for k in keys])).encode())
    for key, value in model.state_dict().items():
        t = value.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]


@contextlib.contextmanager
def _export_folder(cache_dir: str | os.PathLike | None) -> Iterator[Path]:
    if cache_dir is not None:
        folder = Path(cache_dir)
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
    else:
        with tempfile.TemporaryDirectory(prefix="segmentation_export_") as tmp:
            yield Path(tmp)


def export_cache_dir() -> Path | None:
    """The folder that keeps exports between runs (``exports`` in the project's cache folder,
    :func:`emseg.core.cache.cache_root`), created; None, with a warning, where it cannot be created
    (the caller then exports into a temporary folder). Files there are named by
    :func:`model_digest`, so they can be deleted at any time and are never stale."""
    folder = cache_root() / "exports"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        logger.warning("cannot keep exported networks in %s (%s); exporting into a temporary folder", folder, err)
        return None
    return folder


#: the files of one export, by backend: the path given to the runtime first
_EXPORT_SUFFIXES = {"onnxruntime": (".onnx",), "openvino": (".xml", ".bin")}
_SEAL_SUFFIX = ".sha256.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _seal_path(path: Path) -> Path:
    return path.with_name(path.name + _SEAL_SUFFIX)


def _read_seal(seal: Path, why_missing: str = "") -> tuple[Any, str | None]:
    """The SHA-256 record of a seal file, or (None, why it cannot be read)."""
    try:
        return json.loads(seal.read_text())["sha256"], None
    except FileNotFoundError:
        return None, f"no seal {seal.name}{why_missing}"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return None, f"unreadable seal {seal.name} ({err})"


def verify_export(path: str | os.PathLike, name: str) -> str | None:
    """Why the cached export ``path`` of backend ``name`` cannot be used, or None when every one of its
    files is there with the exact bytes its seal (``<file>.sha256.json``, written last) records."""
    path = Path(path)
    files = [path.with_suffix(sfx) for sfx in _EXPORT_SUFFIXES[name]]
    recorded, problem = _read_seal(_seal_path(path), " (an export of an older version, or one interrupted)")
    if problem:
        return problem
    for f in files:
        try:
            digest = _sha256(f)
        except OSError as err:
            return f"{f.name} unreadable ({err.strerror or err})"
        if not isinstance(recorded, dict) or recorded.get(f.name) != digest:
            return f"{f.name} is not the file that was exported (its SHA-256 differs from the seal's)"
    return None


@contextlib.contextmanager
def _export_lock(folder: Path, stem: str) -> Iterator[None]:
    """One process at a time checks, makes and loads a given export: a second one waits, then finds
    the first one's sealed files (no torn cache, no double export)."""
    import fcntl

    with open(folder / f"{stem}.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _compiled_dir(path: Path) -> Path:
    """The folder of OpenVINO's compiled networks for the export ``path`` (``<digest>.openvino.compiled``)."""
    return path.with_name(f"{path.stem}.openvino.compiled")


def _folder_hashes(folder: Path) -> dict[str, str]:
    return {p.name: _sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}


def verify_compiled(folder: str | os.PathLike) -> str | None:
    """Why OpenVINO's compiled-network folder ``folder`` cannot be used, or None when it holds exactly the
    files, with the exact bytes, that its seal (``<folder>.sha256.json``) records."""
    folder = Path(folder)
    recorded, problem = _read_seal(_seal_path(folder))
    if problem:
        return problem
    try:
        found = _folder_hashes(folder)
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    if found != recorded:
        return "its files are not those OpenVINO wrote (names or SHA-256 differ from the seal's)"
    return None


@contextlib.contextmanager
def _sealed_compiled(path: Path) -> Iterator[Path]:
    """OpenVINO's compiled-network folder of the cached export ``path``, for ``CACHE_DIR``: used as it is
    when its seal verifies, else emptied first (with a warning when it held files); sealed after a
    compile that succeeded (OpenVINO adds a file for each new configuration). Call under
    :func:`_export_lock`, so that no other process compiles into it meanwhile."""
    folder = _compiled_dir(path)
    seal = _seal_path(folder)
    problem = verify_compiled(folder) if folder.exists() else "missing"
    if problem is not None:
        if folder.exists() and any(folder.iterdir()):
            logger.warning("OpenVINO's compiled network in %s is not used: %s; compiling anew", folder, problem)
        seal.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(exist_ok=True)
    yield folder
    hashes = _folder_hashes(folder)
    if problem is not None or json.loads(seal.read_text())["sha256"] != hashes:
        with tempfile.NamedTemporaryFile("w", dir=folder.parent, prefix=".seal_", delete=False) as fh:
            json.dump({"sha256": hashes, "export_version": EXPORT_VERSION}, fh, indent=1)
        os.replace(fh.name, seal)


def _export_sealed(model: nn.Module, name: str, path: Path) -> None:
    """Export into a private folder beside ``path``, then move the files into place and write the seal
    (their SHA-256) last, so a crash leaves either the old state or unsealed files, never a seal that lies."""
    exporter = export_onnx if name == "onnxruntime" else export_openvino
    with tempfile.TemporaryDirectory(prefix=".export_", dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        exporter(model, staged)
        names = [path.with_suffix(sfx).name for sfx in _EXPORT_SUFFIXES[name]]
        hashes = {n: _sha256(Path(tmp) / n) for n in names}
        _seal_path(path).unlink(missing_ok=True)
        for n in names:
            os.replace(Path(tmp) / n, path.with_name(n))
        seal_tmp = Path(tmp) / "seal"
        seal_tmp.write_text(json.dumps({"sha256": hashes, "export_version": EXPORT_VERSION}, indent=1))
        os.replace(seal_tmp, _seal_path(path))


def exported_file(model: nn.Module, name: str, folder: str | os.PathLike) -> Path:
    """The export of ``model`` for backend ``name`` in ``folder``, made if not there yet:
    ``<digest>.onnx`` for onnxruntime, ``<digest>.xml`` (+ ``.bin``) for openvino, each sealed by
    ``<file>.sha256.json``. A cached export whose bytes do not match its seal (replaced, truncated,
    corrupted) is exported again, with a warning, and never used. Call under :func:`_export_lock`."""
    if name not in _EXPORT_SUFFIXES:
        raise ValueError(f"no export for backend {name!r}")
    folder = Path(folder)
    path = folder / f"{model_digest(model)}{_EXPORT_SUFFIXES[name][0]}"
    problem = verify_export(path, name) if path.exists() else "missing"
    if problem is not None:
        if problem != "missing":
            logger.warning("cached export %s is not used: %s; exporting the network again", path, problem)
        else:
            logger.info("exporting the network to %s", path)
        _export_sealed(model, name, path)
    return path


def _cached_backend(model: nn.Module, name: str, folder: Path, precision: str, threads: int | None,
                    keep_compiled: bool = False) -> Backend:
    with _export_lock(folder, f"{model_digest(model)}.{name}"):
        path = exported_file(model, name, folder)
        try:
            return _load_exported(path, name, precision, threads, keep_compiled)
        except Exception as err:  # noqa: BLE001 - sealed yet unloadable (e.g. a runtime upgrade): export anew, once
            logger.warning("cached export %s does not load (%s); exporting the network again", path,
                           str(err).splitlines()[0] if str(err) else type(err).__name__)
            _export_sealed(model, name, path)
            shutil.rmtree(_compiled_dir(path), ignore_errors=True)  # compiled from the file replaced
            _seal_path(_compiled_dir(path)).unlink(missing_ok=True)
            return _load_exported(path, name, precision, threads, keep_compiled)


def _load_exported(path: Path, name: str, precision: str, threads: int | None, keep_compiled: bool) -> Backend:
    """:func:`backend_from_file`; for OpenVINO with ``keep_compiled``, through its sealed compiled-network folder."""
    if name != "openvino" or not keep_compiled:
        return backend_from_file(path, name, precision, threads)
    with _sealed_compiled(path) as compiled:
        return OpenVinoBackend(path, precision, threads, compiled_cache=compiled)


def backend_from_file(path: str | os.PathLike, name: str, precision: str = "fp32",
                      threads: int | None = None) -> Backend:
    """An onnxruntime or openvino backend on an exported file (.onnx, or .xml for openvino)."""
    if name == "onnxruntime":
        return OnnxRuntimeBackend(path, precision, threads)
    if name == "openvino":
        return OpenVinoBackend(path, precision, threads)
    raise ValueError(f"backend_from_file: name must be 'onnxruntime' or 'openvino', got {name!r}")


def default_backend_name(model: nn.Module, precision: str = "fp32") -> str:
    """What ``make_backend(model, None, precision)`` picks: the first installed of
    :data:`PREFERENCE` for an exportable model in fp32, else torch."""
    if precision != "fp32" or not is_exportable(model):
        return "torch"
    installed = available_backends()
    return next(name for name in PREFERENCE if name in installed)


def make_backend(model: nn.Module, name: str | None = None, precision: str = "fp32",
                 cache_dir: str | os.PathLike | None = None, threads: int | None = None) -> Backend:
    """A :class:`Backend` running ``model``'s prediction: ``name`` one of :data:`BACKENDS`, or None
    for :func:`default_backend_name`. ``cache_dir`` keeps exports between runs (default: a
    temporary folder, removed once loaded); ``threads`` the intra-op threads (default torch's).

    Raises ``ValueError`` for an unknown name or precision and :class:`BackendError` when the
    named backend is not installed or cannot run this model or precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if name is None:
        name = default_backend_name(model, precision)
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {name!r}")
    if name == "torch":
        return TorchBackend(model, precision, threads)
    if name not in available_backends():
        raise BackendError(f"backend {name!r} is not installed (pip install {_PACKAGES[name]}); "
                           f"installed: {available_backends()}")
    if not is_exportable(model):
        raise BackendError(f"backend {name!r} cannot run {type(model).__name__}: only plain networks on the flow "
                           "can be exported; use the torch backend")
    # Refused before exporting, which takes seconds.
    if precision == "bf16" and name == "onnxruntime":
        raise BackendError(_ORT_FP32_ONLY)
    if precision == "bf16" and name == "openvino" and not openvino_has_bf16():
        raise BackendError(_OV_NO_BF16)
    try:
        with _export_folder(cache_dir) as folder:
            return _cached_backend(model, name, folder, precision, threads, keep_compiled=cache_dir is not None)
    except ExportError as err:
        raise BackendError(str(err)) from None


def parity(model: nn.Module, path: str | os.PathLike, name: str, flow: Tensor | None = None) -> float:
    """max |Δpred| between backend ``name`` on the exported file ``path`` and the model in torch
    fp32, on ``flow`` (B, 2, I, J) (a temporal model: (B, 2, T, I, J)) or, by default, a smooth synthetic
    flow at the model's size."""
    if flow is None:
        I, J = (int(s) for s in model.hparams["img_size"])
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, I), torch.linspace(-1, 1, J), indexing="ij")
        inside = ((xx - 0.2) ** 2 + yy ** 2 < 0.25).float()
        flow = torch.stack([2.0 + 0.5 * xx + 3.0 * inside, -1.0 + 0.3 * yy - 2.0 * inside])[None]
        T = int(getattr(model, "clip_length", 1))
        if T > 1:  # a temporal model's clip: the disc moving a pixel a frame
            flow = torch.stack([torch.roll(flow, k, dims=-1) for k in range(T)], dim=2)
    ref = TorchBackend(model)(flow)
    return (backend_from_file(path, name)(flow) - ref).abs().max().item()
