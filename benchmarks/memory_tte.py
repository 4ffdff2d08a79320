"""TTE's own sparse-update schemes on the three paper nets: the SRAM tinytrain plans for each
published scheme (presets tte-<net>-<kb>, compiler/tte_schemes.py) beside TTE's measured peak.

    python benchmarks/memory_tte.py

Prints a markdown section (the one in benchmarks/memory.md). SRAM = arena + trainable state,
the default plan (minimum peak: patching, in-place, reordering on; no --sram budget).
"""
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import tinytrain as tt
from tinytrain.compiler import tte_schemes as T
from tinytrain.compiler.layout import sram_total
from tinytrain.compiler.pipeline import memory_plan, training_graph
from tinytrain.compiler.scheme import resolve, tte_convs, weighted_layers

ROOT = Path(__file__).resolve().parent.parent
# net, file, TTE's measured peak (sparse update + reordering, STM32F746; shared/reference/anchors.md),
# the scheme that figure belongs to (the ~100 KB one, as anchors.md and issue 13 pair them)
NETS = [("mbv2", "paper/mbv2_w035_128.onnx", 141, "99kb"), ("proxyless", "paper/proxyless_w03_128.onnx", 135, "98kb"),
        ("mcunet", "paper/mcunet_128.onnx", 173, "99kb")]


def kb(v):
    return f"{v / 1024:.1f}"


def tte_defined(net, folder):
    """TTE's own definition of `net` (compiler/tte_schemes.TTE_NETS: its layers, no feature-mix conv) as
    an ONNX file, built with models/common.py's blocks, seeded random weights, BN folded."""
    import sys

    import torch
    sys.path.insert(0, str(ROOT / "models"))
    import common as C
    blocks, c = [], 16
    for mid, out, k, stride in T.TTE_NETS[net][1]:
        blocks.append((1 if mid is None else mid // c, out, stride, k))
        c = out
    torch.manual_seed(0)
    model = C.MBNet(3, 16, 2, blocks, None, 10)
    return C.export_torchscript(model, torch.zeros(1, 3, 128, 128), Path(folder) / f"{net}_tte.onnx", keep_bn=False)


def rows(net, gq, peak, at, literal):
    for name in T.PUBLISHED[net]:
        preset = f"tte-{net}-{name}"
        s = resolve(gq, preset)
        tg = training_graph(gq, s)
        g1, p1 = memory_plan(tg)
        total = sram_total(p1, tg)["total"]             # arena + state blob + context (no stack)
        st = total - p1.arena_size
        params = sum(tg.t(t).size for t in tg.meta["training"]["trainable"])
        at_idx = {n.id: i for i, n in enumerate(tte_convs(gq))}
        convw = sorted((at_idx[k], r) for k, r in s.weights.items() if k in at_idx)
        wdesc = " ".join(f"{i}:{r:g}" for i, r in convw) + " + fc"
        pt = g1.meta.get("patch")
        grid = f"{pt['grid']}x{pt['grid']}" if pt else "-"
        tte = f"{peak}" if name == at else "-"
        vs = f"{total / (peak * 1024):.2f}x" if name == at else "-"
        print(f"| {T.TTE_NETS[net][0]} | `{preset}` | {wdesc} | {len(s.biases)} | {params} | {kb(p1.arena_size)} | "
              f"{kb(st)} | **{kb(total)}** | {tte} | {vs} | {grid} |", flush=True)
        if literal is not None and name == at and T.differences(gq, weighted_layers(gq), net)[0]:
            s2 = resolve(gq, json.loads(T.dumps(net, name)))    # the same numbers as a TTE JSON
            tg2 = training_graph(gq, s2)
            literal.append(f"{T.TTE_NETS[net][0]} {name}: {kb(sram_total(memory_plan(tg2)[1], tg2)['total'])} KB")


HEADER = ("| network | TTE scheme | weights trained | biases | trainable params | arena KB | "
          "trainable state KB | **SRAM KB** | TTE's peak KB | tinytrain / TTE | patch grid |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def main():
    t0 = time.time()
    print("## TTE's schemes on the paper nets (like for like)\n")
    print("Command: `python benchmarks/memory_tte.py`  ")
    print("Each row is one of the sparse-update schemes TTE publishes per net (mit-han-lab/tiny-training, "
          "`compilation/mcu_ir_gen.py`; its name is TTE's own estimate of the scheme's memory), given to "
          "tinytrain as `--update tte-<net>-<kb>`: biases of the last `n_bias_update` convs, the weights of "
          "`manual_weight_idx` at `weight_update_ratio` of their input channels (ratio 0: bias only), the "
          "classifier (the published lists are in compiler/tte_schemes.py). SRAM = arena + trainable state of tinytrain's default (minimum-peak) plan, KB = 1024 "
          "bytes. TTE's peak is the one it measured on an STM32F746 (sparse update + reordering, "
          "shared/reference/anchors.md), published for one scheme per net, the ~100 KB one.\n")
    print("The nets are tinytrain's (models/paper_nets.py), which differ from TTE's definitions "
          "(algorithm/assets/mcu_models): MobileNetV2-w0.35 and ProxylessNAS-w0.3 here end in a 1x1 "
          "feature-mix conv (112->448, 96->384) before the classifier, TTE's nets do not (their classifier "
          "takes 112 / 96 channels); ProxylessNAS-w0.3's last stage has 56 channels here (expansions 336/168) "
          "where TTE's has 64 (384/192); MCUNet-5FPS is the same. TTE's conv indices pick the same layers "
          "(same kinds, kernels, strides at every index TTE counts); the feature-mix conv stays frozen, as "
          "TTE's nets lack it, but its backward and the wider classifier still cost memory here.\n")
    print("(weights trained: TTE's conv index:ratio of its input channels, + the classifier; params: of the "
          "trainable tensors, which tinytrain holds whole in SRAM even when only a slice of one learns)\n")
    print(HEADER)
    rng, literal = np.random.default_rng(0), []
    for net, path, peak, at in NETS:
        g = tt.load(ROOT / "models" / path)
        rows(net, tt.quantize(g, rng.random((2, 3, 128, 128), dtype=np.float32)), peak, at, literal)
    print(f"\nThe same numbers given as a TTE JSON (`--update scheme.json`) count the biases back from the "
          f"model's own last conv, so on the two nets with a feature-mix conv its bias trains instead of that of "
          f"the first of TTE's bias layers: {'; '.join(literal)}.\n")
    print("### On TTE's own definitions of the nets\n")
    print("MobileNetV2-w0.35 and ProxylessNAS-w0.3 exactly as TTE defines them (the layers of "
          "compiler/tte_schemes.py's TTE_NETS: no feature-mix conv, Proxyless's last stage at 64 channels), built "
          "by this script with models/common.py's blocks (seeded random weights, BN folded, TorchScript "
          "exporter) into a temporary folder; MCUNet-5FPS is the net above.\n")
    print(HEADER)
    with tempfile.TemporaryDirectory() as folder:
        for net, _, peak, at in NETS[:2]:
            g = tt.load(tte_defined(net, folder))
            assert T.differences(g, weighted_layers(g), net) == ([], True), net
            rows(net, tt.quantize(g, rng.random((2, 3, 128, 128), dtype=np.float32)), peak, at, None)
    print(f"\n(generated in {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
