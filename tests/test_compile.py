"""`tinytrain compile`: the emitted C trains bit for bit like the simulator,
builds warning-free, runs clean under the sanitizers, refuses bad runtime
input, and the memory plan is verified and budgeted."""
import subprocess
from pathlib import Path

import numpy as np
import pytest

import tinytrain as tt
from tinytrain.cli import main
from tinytrain.compiler.codegen.emit_c import Emitter
from tinytrain.compiler.passes.plan_memory import plan_memory, verify_plan
from tinytrain.compiler.pipeline import compile_graph, training_graph
from tinytrain.data import load_dataset
from tinytrain.host import HostModel, build
from tinytrain.train.backprop import BackpropTrainer

ROOT = Path(__file__).resolve().parent.parent
D = ROOT / "models" / "data"


@pytest.fixture(scope="module")
def fmnist():
    return load_dataset(D / "fmnist_train.npz")


@pytest.fixture(scope="module")
def gq(fmnist):
    return tt.quantize(tt.load(ROOT / "models" / "mcu_cnn_mnist.onnx"), fmnist[0][:200], output_range=(-16, 16))


def _state_arrays(hm, tg, plan, rounding="stochastic"):
    e = Emitter(tg, plan, hm.name, rounding)
    st = hm.state_bytes()
    return {tid: np.frombuffer(st, dtype=tg.t(tid).data.dtype, count=tg.t(tid).size, offset=e.state_off[tid])
            for tid in tg.meta["training"]["trainable"]}


def _bit_exact(tmp_path, gq, x, y, steps, update, seed=3, lr=0.02, cflags=(), **kw):
    tg, plan, facts = compile_graph(gq, tmp_path, name="m", update=update, **kw)
    hm = HostModel(tmp_path, "m", tg, facts, lr=lr, seed=seed, extra_cflags=cflags)
    sim = BackpropTrainer(tg, lr=lr, seed=seed, rounding=kw.get("rounding", "stochastic"))
    for i in range(steps):
        k = i % len(x)
        lc, pc = hm.train_step(x[k], y[k])
        ls, logits = sim.step(x[k], y[k])
        assert np.float32(lc).tobytes() == np.float32(ls).tobytes(), (update, i, lc, ls)
        assert pc == int(np.argmax(logits.reshape(-1))), (update, i)
    for tid, c in _state_arrays(hm, tg, plan, kw.get("rounding", "stochastic")).items():
        np.testing.assert_array_equal(c, tg.t(tid).data.reshape(-1), err_msg=f"{update}: {tg.t(tid).name}")
    for k in range(5):                      # inference with the trained weights
        lc, _ = hm.predict(x[k])
        ls = sim.sim.run(x[k:k + 1])[0]
        assert lc.tobytes() == np.asarray(ls, np.float32).tobytes()
    return tg


@pytest.mark.parametrize("update", ["full", "last-4", "bias", "classifier", "sparse"])
def test_c_trains_bit_exact_with_the_simulator(update, gq, fmnist, tmp_path):
    x, y = fmnist
    _bit_exact(tmp_path, gq, x, y, 120, update)


@pytest.mark.parametrize("update", ["sparse", "full"])
def test_c_bit_exact_built_for_this_cpu(update, gq, fmnist, tmp_path):
    """The host library at -O3 (vectorized), and with -march=native (--native), still gives
    the simulator's bits: no fused multiply-add, no reassociated float sum."""
    from tinytrain.host import CFLAGS, NATIVE_CFLAGS
    assert "-O3" in CFLAGS and "-ffp-contract=off" in CFLAGS and not any("fast-math" in f for f in CFLAGS)
    x, y = fmnist
    _bit_exact(tmp_path, gq, x, y, 30, update, cflags=NATIVE_CFLAGS)


@pytest.mark.parametrize("kw", [dict(rounding="shadow"), dict(float_classifier=True), dict(qas=False)],
                         ids=["shadow", "float-classifier", "no-qas"])
def test_c_bit_exact_options(kw, gq, fmnist, tmp_path):
    x, y = fmnist
    _bit_exact(tmp_path, gq, x, y, 100, "sparse", **kw)


