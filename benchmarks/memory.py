"""Peak memory of on-device training, from the static plan: the paper networks at
128x128 (and the shipped models) under several update schemes, with operator
reordering and in-place buffers switched on and off.

    python benchmarks/memory.py > benchmarks/memory.md

SRAM = arena (activations, masks, gradients, input) + trainable state
(int8 weights, int32 biases of the trained layers); frozen weights stay in flash.
"""
from pathlib import Path

import numpy as np

import tinytrain as tt
from tinytrain.compiler.passes.plan_memory import defer_updates, plan_memory, state_bytes
from tinytrain.compiler.pipeline import training_graph

ROOT = Path(__file__).resolve().parent.parent
NETS = [("MobileNetV2-w0.35", "paper/mbv2_w035_128.onnx"), ("ProxylessNAS-w0.3", "paper/proxyless_w03_128.onnx"),
        ("MCUNet-5FPS", "paper/mcunet_128.onnx")]
SCHEMES = ["full", "last-4", "bias", "sparse", "classifier"]


def kb(v):
    return f"{v / 1024:.0f}"


def main():
    print("# Training memory from the static plan\n")
    print("Command: `python benchmarks/memory.py > benchmarks/memory.md`  ")
    print("KB = 1024 bytes. SRAM = arena + trainable state. `no reorder` applies every update after the whole "
          "backward (gradients stay alive); `no in-place` gives every elementwise op its own output buffer. "
          "TTE's figures for sparse update + reordering: MbV2 141 KB, Proxyless 135 KB, MCUNet 173 KB "
          "(shared/reference/anchors.md).\n")
    rng = np.random.default_rng(0)
    print("| network | scheme | arena KB | trainable state KB | SRAM KB | SRAM, no in-place | SRAM, no reorder | "
          "SRAM, neither | flash weights KB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, path in NETS:
        g = tt.load(ROOT / "models" / path)
        gq = tt.quantize(g, rng.random((2, 3, 128, 128), dtype=np.float32))
        for scheme in SCHEMES:
            tg = training_graph(gq, scheme)
            st, fl = state_bytes(tg)
            a = plan_memory(tg).arena_size
            b = plan_memory(tg, in_place=False).arena_size
            tg2 = defer_updates(training_graph(gq, scheme))
            c = plan_memory(tg2).arena_size
            d = plan_memory(tg2, in_place=False).arena_size
            print(f"| {label} | {scheme} | {kb(a)} | {kb(st)} | **{kb(a + st)}** | {kb(b + st)} | {kb(c + st)} | "
                  f"{kb(d + st)} | {kb(fl)} |", flush=True)


if __name__ == "__main__":
    main()
