"""The Cortex-M DSP kernels (runtime_c/include/tt_arm_dsp.h: SXTB16/SMLAD int8 dot products)
give exactly the portable C results: the same compiled model is cross-built for the
emulated M4 (qemu-mps2-an386) and M7 (qemu-mps2-an500) with the DSP path on (the default
for -mcpu=cortex-m4/m7) and forced off (-DTT_NO_DSP); both train bit for bit like the
simulator (losses, predicted classes, final learned state) and their state blobs are
identical.  The DSP build must also run fewer instructions, and really contain SMLAD."""
import copy
import shutil
import subprocess

import numpy as np
import pytest

import tinytrain as tt
from tinytrain import boards
from tinytrain.compiler.pipeline import compile_graph
from tinytrain.data import load_dataset
from tinytrain.qemu import compare_with_simulator, run_firmware

from .test_boards import D, MODEL

BOARDS = ["qemu-mps2-an386", "qemu-mps2-an500"]
STEPS, LR, SEED = 6, 0.02, 5
MISSING = [t for t in ("arm-none-eabi-gcc", "arm-none-eabi-objdump", "qemu-system-arm") if shutil.which(t) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"{' and '.join(MISSING)} not installed (apt-get install "
                                "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    x, y = load_dataset(D / "fmnist_train.npz")
    gq = tt.quantize(tt.load(MODEL), x[:200], output_range=(-16, 16))
    out = tmp_path_factory.mktemp("dsp")
    tg, plan, facts = compile_graph(gq, out, name="m", update="sparse")
    return out, tg, x[:STEPS], y[:STEPS]


def _train(out, tg0, x, y, board, monkeypatch, no_dsp):
    flags = boards.CFLAGS + (["-DTT_NO_DSP"] if no_dsp else [])
    with monkeypatch.context() as m:
        m.setattr(boards, "CFLAGS", flags)
        fw = boards.build(out, board, "m", x, y, steps=STEPS, lr=LR, seed=SEED, graph=tg0)
    dis = subprocess.run(["arm-none-eabi-objdump", "-d", str(fw.elf)], capture_output=True, text=True).stdout
    res = run_firmware(fw, timeout=300)
    tg = copy.deepcopy(tg0)                      # the simulator trains its copy in place
    compare_with_simulator(tg, res, x, y, STEPS, LR, SEED, name="m")   # raises on any difference
    return res, dis


@pytest.mark.parametrize("board", BOARDS)
def test_dsp_and_portable_kernels_train_identically(board, compiled, monkeypatch):
    out, tg, x, y = compiled
    dsp, dis_dsp = _train(out, tg, x, y, board, monkeypatch, no_dsp=False)
    plain, dis_plain = _train(out, tg, x, y, board, monkeypatch, no_dsp=True)
    assert "smlad" in dis_dsp and "sxtb16" in dis_dsp
    assert "smlad" not in dis_plain
    assert [s.loss_bits for s in dsp.steps] == [s.loss_bits for s in plain.steps]
    assert [s.pred for s in dsp.steps] == [s.pred for s in plain.steps]
    assert dsp.state == plain.state and dsp.crc32 == plain.crc32
    n_dsp = np.median([s.instructions for s in dsp.steps])
    n_plain = np.median([s.instructions for s in plain.steps])
    assert n_dsp < n_plain, (board, n_dsp, n_plain)
