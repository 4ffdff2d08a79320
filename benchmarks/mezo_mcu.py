"""Zeroth-order vs backprop on the microcontroller path (int8, simulator = the C
bit for bit): test accuracy against training steps, and SRAM from the plans.

    python benchmarks/mezo_mcu.py > benchmarks/mezo_mcu.md

Task A of benchmarks/learning.md: the MNIST-pretrained MCU CNN on Fashion-MNIST
(1400 training images, 1000 test), sparse scheme, batch 1, 2 epochs.
"""
import time
from pathlib import Path

import numpy as np

import tinytrain as tt
from tinytrain.compiler.layout import sram_total
from tinytrain.compiler.passes.plan_memory import plan_memory
from tinytrain.compiler.passes.zo_plan import zo_plan
from tinytrain.compiler.pipeline import training_graph
from tinytrain.compiler.scheme import resolve
from tinytrain.data import load_dataset
from tinytrain.train.backprop import BackpropTrainer
from tinytrain.train.mezo import MezoTrainer

ROOT = Path(__file__).resolve().parent.parent
D = ROOT / "models" / "data"
EVERY = 350
EPOCHS = 2


def curve(trainer, x, y, tx, ty, seed=0):
    rng = np.random.default_rng(seed)
    points, step = [(0, trainer.evaluate(tx, ty))], 0
    t0 = time.perf_counter()
    for _ in range(EPOCHS):
        for i in rng.permutation(len(x)):
            trainer.step(x[i], y[i])
            step += 1
            if step % EVERY == 0:
                points.append((step, trainer.evaluate(tx, ty)))
    return points, (time.perf_counter() - t0) / step * 1000


def main():
    x, y = load_dataset(D / "fmnist_train.npz")
    tx, ty = load_dataset(D / "fmnist_test.npz")
    gq = tt.quantize(tt.load(ROOT / "models" / "mcu_cnn_mnist.onnx"), x[:500], output_range=(-16, 16))
    runs = {
        "backprop, sparse (lr 0.02)": BackpropTrainer(training_graph(gq, "sparse"), lr=0.02, seed=0),
        "MeZO, sparse (lr 1e-4)": MezoTrainer(gq, "sparse", lr=1e-4, seed=0),
        "MeZO, sparse, 4 queries (lr 1e-4)": MezoTrainer(gq, "sparse", lr=1e-4, queries=4, seed=0),
        "hybrid: backprop classifier (0.02) + MeZO rest (1e-5)": MezoTrainer(gq, "sparse", lr=1e-5, hybrid=True,
                                                                              seed=0),
    }
    print("# Zeroth-order training on the MCU path (int8)\n")
    print("Command: `python benchmarks/mezo_mcu.py > benchmarks/mezo_mcu.md`  ")
    print("MNIST-pretrained MCU CNN -> Fashion-MNIST (1400 train, 1000 test), sparse scheme, batch 1, seed 0; "
          "test accuracy % after N training steps (samples).  MeZO learning rates are per integer step "
          "(see compiler/ops/zo.py); each was the best of 1e-3/1e-4/1e-5 on one epoch.\n")
    rows = {name: curve(tr, x, y, tx, ty) for name, tr in runs.items()}
    steps = [s for s, _ in next(iter(rows.values()))[0]]
    print("| method | " + " | ".join(str(s) for s in steps) + " | host ms / step |")
    print("|---|" + "---|" * (len(steps) + 1))
    for name, (pts, ms) in rows.items():
        print(f"| {name} | " + " | ".join(f"{100 * a:.1f}" for _, a in pts) + f" | {ms:.1f} |")
    sc = resolve(gq, "sparse")
    tg = training_graph(gq, "sparse")
    bp = sram_total(plan_memory(tg), tg)["total"]
    z = zo_plan(gq, sc)
    z.outputs = list(z.outputs) + [z.inputs[0]]
    zo = sram_total(plan_memory(z), z)["total"]
    print(f"\nSRAM from the plans (arena + state blob + context), sparse scheme: backprop {bp / 1024:.1f} KB, "
          f"MeZO {zo / 1024:.1f} KB (the arena is the inference arena; the 1-bit masks, saved activations "
          "and float gradients of backprop are gone).")


if __name__ == "__main__":
    main()
