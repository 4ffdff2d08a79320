"""The phone target: the compiled training library cross-built for Linux on
AArch64 (aarch64-linux-gnu-gcc, static) trains under qemu-user bit for bit like
the simulator, for backprop and for MeZO, with the Cortex-M boards' main.c and
output protocol; the instruction counts come from a QEMU plugin (qemu-user has
no -icount) and are exact."""
import copy
import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

import tinytrain as tt
from tinytrain.boards import boards_dir, build, load_board
from tinytrain.cli import main
from tinytrain.compiler.codegen.emit_c import Emitter
from tinytrain.compiler.pipeline import compile_graph, compile_mezo
from tinytrain.data import load_dataset
from tinytrain.qemu import profile_report, run_firmware
from tinytrain.train.backprop import BackpropTrainer
from tinytrain.train.mezo import MezoTrainer

ROOT = Path(__file__).resolve().parent.parent
D = ROOT / "models" / "data"
MODEL = ROOT / "models" / "mcu_cnn_mnist.onnx"
BOARD = "linux-aarch64"
STEPS, LR, SEED = 20, 0.02, 5


def _missing():
    gone = [t for t in ("aarch64-linux-gnu-gcc", "qemu-aarch64") if shutil.which(t) is None]
    if gone:
        return " and ".join(gone) + " not installed"
    probe = subprocess.run(["aarch64-linux-gnu-gcc", "-static", "-x", "c", "-", "-o", "/dev/null"],
                           input="#include <stdio.h>\nint main(void) { return puts(\"\"); }\n",
                           capture_output=True, text=True)
    return "" if probe.returncode == 0 else "the AArch64 C library (libc6-dev-arm64-cross) is not installed"


MISSING = _missing()
needs_tools = pytest.mark.skipif(bool(MISSING), reason=f"{MISSING} (apt-get install --no-install-recommends "
                                 "gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)")


@pytest.fixture(scope="module")
def fmnist():
    return load_dataset(D / "fmnist_train.npz")


@pytest.fixture(scope="module")
def gq(fmnist):
    return tt.quantize(tt.load(MODEL), fmnist[0][:200], output_range=(-16, 16))


def _bits(v):
    return struct.unpack("<I", np.float32(v).tobytes())[0]


def test_board_json_is_a_linux_user_space_target():
    b = load_board(BOARD)
    assert b["kind"] == "linux-user" and b["compiler"] == "aarch64-linux-gnu-gcc"
    assert b["run"][:3] == ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]


@needs_tools
@pytest.mark.parametrize("kw", [dict(update="sparse"), dict(update="sparse", float_classifier=True)],
                         ids=["sparse", "float-classifier"])
def test_aarch64_backprop_bit_exact_with_the_simulator(kw, gq, fmnist, tmp_path):
    """The float-classifier build runs float kernels whose a*b+c gcc fuses into FMA on AArch64
    unless -ffp-contract=off (seen with gcc 12 and -ffp-contract=fast: the loss differs at step 0)."""
    tg0, plan, facts = compile_graph(gq, tmp_path, name="m", **kw)
    x, y = fmnist[0][:STEPS], fmnist[1][:STEPS]
    tg = copy.deepcopy(tg0)
    fw = build(tmp_path, BOARD, "m", x, y, steps=STEPS, lr=LR, seed=SEED, graph=tg)
    out = subprocess.run(["file", str(fw.elf)], capture_output=True, text=True).stdout
    assert "ARM aarch64" in out and "statically linked" in out, out
    res = run_firmware(fw, timeout=300)
    assert [s.step for s in res.steps] == list(range(STEPS))
    sim = BackpropTrainer(tg, lr=LR, seed=SEED)
    for s in res.steps:
        loss, logits = sim.step(x[s.step], y[s.step])
        assert s.loss_bits == _bits(loss), s
        assert s.pred == int(np.argmax(np.asarray(logits).reshape(-1))), s
        assert s.label == y[s.step]
        assert (s.instructions > 1_000_000) if fw.plugin else (s.instructions == 0), s
    assert struct.unpack("<4I", res.state[:16]) == (0x31535454, facts["signature"], facts["state"], STEPS)
    offsets = Emitter(tg, plan, "m").state_off
    for tid, off in offsets.items():
        t = tg.t(tid)
        got = np.frombuffer(res.state, dtype=t.data.dtype, count=t.size, offset=off)
        np.testing.assert_array_equal(got, t.data.reshape(-1), err_msg=t.name)
    assert any(not np.array_equal(tg.t(tid).data, tg0.t(tid).data) for tid in offsets)
    assert 0 < res.stack_peak < res.stack_size


@needs_tools
def test_aarch64_mezo_bit_exact_with_the_simulator(gq, fmnist, tmp_path):
    gz, plan, facts = compile_mezo(gq, tmp_path, name="z", update="sparse", queries=2)
    x, y = fmnist[0][:STEPS], fmnist[1][:STEPS]
    fw = build(tmp_path, BOARD, "z", x, y, steps=STEPS, lr=1e-4, seed=SEED, graph=gz)
    res = run_firmware(fw, timeout=300)
    sim = MezoTrainer(gq, "sparse", lr=1e-4, seed=SEED, queries=2)
    for s in res.steps:
        loss, logits = sim.step(x[s.step], y[s.step])
        assert s.loss_bits == _bits(loss), s
        assert s.pred == int(np.argmax(np.asarray(logits).reshape(-1))), s
    offsets = Emitter(gz, plan, "z").state_off
    changed = 0
    for it in gz.meta["zo"]["items"]:
        t = sim.graph.t(it["tid"])
        got = np.frombuffer(res.state, dtype=t.data.dtype, count=t.size, offset=offsets[it["tid"]])
        np.testing.assert_array_equal(got, t.data.reshape(-1), err_msg=t.name)
        changed += not np.array_equal(t.data, gz.t(it["tid"]).data)
    assert changed > 0


