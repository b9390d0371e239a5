"""emseg/core/figures.py: colour codings, the per-frame and per-batch figures, saving and logging them."""

from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from emseg.core import figures
from emseg.core.figures import (
    flow_to_rgb,
    frame_figure,
    frame_panels,
    frames_figure,
    image_to_rgb,
    label_map_to_rgb,
    labels_to_rgb,
    log_figure,
    masks_to_rgb,
    save_figure,
)

TAB10 = np.array(plt.get_cmap("tab10").colors)


def sample(L: int = 3, I: int = 16, J: int = 24) -> dict:
    g = torch.Generator().manual_seed(0)
    pred = torch.softmax(torch.randn(L, I, J, generator=g), 0)
    return {"Image": torch.rand(3, I, J, generator=g) - 0.5, "Flow": torch.randn(2, I, J, generator=g),
            "Pred": pred, "PredMask": pred.argmax(0) > 0, "GtMask": (torch.rand(I, J, generator=g) > 0.5).long(),
            "ParametricFlow": torch.randn(2, I, J, generator=g)}


def test_flow_colour_coding():
    flow = torch.zeros(2, 4, 6)
    flow[0, :, 3:] = 5.0  # right half moves right, left half is still
    rgb = flow_to_rgb(flow)
    assert rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8
    assert (rgb[:, :3] == 255).all()  # no motion: white
    assert (rgb[:, 3:] != 255).any() and (rgb[:, 3:] == rgb[0, 3]).all()  # one motion: one colour
    left = flow_to_rgb(-flow)[0, 3]
    assert not np.array_equal(left, rgb[0, 3])  # hue is the direction
    assert np.array_equal(flow_to_rgb(flow.numpy()), rgb)  # arrays or tensors
    with pytest.raises(ValueError, match=r"\(2, I, J\)"):
        flow_to_rgb(torch.zeros(4, 6, 2))


def test_masks_labels_and_image_colours():
    pred = torch.zeros(2, 2, 3)
    pred[0, 0] = 1.0
    pred[1, 1] = 1.0
    pred[:, 0, 2] = 0.5
    rgb = masks_to_rgb(pred)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert np.allclose(rgb[0, 0], TAB10[0] * 255, atol=1) and np.allclose(rgb[1, 0], TAB10[1] * 255, atol=1)
    assert np.allclose(rgb[0, 2], (TAB10[0] + TAB10[1]) / 2 * 255, atol=1)  # a soft pixel mixes the colours
    labels = labels_to_rgb(pred)
    assert np.array_equal(labels[1, 1], (TAB10[1] * 255).astype(np.uint8))
    with pytest.raises(ValueError, match=r"\(L, I, J\)"):
        masks_to_rgb(torch.zeros(2, 3))
    im = torch.tensor([[[-0.5, 0.0, 0.5, 0.9]]]).expand(3, 1, 4)
    assert image_to_rgb(im)[0, :, 0].tolist() == [0, 127, 255, 255]  # [-0.5, 0.5] → [0, 255], clipped


def test_panels_follow_what_the_sample_holds():
    full = frame_panels(sample(), jacc=0.625)
    assert [p[0] for p in full] == ["image", "flow", "masks (L=3)", "binary mask", "ground truth (J = 0.625)",
                                    "parametric flow"]
    assert frame_panels(sample(), argmax=True)[2][0] == "argmax of 3 masks"
    only = frame_panels({k: v for k, v in sample().items() if k in ("Flow", "GtMask")}, jacc=float("nan"))
    assert [p[0] for p in only] == ["flow", "ground truth"]  # a NaN Jaccard is not printed
    for _, img, _ in full:
        assert img.shape[:2] == (16, 24)


def test_the_benchmark_figure_is_the_same_frame_figure(tmp_path):
    pred = sample()["Pred"]
    labels = pred.argmax(0)
    assert np.array_equal(label_map_to_rgb(labels), labels_to_rgb(pred))  # the same colours either way
    with pytest.raises(ValueError, match=r"labels \(I, J\)"):
        label_map_to_rgb(torch.zeros(2, 3, 4))
    names = [p[0] for p in frame_panels({"Labels": labels, "PredMask": labels > 0, "GtMask": labels == 1}, jacc=0.5)]
    assert names == ["argmax of the masks", "binary mask", "ground truth (J = 0.500)"]
    from evaluationmodule.SaveModule import write_frame_figure

    rgb = np.zeros((16, 24, 3), np.uint8)
    path = write_frame_figure(tmp_path / "f" / "0.png", gt=labels.numpy() == 1, labels=labels.numpy(),
                              pred_mask=labels.numpy() > 0, title="seq/0.png", image=rgb, jacc=0.25)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 300
    assert not plt.get_fignums()  # closed


def test_batch_figure_layout():
    s = sample()
    batch = {k: torch.stack([v] * 6) for k, v in s.items()}
    batch["FlowPath"] = [f"seq/{k:05d}.flo" for k in range(6)]
    fig = frames_figure(batch, title="validation, epoch 3", jaccs=torch.rand(6), max_frames=4)
    assert np.array(fig.axes).size == 4 * 6  # 4 frames of 6 panels
    assert fig.get_suptitle() == "validation, epoch 3"
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts == [f"{k:05d}.flo" for k in range(4)]
    plt.close(fig)


def test_frame_figure_saved_atomically_and_closed(tmp_path):
    fig = frame_figure(sample(), title="seq/00000.flo", jacc=0.5)
    assert len(fig.axes) == 6 and fig.axes[0].get_title() == "image"
    target = tmp_path / "out" / "00000_fig.png"
    save_figure(fig, str(target))
    assert not plt.fignum_exists(fig.number)
    with Image.open(target) as im:
        assert im.format == "PNG" and im.size[0] > 300
    assert [p.name for p in target.parent.iterdir()] == ["00000_fig.png"]


def test_log_figure_to_each_kind_of_logger(tmp_path, caplog):
    fig = frame_figure(sample())

    class CSVLogger:  # anything with a log_dir gets a PNG there
        log_dir = str(tmp_path / "logs")

    log_figure(CSVLogger(), fig, "val/frames", 7)
    assert (tmp_path / "logs" / "figures" / "val_frames_epoch0007.png").is_file()

    class Experiment:
        def __init__(self):
            self.calls = []

        def add_figure(self, name, figure, global_step, close):
            self.calls.append((name, figure, global_step, close))

    class TensorBoardLogger:
        experiment = Experiment()

    tb = TensorBoardLogger()
    log_figure(tb, fig, "val/frames", 2)
    assert tb.experiment.calls == [("val/frames", fig, 2, False)]

    class BrokenLogger:
        @property
        def log_dir(self):
            raise RuntimeError("logger gone")

    with caplog.at_level(logging.WARNING, logger=figures.__name__):
        log_figure(BrokenLogger(), fig, "val/frames", 1)  # a figure never kills a run
    assert any("could not log figure" in r.message and "logger gone" in r.message for r in caplog.records)
    plt.close(fig)
