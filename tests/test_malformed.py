"""Broken ONNX files must be refused with one clean TinytrainError.

Every case below hand-builds a bad model in tmp_path and checks that
`load()` raises a TinytrainError naming the file, the node and op where there
is one, and the problem -- never another exception, a hang or a huge
allocation -- and that `tinytrain inspect` turns it into exit status 2 with a
single "tinytrain: error:" line on stderr.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data

from tinytrain.cli import main
from tinytrain.compiler.errors import TinytrainError
from tinytrain.compiler.pipeline import load

FLOAT = TensorProto.FLOAT
RNG = np.random.default_rng(0)


# -- building models ---------------------------------------------------------
def vi(name, shape=None, elem=FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def init(name, array, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(array, dtype), name)


def weights(*shape):
    return RNG.standard_normal(shape).astype(np.float32) * 0.1


def node(op, inputs, outputs, name=None, **attrs):
    """A node named after its op unless told otherwise (errors must name it)."""
    return helper.make_node(op, inputs, outputs, name=name or f"{op.lower()}_0", **attrs)


def save(path, nodes, *, inits=(), inputs=None, outputs=("y",), opset=13):
    """Write a model: by default one input x [1, 3, 8, 8] and output y."""
    inputs = [vi("x", [1, 3, 8, 8])] if inputs is None else inputs
    graph = helper.make_graph(list(nodes), "g", inputs, [vi(o) for o in outputs], initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path = Path(path)
    path.write_bytes(model.SerializeToString())
    return path


def conv_model(path, w_shape=(4, 3, 3, 3), x_shape=(1, 3, 8, 8), **attrs):
    """x -> Conv(W) -> y, for the impossible-shape cases."""
    return save(path, [node("Conv", ["x", "W"], ["y"], **attrs)], inits=[init("W", weights(*w_shape))],
                inputs=[vi("x", list(x_shape))])


def good_model(path):
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm: the positive control."""
    nodes = [node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
             node("Relu", ["c"], ["r"]),
             node("GlobalAveragePool", ["r"], ["p"]),
             node("Flatten", ["p"], ["f"]),
             node("Gemm", ["f", "FW", "FB"], ["y"], transB=1)]
    inits = [init("W", weights(4, 3, 3, 3)), init("B", weights(4)),
             init("FW", weights(2, 4)), init("FB", weights(2))]
    return save(path, nodes, inits=inits)


def external_model(path, location, offset=0, length=4 * 2 * 4):
    """x[1, 4] -> MatMul(W [4, 2]) -> y, W stored as external data at `location`."""
    w = init("W", weights(4, 2))
    set_external_data(w, location=location, offset=offset, length=length)
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    return save(path, [node("MatMul", ["x", "W"], ["y"])], inits=[w], inputs=[vi("x", [1, 4])])


# -- the cases ---------------------------------------------------------------
# Each builder writes the bad model under the given folder and returns its
# path; `expect` lists substrings of the problem and the node/op/field the
# error must name (None: not checked).

def _missing(d):
    return d / "does_not_exist.onnx"


def _empty(d):
    (d / "empty.onnx").write_bytes(b"")
    return d / "empty.onnx"


def _random_bytes(d):
    (d / "random.onnx").write_bytes(np.random.default_rng(1).bytes(4096))
    return d / "random.onnx"


def _truncated(fraction):
    def build(d):
        full = good_model(d / "full.onnx").read_bytes()
        (d / "cut.onnx").write_bytes(full[:int(len(full) * fraction)])
        return d / "cut.onnx"
    return build


def _op(op, domain=None, **attrs):
    def build(d):
        n = node(op, ["x"], ["y"], name="the_node", **attrs)
        if domain:
            n.domain = domain
        return save(d / "op.onnx", [n])
    return build


def lying_tensor(name, dims, raw):
    """A float tensor whose dims do not match its data (helper.make_tensor refuses to make one)."""
    t = TensorProto(name=name, data_type=FLOAT, raw_data=raw)
    t.dims.extend(dims)
    return t


def _huge_initializer(d):
    t = lying_tensor("W", [1_000_000_000], b"\0" * 4)
    return save(d / "huge.onnx", [node("Add", ["x", "W"], ["y"])], inits=[t], inputs=[vi("x", [1, 4])])


def _short_initializer(d):
    t = lying_tensor("W", [1000], b"\0" * 4)
    return save(d / "short.onnx", [node("Add", ["x", "W"], ["y"])], inits=[t], inputs=[vi("x", [1, 1000])])


def _constant_of_shape(d):
    nodes = [node("ConstantOfShape", ["S"], ["big"]), node("Add", ["x", "big"], ["y"])]
    shape = init("S", [1_000_000, 1_000_000], np.int64)
    return save(d / "cos.onnx", nodes, inits=[shape], inputs=[vi("x", [1, 1_000_000])])


