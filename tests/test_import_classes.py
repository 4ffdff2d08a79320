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


# -- spatial means in chains, any order, keepdims 0/1, axes attr or input -------
def _mean(b, x, axes, keep, opset):
    if opset >= 18:
        return b.op("ReduceMean", [x, b.init(np.array(axes), dtype=np.int64)], keepdims=keep)
    return b.op("ReduceMean", [x], axes=axes, keepdims=keep)


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("first,k1,k2", [(3, 0, 0), (2, 0, 0), (3, 1, 1), (2, 1, 0), (-1, 0, 1), (-2, 1, 1)])
def test_mean_chain_is_global_pool(first, k1, k2, opset, tmp_path):
    rng = np.random.default_rng(abs(first) + 10 * k1 + 100 * k2)
    b = Builder([1, 3, 6, 5], opset=opset)
    w, bias = _conv(b, rng, 3, 4)
    y = b.op("Conv", [b.input, w, bias], pads=[1, 1, 1, 1])
    y = _mean(b, y, [first], k1, opset)
    a1 = first % 4
    other = 5 - a1
    second = other if k1 or other < a1 else other - 1
    y = _mean(b, y, [second], k2, opset)
    if not (k1 == 0 and k2 == 0):
        y = b.op("Flatten", [y])
    y = b.op("Gemm", [y, b.init(rand(rng, 2, 4)), b.init(rand(rng, 2))], transB=1)
    path = tmp_path / "m.onnx"
    b.model(y, path)
    g = _check(path, rand(rng, 1, 3, 6, 5))
    assert [n.op for n in g.nodes].count("global_avg_pool") == 1


@pytest.mark.parametrize("axes", [[2, 3], [3, 2], [-1, -2]])
def test_mean_both_axes(axes, tmp_path):
    rng = np.random.default_rng(1)
    b = Builder([1, 3, 4, 4])
    w, bias = _conv(b, rng, 3, 4)
    y = b.op("Conv", [b.input, w, bias])
    y = b.op("ReduceMean", [y], axes=axes, keepdims=0)
    path = tmp_path / "m.onnx"
    b.model(y, path)
    _check(path, rand(rng, 1, 3, 4, 4))


@pytest.mark.parametrize("case", ["channels", "one_axis_output", "same_axis_twice"])
def test_mean_refused(case, tmp_path):
    rng = np.random.default_rng(2)
    b = Builder([1, 3, 4, 4])
    w, bias = _conv(b, rng, 3, 4)
    y = b.op("Conv", [b.input, w, bias])
    if case == "channels":
        y = b.op("ReduceMean", [y], axes=[1], keepdims=1)
        bad = "ReduceMean_2"
    elif case == "one_axis_output":
        y = b.op("ReduceMean", [y], axes=[3], keepdims=1)
        bad = "ReduceMean_2"
    else:
        y = b.op("ReduceMean", [y], axes=[3], keepdims=1)
        y = b.op("ReduceMean", [y], axes=[3], keepdims=1)
        bad = "ReduceMean_2"
    path = tmp_path / "m.onnx"
    b.model(y, path)
    with pytest.raises(TinytrainError) as e:
        load(path)
    assert e.value.node == bad and "ReduceMean" in str(e.value) and "\n" not in str(e.value)


# -- DequantizeLinear with a per-tensor scale written as a [1] vector -----------
def test_dequantize_scale_of_length_one(tmp_path):
    rng = np.random.default_rng(3)
    b = Builder([1, 3, 5, 5])
    wq = b.init(rng.integers(-127, 128, (4, 3, 3, 3)), dtype=np.int8)
    w = b.op("DequantizeLinear", [wq, b.init([0.01]), b.init([0], dtype=np.int8)], axis=0)
    bq = b.init(rng.integers(-1000, 1000, (4,)), dtype=np.int32)
    bias = b.op("DequantizeLinear", [bq, b.init([0.001]), b.init([0], dtype=np.int32)], axis=0)
    y = b.op("Conv", [b.input, w, bias])
    path = tmp_path / "m.onnx"
    b.model(y, path)
    _check(path, rand(rng, 1, 3, 5, 5))


