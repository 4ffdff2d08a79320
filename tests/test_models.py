"""The shipped reference models: import from both torch exporters and from
onnxruntime's QDQ quantizer, and int8 accuracy on real test data."""
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import tinytrain as tt
from tinytrain.compiler.reference import run_float
from tinytrain.data import load_dataset
from tinytrain.report import accuracy, run_onnxruntime

MODELS = Path(__file__).resolve().parent.parent / "models"
DATA = MODELS / "data"


def _need(*paths):
    for p in paths:
        if not p.exists():
            pytest.fail(f"shipped file {p} is missing (regenerate with the scripts in models/)")


@pytest.fixture(scope="module")
def mnist():
    _need(DATA / "mnist_calib.npz", DATA / "mnist_test.npz")
    return load_dataset(DATA / "mnist_calib.npz"), load_dataset(DATA / "mnist_test.npz")


@pytest.mark.parametrize("name", ["mcu_cnn_mnist", "mcu_cnn_mnist_dynamo", "mcu_cnn_mnist_qdq"])
def test_mcu_cnn_int8_within_one_point_of_float(name, mnist):
    path = MODELS / f"{name}.onnx"
    _need(path)
    (cx, _), (tx, ty) = mnist
    gq = tt.quantize(tt.load(path), cx)
    acc = accuracy(path, gq, tx, ty)
    assert acc["samples"] == 1000
    assert acc["float_top1"] > 0.95
    assert abs(acc["int8_top1"] - acc["float_top1"]) <= 0.01, acc
    assert acc["top1_agreement"] >= 0.98, acc


def test_both_exporters_import_to_the_same_computation(mnist):
    _need(MODELS / "mcu_cnn_mnist.onnx", MODELS / "mcu_cnn_mnist_dynamo.onnx")
    (_, _), (tx, _) = mnist
    a, b = tt.load(MODELS / "mcu_cnn_mnist.onnx"), tt.load(MODELS / "mcu_cnn_mnist_dynamo.onnx")
    assert [n.op for n in a.nodes] == [n.op for n in b.nodes]
    assert "affine" not in [n.op for n in a.nodes]           # every BatchNorm folded
    x = tx[:50]
    ya, yb = run_float(a, x)[0], run_float(b, x)[0]
    np.testing.assert_allclose(ya, yb, rtol=1e-4, atol=1e-4)
    ort = run_onnxruntime(MODELS / "mcu_cnn_mnist.onnx", x).reshape(ya.shape)
    if a.meta["output_activation"] is None:
        np.testing.assert_allclose(ya, ort, rtol=1e-4, atol=1e-4)


def test_qdq_model_keeps_its_scales(mnist):
    path = MODELS / "mcu_cnn_mnist_qdq.onnx"
    _need(path)
    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    given = {float(np.float32(inits[n.input[1]])) for n in m.graph.node if n.op_type == "QuantizeLinear"}
    (cx, _), _ = mnist
    gq = tt.quantize(tt.load(path), cx[:10])
    scales = [float(t.q.scale) for t in gq.tensors.values() if t.kind != "const"]
    assert len(scales) > 20 and all(s in given for s in scales)