def _bad_weight(value, which):
    def build(d):
        path = good_model(d / "nan.onnx")
        m = onnx.load(str(path))
        t = next(t for t in m.graph.initializer if t.name == which)
        a = numpy_helper.to_array(t).copy()
        a.flat[1] = value
        t.CopyFrom(init(which, a))
        path.write_bytes(m.SerializeToString())
        return path
    return build


def _external(location, size=32, offset=0, length=32):
    """The model in d/model, with `size` bytes of data at `location`
    (relative to d/model; "{abs}" stands for d, absolute); None: no file."""
    def build(d):
        model_dir = d / "model"
        model_dir.mkdir()
        loc = location.format(abs=d)
        if size is not None:
            target = model_dir / loc      # an absolute loc replaces model_dir
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"\0" * size)
        return external_model(model_dir / "ext.onnx", loc, offset, length)
    return build


def _symlink_out(d):
    (d / "secret.bin").write_bytes(b"\0" * 32)
    (d / "model").mkdir()
    os.symlink(d / "secret.bin", d / "model" / "w.bin")
    return external_model(d / "model" / "ext.onnx", "w.bin")


def _two_nodes(*nodes, inits=()):
    return lambda d: save(d / "graph.onnx", nodes, inits=inits)


def _inputs(*inputs):
    return lambda d: save(d / "inputs.onnx", [node("Relu", ["x"], ["y"])], inputs=list(inputs))


def _opset(v):
    return lambda d: save(d / "opset.onnx", [node("Relu", ["x"], ["y"])], opset=v)


CASES = {
    # files that are not ONNX models
    "missing_file": (_missing, dict(problem=["no such file"])),
    "empty_file": (_empty, dict(problem=["no graph nodes"])),
    "random_bytes": (_random_bytes, dict(problem=[])),
    **{f"truncated_{int(f * 100)}pct": (_truncated(f), dict(problem=[])) for f in (0.1, 0.5, 0.9)},
    # ops
    "unsupported_LSTM": (_op("LSTM", hidden_size=4), dict(problem=["unsupported op LSTM"], node="the_node", op="LSTM")),
    "unsupported_Einsum": (_op("Einsum", equation="ij->ji"),
                           dict(problem=["unsupported op Einsum"], node="the_node", op="Einsum")),
    "custom_domain_op": (_op("MyOp", domain="com.example"),
                         dict(problem=["custom-domain", "com.example.MyOp"], node="the_node", op="MyOp")),
    # graph structure
    "dangling_input": (_two_nodes(node("Add", ["x", "nowhere"], ["y"])),
                       dict(problem=["'nowhere'", "dangling"], node="add_0", op="Add")),
    "cycle": (_two_nodes(node("Add", ["x", "b"], ["a"], name="n1"), node("Relu", ["a"], ["b"], name="n2"),
                         node("Relu", ["a"], ["y"], name="n3")),
              dict(problem=["cycle"], op=None)),
    "output_produced_twice": (_two_nodes(node("Relu", ["x"], ["y"], name="first"),
                                         node("Sigmoid", ["x"], ["y"], name="second")),
                              dict(problem=["'y'", "produced twice"], node="second", op="Sigmoid")),
    "output_overwrites_initializer": (
        _two_nodes(node("Add", ["x", "C"], ["C"]), node("Relu", ["C"], ["y"]), inits=[init("C", [1.0])]),
        dict(problem=["'C'", "produced twice"], node="add_0", op="Add")),
    # impossible shapes
    "conv_weight_channels": (lambda d: conv_model(d / "m.onnx", w_shape=(4, 2, 3, 3)),
                             dict(problem=["3 input channels"], node="conv_0", op="Conv")),
    "gemm_weight_does_not_fit": (
        lambda d: save(d / "m.onnx", [node("Gemm", ["x", "W"], ["y"], transB=1)], inits=[init("W", weights(10, 30))],
                       inputs=[vi("x", [1, 48])]),
        dict(problem=["does not fit"], node="gemm_0", op="Gemm")),
    "reshape_incompatible": (
        lambda d: save(d / "m.onnx", [node("Reshape", ["x", "S"], ["y"])], inits=[init("S", [1, 5, 7], np.int64)]),
        dict(problem=["cannot reshape"], node="reshape_0", op="Reshape")),
    "kernel_larger_than_input": (lambda d: conv_model(d / "m.onnx", w_shape=(4, 3, 7, 7), x_shape=(1, 3, 4, 4),
                                                      pads=[1, 1, 1, 1]),
                                 dict(problem=["empty output"], node="conv_0", op="Conv")),
    "group_does_not_divide": (lambda d: conv_model(d / "m.onnx", w_shape=(4, 1, 3, 3), group=2),
                              dict(problem=["group 2"], node="conv_0", op="Conv")),
    "negative_pad": (lambda d: conv_model(d / "m.onnx", pads=[-1, -1, -1, -1]),
                     dict(problem=["pads [-1, -1, -1, -1]"], node="conv_0", op="Conv")),
    # inputs
    "symbolic_non_batch_dim": (_inputs(vi("x", ["N", 3, "H", 8])),
                               dict(problem=["symbolic", "'H'", "--input-shape"], field="x")),
    "non_float_input": (_inputs(vi("x", [1, 3, 8, 8], TensorProto.INT64)), dict(problem=["float32"], field="x")),
    "two_data_inputs": (_inputs(vi("x", [1, 3, 8, 8]), vi("x2", [1, 3, 8, 8])), dict(problem=["2 data inputs"])),
    # weights
    "nan_weight": (_bad_weight(np.nan, "W"), dict(problem=["'W'", "NaN"], node="conv_0", op="Conv")),
    "inf_weight": (_bad_weight(np.inf, "FW"), dict(problem=["'FW'", "Inf"], node="gemm_0", op="Gemm")),
    "inf_bias": (_bad_weight(-np.inf, "FB"), dict(problem=["'FB'", "Inf"], node="gemm_0", op="Gemm")),
    "initializer_lies_about_size_huge": (_huge_initializer, dict(problem=["'W'", "1000000000"])),
    "initializer_lies_about_size": (_short_initializer, dict(problem=["'W'", "4000 bytes", "holds 4 bytes"])),
    "constant_of_shape_1e12": (_constant_of_shape, dict(problem=["too large"])),
    # external data
    "external_missing_file": (_external("w.bin", size=None), dict(problem=["'w.bin'", "missing"])),
    "external_parent_dir": (_external("../secret.bin"), dict(problem=["'../secret.bin'", "outside"])),
    "external_absolute_path": (_external("{abs}/elsewhere/secret.bin"), dict(problem=["outside"])),
    "external_symlink_out": (_symlink_out, dict(problem=["outside"])),
    "external_file_too_short": (_external("w.bin", size=16), dict(problem=["'w.bin'", "shorter"])),
    "external_offset_past_end": (_external("w.bin", size=32, offset=16), dict(problem=["'w.bin'", "shorter"])),
    # opsets and empty graphs
    "opset_9": (_opset(9), dict(problem=["opset 9", "11 to 21"], field="opset_import")),
    "opset_30": (_opset(30), dict(problem=["opset 30", "11 to 21"], field="opset_import")),
    "no_nodes": (lambda d: save(d / "empty_graph.onnx", [], outputs=("x",)), dict(problem=["no graph nodes"])),
}