# -- Cast / CastLike to float32 and Identity are no-ops; other casts are refused -
def test_casts_to_float_are_noops(tmp_path):
    from onnx import TensorProto
    rng = np.random.default_rng(4)
    b = Builder([1, 3, 5, 5], opset=15)
    w, bias = _conv(b, rng, 3, 4)
    y = b.op("Conv", [b.input, w, bias], pads=[1, 1, 1, 1])
    y = b.op("Cast", [y], to=TensorProto.FLOAT)
    y = b.op("Identity", [y])
    lo = b.op("CastLike", [b.init(np.array(-0.5), dtype=np.float64), y])     # a constant to y's type
    hi = b.op("CastLike", [b.init(np.array(0.75), dtype=np.float16), y])
    y = b.op("Clip", [y, lo, hi])
    y = b.op("CastLike", [y, b.init(np.zeros(1))])
    y = b.op("Add", [y, b.op("CastLike", [b.init(rand(rng, 4, 1, 1), dtype=np.float64), y])])
    path = tmp_path / "m.onnx"
    b.model(y, path)
    g = _check(path, rand(rng, 1, 3, 5, 5))
    assert not any("cast" in n.op for n in g.nodes), [n.op for n in g.nodes]


@pytest.mark.parametrize("op", ["Cast", "CastLike"])
def test_cast_changing_type_refused(op, tmp_path):
    from onnx import TensorProto
    rng = np.random.default_rng(5)
    b = Builder([1, 3, 5, 5], opset=15)
    w, bias = _conv(b, rng, 3, 4)
    y = b.op("Conv", [b.input, w, bias])
    if op == "Cast":
        y = b.op("Cast", [y], to=TensorProto.INT32)
    else:
        y = b.op("CastLike", [y, b.init(np.zeros(1, np.int8), dtype=np.int8)])
    path = tmp_path / "m.onnx"
    b.model(y, path)
    with pytest.raises(TinytrainError) as e:
        load(path)
    assert e.value.node == f"{op}_2" and "changes its type" in str(e.value)


# -- a Softmax followed by class-preserving ops (or a QDQ pair) up to the output --
def _classifier(rng, opset=13):
    b = Builder([1, 3, 6, 6], opset=opset)
    w, bias = _conv(b, rng, 3, 4)
    y = b.op("Conv", [b.input, w, bias])
    y = b.op("GlobalAveragePool", [y])
    y = b.op("Flatten", [y])
    y = b.op("Gemm", [y, b.init(rand(rng, 6, 4, lo=-3, hi=3)), b.init(rand(rng, 6))], transB=1)
    return b, y


@pytest.mark.parametrize("tail", [["Identity"], ["Identity", "Flatten"], ["Reshape"], ["QDQ"], ["QDQ", "Identity"]])
def test_softmax_not_last(tail, tmp_path):
    rng = np.random.default_rng(len(tail))
    b, y = _classifier(rng)
    y = b.op("Softmax", [y], axis=1)
    scale = 1 / 256
    for op in tail:
        if op == "QDQ":
            s, zp = b.init(np.array(scale)), b.init(np.array(0), dtype=np.uint8)
            y = b.op("DequantizeLinear", [b.op("QuantizeLinear", [y, s, zp]), s, zp])
        elif op == "Reshape":
            y = b.op("Reshape", [y, b.init(np.array([1, 6]), dtype=np.int64)])
        else:
            y = b.op(op, [y])
    path = tmp_path / "m.onnx"
    b.model(y, path)
    x = rand(rng, 1, 3, 6, 6)
    g = load(path)
    assert g.meta["output_activation"] == "softmax"
    assert not any(n.op == "clamp" for n in g.nodes)    # the probabilities' QDQ is not applied to the logits
    logits = run_float(g, x)[0]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    want = run_onnxruntime(path, x)
    np.testing.assert_allclose(p, want, atol=scale / 2 + 1e-6 if "QDQ" in tail else 1e-4)


def test_softmax_feeding_compute_refused(tmp_path):
    rng = np.random.default_rng(7)
    b, y = _classifier(rng)
    y = b.op("Softmax", [y], axis=1)
    y = b.op("Add", [y, b.init(np.ones(6))])
    path = tmp_path / "m.onnx"
    b.model(y, path)
    with pytest.raises(TinytrainError) as e:
        load(path)
    assert e.value.node == "Softmax_5" and "final output" in str(e.value)


# -- free dims: a symbolic or -1 batch is batch 1 (with a notice); others need --input-shape
def _free_dims_model(path, dims):
    import onnx
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


