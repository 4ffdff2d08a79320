"""Classes of real exports the importer once refused (issue 12), each from a
small hand-made graph: the float import must equal onnxruntime on random inputs."""
import numpy as np
import pytest

from tinytrain.compiler.errors import TinytrainError
from tinytrain.compiler.pipeline import load
from tinytrain.compiler.reference import run_float
from tinytrain.report import run_onnxruntime

from .onnx_builder import Builder, rand


def _check(path, x, softmax_out=False):
    g = load(path)
    got = run_float(g, x)[0]
    if softmax_out:
        assert g.meta["output_activation"] == "softmax"
        p = np.exp(got - got.max(1, keepdims=True))
        got = p / p.sum(1, keepdims=True)
    want = run_onnxruntime(path, x)
    np.testing.assert_allclose(got.reshape(want.shape), want, atol=1e-4, rtol=1e-4)
    return g


def _conv(b, rng, cin, cout, k=3, **attrs):
    w = b.init(rand(rng, cout, cin, k, k))
    return w, b.init(rand(rng, cout))


# -- opsets below 11 go through onnx's version converter ----------------------
@pytest.mark.parametrize("opset", [7, 9, 10])
def test_old_opset_upgraded(opset, tmp_path, capfd):
    rng = np.random.default_rng(opset)
    b = Builder([1, 3, 8, 8], opset=opset)
    w, bias = _conv(b, rng, 3, 4)
    y = b.op("Conv", [b.input, w, bias], pads=[1, 1, 1, 1])
    bn = [b.init(rand(rng, 4, lo=0.5, hi=1.5)), b.init(rand(rng, 4)), b.init(rand(rng, 4)),
          b.init(rand(rng, 4, lo=0.5, hi=1.5))]
    y = b.op("BatchNormalization", [y] + bn, **({"spatial": 1} if opset < 9 else {}))
    y = b.op("Relu", [y])
    y = b.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = b.op("GlobalAveragePool", [y])
    y = b.op("Flatten", [y])
    y = b.op("Gemm", [y, b.init(rand(rng, 5, 4)), b.init(rand(rng, 5))], transB=1)
    y = b.op("Softmax", [y])
    path = tmp_path / "old.onnx"
    b.model(y, path)
    x = rand(rng, 1, 3, 8, 8)
    _check(path, x, softmax_out=True)
    err = capfd.readouterr().err
    assert f"opset {opset} model upgraded to 13 by onnx's version converter" in err
