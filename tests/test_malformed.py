"""Broken ONNX files must be refused with one clean TinytrainError.

Every case hand-builds a bad model in tmp_path and checks that `load()` raises
a TinytrainError naming the file, the node and op where there is one, and the
problem -- never another exception, a hang or a huge allocation -- and that
`tinytrain inspect` turns it into exit status 2 with a single
"tinytrain: error:" line on stderr.
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.reference
import pytest
from onnx import TensorProto, helper, numpy_helper

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
    return helper.make_node(op, inputs, outputs, name=f"{op.lower()}_0" if name is None else name, **attrs)


def save(path, nodes, *, inits=(), inputs=None, outputs=("y",), opset=13):
    """Write a model: by default one input x [1, 3, 8, 8] and output y."""
    inputs = [vi("x", [1, 3, 8, 8])] if inputs is None else inputs
    graph = helper.make_graph(list(nodes), "g", inputs, [vi(o) for o in outputs], initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path = Path(path)
    path.write_bytes(model.SerializeToString())
    return path


def lying_tensor(name, dims, raw):
    """A float tensor whose dims do not match its data (helper.make_tensor refuses to make one)."""
    t = TensorProto(name=name, data_type=FLOAT, raw_data=raw)
    t.dims.extend(dims)
    return t


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
    """x [1, 4] -> MatMul(W [4, 2]) -> y, W stored as external data at `location`."""
    w = init("W", weights(4, 2))
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", offset), ("length", length)):
        w.external_data.add(key=k, value=str(v))
    return save(path, [node("MatMul", ["x", "W"], ["y"])], inits=[w], inputs=[vi("x", [1, 4])])


# -- case builders: each takes a folder, writes the bad model, returns its path
def graph(*nodes, inits=(), inputs=None, outputs=("y",), opset=13):
    return lambda d: save(d / "m.onnx", nodes, inits=inits, inputs=inputs, outputs=outputs, opset=opset)


def one_op(op, inputs=("x",), name="the_node", domain=None, inits=(), x_shape=(1, 3, 8, 8), **attrs):
    """x -> op -> y."""
    n = node(op, list(inputs), ["y"], name=name, **attrs)
    if domain:
        n.domain = domain
    return graph(n, inits=inits, inputs=[vi("x", list(x_shape))])


def conv(w_shape=(4, 3, 3, 3), x_shape=(1, 3, 8, 8), **attrs):
    return one_op("Conv", ["x", "W"], name="conv_0", inits=[init("W", weights(*w_shape))], x_shape=x_shape, **attrs)


def write_bytes(data):
    def build(d):
        (d / "m.onnx").write_bytes(data)
        return d / "m.onnx"
    return build


def truncated(fraction):
    def build(d):
        full = good_model(d / "full.onnx").read_bytes()
        return write_bytes(full[:int(len(full) * fraction)])(d)
    return build


def bad_weight(which, value):
    """The positive control with one value of initializer `which` replaced."""
    def build(d):
        path = good_model(d / "m.onnx")
        m = onnx.load(str(path))
        t = next(t for t in m.graph.initializer if t.name == which)
        a = numpy_helper.to_array(t).copy()
        a.flat[1] = value
        t.CopyFrom(init(which, a))
        path.write_bytes(m.SerializeToString())
        return path
    return build


def external(location, size=32, offset=0, length=32):
    """The model in d/model with `size` bytes of data at `location` (relative to
    d/model; "{d}" stands for the absolute folder d); size None: no data file."""
    def build(d):
        model_dir = d / "model"
        model_dir.mkdir()
        loc = location.format(d=d)
        if size is not None:
            target = model_dir / loc      # an absolute loc replaces model_dir
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"\0" * size)
        return external_model(model_dir / "ext.onnx", loc, offset, length)
    return build


def external_symlink_out(d):
    (d / "secret.bin").write_bytes(b"\0" * 32)
    (d / "model").mkdir()
    os.symlink(d / "secret.bin", d / "model" / "w.bin")
    return external_model(d / "model" / "ext.onnx", "w.bin")


# -- the cases ---------------------------------------------------------------
# name -> (builder, expect): `problem` lists substrings of the problem; node,
# op and field, when given, must match the error (a tuple: one of them).
CASES = {
    # files that are not ONNX models
    "missing_file": (lambda d: d / "does_not_exist.onnx", dict(problem=["no such file"])),
    "path_too_long": (lambda d: d / ("a" * 5000), dict(problem=["no such file"])),
    "empty_file": (write_bytes(b""), dict(problem=["no graph nodes"])),
    "random_bytes": (write_bytes(np.random.default_rng(1).bytes(4096)), dict(problem=["not a readable ONNX"])),
    **{f"truncated_{int(f * 100)}pct": (truncated(f), dict(problem=[])) for f in (0.1, 0.5, 0.9)},
    # ops
    "unsupported_LSTM": (one_op("LSTM", hidden_size=4), dict(problem=["unsupported op LSTM"], node="the_node",
                                                              op="LSTM")),
    "unsupported_Einsum": (one_op("Einsum", equation="ij->ji"),
                           dict(problem=["unsupported op Einsum"], node="the_node", op="Einsum")),
    "custom_domain_op": (one_op("MyOp", domain="com.example"),
                         dict(problem=["custom-domain", "com.example.MyOp"], node="the_node", op="MyOp")),
    # graph structure
    "dangling_input": (graph(node("Add", ["x", "nowhere"], ["y"])),
                       dict(problem=["'nowhere'", "dangling"], node="add_0", op="Add")),
    "dangling_input_unnamed_node": (graph(node("Add", ["x", "nowhere"], ["y"], name="")),
                                    dict(problem=["'nowhere'"], node="y", op="Add")),
    # n3 reads the cycle but is not on it: the error must name n1 or n2
    "cycle": (graph(node("Relu", ["a"], ["y"], name="n3"), node("Add", ["x", "b"], ["a"], name="n1"),
                    node("Relu", ["a"], ["b"], name="n2")),
              dict(problem=["cycle", "n1", "n2"], node=("n1", "n2"))),
    "cycle_self_loop": (graph(node("Add", ["x", "y"], ["y"])), dict(problem=["cycle"], node="add_0", op="Add")),
    "output_produced_twice": (graph(node("Relu", ["x"], ["y"], name="first"),
                                    node("Sigmoid", ["x"], ["y"], name="second")),
                              dict(problem=["'y'", "produced twice"], node="second", op="Sigmoid")),
    "output_overwrites_initializer": (graph(node("Add", ["x", "C"], ["C"]), node("Relu", ["C"], ["y"]),
                                            inits=[init("C", [1.0])]),
                                      dict(problem=["'C'", "produced twice"], node="add_0", op="Add")),
    "output_overwrites_input": (graph(node("Relu", ["x"], ["x"]), node("Relu", ["x"], ["y"], name="r2")),
                                dict(problem=["'x'", "produced twice"], node="relu_0")),
    "graph_output_never_produced": (graph(node("Relu", ["x"], ["r"])), dict(problem=["'y'", "never produced"])),
    "no_graph_outputs": (graph(node("Relu", ["x"], ["r"]), outputs=()), dict(problem=["no graph outputs"])),
    "graph_output_listed_twice": (graph(node("Relu", ["x"], ["y"]), outputs=("y", "y")),
                                  dict(problem=["graph output 'y'", "listed twice"], field="y")),
    "graph_input_listed_twice": (graph(node("Relu", ["x"], ["y"]), inputs=[vi("x", [1, 3, 8, 8])] * 2),
                                 dict(problem=["graph input 'x'", "listed twice"], field="x")),
    "no_nodes": (graph(outputs=("x",)), dict(problem=["no graph nodes"])),
    "node_without_outputs": (graph(node("Relu", ["x"], [], name=""), node("Relu", ["x"], ["y"])),
                             dict(problem=["output"], op="Relu")),
    "conv_missing_weight": (one_op("Conv", ["x"]), dict(problem=["input"], node="the_node", op="Conv")),
    "batchnorm_missing_inputs": (one_op("BatchNormalization", ["x", "G"], inits=[init("G", weights(3))]),
                                 dict(problem=["input"], node="the_node", op="BatchNormalization")),
    # impossible shapes
    "conv_weight_channels": (conv(w_shape=(4, 2, 3, 3)), dict(problem=["3 input channels"], node="conv_0", op="Conv")),
    "gemm_weight_does_not_fit": (one_op("Gemm", ["x", "W"], name="gemm_0", inits=[init("W", weights(10, 30))],
                                        x_shape=(1, 48), transB=1),
                                 dict(problem=["does not fit"], node="gemm_0", op="Gemm")),
    "reshape_incompatible": (one_op("Reshape", ["x", "S"], name="reshape_0", inits=[init("S", [1, 5, 7], np.int64)]),
                             dict(problem=["cannot reshape"], node="reshape_0", op="Reshape")),
    "reshape_shape_not_1d": (one_op("Reshape", ["x", "S"], inits=[init("S", [[1, 192]], np.int64)]),
                             dict(problem=["shape"], node="the_node", op="Reshape")),
    "kernel_larger_than_input": (conv(w_shape=(4, 3, 7, 7), x_shape=(1, 3, 4, 4), pads=[1, 1, 1, 1]),
                                 dict(problem=["empty output"], node="conv_0", op="Conv")),
    "group_does_not_divide": (conv(w_shape=(4, 1, 3, 3), group=2),
                              dict(problem=["group 2"], node="conv_0", op="Conv")),
    "negative_pad": (conv(pads=[-1, -1, -1, -1]), dict(problem=["pads [-1, -1, -1, -1]"], node="conv_0", op="Conv")),
    "zero_size_weight": (conv(w_shape=(0, 3, 3, 3)), dict(problem=["weight"], node="conv_0", op="Conv")),
    "huge_output_from_pads": (conv(pads=[100_000] * 4), dict(problem=["too large"], node="conv_0", op="Conv")),
    "pads_of_wrong_type": (conv(pads="same"), dict(problem=["pads"], node="conv_0", op="Conv")),
    "gemm_attribute_of_wrong_type": (one_op("Gemm", ["x", "W"], inits=[init("W", weights(2, 4))], x_shape=(1, 4),
                                            transB="yes"),
                                     dict(problem=["transB"], node="the_node", op="Gemm")),
    # inputs
    "symbolic_non_batch_dim": (graph(node("Relu", ["x"], ["y"]), inputs=[vi("x", ["N", 3, "H", 8])]),
                               dict(problem=["symbolic", "'H'", "--input-shape"], field="x")),
    "non_float_input": (graph(node("Relu", ["x"], ["y"]), inputs=[vi("x", [1, 3, 8, 8], TensorProto.INT64)]),
                        dict(problem=["float32"], field="x")),
    "two_data_inputs": (graph(node("Relu", ["x"], ["y"]), inputs=[vi("x", [1, 3, 8, 8]), vi("x2", [1, 3, 8, 8])]),
                        dict(problem=["2 data inputs"])),
    "name_with_newline": (graph(node("Relu", ["x\nTraceback"], ["y"]),
                                inputs=[vi("x\nTraceback", [1, 3], TensorProto.INT64)]),
                          dict(problem=["float32"])),
    # weights and constants
    "nan_weight": (bad_weight("W", np.nan), dict(problem=["'W'", "NaN"], node="conv_0", op="Conv")),
    "inf_weight": (bad_weight("FW", np.inf), dict(problem=["'FW'", "Inf"], node="gemm_0", op="Gemm")),
    "inf_bias": (bad_weight("FB", -np.inf), dict(problem=["'FB'", "Inf"], node="gemm_0", op="Gemm")),
    "nan_add_constant": (one_op("Add", ["x", "C"], inits=[init("C", [np.nan])]),
                         dict(problem=["'C'", "NaN"], node="the_node", op="Add")),
    "initializer_lies_about_size_huge": (one_op("Add", ["x", "W"], inits=[lying_tensor("W", [10**9], b"\0" * 4)],
                                                x_shape=(1, 4)),
                                         dict(problem=["'W'", "1000000000"])),
    "initializer_dims_overflow": (one_op("Add", ["x", "W"], inits=[lying_tensor("W", [2**62] * 20, b"\0" * 4)],
                                         x_shape=(1, 4)),
                                  dict(problem=["'W'", "too large"])),
    "initializer_lies_about_size": (one_op("Add", ["x", "W"], inits=[lying_tensor("W", [1000], b"\0" * 4)],
                                           x_shape=(1, 1000)),
                                    dict(problem=["'W'", "4000 bytes", "holds 4 bytes"])),
    "constant_of_shape_1e12": (graph(node("ConstantOfShape", ["S"], ["big"]), node("Add", ["x", "big"], ["y"]),
                                     inits=[init("S", [10**6, 10**6], np.int64)], inputs=[vi("x", [1, 10**6])]),
                               dict(problem=["too large"], node="constantofshape_0", op="ConstantOfShape")),
    "range_of_vectors": (graph(node("Range", ["a", "b", "c"], ["r"]), node("Add", ["x", "r"], ["y"]),
                               inits=[init("a", [0, 1]), init("b", 10.0), init("c", 1.0)], inputs=[vi("x", [1, 4])]),
                         dict(problem=[], node="range_0", op="Range")),
    # external data
    "external_missing_file": (external("w.bin", size=None), dict(problem=["'w.bin'", "missing"])),
    "external_parent_dir": (external("../secret.bin"), dict(problem=["'../secret.bin'", "outside"])),
    "external_absolute_path": (external("{d}/elsewhere/secret.bin"), dict(problem=["outside"])),
    "external_symlink_out": (external_symlink_out, dict(problem=["outside"])),
    "external_file_too_short": (external("w.bin", size=16), dict(problem=["'w.bin'", "shorter"])),
    "external_offset_past_end": (external("w.bin", offset=16), dict(problem=["'w.bin'", "shorter"])),
    "external_bad_offset": (external("w.bin", offset="x"), dict(problem=["offset"])),
    "external_nul_byte": (external("w\0.bin", size=None), dict(problem=["not a usable path"])),
    "external_name_too_long": (external("a" * 5000, size=None), dict(problem=["'W'"])),
    # opsets
    "opset_6": (graph(node("Relu", ["x"], ["y"]), opset=6), dict(problem=["opset 6", "11 to 21"],
                                                                 field="opset_import")),
    "opset_30": (graph(node("Relu", ["x"], ["y"]), opset=30), dict(problem=["opset 30", "11 to 21"],
                                                                   field="opset_import")),
}

# Cases that are known to fail, with the reason: case -> (reason, tests that fail).  None today.
BOTH = ("load", "cli")
XFAIL = {}


def cases(test):
    params = []
    for k in CASES:
        reason, tests = XFAIL.get(k, (None, ()))
        marks = [pytest.mark.xfail(reason=reason, strict=True)] if test in tests else []
        params.append(pytest.param(k, id=k, marks=marks))
    return params


def refusal(case, tmp_path):
    """Build the case's model, load it, return (path, the TinytrainError)."""
    build, expect = CASES[case]
    path = build(tmp_path)
    with pytest.raises(TinytrainError) as info:     # any other exception fails the test
        load(path)
    return path, info.value


