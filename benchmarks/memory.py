"""Peak memory of on-device training, from the static plan: the paper networks at
128x128 (and the shipped models) under several update schemes, with each memory
technique switched off in turn.

    python benchmarks/memory.py > benchmarks/memory.md && python benchmarks/memory_tte.py >> benchmarks/memory.md

(memory_tte.py adds the like-for-like section: TTE's own published schemes on these nets.)

SRAM = compiler/layout.py sram_total without the stack: arena (activations, masks,
gradients, scratch) + the state blob (header, int8 weights and int32 biases of the trained
layers) + the context struct; frozen weights stay in flash.
"""
import time
from pathlib import Path

import numpy as np

import tinytrain as tt
from tinytrain.compiler.layout import sram_total, state_bytes
from tinytrain.compiler.passes.plan_memory import defer_updates
from tinytrain.compiler.pipeline import memory_plan, training_graph

ROOT = Path(__file__).resolve().parent.parent
NETS = [("MobileNetV2-w0.35", "paper/mbv2_w035_128.onnx"), ("ProxylessNAS-w0.3", "paper/proxyless_w03_128.onnx"),
        ("MCUNet-5FPS", "paper/mcunet_128.onnx")]
SCHEMES = ["full", "last-4", "bias", "sparse", "tte", "classifier"]


def kb(v):
    return f"{v / 1024:.0f}"


def main():
    t0 = time.time()
    print("# Training memory from the static plan\n")
    print("Command: `python benchmarks/memory.py > benchmarks/memory.md && python benchmarks/memory_tte.py >> "
          "benchmarks/memory.md`  ")
    print("KB = 1024 bytes. SRAM = arena + state blob + context (compiler/layout.py sram_total; `tinytrain compile` "
          "adds a stack estimate, < 1 KB). Batch 1, 3x128x128 input, weights from random calibration "
          "(memory does not depend on the values). Columns switch one technique off at a time:\n")
    print("- **patch**: the frozen prefix runs in tiles (passes/patch_prefix.py; grid and extra MACs in the last "
          "columns; each tile quantizes its crop straight from the caller's input)")
    print("- **in place**: frozen depthwise convs and stride-1 depthwise input gradients write over their input, "
          "elementwise ops and gradient sums likewise (passes/inplace_depthwise.py, plan_memory.py)")
    print("- **reorder**: each update runs as soon as its gradient exists, big weight gradients a few rows at a "
          "time (passes/chunk_grads.py); off = every update after the whole backward\n")
    print("These rows are tinytrain's own presets, not TTE's schemes: `tte (ours)` is tinytrain's small-SRAM preset "
          "(biases of the last third of the layers, two pointwise weights of at most 16 KB, the classifier), far "
          "smaller than the six to eight weight layers TTE's schemes update, so its row is no comparison with TTE. "
          "TTE's measured peaks (MbV2 141 KB, Proxyless 135 KB, MCUNet 173 KB) belong to its own published "
          "schemes: those are compared like for like in the next section.\n")
    print("| network | scheme | arena KB | trainable state KB | **SRAM KB** | no patch | no in-place | no reorder | "
          "none of them | flash weights KB | patch grid | extra MACs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for label, path in NETS:
        g = tt.load(ROOT / "models" / path)
        gq = tt.quantize(g, rng.random((2, 3, 128, 128), dtype=np.float32))
        for scheme in SCHEMES:
            tg = training_graph(gq, scheme)
            st, fl = state_bytes(tg)
            g1, p1 = memory_plan(tg)
            _, p2 = memory_plan(tg, patch=False)
            _, p3 = memory_plan(tg, in_place=False)
            _, p4 = memory_plan(defer_updates(training_graph(gq, scheme, chunk_bytes=1 << 30)))
            _, p5 = memory_plan(defer_updates(training_graph(gq, scheme, chunk_bytes=1 << 30)), in_place=False,
                                patch=False)
            pt = g1.meta.get("patch")
            grid = f"{pt['grid']}x{pt['grid']}" if pt else "-"
            extra = f"+{(pt['patched_macs'] - pt['macs']) / 1e6:.2f} M" if pt else "-"
            total = sram_total(p1, tg)["total"]         # the one SRAM figure (no stack here)
            st = total - p1.arena_size                  # state blob + context, the same in every column
            mark = f"**{kb(total)}**"
            print(f"| {label} | {'tte (ours)' if scheme == 'tte' else scheme} | {kb(p1.arena_size)} | {kb(st)} | {mark} | {kb(p2.arena_size + st)} | "
                  f"{kb(p3.arena_size + st)} | {kb(p4.arena_size + st)} | {kb(p5.arena_size + st)} | {kb(fl)} | "
                  f"{grid} | {extra} |", flush=True)
    print(f"\n(generated in {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
