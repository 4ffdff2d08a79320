"""Real boards (stm32f746g-disco, nrf52840-dk): the firmware links for the part
(vector table at the flash origin, RAM within the SRAM, the right FPU, no
semihosting), a build that does not fit fails with the link-overflow error,
`tinytrain flash` fails with one-line errors (pyOCD missing, no probe, a QEMU
board) and drives pyOCD as documented; and the MPU guard of startup.c under
QEMU: a stack overflow, a write past the SRAM budget, a write to flash and a
jump into RAM end with MemManage (exit 204) instead of silent corruption."""
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import tinytrain as tt
from tinytrain.boards import boards_dir, build, load_board
from tinytrain.cli import main
from tinytrain.compiler.errors import TinytrainError
from tinytrain.compiler.pipeline import compile_graph
from tinytrain.data import load_dataset

ROOT = Path(__file__).resolve().parent.parent
D = ROOT / "models" / "data"
MODEL = ROOT / "models" / "mcu_cnn_mnist.onnx"
REAL = {"stm32f746g-disco": (0x08000000, 320 * 1024, "stm32f746nghx"), "nrf52840-dk": (0x0, 256 * 1024, "nrf52840")}
QEMU = ["qemu-mps2-an386", "qemu-mps2-an500"]
HAVE_GCC = shutil.which("arm-none-eabi-gcc") is not None
needs_gcc = pytest.mark.skipif(not HAVE_GCC, reason="arm-none-eabi-gcc not installed (apt-get install "
                               "gcc-arm-none-eabi libnewlib-arm-none-eabi)")
needs_qemu = pytest.mark.skipif(not HAVE_GCC or shutil.which("qemu-system-arm") is None,
                                reason="arm-none-eabi-gcc or qemu-system-arm not installed")


@pytest.fixture(scope="module")
def gq():
    x = load_dataset(D / "fmnist_train.npz")[0]
    return tt.quantize(tt.load(MODEL), x[:200], output_range=(-16, 16))


@pytest.fixture(scope="module")
def sparse(gq, tmp_path_factory):
    out = tmp_path_factory.mktemp("sparse")
    compile_graph(gq, out, name="m", update="sparse")
    return out


def _tool(name, *args):
    return subprocess.run([shutil.which(name), *map(str, args)], capture_output=True, text=True, check=True).stdout


def _symbols(elf):
    return {w[2]: int(w[0], 16) for w in (ln.split() for ln in _tool("arm-none-eabi-nm", elf).splitlines())
            if len(w) == 3}


# ---------------------------------------------------------------------------- builds for the parts

@needs_gcc
@pytest.mark.parametrize("board", sorted(REAL))
def test_real_board_firmware_links_for_the_part(board, sparse):
    origin, sram, _ = REAL[board]
    b = load_board(board)
    assert (b["flash_origin"], b["sram"], b["flash"]) == (origin, sram, 1024 * 1024)
    fw = build(sparse, board, "m")
    assert fw.elf.is_file() and fw.elf == sparse / board / "firmware.elf"
    assert 0 < fw.ram_used <= sram and 0 < fw.flash_used <= b["flash"]

    sym = _symbols(fw.elf)
    sections = {m[0]: int(m[1], 16) for m in re.findall(r"^\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+([0-9a-f]{8})\s",
                                                        _tool("arm-none-eabi-readelf", "-S", "-W", fw.elf), re.M)}
    assert sections[".isr_vector"] == origin and sym["tt_vectors"] == origin
    entry = int(_tool("arm-none-eabi-readelf", "-h", fw.elf).split("Entry point address:")[1].split()[0], 16)
    assert entry & ~1 == sym["Reset_Handler"] and origin < sym["Reset_Handler"] < origin + fw.flash_used
    # the vector table's first two words: the initial SP (top of the stack, in RAM) and the reset handler
    dump = _tool("arm-none-eabi-objdump", "-s", "-j", ".isr_vector", fw.elf).split("Contents of section")[1]
    words = [int.from_bytes(bytes.fromhex(w), "little") for w in dump.splitlines()[1].split()[1:3]]
    assert words == [sym["_estack"], sym["Reset_Handler"] | 1]
    assert 0x20000000 < sym["_estack"] <= 0x20000000 + sram
    assert sym["_sguard"] + 32 == sym["_sstack"] and sym["_sguard"] % 32 == 0     # the MPU stack guard
    # the real-board glue, not semihosting: a BKPT 0xAB without a debugger would stop the core
    disasm = _tool("arm-none-eabi-objdump", "-d", fw.elf)
    assert "bkpt\t0x00ab" not in disasm and "board_console_init" in sym and "tt_exit_status" in sym
    # the part's FPU: single precision only
    attrs = _tool("arm-none-eabi-readelf", "-A", fw.elf)
    assert "Tag_ABI_HardFP_use: SP only" in attrs and "Tag_ABI_VFP_args: VFP registers" in attrs
    assert ("FPv5" if board.startswith("stm32") else "VFPv4") in attrs