@pytest.mark.parametrize("batch", ["N", -1])
def test_free_batch_is_one_with_notice(batch, tmp_path, capfd):
    path = _free_dims_model(tmp_path / "m.onnx", [batch, 3, 4, 4])
    g = _check(path, rand(np.random.default_rng(8), 1, 3, 4, 4))
    assert g.meta["input_shape"] == [1, 3, 4, 4]
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "free batch dimension" in err and "batch 1" in err


@pytest.mark.parametrize("dim", ["H", -1])
def test_free_spatial_dim_needs_input_shape(dim, tmp_path, capfd):
    path = _free_dims_model(tmp_path / "m.onnx", [1, 3, dim, 4])
    with pytest.raises(TinytrainError) as e:
        load(path)
    assert e.value.field == "x" and "dimension 2 of input 'x'" in str(e.value) and "--input-shape" in str(e.value)
    g = load(path, [1, 3, 5, 4])                      # bound by --input-shape
    assert g.meta["input_shape"] == [1, 3, 5, 4]
    assert "notice" not in capfd.readouterr().err


# -- ceil_mode=1 pooling is extra end padding ------------------------------------
@pytest.mark.parametrize("op,size,k,s,pads", [("MaxPool", 7, 2, 2, [0, 0, 0, 0]), ("MaxPool", 8, 3, 2, [1, 1, 1, 1]),
                                               ("AveragePool", 7, 3, 2, [0, 0, 0, 0]),
                                               ("AveragePool", 6, 3, 2, [1, 0, 1, 0]), ("MaxPool", 5, 3, 3, [1, 1, 0, 0]),
                                               ("MaxPool", 5, 2, 3, [1, 1, 1, 1])])
def test_pool_ceil_mode(op, size, k, s, pads, tmp_path):
    rng = np.random.default_rng(size + k)
    b = Builder([1, 3, size, size + 1])
    w, bias = _conv(b, rng, 3, 4, k=1)
    y = b.op("Conv", [b.input, w, bias])
    y = b.op(op, [y], kernel_shape=[k, k], strides=[s, s], pads=pads, ceil_mode=1)
    path = tmp_path / "m.onnx"
    b.model(y, path)
    _check(path, rand(rng, 1, 3, size, size + 1))


# -- Slice of an activation: full range (a no-op) or whole inputs of its Concat ---
def _ghost(rng, opset, start, end, axis=1, step=None):
    b = Builder([1, 3, 5, 5], opset=opset)
    w, bias = _conv(b, rng, 3, 4, k=1)
    p = b.op("Conv", [b.input, w, bias])
    w2, b2 = _conv(b, rng, 4, 2, k=1)
    q = b.op("Conv", [p, w2, b2])
    w3, b3 = _conv(b, rng, 4, 3, k=1)
    t = b.op("Conv", [p, w3, b3])
    y = b.op("Concat", [p, q, t], axis=1)                 # 4 + 2 + 3 = 9 channels
    ins = [y, b.init(np.array([start]), dtype=np.int64), b.init(np.array([end]), dtype=np.int64),
           b.init(np.array([axis]), dtype=np.int64)]
    if step is not None:
        ins.append(b.init(np.array([step]), dtype=np.int64))
    y = b.op("Slice", ins)
    return b, y


@pytest.mark.parametrize("start,end,axis", [(0, 9, 1), (0, 2**62, 1), (-9, 9, 1), (0, 4, 1), (4, 6, 1),
                                            (4, 9, 1), (0, 6, 1), (0, 5, 2), (0, 100, -1)])
def test_slice_noop_or_concat_inputs(start, end, axis, tmp_path):
    rng = np.random.default_rng(start + end)
    b, y = _ghost(rng, 13, start, end, axis)
    y = b.op("Relu", [y])
    path = tmp_path / "m.onnx"
    b.model(y, path)
    g = _check(path, rand(rng, 1, 3, 5, 5))
    assert not any(n.op == "slice" for n in g.nodes)


@pytest.mark.parametrize("start,end,axis,step", [(0, 3, 1, 1), (1, 9, 1, 1), (0, 9, 1, 2), (8, -100, 1, -1),
                                                 (0, 3, 2, 1)])
def test_slice_partial_refused(start, end, axis, step, tmp_path):
    rng = np.random.default_rng(9)
    b, y = _ghost(rng, 13, start, end, axis, step)
    path = tmp_path / "m.onnx"
    b.model(y, path)
    with pytest.raises(TinytrainError) as e:
        load(path)
    assert e.value.node == "Slice_5" and "Slice of activation" in str(e.value) and "\n" not in str(e.value)
