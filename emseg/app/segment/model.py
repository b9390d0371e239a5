"""The model segment.py runs, and what runs its network: checkpoint loading, backend choice, threads.

torch, Lightning and the backends are imported inside the functions that need them, so that
segment.py can start its flow thread first (:mod:`.source`).
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emseg.app.segment.options import FLOW_WIDTH_HPARAM
from emseg.core import hparams as H

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]  # emseg/app/segment/model.py → the repository (or site-packages)
BUNDLED_CKPT = REPO / H.BUNDLED_CKPT_NAME
CLASSICAL_EM = "ClassicalEM"


def checkpoint_path(ckpt: str | os.PathLike | None) -> Path:
    """The file ``--ckpt`` names (the bundled one for None); FileNotFoundError naming the flag."""
    path = BUNDLED_CKPT if ckpt is None else Path(ckpt)
    if not path.is_file():
        raise FileNotFoundError(f"--ckpt {path}: no such file")
    return path


def load_segmenter(ckpt: str | os.PathLike | None = None, trust: bool = False, device: str | None = None,
                   trainable: bool = False):
    """The bundled model by default; ``'ClassicalEM'`` for the EM baseline. In eval mode on
    ``device`` (default: cuda if available).

    A trained checkpoint gives its network alone (``Models.network.SegmentationNetwork``: the same
    predictions, digest and cached exports as the ``MethodeB``, without importing Lightning, 1.7 s of a
    short clip's run); ``trainable=True`` gives the ``MethodeB`` itself (loss, training), which
    ``segment_video`` also builds from the network for ``--adapt`` (``Models.network.as_methode_b``)."""
    import torch

    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    if ckpt == CLASSICAL_EM:
        from Models.CoherenceNets.ClassicalEM import ClassicalEM

        model = ClassicalEM(nAffineMasks=2)
    elif trainable:
        from Models.CoherenceNets.MethodeB import MethodeB

        model = MethodeB.load_from_checkpoint(str(checkpoint_path(ckpt)), trust_checkpoint=trust)
    else:
        from Models.network import SegmentationNetwork

        model = SegmentationNetwork.load_from_checkpoint(checkpoint_path(ckpt), trust_checkpoint=trust)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval()


class _Opaque(dict):
    """Whatever a checkpoint's pickle names (tensors, Lightning's AttributeDict, ...), built from
    nothing: a dict, so that pickled dict items still land in it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        pass


class _PeekUnpickler(pickle.Unpickler):
    """Reads a checkpoint's plain data and nothing else: every class it names is :class:`_Opaque`
    (so no code of the file runs, and nothing is imported), every tensor storage None."""

    def find_class(self, module: str, name: str) -> Any:
        return _Opaque

    def persistent_load(self, pid: Any) -> None:
        return None


