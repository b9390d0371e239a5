"""Flow files: the Middlebury ``.flo`` reader and writer, ``.npy`` flows and the flow colour coding.

A ``.flo`` file is little-endian: float32 magic :data:`TAG_FLOAT`, int32 width, int32 height, then
H·W·2 float32 (u, v per pixel, row-major). A ``.npy`` flow holds one float array (H, W, 2). Every
reader validates what it returns (shape, finiteness, plausible magnitude) and raises
:class:`DataFileError` naming the file. This module imports nothing of the project, so every
layer may use it.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # only for the annotations: the readers and writers run without torch (extract_flow)
    from torch import Tensor

__all__ = ["TAG_FLOAT", "MAX_FLOW_SIDE", "MAX_FLOW_MAGNITUDE", "DataFileError", "read_flow", "write_flow",
           "flow_to_rgb"]

TAG_FLOAT = 202021.25
MAX_FLOW_SIDE = 100_000
#: largest |u| or |v| accepted, in pixels: far beyond any real motion (frames are at most
#: MAX_FLOW_SIDE wide), while Middlebury marks unknown flow with 1e9 and a scaled or corrupt file
#: holds values whose squares overflow float32 and turn every later loss into NaN
MAX_FLOW_MAGNITUDE = 1e5


class DataFileError(ValueError):
    """A data file is missing, unreadable or corrupt. ``str(err)`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _check_flow_array(path: str, flow: np.ndarray) -> np.ndarray:
    """Validate an (H, W, 2) float array and return it as float32."""
    if flow.ndim != 3 or flow.shape[2] != 2 or flow.shape[0] < 1 or flow.shape[1] < 1:
        hint = " (channel-first array? store it as H×W×2)" if flow.ndim == 3 and flow.shape[0] == 2 else ""
        raise DataFileError(path, f"expected flow H×W×2, got {tuple(flow.shape)}{hint}")
    if not np.issubdtype(flow.dtype, np.floating):
        raise DataFileError(path, f"expected a float flow array, got dtype {flow.dtype}")
    flow = flow.astype(np.float32, copy=False)
    if not np.isfinite(flow).all():
        raise DataFileError(path, "contains NaN or inf")
    peak = float(np.abs(flow).max())
    if peak > MAX_FLOW_MAGNITUDE:
        raise DataFileError(path, f"implausible flow: a vector component of {peak:.3g} px (at most "
                                  f"{MAX_FLOW_MAGNITUDE:.0e} accepted; 1e9 marks unknown flow in Middlebury files)")
    return flow


def _read_flo(path: str) -> np.ndarray:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise DataFileError(path, "missing file") from None
    except OSError as exc:
        raise DataFileError(path, f"unreadable: {exc}") from None
    if len(data) < 12:
        raise DataFileError(path, f"truncated: expected at least 12 bytes of header, got {len(data)}")
    tag = float(np.frombuffer(data, "<f4", count=1, offset=0)[0])
    if tag != TAG_FLOAT:
        raise DataFileError(path, f"bad magic {tag!r} (expected {TAG_FLOAT})")
    width = int(np.frombuffer(data, "<i4", count=1, offset=4)[0])
    height = int(np.frombuffer(data, "<i4", count=1, offset=8)[0])
    if not (0 < width < MAX_FLOW_SIDE and 0 < height < MAX_FLOW_SIDE):
        raise DataFileError(path, f"illegal size width={width} height={height}")
    expected = 12 + 8 * width * height
    if len(data) < expected:
        raise DataFileError(path, f"truncated: expected {expected} bytes, got {len(data)}")
    if len(data) > expected:
        raise DataFileError(path, f"size mismatch: expected {expected} bytes, got {len(data)} (trailing data)")
    flow = np.frombuffer(data, "<f4", count=2 * width * height, offset=12).reshape(height, width, 2)
    return _check_flow_array(path, flow.copy())


def _read_npy_flow(path: str) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataFileError(path, "missing file") from None
    except Exception as exc:  # corrupt header, truncated data, pickled object...
        raise DataFileError(path, f"unreadable .npy: {type(exc).__name__}: {exc}") from None
    if not isinstance(arr, np.ndarray):
        raise DataFileError(path, f"expected a single array, got {type(arr).__name__}")
    return _check_flow_array(path, arr)


def read_flow(path: str | os.PathLike) -> np.ndarray:
    """Read and validate a flow file: Middlebury .flo or .npy (H, W, 2) → float32 (H, W, 2).

    Raises :class:`DataFileError` for a missing file, a bad magic number, an illegal size, a
    truncated (or over-long) file, NaN/inf values, implausible values (a component above
    :data:`MAX_FLOW_MAGNITUDE` px) or a wrong shape.
    """
    path = os.fspath(path)
    if path.lower().endswith(".npy"):
        return _read_npy_flow(path)
    if not os.path.isfile(path):
        raise DataFileError(path, "missing file")
    return _read_flo(path)


def write_flow(path: str | os.PathLike, flow: np.ndarray | Tensor) -> None:
    """Write a Middlebury .flo file (float32 magic, int32 width, int32 height, H·W·2 float32).

    ``flow``: a NumPy array (H, W, 2) (the file's layout) or a torch tensor (2, H, W) (the
    loaders' layout). Values are written as little-endian float32, so the file round-trips
    bit-exactly through :func:`read_flow` and ``flowiz.read_flow``.
    """
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported: no need to import it here
    if torch is not None and isinstance(flow, torch.Tensor):
        if flow.dim() != 3 or flow.shape[0] != 2:
            raise ValueError(f"expected a flow tensor (2, H, W), got {tuple(flow.shape)}")
        arr = flow.detach().cpu().permute(1, 2, 0).numpy()
    else:
        arr = np.asarray(flow)
        if arr.ndim != 3 or arr.shape[2] != 2:
            raise ValueError(f"expected a flow array (H, W, 2), got {arr.shape}")
    height, width = int(arr.shape[0]), int(arr.shape[1])
    if not (0 < width < MAX_FLOW_SIDE and 0 < height < MAX_FLOW_SIDE):
        raise ValueError(f"illegal flow size {arr.shape}")
    header = np.array([TAG_FLOAT], "<f4").tobytes() + np.array([width, height], "<i4").tobytes()
    body = np.ascontiguousarray(arr, dtype="<f4").tobytes()
    with open(path, "wb") as fh:
        fh.write(header)
        fh.write(body)


def flow_to_rgb(flow: np.ndarray) -> np.ndarray:
    """Middlebury colour coding of a flow (H, W, 2) → uint8 (H, W, 3), via flowiz."""
    import flowiz

    # flowiz edits its input in place (unknown-flow and NaN fixes): give it a copy.
    return np.asarray(flowiz.convert_from_flow(np.array(flow, dtype=np.float32, copy=True)), dtype=np.uint8)
