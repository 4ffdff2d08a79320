"""Per op: the imported float graph matches onnxruntime, the int8 simulator
matches the naive integer reference exactly, and int8 stays close to float."""
import numpy as np
import pytest

from tinytrain.compiler.pipeline import load, quantize_graph
from tinytrain.compiler.reference import run_float
from tinytrain.report import run_onnxruntime
from tinytrain.sim.simulator import Simulator

from . import naive
from .op_cases import CASES, build_case


def _apply_output_activation(g, y):
    act = g.meta.get("output_activation")
    if act is None:
        return y
    z = y - y.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True) if act == "softmax" else z - np.log(e.sum(axis=1, keepdims=True))


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_op(case, tmp_path):
    path, calib, test = build_case(case, tmp_path)
    g = load(path)
    # 1. the float IR computes what onnxruntime computes on the original model
    ref = run_onnxruntime(path, test)
    ours = _apply_output_activation(g, run_float(g, test)[0])
    np.testing.assert_allclose(ours.reshape(ref.shape), ref, rtol=1e-4, atol=1e-5)
    # 2. the int8 simulator equals the naive integer reference on every tensor
    gq = quantize_graph(g, calib)
    sim = Simulator(gq)
    xq = sim.quantize_input(test)
    _, env = sim.run_int8(xq, keep=True)
    env_naive = naive.run(gq, xq)
    for n in gq.nodes:
        np.testing.assert_array_equal(env[n.outputs[0]], env_naive[n.outputs[0]], err_msg=f"{n.op} {n.name}")
    # 3. int8 is close to float: rms error within 4% of the signal plus one output step
    yq = gq.t(gq.outputs[0]).q
    f = run_float(g, test)[0]
    d = yq.dequantize(env[gq.outputs[0]])
    rms_err = np.sqrt(np.mean((d - f) ** 2))
    assert rms_err <= 0.04 * np.sqrt(np.mean(f ** 2)) + float(yq.scale), (rms_err, float(yq.scale))


def test_layout_only_transposes_move_no_data(tmp_path):
    from .op_cases import layout_only_transposes
    g = load(build_case(layout_only_transposes, tmp_path)[0])
    ops = [n.op for n in g.nodes]
    # the NCHW->NHWC->NCHW pair around the conv is free, and the final Transpose+Flatten is absorbed
    # into the Gemm's weight columns: no data moves at all
    assert ops == ["conv2d", "reshape", "fully_connected"], ops


def test_flatten_of_nhwc_map_costs_no_transpose(tmp_path):
    from .op_cases import flatten_gemm_nhwc_order
    g = load(build_case(flatten_gemm_nhwc_order, tmp_path)[0])
    assert [n.op for n in g.nodes] == ["conv2d", "reshape", "fully_connected"]


def test_batchnorm_folds_into_conv(tmp_path):
    from .op_cases import batchnorm_standalone, conv_bn_relu6_constant_weights
    # (the final transpose gives the 4-D output back in ONNX's NCHW layout)
    g = load(build_case(conv_bn_relu6_constant_weights, tmp_path)[0])
    assert [n.op for n in g.nodes] == ["conv2d", "transpose"] and g.nodes[0].attrs["act"] == (0.0, 6.0)
    g = load(build_case(batchnorm_standalone, tmp_path)[0])
    assert [n.op for n in g.nodes] == ["conv2d", "transpose"] and g.nodes[0].attrs["groups"] == 5
