"""Host speed of one training step (batch 1, one thread): the emitted C (gcc -O2,
called through cffi), the numba simulator, and PyTorch eager on the same float
graph with the same trainable parameters.

    python benchmarks/speed.py > benchmarks/speed.md      (needs torch: pip install torch==2.13.0)
"""
import os
import platform
import statistics
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


def timed(fn, n):
    fn()
    fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1000 * statistics.median(ts)


def main():
    torch.set_num_threads(1)
    print("# Host speed of a training step\n")
    print("Command: `python benchmarks/speed.py > benchmarks/speed.md`  ")
    print(f"Machine: {platform.machine()} ({os.cpu_count()} cores, 1 thread used), gcc -O2, torch {torch.__version__}. "
          "Median ms per step, batch 1.\n")
    print("| model | scheme | C step ms | simulator (numba) ms | PyTorch eager ms | torch time / C time | sim time / C time |")
    print("|---|---|---|---|---|---|---|")
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
            print(f"| {label} | {scheme} | {c:.2f} | {s:.2f} | {t:.2f} | {t / c:.2f} | {s / c:.2f} |", flush=True)
    print("\nonnxruntime-training is not installed beside onnxruntime here (it needs its own venv and onnx 1.17); "
          "its figures for a similar CNN are in shared/reference/anchors.md (MobileNetV2-w0.35 at 96x96, full SGD "
          "6.59 ms, biases only 4.32 ms per step).")


if __name__ == "__main__":
    main()
