"""The three networks of "On-Device Training Under 256KB Memory" (Lin et al.,
NeurIPS 2022) at input 1x3x128x128 with a 10-class head and random (seeded)
weights, for compiler memory/latency benchmarks (no pretrained MCUNet or
MobileNet weights are available offline).

    python models/paper_nets.py

Writes (TorchScript exporter, opset 13, default TrainingMode.EVAL, so the
exporter folds every BatchNorm into the preceding Conv):
    models/paper/mbv2_w035_128.onnx
    models/paper/proxyless_w03_128.onnx
    models/paper/mcunet_128.onnx

Architectures (all: 3x3 stride-2 stem conv + BN + ReLU6, MobileNetV2
inverted-residual blocks [1x1 expand]-kxk depthwise-1x1 project with BN after
every conv, ReLU6, residual add when stride 1 and cin == cout, global
average pool, Linear). Channels of the width-scaled nets are
make_divisible(c * w, 8) (MobileNetV2/ProxylessNAS rounding).

* mbv2_w035: MobileNetV2 width 0.35: stem 16; t,c,n,s = 1,8,1,1 | 6,8,2,2 |
  6,16,3,2 | 6,24,4,2 | 6,32,3,1 | 6,56,3,2 | 6,112,1,1; 1x1 feature-mix
  conv 112 -> 448; Linear 448 -> 10 (the layout of MCUNet's model-zoo
  mbv2-w0.35).
* proxyless_w03: ProxylessNAS-Mobile width 0.3 (its searched kernel sizes
  3/5/7 and expansions 3/6; the two skipped "zero" blocks are left out):
  stem 16; blocks (expand, out, stride, kernel)
  (1,8,1,3) | (3,16,2,5) (3,16,1,3) | (3,16,2,7) (3,16,1,3) (3,16,1,5) (3,16,1,5) |
  (6,24,2,7) (3,24,1,5) x3 | (6,32,1,5) (3,32,1,5) x3 |
  (6,56,2,7) (6,56,1,7) (3,56,1,7) (3,56,1,7) | (6,96,1,7);
  1x1 feature-mix conv 96 -> 384; Linear 384 -> 10.
* mcunet: the MCUNet "5FPS" ImageNet architecture (mcunet-in1 /
  mcunet-5fps, the MCUNet used in the paper) from the public MCUNet model
  zoo configuration, run at 128x128: stem 16; blocks (expand, out, stride,
  kernel) (1,8,1,3) | (4,16,2,3) (3,16,1,3) | (3,24,2,7) (5,24,1,3) |
  (5,40,2,3) (4,40,1,7) (4,48,1,5) (3,48,1,3) (4,48,1,3) |
  (5,96,2,7) (4,96,1,5) (4,96,1,5) (6,160,1,3); no feature-mix conv;
  Linear 160 -> 10.

Weights: torch default (Kaiming-uniform) init with torch.manual_seed(0)
per network. BatchNorm running statistics are then re-estimated on 64 real
Fashion-MNIST images (nearest-resized to 128x128, replicated to 3 channels,
ImageNet mean/std) so that activations have realistic ranges for int8
quantisation; the weights themselves stay random.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

SEED = 0
RES = 128
OUT_DIR = C.MODELS_DIR / "paper"
N_BN_CALIB = 64


def mbv2_w035(num_classes=10):
    w = 0.35
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    blocks = []
    for t, c, n, s in settings:
        for i in range(n):
            blocks.append((t, C.make_divisible(c * w), s if i == 0 else 1, 3))
    return C.MBNet(3, C.make_divisible(32 * w), 2, blocks, C.make_divisible(1280 * w), num_classes)


# ProxylessNAS-Mobile (expand, out channels at width 1.0, stride, kernel);
# its two "zero" (skipped) blocks in the 32-channel stage are omitted.
PROXYLESS_MOBILE = [
    (1, 16, 1, 3),
    (3, 32, 2, 5), (3, 32, 1, 3),
    (3, 40, 2, 7), (3, 40, 1, 3), (3, 40, 1, 5), (3, 40, 1, 5),
    (6, 80, 2, 7), (3, 80, 1, 5), (3, 80, 1, 5), (3, 80, 1, 5),
    (6, 96, 1, 5), (3, 96, 1, 5), (3, 96, 1, 5), (3, 96, 1, 5),
    (6, 192, 2, 7), (6, 192, 1, 7), (3, 192, 1, 7), (3, 192, 1, 7),
    (6, 320, 1, 7),
]


def proxyless_w03(num_classes=10):
    w = 0.3
    blocks = [(t, C.make_divisible(c * w), s, k) for t, c, s, k in PROXYLESS_MOBILE]
    return C.MBNet(3, C.make_divisible(32 * w), 2, blocks, C.make_divisible(1280 * w), num_classes)


# MCUNet-5FPS (ImageNet) blocks: (expand, out channels, stride, kernel)
MCUNET_5FPS = [
    (1, 8, 1, 3),
    (4, 16, 2, 3), (3, 16, 1, 3),
    (3, 24, 2, 7), (5, 24, 1, 3),
    (5, 40, 2, 3), (4, 40, 1, 7), (4, 48, 1, 5), (3, 48, 1, 3), (4, 48, 1, 3),
    (5, 96, 2, 7), (4, 96, 1, 5), (4, 96, 1, 5), (6, 160, 1, 3),
]


def mcunet_5fps(num_classes=10):
    return C.MBNet(3, 16, 2, MCUNET_5FPS, None, num_classes)


NETS = {
    "mbv2_w035_128.onnx": ("MobileNetV2-w0.35", mbv2_w035),
    "proxyless_w03_128.onnx": ("ProxylessNAS-Mobile-w0.3", proxyless_w03),
    "mcunet_128.onnx": ("MCUNet-5FPS (mcunet-in1 architecture)", mcunet_5fps),
}


def bn_calibration_images(n=N_BN_CALIB) -> torch.Tensor:
    x, y = C.load_fashion_mnist("train")
    idx = C.balanced_indices(y, n // 10 + 1, seed=SEED)[:n]
    t = torch.from_numpy(x[idx].astype(np.float32))[:, None] / 255.0
    t = F.interpolate(t, size=(RES, RES), mode="nearest").expand(-1, 3, -1, -1)
    mean = torch.tensor(C.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(C.IMAGENET_STD).view(1, 3, 1, 1)
    return ((t - mean) / std).contiguous()


def recalibrate_bn(model, images):
    """Re-estimate BN running mean/var (cumulative average) on real images."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(images), 16):
            model(images[i:i + 16])
    model.eval()


