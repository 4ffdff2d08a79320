"""The first hour of a new user (issue 16): the memory picture without a plotting
library and the text timeline, `inspect` naming kernels/strides/groups, one training
recipe for the CLI and the API, `tt.train` the function whatever was imported,
--trainer auto / --update auto, the header's documentation, lazy imports, defaults in
--help."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinytrain.cli import main
from tinytrain.pngdraw import Canvas, glyph, read_png

from .onnx_builder import Builder

ROOT = Path(__file__).resolve().parent.parent
RNG = np.random.default_rng(0)


def dw_cnn(path):
    """x [1, 3, 8, 8] -> Conv 3x3 -> Relu -> depthwise Conv 3x3 stride 2 (group 4) -> Relu
    -> GlobalAveragePool -> Flatten -> Gemm -> 3 logits."""
    b = Builder([1, 3, 8, 8])
    c = b.op("Conv", [b.input, b.init(RNG.standard_normal((4, 3, 3, 3)) * 0.3), b.init(np.zeros(4))],
             pads=[1, 1, 1, 1])
    d = b.op("Conv", [b.op("Relu", [c]), b.init(RNG.standard_normal((4, 1, 3, 3)) * 0.3), b.init(np.zeros(4))],
             pads=[1, 1, 1, 1], strides=[2, 2], group=4)
    r = b.op("GlobalAveragePool", [b.op("Relu", [d])])
    b.model(b.op("Gemm", [b.op("Flatten", [r]), b.init(RNG.standard_normal((3, 4))), b.init(np.zeros(3))],
                 transB=1), path)
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    model = dw_cnn(d / "dw.onnx")
    x = RNG.random((64, 3, 8, 8), dtype=np.float32)
    y = RNG.integers(0, 3, 64)
    np.savez(d / "data.npz", x=x, y=y)
    return model, d / "data.npz", d


@pytest.fixture(scope="module")
def compiled(small):
    model, data, d = small
    out = d / "build"
    assert main(["compile", str(model), "--calib", str(data), "--sram", "64k", "--name", "dw", "-o", str(out)]) == 0
    return out


# -- 1. the memory picture and the timeline ----------------------------------
def test_png_writer_round_trips():
    c = Canvas(20, 10)
    c.rect(2, 3, 5, 6, (255, 0, 0))
    c.text(8, 1, "A1", (0, 0, 255))
    px = read_png(c.png())
    assert px.shape == (10, 20, 3)
    assert (px[3:6, 2:5] == (255, 0, 0)).all() and (px[0:3, 0:2] == 255).all()
    blue = (px == (0, 0, 255)).all(axis=2)
    assert (blue[1:8, 8:13] == glyph("A")).all() and (blue[1:8, 14:19] == glyph("1")).all()
    assert (glyph("a") == glyph("A")).all()


def test_memory_png_is_written_without_matplotlib(compiled):
    """memory.png exists and is a valid PNG whatever is installed; it shows the arena's
    buffers (int8 blue, float32 orange), the state blob (purple), the budget (red)."""
    px = read_png((compiled / "memory.png").read_bytes())
    assert px.shape[0] > 300 and px.shape[1] >= 900
    colors = {tuple(c) for c in px.reshape(-1, 3)[::7]}
    from tinytrain.memreport import _COLORS
    assert _COLORS["int8"] in colors and _COLORS["float32"] in colors
    assert (150, 90, 190) in colors                         # the state blob
    assert any(r > 150 and g < 60 and b < 60 for r, g, b in colors)    # the budget / peak in red


def test_report_has_the_text_timeline(compiled):
    """report.txt: one line per schedule step with the live buffers as letters and the
    live bytes, the peak marked, and the peak's live bytes equal the arena's high water."""
    import json
    text = (compiled / "report.txt").read_text()
    assert "memory timeline:" in text and "trainer: backprop" in text
    rows = [ln for ln in text.splitlines() if ln[:5].strip().isdigit() and "|" in ln]
    summary = json.loads((compiled / "report.json").read_text())["summary"]
    assert len(rows) >= 10
    peak = [ln for ln in rows if ln[6] == "*"]
    assert len(peak) == 1 and int(peak[0].split()[0]) == summary["peak_step"]
    live = int(peak[0].split("|")[2].split()[0])
    assert live == sum(b["bytes"] for b in summary["live_at_peak"])
    assert "buffers (letter: tensor, bytes, steps):" in text