# -- the tests ---------------------------------------------------------------
@pytest.mark.parametrize("case", cases("load"))
def test_load_refuses(case, tmp_path):
    path, err = refusal(case, tmp_path)
    expect = CASES[case][1]
    assert err.file == str(path)
    assert str(err).startswith(str(path)) and str(err).endswith(err.problem)
    for text in expect["problem"]:
        assert text in err.problem
    for key in ("node", "op", "field"):
        want = expect.get(key)
        if want is not None:
            assert getattr(err, key) in (want if isinstance(want, tuple) else (want,)), key
            assert f"{getattr(err, key)}" in str(err)
    assert "\n" not in str(err)


@pytest.mark.parametrize("case", cases("cli"))
def test_cli_refuses(case, tmp_path, capsys):
    path = CASES[case][0](tmp_path)
    status = main(["inspect", str(path)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("tinytrain: error:") and err.count("\n") == 1, err


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
    """About 200 cuts of a valid model, from 0 bytes up: each is refused."""
    full = good_model(tmp_path / "full.onnx").read_bytes()
    cut = tmp_path / "cut.onnx"
    for n in range(0, len(full), max(1, len(full) // 200)):
        cut.write_bytes(full[:n])
        with pytest.raises(TinytrainError):
            load(cut)


def test_long_chain_listed_backwards_is_not_quadratic(tmp_path):
    """20000 nodes listed in reverse, ending in a cycle: refused in seconds
    (a pass-until-no-progress sort would take minutes)."""
    n = 20_000
    chain = [node("Relu", [f"v{i}" if i else "x"], [f"v{i + 1}"], name=f"r{i}") for i in range(n)]
    loop = [node("Add", [f"v{n}", "b"], ["a"], name="loop_add"), node("Relu", ["a"], ["b"], name="loop_relu"),
            node("Relu", ["a"], ["y"], name="out")]
    path = save(tmp_path / "m.onnx", (chain + loop)[::-1])
    signal.signal(signal.SIGALRM, lambda *a: pytest.fail("load() took more than 30 s"))
    signal.alarm(30)
    try:
        with pytest.raises(TinytrainError, match="cycle: loop_(add|relu) -> loop_"):
            load(path)
    finally:
        signal.alarm(0)


def test_constant_broadcast_refused_before_evaluating(tmp_path, monkeypatch):
    """[100000, 1] + [1, 100000] would fold to 10^10 floats (40 GB): it must be
    refused from the shapes alone.  The evaluator is replaced so that the test
    itself never allocates."""
    class NoEvaluation:
        def __init__(self, *a, **k):
            raise AssertionError("the constant was evaluated, not refused from its shape")
    monkeypatch.setattr(onnx.reference, "ReferenceEvaluator", NoEvaluation)
    path = save(tmp_path / "m.onnx", [node("Add", ["A", "B"], ["c"]), node("Add", ["x", "c"], ["y"], name="add_1")],
                inits=[init("A", np.zeros((100_000, 1))), init("B", np.zeros((1, 100_000)))],
                inputs=[vi("x", [1, 4])])
    with pytest.raises(TinytrainError, match="too large"):
        load(path)


def test_valid_model_loads(tmp_path, capsys):
    """Positive control: the same helpers make a model that loads and inspects."""
    path = good_model(tmp_path / "good.onnx")
    g = load(path)
    assert g.meta["input_shape"] == [1, 3, 8, 8]
    assert [g.t(t).shape for t in g.outputs] == [(1, 2)]
    assert [n.op for n in g.nodes][0] == "conv2d"
    assert main(["inspect", str(path)]) == 0
    assert capsys.readouterr().err == ""


def test_valid_external_data_loads(tmp_path):
    """Positive control for the external-data cases: a correct data file loads."""
    w = weights(4, 2)
    (tmp_path / "w.bin").write_bytes(w.tobytes())
    g = load(external_model(tmp_path / "ext.onnx", "w.bin"))
    assert [g.t(t).shape for t in g.outputs] == [(1, 2)]
