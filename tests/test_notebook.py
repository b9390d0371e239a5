"""The Segment-a-Flow notebook runs top to bottom, headless, with the bundled model."""

from __future__ import annotations

import os

import pytest

from tests.conftest import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, "checkpoints", "em_small.ckpt")),
                    reason="bundled checkpoint not present")
def test_notebook_executes():
    nb = nbformat.read(os.path.join(ROOT, "Segment-a-Flow.ipynb"), as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": ROOT}})
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "mask usage" in text and "model: L=2" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the figure was drawn
