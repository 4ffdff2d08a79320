"""Boards: the compiled training library cross-built for Cortex-M (arm-none-eabi-gcc)
trains under QEMU bit for bit like the simulator, its RAM fits the board, and a
build that does not fit fails at link time with an explanation."""
import copy
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

import tinytrain as tt
from tinytrain.boards import build, load_board
from tinytrain.cli import main
from tinytrain.compiler.codegen.emit_c import Emitter
from tinytrain.compiler.errors import TinytrainError
from tinytrain.compiler.pipeline import compile_graph
from tinytrain.data import load_dataset
from tinytrain.qemu import run_firmware
from tinytrain.train.backprop import BackpropTrainer

ROOT = Path(__file__).resolve().parent.parent
D = ROOT / "models" / "data"
MODEL = ROOT / "models" / "mcu_cnn_mnist.onnx"
BOARDS = ["qemu-mps2-an386", "qemu-mps2-an500"]
STEPS, LR, SEED = 20, 0.02, 3
MISSING = [t for t in ("arm-none-eabi-gcc", "qemu-system-arm") if shutil.which(t) is None]
needs_tools = pytest.mark.skipif(bool(MISSING), reason=f"{' and '.join(MISSING)} not installed (apt-get install "
                                 "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)")


@pytest.fixture(scope="module")
def fmnist():
    return load_dataset(D / "fmnist_train.npz")


@pytest.fixture(scope="module")
def gq(fmnist):
    return tt.quantize(tt.load(MODEL), fmnist[0][:200], output_range=(-16, 16))


@pytest.fixture(scope="module")
def sparse(gq, tmp_path_factory):
    out = tmp_path_factory.mktemp("sparse")
    tg, plan, facts = compile_graph(gq, out, name="m", update="sparse")
    return out, tg, plan, facts


@needs_tools
@pytest.mark.parametrize("board", BOARDS)
def test_board_trains_bit_exact_with_the_simulator(board, sparse, fmnist):
    out, tg0, plan, facts = sparse
    x, y = fmnist[0][:STEPS], fmnist[1][:STEPS]
    tg = copy.deepcopy(tg0)                   # the simulator trains its graph in place
    fw = build(out, board, "m", x, y, steps=STEPS, lr=LR, seed=SEED, graph=tg)
    res = run_firmware(fw, timeout=300)
    assert [s.step for s in res.steps] == list(range(STEPS))

    sim = BackpropTrainer(tg, lr=LR, seed=SEED)
    for s in res.steps:
        loss, logits = sim.step(x[s.step], y[s.step])
        assert s.loss_bits == struct.unpack("<I", np.float32(loss).tobytes())[0], (board, s)
        assert s.pred == int(np.argmax(np.asarray(logits).reshape(-1))), (board, s)
        assert s.label == y[s.step]
        assert s.instructions > 1_000_000
    # the learned state blob: header (magic, signature, size, steps) and every trained tensor, bit for bit
    assert len(res.state) == facts["state"]
    assert struct.unpack("<4I", res.state[:16]) == (0x31535454, facts["signature"], facts["state"], STEPS)
    offsets = Emitter(tg, plan, "m").state_off
    assert sorted(offsets) == sorted(tg.meta["training"]["trainable"])
    for tid, off in offsets.items():
        t = tg.t(tid)
        got = np.frombuffer(res.state, dtype=t.data.dtype, count=t.size, offset=off)
        np.testing.assert_array_equal(got, t.data.reshape(-1), err_msg=f"{board}: {t.name}")
    assert any(not np.array_equal(tg.t(tid).data, tg0.t(tid).data) for tid in offsets)   # it did learn

    # memory: the link enforces the board's SRAM with the stack reserved; the measured peak fits in it
    sram = load_board(board)["sram"]
    assert 0 < res.stack_peak < fw.stack_reserved == res.stack_size
    assert fw.ram_used <= sram and fw.ram_static + res.stack_peak <= sram
    assert fw.ram_static >= facts["arena"] + facts["state"]
    assert fw.flash_used > STEPS * x[0].size * 4         # the samples are in flash


