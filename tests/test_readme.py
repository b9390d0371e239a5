"""The README's Python snippets run as written."""

from __future__ import annotations

import os
import re

import matplotlib
import pytest
import torch

from tests.conftest import ROOT


def python_blocks() -> list[str]:
    with open(os.path.join(ROOT, "README.md")) as fh:
        return re.findall(r"```python\n(.*?)```", fh.read(), flags=re.S)


@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, "checkpoints", "em_small.ckpt")),
                    reason="bundled checkpoint not present")
def test_running_a_model_snippet(monkeypatch):
    matplotlib.use("Agg")
    block = next(b for b in python_blocks() if "load_from_checkpoint" in b)
    monkeypatch.chdir(ROOT)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - our own README
    assert tuple(scope["r"]["Pred"].shape) == (1, 2, 128, 224)
    fg = scope["r"]["PredMask"]
    assert fg.shape == (1, 128, 224) and fg.dtype == torch.bool
    assert 0.05 < fg.float().mean() < 0.35  # the swan, whichever mask the model put it in


def test_loss_snippet():
    import torch

    block = next(b for b in python_blocks() if "from coherence_loss import coherence_loss" in b)
    net = torch.nn.Conv2d(3, 2, 3, padding=1)
    scope = {"my_network": lambda x: net(x).softmax(1), "image": torch.rand(2, 3, 16, 24),
             "flow": torch.randn(2, 2, 16, 24)}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102
    assert scope["losses"].shape == (2,)
    assert net.weight.grad is not None and torch.isfinite(net.weight.grad).all()
