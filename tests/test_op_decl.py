"""An op is one declaration: the passes read capabilities declared on the op
classes (compiler/ops/base.py), never lists of op names.

The scan fails on, in compiler/passes/*.py (and the scheme modules):
  * a tuple / list / set literal that holds a registered op name ("conv2d", ...)
  * a comparison (==, !=, in, not in) with a registered op name as a literal
A pass whose subject is one op names it through the op's class (`Reshape.name`), and a
pass that creates a node may name its op (`add_node("sgd_update", ...)`): neither is a list.
"""
import ast
from pathlib import Path

import numpy as np
import pytest

from tinytrain.compiler.ir import Graph
from tinytrain.compiler.ops import get_op
from tinytrain.compiler.ops.base import Op, registered_names

ROOT = Path(__file__).resolve().parent.parent / "compiler"
SCANNED = sorted((ROOT / "passes").glob("*.py")) + [ROOT / "scheme.py", ROOT / "tte_schemes.py"]
# no exceptions are needed today; an entry would be (file name, line, why)
ALLOWED = ()


def op_name_uses(source, names):
    """-> [(line, what)] for op-name lists and literal op-name comparisons in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            lits = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in names]
            if lits:
                found.append((node.lineno, f"a list of op names {lits}"))
        elif isinstance(node, ast.Compare):
            sides = [node.left] + list(node.comparators)
            lits = [s.value for s in sides if isinstance(s, ast.Constant) and isinstance(s.value, str)
                    and s.value in names]
            if lits and any(isinstance(o, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for o in node.ops):
                found.append((node.lineno, f"a comparison with the op name {lits[0]!r}"))
    return found


def test_the_scanner_finds_both_forms():
    names = set(registered_names())
    bad = ('X = ("conv2d", "add")\n'
           'def f(n):\n'
           '    return n.op == "clamp" or n.op in {"mul"} or "relu" in n.name\n')
    got = op_name_uses(bad, names)
    assert [line for line, _ in got] == [1, 3, 3], got


@pytest.mark.parametrize("path", SCANNED, ids=lambda p: p.name)
def test_no_op_name_lists_in_the_passes(path):
    names = set(registered_names())
    found = [(line, what) for line, what in op_name_uses(path.read_text(), names)
             if (path.name, line) not in {(a[0], a[1]) for a in ALLOWED}]
    assert not found, "\n".join(f"{path.name}:{line}: {what}: declare a capability on the op instead"
                                for line, what in found)


def test_capabilities_have_defaults_and_declared_values():
    assert Op.fuses_activation is False and Op.in_place is False and Op.weight_input is None
    assert get_op("conv2d").fuses_activation and get_op("conv2d").windowed and get_op("conv2d").weighted
    assert get_op("fully_connected").weighted and not get_op("fully_connected").windowed
    assert get_op("reshape").view_of(None) == 0
    assert get_op("sigmoid").in_place and get_op("sigmoid").pointwise
    assert get_op("softmax_xent").loss


def test_every_windowed_op_has_a_window():
    for name in registered_names():
        op = get_op(name)
        if op.windowed:
            assert type(op).window is not Op.window, name
        if op.weighted:
            assert op.bias_input is not None, name


def _conv(groups, cin, cout, k=3):
    g = Graph()
    x = g.add_tensor("x", (1, 8, 8, cin))
    w = g.add_const("w", np.zeros((cout, k, k, cin // groups), np.float32))
    b = g.add_const("b", np.zeros(cout, np.float32))
    y = g.add_tensor("y", (1, 8, 8, cout))
    n = g.add_node("conv2d", [x.id, w.id, b.id], [y.id],
                   dict(stride=(1, 1), pads=(1, 1, 1, 1), dilation=(1, 1), groups=groups))
    return g, n


@pytest.mark.parametrize("groups, cin, cout, dw, mult", [(1, 4, 8, False, 8), (4, 4, 4, True, 1),
                                                         (4, 4, 8, True, 2), (2, 4, 4, False, 2),
                                                         (1, 1, 1, False, 1)])
def test_depthwise_has_one_definition(groups, cin, cout, dw, mult):
    from tinytrain.compiler.ops.conv import Conv2d
    from tinytrain.compiler.scheme import is_depthwise
    g, n = _conv(groups, cin, cout)
    assert Conv2d.is_depthwise(n, g) is dw and is_depthwise(g, n) is dw
    assert Conv2d.channel_multiplier(n, g) == mult


def test_no_second_depthwise_test_outside_the_conv_op():
    """`groups > 1 and w.shape[3] == 1` (or groups == channels == outputs) lives in Conv2d.is_depthwise."""
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.name in ("conv.py", "lowmem.py"):     # the definition; lowmem.py's IR checks of its own ops
            continue
        text = path.read_text()
        if "shape[3] == 1" in text and "groups" in text:
            offenders.append(path.name)
    assert not offenders


def _c_train_ids():
    from .op_cases import C_TRAIN_CASES
    return C_TRAIN_CASES


@pytest.mark.parametrize("case", _c_train_ids(), ids=lambda c: c.__name__)
def test_op_case_trains_through_the_emitted_c_like_the_simulator(case, tmp_path):
    """A new op's case, compiled to C with every layer trained: losses, predicted classes and the
    learned state equal the simulator's bit for bit."""
    import tinytrain as tt
    from tinytrain.compiler.codegen.emit_c import Emitter
    from tinytrain.compiler.pipeline import compile_graph
    from tinytrain.host import HostModel
    from tinytrain.train.backprop import BackpropTrainer

    from .op_cases import build_case
    path, calib, test = build_case(case, tmp_path)
    gq = tt.quantize(tt.load(path), calib, output_range=(-16, 16))
    tg, plan, facts = compile_graph(gq, tmp_path / "c", name="m", update="full")
    src = (tmp_path / "c" / "m.c").read_text()
    for n in tg.nodes:                      # every op of the graph reaches the C (a table op: tt_lut_s8)
        assert get_op(n.op).emit_c is not None
    assert "tt_lut_s8(" in src and "tt_lut_grad_f32(" in src
    y = np.random.default_rng(1).integers(0, gq.t(gq.outputs[0]).shape[-1], len(test))
    hm = HostModel(tmp_path / "c", "m", tg, facts, lr=0.05, seed=2)
    sim = BackpropTrainer(tg, lr=0.05, seed=2)
    for i in range(2 * len(test)):
        k = i % len(test)
        lc, pc = hm.train_step(test[k], y[k])
        ls, logits = sim.step(test[k], y[k])
        assert np.float32(lc).tobytes() == np.float32(ls).tobytes(), (i, lc, ls)
        assert pc == int(np.argmax(np.asarray(logits).reshape(-1)))
    e = Emitter(tg, plan, "m")
    st = hm.state_bytes()
    for tid, off in e.state_off.items():
        t = tg.t(tid)
        np.testing.assert_array_equal(np.frombuffer(st, t.data.dtype, t.size, off), t.data.reshape(-1))


