"""Host speed of one training step and of one prediction (batch 1, one thread): the emitted C
(called through cffi) built as the host build is (-O3) and with --native (-O3 -march=native),
the numba simulator, PyTorch eager at its best layout (plain NCHW, weights permuted once) and,
for reference, the NHWC baseline it replaced (a permute + F.pad around every conv), and
onnxruntime inference. Every figure is the best of ROUNDS interleaved rounds (each round times
every column once, a median of n calls), so a burst of load on the shared machine hits all
columns alike.

    python benchmarks/speed.py > benchmarks/speed.md      (needs torch: pip install torch==2.13.0)

onnxruntime-training needs its own venv (onnx 1.17): benchmarks/ort_training.py, peers_ort.md.

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
from tinytrain.host import CFLAGS, NATIVE_CFLAGS, HostModel  # noqa: E402
from tinytrain.train.backprop import BackpropTrainer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_baseline import IRModule, NCHWModule  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CASES = [("MCU CNN 28x28", "mcu_cnn_mnist.onnx", (1, 28, 28)), ("MobileNetV2-w0.35 128x128", "paper/mbv2_w035_128.onnx",
                                                                 (3, 128, 128))]
SCHEMES = ("sparse", "full")
ROUNDS = 7


def interleaved(fns, n, rounds=ROUNDS):
    """{name: ms}: the best over `rounds` of each column's median of n calls; every round runs
    every column in turn (other processes on the machine only add time)."""
    for fn in fns.values():
        fn()
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            ts = []
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            best[k] = min(best[k], statistics.median(ts))
    return {k: 1000 * v for k, v in best.items()}


def _cpu():
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = [f for f in ("sse2", "avx2", "fma", "avx512f", "avx512_vnni", "asimd", "asimddp", "sve") if f in flags]
    return name, simd


def _gcc():
    try:
        return subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "gcc (unknown)"


def _trained(tg, scheme):
    """The tensors a row trains: whole weights, partial weights (a fraction of their input
    channels), biases."""
    partial = sum(1 for r in scheme.weights.values() if r < 1.0)
    return f"{len(scheme.weights) - partial} weights whole + {partial} partial, {len(scheme.biases)} biases"


def main():
    import onnxruntime as ort
    torch.set_num_threads(1)
    load0 = os.getloadavg()
    cpu, simd = _cpu()
    print("# Host speed of a training step and of a prediction\n")
    print("Command: `python benchmarks/speed.py > benchmarks/speed.md`  ")
    print(f"Host: {cpu} ({platform.machine()}, {os.cpu_count()} cores, 1 thread used; SIMD: {', '.join(simd)}); "
          f"{_gcc()}; torch {torch.__version__}; onnxruntime {ort.__version__}.  ")
    print(f"C build (tinytrain.host): `{' '.join(CFLAGS)}`; \"native\": the same plus `{' '.join(NATIVE_CFLAGS)}` "
          "(`tinytrain train --backend c --native`).  ")
    print(f"Protocol: ms per call, batch 1; every figure the best of {ROUNDS} interleaved rounds, a round timing every "
          "column in turn, each a median of 30 (28x28) / 8 (128x128) calls.  ")
    print(f"Load average at the start: {load0[0]:.1f} / {load0[1]:.1f} / {load0[2]:.1f} (1 / 5 / 15 min) on "
          f"{os.cpu_count()} cores: the machine was shared; best-of-rounds removes most, not all, of it.\n")
    print("| model | scheme | trained tensors (C, simulator, PyTorch) | C step ms | C native ms | simulator ms "
          "| PyTorch NCHW ms | PyTorch NHWC+copies ms (old baseline) | PyTorch NCHW / C | C predict ms "
          "| C native predict ms | ORT inference ms | C predict / ORT |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    notes = []
    for label, path, shape in CASES:
        gf = tt.load(ROOT / "models" / path)
        x = rng.random((4,) + shape, dtype=np.float32)
        gq = tt.quantize(gf, x, output_range=(-16, 16))
        n = 30 if shape[1] < 100 else 8
        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(ROOT / "models" / path), so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x[:1]}
        for scheme in SCHEMES:
            sc = resolve(gf, scheme)
            with tempfile.TemporaryDirectory() as tmp:
                tg, plan, facts = compile_graph(gq, tmp, name="m", update=scheme)
                hm = HostModel(tmp, "m", tg, facts, lr=0.01)
                nat = Path(tmp) / "native"
                shutil.copytree(tmp, nat, ignore=shutil.ignore_patterns("native", "*.so"))
                hn = HostModel(nat, "m", tg, facts, lr=0.01, extra_cflags=NATIVE_CFLAGS)
                sim = BackpropTrainer(tg, lr=0.01)
                nchw, nhwc = NCHWModule(gf, sc), IRModule(gf, sc)
                with torch.no_grad():
                    diff = float((nchw(torch.tensor(x[:1])) - nhwc(torch.tensor(to_ir_layout(gf, x[:1])))).abs().max())
                opts = {k: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01)
                        for k, m in (("nchw", nchw), ("nhwc", nhwc))}
                xs = {"nchw": torch.tensor(x[:1]), "nhwc": torch.tensor(to_ir_layout(gf, x[:1]))}
                yt = torch.tensor([1])

                def torch_step(k, m):
                    opts[k].zero_grad()
                    F.cross_entropy(m(xs[k]), yt).backward()
                    opts[k].step()
                ms = interleaved({
                    "c": lambda: hm.train_step(x[0], 1), "cn": lambda: hn.train_step(x[0], 1),
                    "sim": lambda: sim.step(x[0], 1), "nchw": lambda: torch_step("nchw", nchw),
                    "nhwc": lambda: torch_step("nhwc", nhwc), "cp": lambda: hm.predict(x[0]),
                    "cnp": lambda: hn.predict(x[0]), "ort": lambda: sess.run(None, feed)}, n)
                same = hm.state_bytes() == hn.state_bytes()
            notes.append(f"{label} {scheme}: the two PyTorch layouts' logits differ by at most {diff:.1e}; "
                         f"the C -O3 and -O3 -march=native builds "
                         f"{'ended with identical' if same else 'ended with DIFFERENT'} trained state after the "
                         "same steps.")
            print(f"| {label} | {scheme} | {_trained(tg, sc)} | {ms['c']:.2f} | {ms['cn']:.2f} | {ms['sim']:.2f} | "
                  f"{ms['nchw']:.2f} | {ms['nhwc']:.2f} | {ms['nchw'] / ms['c']:.2f} | {ms['cp']:.2f} | "
                  f"{ms['cnp']:.2f} | {ms['ort']:.2f} | {ms['cp'] / ms['ort']:.2f} |", flush=True)
    load1 = os.getloadavg()
    print(f"\nLoad average at the end: {load1[0]:.1f} / {load1[1]:.1f} / {load1[2]:.1f}.\n")
    print("Like for like:")
    print("- C, simulator and PyTorch train exactly the same tensors in every row (the column names them; PyTorch "
          "masks the partial weights' gradients to the same input channels). `full` trains every weight and bias "
          "whole. `sparse` trains a few whole tensors plus partial weights (a fraction of their input channels).")
    print("- onnxruntime-training is not in this table: it needs its own venv (onnx 1.17; benchmarks/ort_training.py, "
          "figures in benchmarks/peers_ort.md, measured in a separate run). Its `requires_grad` is per tensor, so "
          "on `sparse` it trains the partial weights whole: more gradient work than the C does, NOT like for like; "
          "only its `full` rows are.")
    print("- C predict runs the C library's predict (the training forward as compiled: patched tiles, in-place "
          "depthwise, mask bits); ORT inference is an InferenceSession of the float ONNX file (all graph "
          "optimizations, 1 thread). The C is int8, PyTorch and ORT float32.")
    print("- Every C build is bit-exact with the simulator (tests/test_compile.py, test_c_bit_exact_built_for_this_cpu "
          "for -O3 and -march=native).\n")
    for line in notes:
        print(f"- {line}")


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
