"""Host speed of one training step (batch 1, one thread): the emitted C (gcc -O2,
called through cffi), the numba simulator, and PyTorch eager on the same float
graph with the same trainable parameters.

    python benchmarks/speed.py > benchmarks/speed.md      (needs torch: pip install torch==2.13.0)

With --boards: instructions per training step on the emulated Cortex-M4 / M7 (QEMU,
tinytrain.boards) for the runtime kernels before this speed work (git commit BEFORE),
now with the DSP path forced off (-DTT_NO_DSP), and now with it (the markdown section of
benchmarks/boards.md "Kernel speed on the boards"):

    python benchmarks/speed.py --boards
"""
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import tinytrain as tt  # noqa: E402
from tinytrain.compiler.pipeline import compile_graph  # noqa: E402
from tinytrain.compiler.reference import to_ir_layout  # noqa: E402
from tinytrain.compiler.scheme import resolve  # noqa: E402
from tinytrain.host import HostModel  # noqa: E402
from tinytrain.train.backprop import BackpropTrainer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_baseline import IRModule  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CASES = [("MCU CNN 28x28", "mcu_cnn_mnist.onnx", (1, 28, 28)), ("MobileNetV2-w0.35 128x128", "paper/mbv2_w035_128.onnx",
                                                                 (3, 128, 128))]


def timed(fn, n, rounds=5):
    """Best of `rounds` medians of n calls, in ms (other processes on the machine only add time)."""
    fn()
    fn()
    best = float("inf")
    for _ in range(rounds):
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        best = min(best, statistics.median(ts))
    return 1000 * best


