"""From flows (or a video) to masks: the logic behind segment.py.

For every flow it writes, in ``out``: ``{name}_proba.npy`` (L × I × J float32 at the model's size),
``{name}_binary.png`` (0/255 at the flow's own size: the probabilities are resized, then binarised),
``{name}_overlay.png`` (the frame — or the flow's colour coding when there is no frame — with the
segments tinted and the foreground outlined) and ``segmentation.gif`` of all overlays.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from csvflowdatamodule.CsvDataset import FilesLoaders, read_flow
from evaluationmodule.BinarisationModule import BinarisationModule
from evaluationmodule.SaveModule import write_mask_png, write_npy
from utils.atomic_io import atomic_write
from utils.figures import flow_to_rgb

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
BUNDLED_CKPT = REPO / "checkpoints" / "em_small.ckpt"
FLOW_SUFFIXES = (".flo", ".npy")
PALETTE = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
                    [140, 86, 75], [227, 119, 194], [127, 127, 127]], dtype=np.float32)


def load_segmenter(ckpt: str | os.PathLike | None = None, trust: bool = False, device: str | None = None):
    """The bundled model by default; ``'ClassicalEM'`` for the EM baseline."""
    from Models.CoherenceNets.ClassicalEM import ClassicalEM
    from Models.CoherenceNets.MethodeB import MethodeB

    if ckpt == "ClassicalEM":
        model = ClassicalEM(nAffineMasks=2)
    else:
        path = BUNDLED_CKPT if ckpt is None else Path(ckpt)
        model = MethodeB.load_from_checkpoint(str(path), trust_checkpoint=trust)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval()


def list_flows(flow: str | None = None, flows: str | None = None) -> list[Path]:
    if flow is not None:
        p = Path(flow)
        if not p.is_file():
            raise FileNotFoundError(f"--flow {flow}: no such file")
        return [p]
    d = Path(flows)
    if not d.is_dir():
        raise NotADirectoryError(f"--flows {flows}: not a directory")
    found = sorted(p for p in d.iterdir() if p.suffix.lower() in FLOW_SUFFIXES)
    if not found:
        raise FileNotFoundError(f"--flows {flows}: no .flo or .npy files in it")
    return found


def overlay(base: np.ndarray, pred: np.ndarray, binary: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """base uint8 (H, W, 3), pred (L, H, W), binary (H, W) bool → uint8 (H, W, 3): each pixel tinted by
    its argmax label, the foreground's boundary drawn white."""
    labels = pred.argmax(0)
    tint = PALETTE[labels % len(PALETTE)]
    out = (1 - alpha) * base.astype(np.float32) + alpha * tint
    edge = binary ^ _erode(binary)
    out[edge] = 255
    return out.clip(0, 255).astype(np.uint8)


def _erode(mask: np.ndarray) -> np.ndarray:
    m = np.pad(mask, 1, mode="edge")
    return m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]


def segment_flows(model, flow_paths: Sequence[Path], out: str | os.PathLike, frames: Sequence[Path] | None = None,
                  batch_size: int = 8, gif: bool = True, progress: bool = True) -> dict:
    """Segment each flow file; returns counts and the output paths (see the module docstring)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    img_size = model.hparams["img_size"]
    loader = FilesLoaders()
    binariser = BinarisationModule(getattr(model, "binary_method", "exceptbiggest"))
    device = next(iter(model.buffers())).device
    overlays = []
    bar = tqdm(total=len(flow_paths), desc="segmenting", unit="flow", disable=not progress)
    for start in range(0, len(flow_paths), batch_size):
        chunk = flow_paths[start:start + batch_size]
        flows = torch.stack([loader.load_file(path=str(p), type="Flow", img_size=img_size) for p in chunk])
        with torch.no_grad():
            pred = model.prediction({"Flow": flows.to(device)})["Pred"].float().cpu()
        for k, path in enumerate(chunk):
            full = read_flow(str(path))  # (H, W, 2) at the file's own size
            H, W = full.shape[:2]
            proba = F.interpolate(pred[k:k + 1], size=(H, W), mode="bilinear", align_corners=False)
            binary = binariser.binarise({"Pred": proba})["PredMask"][0].numpy()
            name = path.stem
            write_npy(pred[k].numpy().astype(np.float32), out / f"{name}_proba.npy")
            write_mask_png(binary, out / f"{name}_binary.png")
            if frames is not None and start + k < len(frames):
                base = np.array(Image.open(frames[start + k]).convert("RGB").resize((W, H)))
            else:
                base = flow_to_rgb(torch.from_numpy(full).permute(2, 0, 1))
            ov = overlay(base, proba[0].numpy(), binary)
            atomic_write(out / f"{name}_overlay.png", lambda p, im=Image.fromarray(ov): im.save(p, format="PNG"))
            overlays.append(ov)
            bar.update(1)
    bar.close()
    result = {"n_flows": len(flow_paths), "out": str(out)}
    if gif and len(overlays) > 1:
        scale = min(1.0, 480 / overlays[0].shape[1])
        size = (int(overlays[0].shape[1] * scale), int(overlays[0].shape[0] * scale))
        imgs = [Image.fromarray(o).resize(size) for o in overlays]
        atomic_write(out / "segmentation.gif", lambda p: imgs[0].save(p, format="GIF", save_all=True,
                                                                     append_images=imgs[1:], duration=80, loop=0))
        result["gif"] = str(out / "segmentation.gif")
    return result


def segment_video(model, video: str | os.PathLike, out: str | os.PathLike, method: str = "dis",
                  progress: bool = True, **kw) -> dict:
    """Flow (t → t+1) of every frame pair with ``extract_flow`` (kept in ``out/flow``), then segment."""
    from csvflowdatamodule.extract_flow import extract_flow

    flow_dir = Path(out) / "flow"
    extract_flow(flow_dir, video=video, method=method, progress=progress)
    flows = sorted((flow_dir / "flows").glob("*.flo"))
    frames = [flow_dir / "frames" / f"{p.stem}.png" for p in flows]
    return segment_flows(model, flows, out, frames=frames, progress=progress, **kw)
