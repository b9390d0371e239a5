"""The fast inference paths give the plain fp32 predictions."""

from __future__ import annotations

import torch

from Models.CoherenceNets.MethodeB import MethodeB


def small_model():
    torch.manual_seed(0)
    return MethodeB(**{"unet.num_layers": 4, "unet.features_start": 16, "img_size": [64, 112]}).eval()


def test_channels_last_matches_plain_fp32():
    model = small_model()
    flow = torch.randn(3, 2, 64, 112)
    with torch.no_grad():
        plain = model.prediction({"Flow": flow})["Pred"]
        model = model.to(memory_format=torch.channels_last)
        fast = model.prediction({"Flow": flow.contiguous(memory_format=torch.channels_last)})["Pred"]
    assert (fast - plain).abs().max() < 1e-5


def test_batched_matches_one_by_one():
    model = small_model()
    flow = torch.randn(4, 2, 64, 112)
    with torch.no_grad():
        batched = model.prediction({"Flow": flow})["Pred"]
        single = torch.cat([model.prediction({"Flow": flow[i:i + 1]})["Pred"] for i in range(4)])
    assert (batched - single).abs().max() < 1e-5


def test_bf16_autocast_is_close():
    model = small_model()
    flow = torch.randn(2, 2, 64, 112)
    with torch.no_grad():
        plain = model.prediction({"Flow": flow})["Pred"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = model.prediction({"Flow": flow})["Pred"].float()
        crit = model.Criterion({"Pred": fast, "Flow": flow})
    assert (fast - plain).abs().max() < 0.1
    assert (fast.argmax(1) == plain.argmax(1)).float().mean() > 0.95
    assert torch.isfinite(crit["losses"]).all()