def main():
    torch.set_num_threads(1)
    print("# Host speed of a training step\n")
    print("Command: `python benchmarks/speed.py > benchmarks/speed.md`  ")
    print(f"Machine: {platform.machine()} ({os.cpu_count()} cores, 1 thread used), gcc -O2, torch {torch.__version__}. "
          "ms per step, batch 1: the best of 5 rounds, each the median of 30 (28x28) / 8 (128x128) steps.\n")
    print(f"\"C before\": the same compiled model built with the C kernels of commit {BEFORE} (before the kernel "
          "speed work).\n")
    print("| model | scheme | C step ms | C before ms | simulator (numba) ms | PyTorch eager ms | torch time / C time "
          "| sim time / C time |")
    print("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for label, path, shape in CASES:
        gf = tt.load(ROOT / "models" / path)
        x = rng.random((4,) + shape, dtype=np.float32)
        gq = tt.quantize(gf, x, output_range=(-16, 16))
        n = 30 if shape[1] < 100 else 8
        for scheme in ("sparse", "full"):
            with tempfile.TemporaryDirectory() as tmp:
                tg, plan, facts = compile_graph(gq, tmp, name="m", update=scheme)
                hm = HostModel(tmp, "m", tg, facts, lr=0.01)
                c = timed(lambda: hm.train_step(x[0], 1), n)
                before = Path(tmp) / "before"
                shutil.copytree(tmp, before, ignore=shutil.ignore_patterns("before", "*.so"))
                _old_kernels(before)
                hb = HostModel(before, "m", tg, facts, lr=0.01)
                cb = timed(lambda: hb.train_step(x[0], 1), n)
            sim = BackpropTrainer(tg, lr=0.01)
            s = timed(lambda: sim.step(x[0], 1), n)
            model = IRModule(gf, resolve(gf, scheme))
            opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
            xt = torch.tensor(to_ir_layout(gf, x[:1]))
            yt = torch.tensor([1])

            def torch_step():
                opt.zero_grad()
                F.cross_entropy(model(xt), yt).backward()
                opt.step()
            t = timed(torch_step, n)
            print(f"| {label} | {scheme} | {c:.2f} | {cb:.2f} | {s:.2f} | {t:.2f} | {t / c:.2f} | {s / c:.2f} |",
                  flush=True)
    print("\nonnxruntime-training runs in its own venv: its figures on the same models are in "
          "benchmarks/peers_ort.md (benchmarks/ort_training.py).")


BEFORE = "418a4f3"                   # the runtime before the kernel speed work
KERNEL_FILES = ["src/tt_forward.c", "src/tt_backward.c", "src/tt_update.c", "include/tt_kernels.h",
                "include/tt_fixedpoint.h"]
SPLIT_FILES = ["src/tt_conv.c", "src/tt_fc.c", "src/tt_pool.c", "src/tt_eltwise.c", "src/tt_shape.c"]


def _old_kernels(build_dir):
    """Overwrite the kernels in a compiled project's runtime/ with those of commit BEFORE (whose
    tt_forward.c / tt_backward.c hold what tt_conv.c ... tt_shape.c hold today: those go)."""
    for f in SPLIT_FILES:
        (Path(build_dir) / "runtime" / f).unlink(missing_ok=True)
    for f in KERNEL_FILES:
        old = subprocess.run(["git", "show", f"{BEFORE}:runtime_c/{f}"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
        (Path(build_dir) / "runtime" / f).write_text(old)


def _board_steps(out, board, x, y, steps, cflags=()):
    from tinytrain import boards
    from tinytrain.qemu import run_firmware
    saved = boards.CFLAGS
    boards.CFLAGS = saved + list(cflags)
    try:
        fw = boards.build(out, board, "m", x, y, steps=steps, lr=0.02, seed=0)
    finally:
        boards.CFLAGS = saved
    res = run_firmware(fw, timeout=1200)
    return statistics.median(s.instructions for s in res.steps[1:]), fw, res


def boards_main():
    import copy
    from tinytrain.compiler.ops import get_op
    from tinytrain.data import load_dataset
    from tinytrain.qemu import compare_with_simulator
    print("## Kernel speed on the boards (instructions per training step)\n")
    print("Command: `python benchmarks/speed.py --boards` (QEMU 7.2 `-icount shift=0`, arm-none-eabi-gcc 12.2 -O2; "
          "median of steps 2..4 of 4; Fashion-MNIST samples for the MCU CNN, one random image for MobileNetV2; "
          "\"before\" is the runtime of commit "
          f"{BEFORE}, built from the same compiled model).\n")
    print("| model | update | board | before | now, -DTT_NO_DSP | now, DSP (SXTB16/SMLAD) | forward MACs | "
          "DSP instr / MAC (whole step) | bit-exact (DSP vs no DSP vs simulator) |")
    print("|---|---|---|---|---|---|---|---|---|")
    xs, ys = load_dataset(ROOT / "models" / "data" / "fmnist_train.npz")
    cases = [("MCU CNN 28x28", "mcu_cnn_mnist.onnx", None, "sparse", ["qemu-mps2-an386", "qemu-mps2-an500"]),
             ("MobileNetV2-w0.35 128x128", "paper/mbv2_w035_128.onnx", (3, 128, 128), "sparse",
              ["qemu-mps2-an386", "qemu-mps2-an500"])]
    rng = np.random.default_rng(0)
    steps = 4
    for label, path, shape, scheme, bnames in cases:
        gf = tt.load(ROOT / "models" / path)
        if shape is None:
            x, y = xs[:steps], ys[:steps]
            calib = xs[:200]
        else:                                  # one random image (flash), random label: speed only
            x = rng.random((1,) + shape, dtype=np.float32)
            y = rng.integers(0, 10, 1)
            calib = rng.random((4,) + shape, dtype=np.float32)
        gq = tt.quantize(gf, calib, output_range=(-16, 16))
        macs = sum(get_op(n.op).macs(n, gq) for n in gq.nodes)
        with tempfile.TemporaryDirectory() as tmp:
            now, before = Path(tmp) / "now", Path(tmp) / "before"
            tg, plan, facts = compile_graph(gq, now, name="m", update=scheme)
            shutil.copytree(now, before)
            _old_kernels(before)
            for board in bnames:
                try:
                    b, _, _ = _board_steps(before, board, x, y, steps)
                    nd, _, r_nd = _board_steps(now, board, x, y, steps, ["-DTT_NO_DSP"])
                    d, _, r_d = _board_steps(now, board, x, y, steps)
                except Exception as e:                      # e.g. does not fit the board's SRAM
                    print(f"| {label} | {scheme} | {board} | - | - | - | {macs / 1e6:.2f} M | - | "
                          f"{str(e).splitlines()[0][:120]} |", flush=True)
                    continue
                same = ([s.loss_bits for s in r_d.steps] == [s.loss_bits for s in r_nd.steps]
                        and r_d.state == r_nd.state)
                try:
                    compare_with_simulator(copy.deepcopy(tg), r_d, x, y, steps, 0.02, 0, name="m")
                    sim_ok = True
                except Exception:
                    sim_ok = False
                print(f"| {label} | {scheme} | {board} | {b / 1e6:.1f} M | {nd / 1e6:.1f} M | {d / 1e6:.1f} M | "
                      f"{macs / 1e6:.2f} M | {d / macs:.1f} | {'yes' if same and sim_ok else 'NO'} |", flush=True)


if __name__ == "__main__":
    if "--boards" in sys.argv[1:]:
        boards_main()
    else:
        main()