@needs_gcc
def test_full_update_does_not_fit_the_nrf52840_but_fits_the_stm32f746(gq, tmp_path, capsys):
    out = tmp_path / "full"
    compile_graph(gq, out, name="big", update="full")
    with pytest.raises(TinytrainError, match=r"nrf52840-dk: the firmware needs [\d.]+ KB of RAM, the board has "
                                             r"256 KB .*region `RAM' overflowed by \d+ bytes"):
        build(out, "nrf52840-dk")
    capsys.readouterr()
    assert main(["build", str(out), "--board", "nrf52840-dk"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "overflowed" in err[0], err
    fw = build(out, "stm32f746g-disco")
    assert 256 * 1024 < fw.ram_used <= 320 * 1024


@needs_gcc
def test_cli_build_real_board_and_run_is_refused(sparse, capsys):
    assert main(["build", str(sparse), "--board", "stm32f746g-disco"]) == 0
    text = capsys.readouterr().out
    assert "stm32f746g-disco: flash" in text and "of 320 KB" in text and "tinytrain flash" in text
    assert main(["run", str(sparse), "--board", "nrf52840-dk", "--data", str(D / "fmnist_train.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "real board" in err[0] and "tinytrain flash" in err[0], err


# ---------------------------------------------------------------------------- tinytrain flash

def _no_pyocd(monkeypatch, tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", str(empty))
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "pyocd" else real(n, *a))


def _fake_pyocd(tmp_path, monkeypatch, probes, flash_rc=0):
    """A `pyocd` executable first on PATH: `json --probes` lists `probes`, `flash`
    records its arguments and exits with flash_rc."""
    bindir = tmp_path / "fake-bin"
    bindir.mkdir(exist_ok=True)
    log = tmp_path / "pyocd-calls.json"
    script = bindir / "pyocd"
    script.write_text(f"""#!{sys.executable}
import json, sys
args = sys.argv[1:]
calls = json.load(open({str(log)!r})) if __import__('os').path.exists({str(log)!r}) else []
calls.append(args)
json.dump(calls, open({str(log)!r}, 'w'))
if args[:2] == ['json', '--probes']:
    print(json.dumps({{'pyocd_version': '0.0-fake', 'status': 0, 'boards': {json.dumps(probes)}}}))
    sys.exit(0)
if args[:1] == ['flash']:
    if {flash_rc}:
        print('0001234 C Error: Target reported a fault while programming [__main__]', file=sys.stderr)
    sys.exit({flash_rc})
sys.exit(9)
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_flash_without_pyocd_says_how_to_install(sparse, tmp_path, monkeypatch, capsys):
    _no_pyocd(monkeypatch, tmp_path)
    assert main(["flash", str(sparse), "--board", "stm32f746g-disco"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pyocd is not installed" in err[0] and "pip install 'tinytrain[boards]'" in err[0]


def test_flash_refuses_a_qemu_board(sparse, capsys):
    assert main(["flash", str(sparse), "--board", "qemu-mps2-an386"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "QEMU board" in err[0] and "tinytrain run" in err[0], err


def test_flash_with_no_probe_attached(sparse, tmp_path, monkeypatch, capsys):
    log = _fake_pyocd(tmp_path, monkeypatch, probes=[])
    assert main(["flash", str(sparse), "--board", "nrf52840-dk"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no debug probe attached" in err[0], err
    assert json.loads(log.read_text()) == [["json", "--probes"]]          # asked for probes, flashed nothing


def test_flash_with_several_probes_needs_probe(sparse, tmp_path, monkeypatch, capsys):
    _fake_pyocd(tmp_path, monkeypatch, probes=[{"unique_id": "A1"}, {"unique_id": "B2"}])
    assert main(["flash", str(sparse), "--board", "nrf52840-dk"]) == 2
    assert "choose one with --probe" in capsys.readouterr().err
    assert main(["flash", str(sparse), "--board", "nrf52840-dk", "--probe", "C3"]) == 2
    assert "no attached probe has the id 'C3'" in capsys.readouterr().err


@needs_gcc
@pytest.mark.parametrize("board", sorted(REAL))
def test_flash_builds_and_calls_pyocd(board, gq, tmp_path, monkeypatch, capsys):
    out = tmp_path / "p"
    compile_graph(gq, out, name="m", update="sparse")
    log = _fake_pyocd(tmp_path, monkeypatch, probes=[{"unique_id": "0669FF3", "board_name": "fake"}])
    assert main(["flash", str(out), "--board", board]) == 0
    text = capsys.readouterr().out
    elf = out / board / "firmware.elf"
    assert elf.is_file() and f"flashed {elf}" in text and "0669FF3" in text
    calls = json.loads(log.read_text())
    assert calls == [["json", "--probes"], ["flash", "-t", REAL[board][2], "-u", "0669FF3", "--format", "elf",
                                            str(elf)]]
    addr = _symbols(elf)["tt_exit_status"]
    assert f"read32 {addr:#010x}" in text
    # up to date: flashed again without a rebuild
    mtime = elf.stat().st_mtime_ns
    assert main(["flash", str(out), "--board", board]) == 0
    assert elf.stat().st_mtime_ns == mtime and "KB of" not in capsys.readouterr().out


@needs_gcc
def test_flash_reports_pyocd_failure_in_one_line(sparse, tmp_path, monkeypatch, capsys):
    _fake_pyocd(tmp_path, monkeypatch, probes=[{"unique_id": "X"}], flash_rc=1)
    assert main(["flash", str(sparse), "--board", "stm32f746g-disco"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pyocd flash -t stm32f746nghx failed (exit 1)" in err[0] and "fault while programming" \
        in err[0] and "pyocd pack install stm32f746ng" in err[0], err


# ---------------------------------------------------------------------------- the MPU guard under QEMU

GUARD_PROGRAM = r"""
#include <stdint.h>
#include "board.h"
extern uint32_t __ram_start__[], __ram_size__[], _sguard[];
const uint32_t in_flash[2] = {0x12345678u, 1u};
uint32_t ram_code[2];
int main(void)
{
    volatile uint32_t *p = (volatile uint32_t *)((uintptr_t)__ram_start__ + (uintptr_t)__ram_size__);
    board_print("start\n");
    (void)p;
#if MODE == 0                  /* the last word of the budget: allowed */
    p[-1] = 5u;
    if (p[-1] != 5u) {
        return 1;
    }
#elif MODE == 1                /* the first word past the budget */
    p[0] = 5u;
#elif MODE == 2                /* reading past the budget */
    if (p[0] == 0x5A5A5A5Au) {
        return 2;
    }
#elif MODE == 3                /* writing to flash */
    *(volatile uint32_t *)(uintptr_t)&in_flash[1] = 0u;
#elif MODE == 4                /* executing from RAM: bx lr */
    ram_code[0] = 0x47704770u;
    ((void (*)(void))((uintptr_t)ram_code | 1u))();
#elif MODE == 5                /* the stack guard */
    _sguard[0] = 5u;
#endif
    board_print("survived\n");
    return 0;
}
"""


def _guard_firmware(board, mode, out):
    b = load_board(board)
    common = boards_dir() / "common"
    out.mkdir(parents=True, exist_ok=True)
    src = out / "guard.c"
    src.write_text(GUARD_PROGRAM)
    elf = out / f"guard{mode}.elf"
    subprocess.run([shutil.which("arm-none-eabi-gcc"), *b["cflags"], "-std=c99", "-O2", "-Wall", "-Wextra",
                    "-Werror", f"-DMODE={mode}", f"-I{common}", "-nostartfiles", "--specs=nano.specs",
                    "-T", str(b["dir"] / b["ldscript"]), f"-L{common}", str(common / "startup.c"),
                    str(common / "board.c"), str(src), "-o", str(elf)], check=True)
    res = subprocess.run(["qemu-system-arm", "-machine", b["qemu"]["machine"], "-nographic", "-monitor", "none",
                          "-serial", "none", "-chardev", "stdio,id=sh0", "-semihosting-config",
                          "enable=on,target=native,chardev=sh0", "-kernel", str(elf)],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    return res.returncode, res.stdout + res.stderr


@needs_qemu
@pytest.mark.parametrize("board", QEMU)
def test_mpu_faults_outside_the_budget(board, tmp_path):
    code, text = _guard_firmware(board, 0, tmp_path)
    assert code == 0 and "survived" in text, text                  # the whole budget is usable
    for mode, cfsr_bits in [(1, 0x82), (2, 0x82), (3, 0x82), (4, 0x01), (5, 0x82)]:
        code, text = _guard_firmware(board, mode, tmp_path)
        assert code == 204 and "start" in text and "survived" not in text, (mode, code, text)
        line = [ln for ln in text.splitlines() if ln.startswith("fault:")][0]
        cfsr = int(line.split(" cfsr ")[1].split()[0], 16)
        assert line.startswith("fault: exception 04") and cfsr & cfsr_bits == cfsr_bits, (mode, line)


@needs_qemu
@pytest.mark.parametrize("board", QEMU)
def test_stack_overflow_ends_with_memmanage(board, sparse):
    from tinytrain.qemu import run_firmware
    x, y = load_dataset(D / "fmnist_train.npz")
    fw = build(sparse, board, "m", x[:1], y[:1], steps=1, stack=256)
    with pytest.raises(TinytrainError, match=r"fault: exception 4 \(MemManage\); the stack overflowed its region"):
        run_firmware(fw, timeout=60)
    log = (fw.elf.parent / "run.log").read_text()
    assert "step 0" not in log and "(the stack overflowed its region)" in log


# ---------------------------------------------------------------------------- the real-board glue under QEMU

# A console for board_hw.c that writes through semihosting and, when board_exit
# flushes it after storing tt_exit_status, ends QEMU with that status: the glue
# of the real boards (DWT counter, SysTick extension, exit word, fault report)
# then runs the training program on the MPS2 machines, whose memory map is the
# nRF52840's (flash at 0, RAM at 0x20000000).
SEMIHOSTING_CONSOLE = r"""
#include <stdint.h>
#include "board_hw.h"
extern volatile uint32_t tt_exit_status[2];
static int semihost(int op, const void *arg)
{
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}
void board_console_init(void)
{
}
void board_console_write(const char *text, uint32_t n)
{
    char chunk[65];
    uint32_t i = 0u, k;
    while (i < n) {
        for (k = 0u; k < 64u && i < n; ++k, ++i) {
            chunk[k] = text[i];
        }
        chunk[k] = '\0';
        (void)semihost(0x04, chunk);
    }
}
void board_console_flush(void)
{
    uint32_t block[2];
    if (tt_exit_status[0] == 0x54545845u) {
        block[0] = 0x20026u;
        block[1] = tt_exit_status[1];
        (void)semihost(0x20, block);
    }
}
"""


@pytest.fixture
def glue_board(tmp_path, monkeypatch):
    """boards/ with one more board: an386 or an500 built with board_hw.c and the semihosting console."""
    import tinytrain.boards as tb
    real = boards_dir()
    root = tmp_path / "boards"
    root.mkdir()
    for d in real.iterdir():
        if d.is_dir():
            (root / d.name).symlink_to(d, target_is_directory=True)
    for qemu_board in QEMU:
        b = json.loads((real / qemu_board / "board.json").read_text())
        d = root / f"glue-{qemu_board}"
        d.mkdir()
        (d / "console.c").write_text(SEMIHOSTING_CONSOLE)
        (d / "board.ld").symlink_to(real / qemu_board / "board.ld")
        b.update(name=d.name, sources=["../common/startup.c", "../common/board_hw.c", "console.c",
                                       "../common/main.c"])
        (d / "board.json").write_text(json.dumps(b))
    monkeypatch.setattr(tb, "boards_dir", lambda: root)
    return lambda qemu_board: f"glue-{qemu_board}"


@needs_qemu
@pytest.mark.parametrize("qemu_board", QEMU)
def test_real_board_glue_trains_bit_exact_under_qemu(qemu_board, glue_board, gq, tmp_path):
    import copy
    import struct

    import numpy as np

    from tinytrain.qemu import run_firmware
    from tinytrain.train.backprop import BackpropTrainer
    out = tmp_path / "g"
    tg0 = compile_graph(gq, out, name="m", update="sparse")[0]
    x, y = load_dataset(D / "fmnist_train.npz")
    steps = 4
    tg = copy.deepcopy(tg0)
    fw = build(out, glue_board(qemu_board), "m", x[:steps], y[:steps], steps=steps, lr=0.02, seed=1, graph=tg)
    res = run_firmware(fw, timeout=120)
    sim = BackpropTrainer(tg, lr=0.02, seed=1)
    for s in res.steps:
        loss, logits = sim.step(x[s.step], y[s.step])
        assert s.loss_bits == struct.unpack("<I", np.float32(loss).tobytes())[0]
        assert s.pred == int(np.argmax(np.asarray(logits).reshape(-1)))
        assert s.instructions == 0            # QEMU does not model the DWT cycle counter: it reads 0
    assert len(res.steps) == steps and 0 < res.stack_peak < res.stack_size

    # a stack overflow through the same glue: MemManage, reported by board_hw.c's fault exit
    fw = build(out, glue_board(qemu_board), "m", x[:1], y[:1], steps=1, stack=256)
    with pytest.raises(TinytrainError, match=r"fault: exception 4 \(MemManage\); the stack overflowed"):
        run_firmware(fw, timeout=60)
    assert " mmfar 0x" in (fw.elf.parent / "run.log").read_text()