@pytest.mark.parametrize("rounding", ["stochastic", "shadow"])
def test_chunked_weight_gradients_are_bit_exact(rounding, gq, fmnist, tmp_path):
    """Weight gradients computed and applied a few rows at a time (passes/chunk_grads.py): the C and
    the simulator agree, and both equal the unchunked simulator bit for bit."""
    x, y = fmnist
    tg = _bit_exact(tmp_path, gq, x, y, 60, "full", rounding=rounding, chunk_bytes=512)
    chunks = [n for n in tg.nodes if n.op == "sgd_update" and n.attrs.get("row_offset") is not None]
    assert len(chunks) > 10
    whole = training_graph(gq, "full", chunk_bytes=1 << 30)
    assert not any("row_offset" in n.attrs for n in whole.nodes)
    sim = BackpropTrainer(whole, lr=0.02, seed=3, rounding=rounding)
    for i in range(60):
        sim.step(x[i], y[i])
    for tid in whole.meta["training"]["trainable"]:
        np.testing.assert_array_equal(whole.t(tid).data, tg.t(tid).data, err_msg=whole.t(tid).name)


def test_chunking_bounds_the_gradient_buffers(gq):
    big = max(training_graph(gq, "full", chunk_bytes=1 << 30).tensors.values(),
              key=lambda t: t.nbytes if t.name.startswith("d_") and t.kind == "act" else 0)
    assert big.nbytes > 4096
    tg = training_graph(gq, "full", chunk_bytes=4096)
    for n in tg.nodes:
        if n.op == "conv2d_grad_weight" and n.attrs["groups"] == 1:
            d = tg.t(n.outputs[0])
            assert d.nbytes <= max(4096, d.nbytes // d.shape[0]), d.name
    assert plan_memory(tg).arena_size < plan_memory(training_graph(gq, "full", chunk_bytes=1 << 30)).arena_size


def test_c_bit_exact_on_the_1d_sensor_model(tmp_path):
    x, y = load_dataset(D / "basicmotions_train.npz")
    g = tt.quantize(tt.load(ROOT / "models" / "imu_cnn.onnx"), x, output_range=(-16, 16))
    _bit_exact(tmp_path, g, x, y, 120, "full", lr=0.01)


HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include "m.h"
static m_ctx ctx;
static unsigned char arena[M_ARENA_SIZE] __attribute__((aligned(8)));
static unsigned char state[M_STATE_SIZE] __attribute__((aligned(8)));
int main(void) {
    static float x[M_INPUT_SIZE];
    float loss = 0.0f; int32_t pred = 0; int i, s;
    if (m_init(&ctx, arena, sizeof arena, state, sizeof state, 0.05f, 7u, 0) != M_OK) return 3;
    for (s = 0; s < 20; ++s) {
        for (i = 0; i < M_INPUT_SIZE; ++i) x[i] = (float)((i * 7 + s * 13) % 256) / 255.0f;
        if (m_train_step(&ctx, x, s % M_NUM_CLASSES, &loss, &pred) != M_OK) return 4;
    }
    printf("%.6f\n", (double)loss);
    return 0;
}
"""


@pytest.mark.parametrize("update", ["sparse", "classifier", "bias"])
def test_sanitizers_and_warnings(update, gq, tmp_path):
    # classifier: a patched prefix (tile crops from the caller's input, pastes, in-place depthwise);
    # bias: in-place depthwise input gradients
    tg, _, _ = compile_graph(gq, tmp_path, name="m", update=update)
    if update == "classifier":
        assert tg.meta.get("input_external")
    if update == "bias":
        assert any(n.op == "depthwise_conv2d_grad_input_inplace" for n in tg.nodes)
    (tmp_path / "main.c").write_text(HARNESS)
    srcs = [str(tmp_path / "m.c"), str(tmp_path / "main.c")] + [str(p) for p in (tmp_path / "runtime" / "src").glob("*.c")]
    exe = tmp_path / "harness"
    cmd = ["gcc", "-std=c99", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-pedantic", "-ffp-contract=off",
           "-fsanitize=address,undefined", "-fno-sanitize-recover=all", f"-I{tmp_path}",
           f"-I{tmp_path / 'runtime' / 'include'}", *srcs, "-lm", "-o", str(exe)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    assert np.isfinite(float(run.stdout))


def test_runtime_refuses_bad_input(gq, fmnist, tmp_path):
    x, y = fmnist
    tg, plan, facts = compile_graph(gq, tmp_path, name="m", update="classifier")
    hm = HostModel(tmp_path, "m", tg, facts)
    ffi, lib = hm.ffi, hm.lib
    ctx = ffi.new("m_ctx *")
    arena = ffi.new("uint8_t[]", facts["arena"] + 16)
    state = ffi.new("uint8_t[]", facts["state"] + 16)
    A, S = facts["arena"], facts["state"]
    assert lib.m_init(ffi.NULL, arena, A, state, S, 0.1, 1, 0) == -1
    assert lib.m_init(ctx, ffi.NULL, A, state, S, 0.1, 1, 0) == -1
    assert lib.m_init(ctx, arena + 1, A, state, S, 0.1, 1, 0) == -2
    assert lib.m_init(ctx, arena, A - 1, state, S, 0.1, 1, 0) == -3
    assert lib.m_init(ctx, arena, A, state, S, 0.1, 1, 0) == 0
    xi = np.ascontiguousarray(hm._input(x[0]))
    loss = ffi.new("float *")
    pred = ffi.new("int32_t *")
    buf = ffi.from_buffer("float[]", xi)
    assert lib.m_train_step(ctx, buf, 10, loss, pred) == -4
    assert lib.m_train_step(ctx, buf, -1, loss, pred) == -4
    assert lib.m_train_step(ctx, ffi.NULL, 1, loss, pred) == -1
    bad = xi.copy()
    bad[3] = np.nan
    assert lib.m_train_step(ctx, ffi.from_buffer("float[]", bad), 1, loss, pred) == -6
    assert lib.m_train_step(ctx, buf, int(y[0]), loss, pred) == 0
    # the state blob, sealed, restores into the same model, and is refused by another one
    assert lib.m_state_seal(ctx) == 0
    saved = bytes(ffi.buffer(state, S))
    ctx2 = ffi.new("m_ctx *")
    state2 = ffi.new("uint8_t[]", S + 16)
    ffi.memmove(state2, saved, S)
    assert lib.m_init(ctx2, arena, A, state2, S, 0.1, 1, 1) == 0 and ctx2.steps == 1
    other = tmp_path / "other"
    tg2, plan2, facts2 = compile_graph(gq, other, name="m", update="last-2")
    hm2 = HostModel(other, "m", tg2, facts2)
    ctx3 = hm2.ffi.new("m_ctx *")
    st3 = hm2.ffi.new("uint8_t[]", max(facts2["state"], S) + 16)
    hm2.ffi.memmove(st3, saved, S)
    assert hm2.lib.m_init(ctx3, hm2.arena, facts2["arena"], st3, facts2["state"], 0.1, 1, 1) in (-5, -3)


def test_two_models_link_into_one_library(gq, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    compile_graph(gq, a, name="kws", update="classifier")
    compile_graph(gq, b, name="vww", update="bias")
    srcs = [a / "kws.c", b / "vww.c"] + sorted((a / "runtime" / "src").glob("*.c"))
    res = subprocess.run(["gcc", "-std=c99", "-O1", "-Wall", "-Wextra", "-Werror", "-pedantic", "-shared", "-fPIC",
                          f"-I{a}", f"-I{b}", f"-I{a / 'runtime' / 'include'}", *map(str, srcs), "-o",
                          str(tmp_path / "both.so")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_plan_verifier_catches_overlap(gq):
    tg = training_graph(gq, "sparse")
    plan = plan_memory(tg)
    assert verify_plan(tg, plan)
    live = sorted(plan.buffers, key=lambda b: -b.size)
    a = live[0]
    b = next(x for x in plan.buffers if x is not a and not (x.end < a.start or a.end < x.start))
    b.offset = a.offset
    with pytest.raises(AssertionError, match="overlap"):
        verify_plan(tg, plan)


def test_in_place_and_reordering_bound(gq):
    tg = training_graph(gq, "full")
    # a plan never needs less than the largest sum of buffers live at one step
    for in_place in (True, False):
        plan = plan_memory(tg, in_place=in_place)
        steps = max(b.end for b in plan.buffers) + 1
        need = max(sum(b.size for b in plan.buffers if b.start <= s <= b.end) for s in range(steps))
        assert plan.arena_size >= need


def test_compile_cli_budget(tmp_path, capsys):
    model = str(ROOT / "models" / "mcu_cnn_mnist.onnx")
    calib = str(D / "mnist_calib.npz")
    assert main(["compile", model, "--calib", calib, "--sram", "256k", "--flash", "1m", "--name", "kws",
                 "-o", str(tmp_path / "ok")]) == 0
    assert (tmp_path / "ok" / "kws.h").read_text().count("#define KWS_ARENA_SIZE") == 1
    assert (tmp_path / "ok" / "report.json").is_file()
    capsys.readouterr()
    assert main(["compile", model, "--calib", calib, "--sram", "40k", "--update", "full", "-o",
                 str(tmp_path / "big")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit" in err[0] and "KB" in err[0] and "fits in" in err[0]
    assert main(["compile", model, "-o", str(tmp_path / "nocalib")]) == 2
    assert main(["compile", model, "--calib", calib, "--sram", "lots", "-o", str(tmp_path / "x")]) == 2


def test_compile_chooses_the_scheme_under_the_budget(tmp_path, capsys):
    """--update auto: the preset with the most trainable parameters whose plan fits --sram."""
    import json
    model = str(ROOT / "models" / "mcu_cnn_mnist.onnx")
    calib = str(D / "mnist_calib.npz")
    chosen = {}
    for budget in ("256k", "48k"):
        out = tmp_path / budget
        assert main(["compile", model, "--calib", calib, "--update", "auto", "--sram", budget, "--package", "none",
                     "-o", str(out)]) == 0
        rep = json.loads((out / "report.json").read_text())
        limit = int(budget[:-1]) * 1024
        assert rep["summary"]["sram_total_bytes"] <= limit
        line = next(li for li in capsys.readouterr().out.splitlines() if li.startswith("update: "))
        chosen[budget] = line.split()[1]
    assert chosen["256k"] != chosen["48k"]
    # the smaller budget's choice trains fewer parameters, and 256k's choice would not fit in 48k
    assert main(["compile", model, "--calib", calib, "--update", chosen["256k"], "--sram", "48k", "--package", "none",
                 "-o", str(tmp_path / "no")]) == 2
    capsys.readouterr()
    assert main(["compile", model, "--calib", calib, "--update", "auto", "--sram", "8k", "-o", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no update scheme fits" in err[0]
    assert main(["compile", model, "--calib", calib, "--update", "auto", "-o", str(tmp_path / "u")]) == 2


def test_learned_state_saves_and_restores_through_flash(gq, fmnist, tmp_path):
    """<name>_save / <name>_load: the trained state goes to (simulated) flash and comes back,
    after a factory reset, bit for bit; a save cut short keeps the previous state."""
    x, y = fmnist
    tg, plan, facts = compile_graph(gq, tmp_path, name="m", update="classifier")
    hm = HostModel(tmp_path, "m", tg, facts, lr=0.05, seed=1)
    ffi, lib = hm.ffi, hm.lib
    slot = (facts["state"] + 24 + 255) // 256 * 256
    flash = bytearray(b"\xff" * (2 * slot))
    budget = {"left": None}

    def take(n):
        if budget["left"] is None:
            return n
        k = min(n, budget["left"])
        budget["left"] -= k
        return k

    @ffi.callback("int(void *, uint32_t, uint32_t)")
    def erase(user, off, size):
        k = take(size)
        flash[off:off + k] = b"\xff" * k
        return 0 if k == size else -1

    @ffi.callback("int(void *, uint32_t, const uint8_t *, uint32_t)")
    def write(user, off, data, size):
        k = take(size)
        src = ffi.buffer(data, size)[:k]
        flash[off:off + k] = bytes(a & b for a, b in zip(flash[off:off + k], src))
        return 0 if k == size else -1

    @ffi.callback("int(void *, uint32_t, uint8_t *, uint32_t)")
    def read(user, off, data, size):
        ffi.memmove(data, bytes(flash[off:off + size]), size)
        return 0

    dev = ffi.new("tt_flash *", {"erase": erase, "write": write, "read": read, "user": ffi.NULL, "slot_size": slot})
    assert lib.m_load(hm.ctx, dev) == -5                       # nothing saved yet
    for i in range(5):
        hm.train_step(x[i], y[i])
    assert lib.m_save(hm.ctx, dev) == 0
    trained = hm.state_bytes()                                 # as saved (sealed: its CRC written)
    for i in range(5, 8):
        hm.train_step(x[i], y[i])
    budget["left"] = slot + 10                                 # the next save loses power mid-payload
    assert lib.m_save(hm.ctx, dev) == -5
    budget["left"] = None
    assert lib.m_reset(hm.ctx) == 0 and hm.state_bytes() != trained
    assert lib.m_load(hm.ctx, dev) == 0
    assert hm.state_bytes() == trained and hm.ctx.steps == 5


def test_shadow_rounding_sram_figure_is_the_builds(tmp_path, capsys):
    """--update auto's and the 'what fits' figure (cli._scheme_need, compiler/layout.py sram_total) is
    the compiled build's own: STATE_SIZE (with --rounding shadow's int16 shadows) + arena + context +
    stack; the shadows add 2 bytes per trained int8 weight (each tensor's rounded up to ALIGN)."""
    import argparse
    import json
    import re
    from tinytrain.cli import _scheme_need
    from tinytrain.compiler.layout import ALIGN, context_bytes
    from tinytrain.data import load_calibration
    model, calib = ROOT / "models" / "mcu_cnn_mnist.onnx", D / "mnist_calib.npz"
    g = tt.load(model)
    gq = tt.quantize(g, load_calibration(calib, g.meta["input_shape"])[0], output_range=(-16, 16))
    kw = dict(qas=True, float_classifier=False, weight_headroom=2.0)
    for update in ("sparse", "last-2"):
        out = tmp_path / update
        assert main(["compile", str(model), "--calib", str(calib), "--update", update, "--rounding", "shadow",
                     "--package", "none", "-o", str(out)]) == 0
        capsys.readouterr()
        macros = dict(re.findall(r"#define MODEL_(\w+) (\d+)u", (out / "model.h").read_text()))
        summary = json.loads((out / "report.json").read_text())["summary"]
        stack = summary["stack_estimate_bytes"]
        built = int(macros["ARENA_SIZE"]) + int(macros["STATE_SIZE"]) + context_bytes() + stack
        assert summary["sram_total_bytes"] == built
        shadow = argparse.Namespace(rounding="shadow", no_in_place=False)
        need, params = _scheme_need(gq, update, shadow, None, kw, stack)
        assert need == built, update
        plain = _scheme_need(gq, update, argparse.Namespace(rounding="stochastic", no_in_place=False), None, kw,
                             stack)[0]
        tg = training_graph(gq, update)
        int8 = [tg.t(t).size for t in tg.meta["training"]["trainable"] if tg.t(t).dtype == "int8"]
        assert int8 and need - plain == sum((2 * n + ALIGN - 1) // ALIGN * ALIGN for n in int8)
    # the budget check of compile counts the shadows too: a budget between the two figures is refused
    assert main(["compile", str(model), "--calib", str(calib), "--update", "last-2", "--rounding", "shadow",
                 "--sram", str(need - 1), "--package", "none", "-o", str(tmp_path / "tight")]) == 2
    assert "does not fit" in capsys.readouterr().err