def main():
    timer = C.Timer()
    C.setup(SEED)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    calib = bn_calibration_images()
    files, summary = {}, {}
    for fname, (desc, build) in NETS.items():
        torch.manual_seed(SEED)
        model = build()
        recalibrate_bn(model, calib)
        example = calib[:1]
        n_params, macs = C.count_params(model), C.count_macs(model, example)
        n_blocks = len(model.blocks)
        out = OUT_DIR / fname
        C.export_torchscript(model, example, out, opset=13, keep_bn=False)
        # torch vs onnxruntime on a few real images and on random noise
        xs = torch.cat([calib[:8], torch.randn(4, 3, RES, RES, generator=torch.Generator().manual_seed(1))])
        lt = C.predict_torch(model, xs.numpy())
        lo = C.predict_ort(out, xs.numpy())
        maxdiff = float(np.abs(lt - lo).max())
        agree = float((lt.argmax(1) == lo.argmax(1)).mean())
        size = out.stat().st_size
        ops = C.op_types(out)
        print(f"{fname}: {desc}, {n_blocks} blocks, {n_params} params, {macs / 1e6:.2f} M MACs, "
              f"{size} bytes, torch-vs-ort max |diff| {maxdiff:.2e}, top-1 agreement {agree:.2f}\n"
              f"    ops {ops}", flush=True)
        assert agree == 1.0
        files[out] = {"what": f"{desc}, random seeded weights, BN stats from 64 Fashion-MNIST images, "
                              "BN folded by the TorchScript exporter (opset 13)",
                      "params": n_params, "macs": macs, "blocks": n_blocks,
                      "preprocessing": "NCHW [1,3,128,128], ImageNet mean/std (weights are random)",
                      "accuracy": None,
                      "torch_vs_onnxruntime_max_abs_diff": maxdiff}
        summary[fname] = {"params": n_params, "macs": macs, "bytes": size}
    C.update_manifest("paper_nets.py", files, timer(), extra={"summary": summary})
    print(f"done in {timer():.0f} s")


if __name__ == "__main__":
    main()