XFAIL = {}      # case -> reason, for bugs outside onnx_load.py


def _params():
    return [pytest.param(k, id=k, marks=[pytest.mark.xfail(reason=XFAIL[k], strict=True)] if k in XFAIL else [])
            for k in CASES]


@pytest.fixture
def bad_model(request, tmp_path):
    build, expect = CASES[request.param]
    return build(tmp_path), expect


# -- the tests ---------------------------------------------------------------
@pytest.mark.parametrize("bad_model", _params(), indirect=True)
def test_load_refuses(bad_model):
    path, expect = bad_model
    try:
        load(path)
    except TinytrainError as e:
        err = e
    else:
        pytest.fail("the bad model loaded")
    assert err.file == str(path)
    assert str(path) in str(err) and err.problem in str(err)
    for text in expect["problem"]:
        assert text in err.problem
    for key in ("node", "op", "field"):
        if expect.get(key) is not None:
            assert getattr(err, key) == expect[key], key
            assert expect[key] in str(err)
    assert "\n" not in str(err)


@pytest.mark.parametrize("bad_model", _params(), indirect=True)
def test_cli_refuses(bad_model, capsys):
    path, _ = bad_model
    status = main(["inspect", str(path)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("tinytrain: error:") and err.count("\n") == 1, err
    assert "Traceback" not in err


@pytest.mark.parametrize("case", ["missing_file", "random_bytes", "unsupported_LSTM", "opset_30",
                                  "initializer_lies_about_size_huge", "external_parent_dir"])
def test_cli_subprocess(case, tmp_path):
    path = CASES[case][0](tmp_path)
    r = subprocess.run([sys.executable, "-m", "tinytrain.cli", "inspect", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinytrain: error:"), r.stderr


def test_truncated_anywhere(tmp_path):
    """Every cut of a valid model is refused with a TinytrainError (or, cut
    exactly at the end, loads)."""
    full = good_model(tmp_path / "full.onnx").read_bytes()
    cut = tmp_path / "cut.onnx"
    for n in range(0, len(full), max(1, len(full) // 200)):
        cut.write_bytes(full[:n])
        with pytest.raises(TinytrainError):
            load(cut)


def test_valid_model_loads(tmp_path, capsys):
    """Positive control: the same builders make a model that loads."""
    path = good_model(tmp_path / "good.onnx")
    g = load(path)
    assert g.meta["input_shape"] == [1, 3, 8, 8]
    assert [g.t(t).shape for t in g.outputs] == [(1, 2)]
    assert [n.op for n in g.nodes][0] == "conv2d"
    assert main(["inspect", str(path)]) == 0
    assert capsys.readouterr().err == ""