def peek_hparams(ckpt: str | os.PathLike | None) -> dict | None:
    """A checkpoint's ``hyper_parameters``, read without torch (nor any class of the file: see
    :class:`_PeekUnpickler`), or None where they cannot be read so (not a zip checkpoint, another
    layout): the caller then waits for the model. For starting the flow before the model loads,
    at the model's ``flow_width``; the loaded model's own record is what counts (checked after)."""
    try:
        path = checkpoint_path(ckpt)
        with zipfile.ZipFile(path) as z:
            (name,) = [n for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            with z.open(name) as fh:
                data = _PeekUnpickler(fh).load()
    except (OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError, AttributeError,
            TypeError, IndexError, KeyError):
        return None
    hp = data.get("hyper_parameters") if isinstance(data, dict) else None
    return dict(hp) if isinstance(hp, dict) else None


def recorded_flow_width(hparams: dict, override: int | None) -> int | None:
    """The width to downscale frames to before the flow: ``override``, else the hyperparameters' record."""
    if override:
        return int(override)
    w = hparams.get(FLOW_WIDTH_HPARAM)
    return int(w) if w else None


def flow_width_of(model, override: int | None) -> int | None:
    """The width to downscale frames to before the flow: ``override``, else the model's record."""
    return recorded_flow_width(getattr(model, "hparams", {}), override)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block, restored after.

    The pipeline's own tensor work (confidence, fusion, significance) is on small grids, where a
    second intra-op thread gains nothing; and while the decode/flow and writer threads keep the
    other core busy, OpenMP's fork-join waits on a thread that is not scheduled: measured on a
    busy 2-core machine, the confidence stage took 600 ms a frame on 2 threads against 7 ms alone.
    """
    import torch

    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def model_device(model) -> torch.device:
    import torch

    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def make_predictor(model, backend: str | None = None, precision: str = "fp32", threads: int | None = None,
                   keep_export: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """flows (B, 2, I, J) float32 at the model's size → pred (B, L, I, J) float32 on the CPU.

    ``backend`` (``Models.backends``: torch, onnxruntime, openvino; None = the fastest exact one
    installed) runs the network on the CPU with ``threads`` intra-op threads (default: torch's
    count); a model on a GPU always runs in torch there. ``keep_export``: an exported network is
    kept in the cache folder (``Models.backends.export_cache_dir``) for the next run, rather than
    exported again (5 s for the bundled model)."""
    import torch

    device = model_device(model)
    if device.type != "cpu":
        if backend not in (None, "torch"):
            raise ValueError(f"--backend {backend} runs on the CPU; the model is on {device} (use --backend torch)")

        def predict(flows: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return model.prediction({"Flow": flows.to(device)})["Pred"].float().cpu()

        return predict
    from Models.backends import default_backend_name, export_cache_dir, make_backend

    before = torch.get_num_threads()
    threads = int(threads or before)
    name = backend or default_backend_name(model, precision)  # decided once: the cache is for exports only
    cache = export_cache_dir() if keep_export and name != "torch" else None
    run = make_backend(model, name, precision, threads=threads, cache_dir=cache)
    if torch.get_num_threads() != before:  # the torch backend sets its count process-wide
        torch.set_num_threads(before)
    logger.info("network backend: %s (%s, %d threads)", run.name, precision, threads)

    def predict_cpu(flows: torch.Tensor) -> torch.Tensor:
        if run.name != "torch":  # an exported network has its own thread pool
            return run(flows.float().contiguous())
        with torch_threads(threads):  # the threads it was made with, even inside torch_threads(1)
            return run(flows.float().contiguous())

    return predict_cpu


def check_save_adapted(path: str | os.PathLike | None, ckpt: str | os.PathLike | None = None,
                       overwrite: bool = False) -> None:
    """ValueError, before any work, when ``--save_adapted`` would destroy a checkpoint: the one being
    adapted (``--ckpt``, the bundled model by default) or the bundled model, always; any other existing
    file unless ``overwrite``."""
    if path is None:
        return
    target = Path(path)
    sources = [BUNDLED_CKPT] + ([Path(ckpt)] if ckpt and str(ckpt) != CLASSICAL_EM else [])
    for src in sources:
        same = (target.exists() and src.exists() and os.path.samefile(target, src)) or \
            target.resolve() == src.resolve()
        if same:
            what = "the bundled model" if src == BUNDLED_CKPT else "the checkpoint being adapted (--ckpt)"
            raise ValueError(f"--save_adapted {target} is {what}; it is never written over: give another path")
    if target.exists() and not overwrite:
        raise ValueError(f"--save_adapted {target} exists; pass --overwrite to replace it, or give another path")


def save_adapted(model, path: str | os.PathLike, overwrite: bool = False,
                 ckpt: str | os.PathLike | None = None) -> None:
    """The adapted weights as a checkpoint that ``--ckpt`` (and ``MethodeB.load_from_checkpoint``) reads,
    written then renamed (a full disk leaves no partial file; its error names the file)."""
    from Models.checkpoint_io import save_checkpoint_file

    check_save_adapted(path, ckpt, overwrite)
    ckpt_obj = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint_file(ckpt_obj, Path(path))
