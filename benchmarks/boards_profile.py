"""Where a training step's instructions go, per phase and per layer, on the
emulated boards (`tinytrain run --profile` through the Python API):

    python benchmarks/boards_profile.py > /tmp/profile.md     (then pasted into benchmarks/boards.md)

Boards: qemu-mps2-an386 (Cortex-M4F) and qemu-mps2-an500 (Cortex-M7), counts
under -icount shift=0 read from SysTick (+-40 instructions per mark), and
linux-aarch64 under qemu-user, exact A64 counts from boards/linux-aarch64/
icount_plugin.c.  Every run is replayed in the simulator (bit for bit).

Models, --update sparse: the shipped MCU CNN on Fashion-MNIST (10 steps), and
the paper MobileNetV2-w0.35 128x128 (models/paper/mbv2_w035_128.onnx, random
seeded weights, quantized on 4 random images, 2 steps on one random image).
Needs gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm
gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user and a host cc.
"""
import copy
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import tinytrain as tt
from tinytrain.boards import build
from tinytrain.compiler.pipeline import compile_graph
from tinytrain.data import load_dataset
from tinytrain.qemu import compare_with_simulator, profile_report, run_firmware

ROOT = Path(__file__).resolve().parent.parent
BOARDS = [("qemu-mps2-an386", "an386 (M4F)"), ("qemu-mps2-an500", "an500 (M7)"), ("linux-aarch64", "aarch64")]
LR, SEED = 0.02, 0


def cases():
    x, y = load_dataset(ROOT / "models" / "data" / "fmnist_train.npz")
    gq = tt.quantize(tt.load(ROOT / "models" / "mcu_cnn_mnist.onnx"), x[:200], output_range=(-16, 16))
    yield "MCU CNN 28x28 (92 K params, 3.3 M MACs)", gq, x[:10], y[:10], 10
    rng = np.random.default_rng(0)
    gm = tt.quantize(tt.load(ROOT / "models" / "paper" / "mbv2_w035_128.onnx"),
                     rng.random((4, 3, 128, 128), dtype=np.float32), output_range=(-16, 16))
    yield ("MobileNetV2-w0.35 128x128 (306 K params, 17.5 M MACs)", gm, rng.random((1, 3, 128, 128), dtype=np.float32),
           np.array([3]), 2)


def provenance():
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "compiler", "runtime_c", "boards", "tinytrain"],
                           cwd=ROOT, capture_output=True, text=True).stdout.split("\n")
    dirty = [ln[3:] for ln in dirty if ln.strip() and not ln.startswith("??")]
    return head.strip(), dirty


def main():
    head, dirty = provenance()
    print(f"Measured at commit {head}" + (f" with uncommitted changes in {', '.join(dirty)}" if dirty else
                                          " (compiler, runtime_c, boards, tinytrain unmodified)") + ".\n")
    for title, gq, x, y, steps in cases():
        reports = {}
        with tempfile.TemporaryDirectory() as tmp:
            tg0, plan, facts = compile_graph(gq, tmp, name="m", update="sparse")
            nodes = json.loads((Path(tmp) / "m_profile.json").read_text())
            for board, _ in BOARDS:
                tg = copy.deepcopy(tg0)
                fw = build(tmp, board, "m", x, y, steps=steps, lr=LR, seed=SEED, graph=tg, profile=True)
                res = run_firmware(fw, timeout=1800)
                compare_with_simulator(tg, res, x, y, steps, LR, SEED, name="m")    # raises unless bit-identical
                rep = profile_report(res, nodes)
                rep["ram"] = fw.ram_used
                reports[board] = rep
                print(f"{title}: {board} done", file=sys.stderr)
        print(f"### {title}, --update sparse, {steps} steps, mean per step\n")
        print(f"Arena {facts['arena'] / 1024:.1f} KB, state {facts['state'] / 1024:.1f} KB; all runs bit-identical "
              "with the simulator.\n")
        print("| board | instructions / step | forward | backward | update | other | RAM |")
        print("|---|---|---|---|---|---|---|")
        for board, label in BOARDS:
            r = reports[board]
            t = r["step_instructions"]
            cells = [f"{r['phases'][k] / 1e6:.2f} M ({100 * r['phases'][k] / t:.1f}%)"
                     for k in ("forward", "backward", "update", "other")]
            ram = (f"{r['ram'] / 1024:.1f} KB static data" if board == "linux-aarch64" else
                   f"{r['ram'] / 1024:.1f} KB linked (4 KB stack)")
            print(f"| {label} | {t / 1e6:.2f} M | " + " | ".join(cells) + f" | {ram} |")
        ref = reports["qemu-mps2-an500"]
        top = sorted(ref["layers"], key=lambda r: -r["instructions"])[:10]
        print("\nTop 10 layers (ranked on an500; a layer = its forward, gradient and update nodes; M instructions per "
              "step and % of the step):\n")
        print("| layer | op | " + " | ".join(label for _, label in BOARDS) + " | an500 fwd / bwd / upd |")
        print("|---|---|" + "---|" * len(BOARDS) + "---|")
        for lay in top:
            cells = []
            for board, _ in BOARDS:
                r = next(v for v in reports[board]["layers"] if v["layer"] == lay["layer"])
                cells.append(f"{r['instructions'] / 1e6:.2f} ({100 * r['share']:.1f}%)")
            split = " / ".join(f"{lay[k] / 1e6:.2f}" for k in ("forward", "backward", "update"))
            print(f"| `{lay['layer']}` | {lay['op']} | " + " | ".join(cells) + f" | {split} |")
        print()


if __name__ == "__main__":
    main()
