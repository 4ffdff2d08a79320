"""The ops whose ONNX signature changed between opsets 11 and 21 import the
same way at both ends of the range (attributes at 11, inputs at 18+/21)."""
import numpy as np
import pytest

from tinytrain.compiler.pipeline import load, quantize_graph
from tinytrain.compiler.reference import run_float
from tinytrain.report import run_onnxruntime
from tinytrain.sim.simulator import Simulator

from .onnx_builder import Builder, rand


def _model(opset, rng):
    b = Builder([1, 3, 6, 6], opset=opset)
    y = b.op("Conv", ["x", b.init(rand(rng, 4, 3, 3, 3)), b.init(rand(rng, 4))], pads=[1, 1, 1, 1])
    y = b.op("Clip", [y, b.init(np.float32(-0.5)), b.init(np.float32(0.5))])
    if opset < 18:
        y = b.op("ReduceMean", [y], axes=[2, 3], keepdims=1)
    else:
        y = b.op("ReduceMean", [y, b.init(np.array([2, 3], np.int64), dtype=np.int64)], keepdims=1)
    if opset < 13:
        y = b.op("Squeeze", [y], axes=[2, 3])
    else:
        y = b.op("Squeeze", [y, b.init(np.array([2, 3], np.int64), dtype=np.int64)])
    y = b.op("Gemm", [y, b.init(rand(rng, 4, 3)), b.init(rand(rng, 3))])
    return b, b.op("Softmax", [y], axis=1)


@pytest.mark.parametrize("opset", [11, 13, 18, 21])
def test_opset_variants(opset, tmp_path):
    rng = np.random.default_rng(opset)
    b, out = _model(opset, rng)
    path = tmp_path / f"m{opset}.onnx"
    b.model(out, path)
    x = rng.uniform(-1, 1, (8, 3, 6, 6)).astype(np.float32)
    g = load(path)
    assert [n.op for n in g.nodes] == ["conv2d", "global_avg_pool", "reshape", "fully_connected"]
    assert g.nodes[0].attrs["act"] == (-0.5, 0.5) and g.meta["output_activation"] == "softmax"
    logits = run_float(g, x)[0]
    p = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(p / p.sum(1, keepdims=True), run_onnxruntime(path, x), rtol=1e-4, atol=1e-6)
    gq = quantize_graph(g, x)
    assert Simulator(gq).run(x).shape == (8, 3)
