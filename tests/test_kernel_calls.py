"""The emitted C calls the kernels as runtime_c/include/tt_kernels.h declares them.

gcc checks the argument types when a model is compiled; this checks what gcc cannot see from one
model: every `tt_*(` call in the emitted C of shipped models (and of a few op cases) names a
function of the runtime's headers and passes as many arguments as its prototype has, and no
prototype of tt_kernels.h is dead: each is called by some emitted model, by the runtime itself
(runtime_c/src), or is on NOT_EMITTED below with the reason."""
import re

import pytest

import tinytrain as tt
from tinytrain.compiler.pipeline import compile_graph, compile_mezo, load, quantize_graph
from tinytrain.data import load_dataset

from .cbuild import INCLUDE, ROOT, RUNTIME_SOURCES, header_cdef
from .op_cases import _conv, build_case, hardswish_hardsigmoid, residual_add_and_standalone_clamp, squeeze_excite_mul
from .onnx_builder import Builder

D = ROOT / "models" / "data"
# kernels of tt_kernels.h that no model compiled here calls and the runtime does not call either,
# each with why it stays (e.g. "for applications"); empty today: every kernel is reached
NOT_EMITTED = {}


def _split_args(text):
    """Top-level comma-separated pieces of an argument list (parentheses, braces, brackets nest)."""
    depth, cur, out = 0, [], []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    last = "".join(cur).strip()
    if out or (last and last != "void"):
        out.append(last)
    return out


def prototypes(header, inline=True):
    """{name: number of parameters} of the functions a runtime header declares (and, with
    `inline`, of its static inline helpers)."""
    text = re.sub(r"/\*.*?\*/", " ", header.read_text(), flags=re.S)
    found = {}
    for m in re.finditer(r"\b(tt_\w+)\s*\(([^;{}]*?)\)\s*(;|\{)", text):
        if inline or m.group(3) == ";":
            found[m.group(1)] = len(_split_args(m.group(2)))
    return found


def calls(c_text):
    """[(name, number of arguments)] of every `tt_*(` call in C source (definitions excluded)."""
    text = re.sub(r"/\*.*?\*/|//[^\n]*", " ", c_text, flags=re.S)
    out = []
    for m in re.finditer(r"\b(tt_[a-z0-9_]+)\s*\(", text):
        depth, j = 1, m.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            j += 1
        if re.match(r"\s*\{", text[j:]):          # a definition, not a call
            continue
        out.append((m.group(1), len(_split_args(text[m.end():j - 1]))))
    return out


def pools_after_conv(rng):
    """op_cases.pools behind a conv (a trained layer: the pools' gradients are emitted too)."""
    b = Builder([1, 3, 9, 9])
    y = _conv(b, "x", rng, 3, 4, 3, pads=[1, 1, 1, 1])
    a = b.op("AveragePool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=0)
    m = b.op("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c = b.op("AveragePool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)
    return b, b.op("Concat", [a, m, c], axis=1), (-1, 1)


def broadcast_add_after_conv(rng):
    """A [1, 4, 5, 5] + [1, 4, 1, 1] add with both sides trained: the broadcast side's gradient is a sum_to."""
    b = Builder([1, 4, 5, 5])
    y = _conv(b, "x", rng, 4, 4, 3, pads=[1, 1, 1, 1])
    s = _conv(b, b.op("GlobalAveragePool", [y]), rng, 4, 4, 1)
    return b, b.op("Add", [y, s]), (-1, 1)


def test_the_parsers():
    assert calls("x = tt_a(p, (int32_t)f(1, 2), (const int8_t *const[]){a, b});") == [("tt_a", 3)]
    assert calls("void tt_b(int a, int b)\n{\n    tt_c();\n}") == [("tt_c", 0)]
    assert _split_args(" void ") == [] and len(_split_args("const int8_t *const *inputs, int32_t n")) == 2


def _emitted(tmp_path_factory):
    """The .c of every model compiled here: the MNIST CNN (sparse, full, the float classifier with
    shadow rounding, MeZO), the 1-D sensor CNN (full) and op cases with add (also broadcast),
    mul, lut, clamp, pools, concat."""
    out = []
    x, _ = load_dataset(D / "fmnist_train.npz")
    mnist = tt.quantize(tt.load(ROOT / "models" / "mcu_cnn_mnist.onnx"), x[:64], output_range=(-16, 16))
    for i, kw in enumerate([dict(update="sparse"), dict(update="full"),
                            dict(update="full", float_classifier=True, rounding="shadow")]):
        d = tmp_path_factory.mktemp(f"mnist{i}")
        compile_graph(mnist, d, name="m", **kw)
        out.append(d / "m.c")
    d = tmp_path_factory.mktemp("zo")
    compile_mezo(mnist, d, name="zm")
    out.append(d / "zm.c")
    x, _ = load_dataset(D / "basicmotions_train.npz")
    imu = tt.quantize(tt.load(ROOT / "models" / "imu_cnn.onnx"), x[:64], output_range=(-16, 16))
    d = tmp_path_factory.mktemp("imu")
    compile_graph(imu, d, name="m", update="full")
    out.append(d / "m.c")
    for case in (residual_add_and_standalone_clamp, squeeze_excite_mul, hardswish_hardsigmoid,
                 pools_after_conv, broadcast_add_after_conv):
        d = tmp_path_factory.mktemp(case.__name__)
        path, calib, _ = build_case(case, d)
        compile_graph(quantize_graph(load(path), calib), d, name="m", update="full")
        out.append(d / "m.c")
    return {p: calls(p.read_text()) for p in out}


@pytest.fixture(scope="module")
def emitted(tmp_path_factory):
    return _emitted(tmp_path_factory)


def test_every_emitted_call_matches_a_prototype(emitted):
    known = {}
    for h in sorted(INCLUDE.glob("*.h")):
        known.update(prototypes(h))
    assert set(prototypes(INCLUDE / "tt_kernels.h")) >= {"tt_conv2d_s8", "tt_sgd_f32", "tt_zo_update_s32"}
    for path, found in emitted.items():
        assert found, path
        for name, n_args in found:
            assert name in known, f"{path.name}: {name} is in no runtime header"
            assert n_args == known[name], f"{path.name}: {name} with {n_args} arguments, declared with {known[name]}"


def test_no_dead_prototype(emitted):
    declared = prototypes(INCLUDE / "tt_kernels.h", inline=False)
    assert set(declared) == {line.split("(")[0].split()[-1].lstrip("*")
                             for line in header_cdef().split(";") if "(" in line and "tt_" in line}
    used = {name for found in emitted.values() for name, _ in found}
    by_runtime = {name for src in RUNTIME_SOURCES for name, _ in calls(src.read_text())}
    dead = set(declared) - used - by_runtime - set(NOT_EMITTED)
    assert not dead, f"tt_kernels.h declares kernels nothing calls: {sorted(dead)}"
    stale = {name for name in NOT_EMITTED if name in used or name not in declared}
    assert not stale, f"NOT_EMITTED lists kernels that are emitted or not declared: {sorted(stale)}"