def test_tensor_roles_survive_save_and_load_and_old_files_get_them(tmp_path):
    """The clamp mask's role (planned as packed bits) is saved; a file written before roles
    existed gets the role its tensor names implied."""
    import json

    from tinytrain.compiler import serialize
    from tinytrain.compiler.passes.plan_memory import nbytes
    g = Graph()
    x = g.add_tensor("x", (1, 4), kind="input")
    y = g.add_tensor("y", (1, 4))
    m = g.add_tensor("y:mask", (1, 4), "uint8")
    m.role = "mask"
    g.add_node("clamp", [x.id], [y.id, m.id], dict(act=(0.0, None), keep_mask=True))
    g.inputs, g.outputs = [x.id], [y.id]
    p = serialize.save(g, tmp_path / "g.tt.npz")
    back = serialize.load(p)
    assert back.t(m.id).role == "mask" and nbytes(back.t(m.id)) == 1
    assert back.t(y.id).role == ""
    with np.load(p) as z:
        arrays = {k: z[k] for k in z.files}
    doc = json.loads(arrays["__graph__"].tobytes().decode())
    for d in doc["tensors"]:
        d.pop("role", None)
    arrays["__graph__"] = np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)
    with open(tmp_path / "old.tt.npz", "wb") as f:
        np.savez(f, **arrays)
    assert serialize.load(tmp_path / "old.tt.npz").t(m.id).role == "mask"