@needs_tools
def test_full_update_does_not_link_on_the_nrf52840_stand_in(gq, tmp_path, capsys):
    out = tmp_path / "full"
    compile_graph(gq, out, name="big", update="full")
    with pytest.raises(TinytrainError, match=r"needs [\d.]+ KB of RAM, the board has 256 KB .*overflowed by \d+ "
                                             r"bytes"):
        build(out, "qemu-mps2-an386")
    capsys.readouterr()
    assert main(["build", str(out), "--board", "qemu-mps2-an386"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "region `RAM' overflowed" in err[0] and "arena" in err[0], err


@needs_tools
def test_cli_build_and_run_with_check(tmp_path, capsys):
    out = tmp_path / "kws"
    assert main(["compile", str(MODEL), "--calib", str(D / "fmnist_train.npz"), "--name", "kws", "-o",
                 str(out)]) == 0
    capsys.readouterr()
    assert main(["build", str(out), "--board", "qemu-mps2-an500"]) == 0
    text = capsys.readouterr().out
    assert "qemu-mps2-an500: flash" in text and "of 320 KB" in text
    assert main(["run", str(out), "--board", "qemu-mps2-an386", "--data", str(D / "fmnist_train.npz"), "--steps",
                 "4", "--check", "--model", str(MODEL), "--calib", str(D / "fmnist_train.npz")]) == 0
    text = capsys.readouterr().out
    assert "instructions per training step" in text and "check: 4 steps bit-identical" in text
    rows = [ln for ln in text.splitlines() if ln.split()[:1] in (["0"], ["1"], ["2"], ["3"])]
    assert len(rows) == 4 and text.count("step  label  pred") == 1     # one line per step, printed once
    # another calibration rebuilds another graph: refused before anything runs
    assert main(["run", str(out), "--board", "qemu-mps2-an386", "--data", str(D / "fmnist_train.npz"), "--steps",
                 "2", "--check", "--model", str(MODEL), "--calib", str(D / "mnist_calib.npz")]) == 2
    assert "signature" in capsys.readouterr().err


@needs_tools
def test_run_check_reads_the_build_record(tmp_path, capsys):
    """compile with options off their defaults records them (build.json, in the folder's manifest);
    `run --check` then needs only the folder and --data; a flag that contradicts the record warns."""
    import json
    from tinytrain.compiler.options import read_build
    out = tmp_path / "rec"
    assert main(["compile", str(MODEL), "--calib", str(D / "mnist_calib.npz"), "--update", "last-2", "--rounding",
                 "shadow", "--logit-range", "8", "--weight-headroom", "1.5", "--no-in-place", "--name", "kws",
                 "--package", "none", "-o", str(out)]) == 0
    rec = read_build(out)
    assert (rec.update, rec.rounding, rec.logit_range, rec.weight_headroom, rec.in_place, rec.name) == \
        ("last-2", "shadow", 8.0, 1.5, False, "kws")
    # calibration: the whole file (200 samples, fewer than data.CALIB_SAMPLES)
    assert rec.calib_samples == 200 and len(rec.model_sha256) == 64 and rec.input_shape == [1, 1, 28, 28]
    assert "build.json" in json.loads((out / ".tinytrain-manifest.json").read_text())["files"]
    capsys.readouterr()
    assert main(["run", str(out), "--board", "qemu-mps2-an386", "--data", str(D / "fmnist_train.npz"), "--steps",
                 "3", "--check"]) == 0
    assert "check: 3 steps bit-identical" in capsys.readouterr().out
    # an explicit flag wins over the record, with a warning: here it rebuilds another graph
    assert main(["run", str(out), "--board", "qemu-mps2-an386", "--data", str(D / "fmnist_train.npz"), "--steps",
                 "2", "--check", "--update", "sparse"]) == 2
    err = capsys.readouterr().err
    assert "warning: --update contradicts the build record" in err and "signature" in err


def test_missing_toolchain_and_unknown_board_are_one_line_errors(sparse, monkeypatch):
    out = sparse[0]
    with pytest.raises(TinytrainError, match="unknown board 'nrf9999'.*qemu-mps2-an386"):
        build(out, "nrf9999")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(TinytrainError, match="arm-none-eabi-gcc not found: install it with: apt-get install .*"
                                             "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"):
        build(out, "qemu-mps2-an386")


@needs_tools
@pytest.mark.parametrize("board", BOARDS)
def test_board_mezo_bit_exact_with_the_simulator(board, gq, fmnist, tmp_path):
    """The zeroth-order library (two forward passes a step) on the board equals the simulator."""
    from tinytrain.compiler.pipeline import compile_mezo
    from tinytrain.train.mezo import MezoTrainer
    gz, plan, facts = compile_mezo(gq, tmp_path, name="z", update="sparse", queries=2)
    x, y = fmnist[0][:STEPS], fmnist[1][:STEPS]
    fw = build(tmp_path, board, "z", x, y, steps=STEPS, lr=1e-4, seed=SEED, graph=gz)
    res = run_firmware(fw, timeout=300)
    sim = MezoTrainer(gq, "sparse", lr=1e-4, seed=SEED, queries=2)
    for s in res.steps:
        loss, logits = sim.step(x[s.step], y[s.step])
        assert s.loss_bits == struct.unpack("<I", np.float32(loss).tobytes())[0], (board, s)
        assert s.pred == int(np.argmax(np.asarray(logits).reshape(-1))), (board, s)
    offsets = Emitter(gz, plan, "z").state_off
    for it in gz.meta["zo"]["items"]:
        t = sim.graph.t(it["tid"])
        got = np.frombuffer(res.state, dtype=t.data.dtype, count=t.size, offset=offsets[it["tid"]])
        np.testing.assert_array_equal(got, t.data.reshape(-1), err_msg=f"{board}: {t.name}")
    assert fw.ram_static + res.stack_peak <= load_board(board)["sram"]