@needs_tools
def test_cli_build_and_run_with_check_backprop_and_mezo(tmp_path, capsys):
    data = str(D / "fmnist_train.npz")
    out = tmp_path / "kws"
    assert main(["compile", str(MODEL), "--calib", data, "--name", "kws", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["build", str(out), "--board", BOARD]) == 0
    text = capsys.readouterr().out
    assert "linux-aarch64: program train" in text and (out / BOARD / "train").is_file()
    assert main(["run", str(out), "--board", BOARD, "--data", data, "--steps", "4", "--check", "--model",
                 str(MODEL), "--calib", data]) == 0
    text = capsys.readouterr().out
    assert "check: 4 steps bit-identical" in text
    assert ("instructions per training step (exact" if HOST_CC else "no instruction counter") in text

    z = tmp_path / "z"
    assert main(["compile", str(MODEL), "--calib", data, "--name", "z", "--trainer", "mezo", "--queries", "2",
                 "-o", str(z)]) == 0
    capsys.readouterr()
    args = ["run", str(z), "--board", BOARD, "--data", data, "--steps", "4", "--lr", "1e-4", "--check", "--model",
            str(MODEL), "--calib", data, "--trainer", "mezo"]
    assert main(args + ["--queries", "2"]) == 0
    assert "check: 4 steps bit-identical" in capsys.readouterr().out
    # without --trainer the build record (build.json) says mezo; an explicit backprop replay of a MeZO
    # library contradicts it and is refused before anything runs (another graph signature)
    assert main(args[:-2] + ["--trainer", "backprop"]) == 2
    assert "signature" in capsys.readouterr().err


HOST_CC = shutil.which("cc") or shutil.which("gcc")


@needs_tools
@pytest.mark.skipif(HOST_CC is None, reason="no host C compiler for the QEMU plugin")
def test_plugin_counts_instructions_exactly(tmp_path):
    """board_instructions() around a loop of 2 x 10,000,000 instructions (subs, b.ne)."""
    d = boards_dir()
    (tmp_path / "t.c").write_text("""#include <stdio.h>
#include "board.h"
int main(void)
{
    uint64_t a, b, c;
    board_init();
    a = board_instructions();
    b = board_instructions();
    __asm__ volatile("ldr x9, =10000000\\n1: subs x9, x9, #1\\nb.ne 1b" ::: "x9", "cc");
    c = board_instructions();
    printf("%llu %llu\\n", (unsigned long long)(b - a), (unsigned long long)(c - b));
    return 0;
}
""")
    subprocess.run(["aarch64-linux-gnu-gcc", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-static",
                    f"-I{d / 'common'}", str(tmp_path / "t.c"), str(d / BOARD / "board.c"), "-o",
                    str(tmp_path / "t")], check=True)
    subprocess.run([HOST_CC, "-shared", "-fPIC", "-O2", str(d / BOARD / "icount_plugin.c"), "-o",
                    str(tmp_path / "p.so")], check=True)
    with_plugin = subprocess.run(["qemu-aarch64", "-plugin", str(tmp_path / "p.so"), str(tmp_path / "t")],
                                 capture_output=True, text=True, check=True).stdout.split()
    read_cost, loop = int(with_plugin[0]), int(with_plugin[1])
    assert 0 < read_cost < 100                               # one read of the counter
    assert loop - read_cost == 2 * 10_000_000 + 1, (read_cost, loop)   # + the ldr
    plain = subprocess.run(["qemu-aarch64", str(tmp_path / "t")], capture_output=True, text=True,
                           check=True).stdout.split()
    assert plain == ["0", "0"]                               # no plugin: no count


@needs_tools
@pytest.mark.skipif(HOST_CC is None, reason="no host C compiler for the QEMU plugin")
def test_aarch64_profile_adds_up(gq, fmnist, tmp_path):
    tg, plan, facts = compile_graph(gq, tmp_path, name="m", update="sparse")
    x, y = fmnist[0][:2], fmnist[1][:2]
    fw = build(tmp_path, BOARD, "m", x, y, steps=2, lr=LR, seed=SEED, graph=copy.deepcopy(tg), profile=True)
    res = run_firmware(fw, timeout=300)
    rep = profile_report(res, json.loads((tmp_path / "m_profile.json").read_text()))
    ph = rep["phases"]
    assert ph["forward"] > 0 and ph["backward"] > 0 and ph["update"] > 0
    assert 0 <= ph["other"] < 0.005 * rep["step_instructions"]


def test_missing_cross_tools_are_one_line_errors(gq, tmp_path, monkeypatch):
    from tinytrain.compiler.errors import TinytrainError
    compile_graph(gq, tmp_path, name="m", update="bias")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(TinytrainError, match="aarch64-linux-gnu-gcc not found: install it with: apt-get install .*"
                                             "gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user"):
        build(tmp_path, BOARD, "m")
