"""Float (onnxruntime) vs int8 (tinytrain simulator) top-1 on the shipped
models and real test data, for min/max and percentile calibration.

    python benchmarks/quantization.py > benchmarks/quantization.md
"""
import platform
import sys
import time
from pathlib import Path

import numpy as np

import tinytrain as tt
from tinytrain.data import load_dataset
from tinytrain.report import accuracy, layer_errors

ROOT = Path(__file__).resolve().parent.parent
M, D = ROOT / "models", ROOT / "models" / "data"

CASES = [  # model, calibration data, test data, what
    ("mcu_cnn_mnist.onnx", "mnist_calib.npz", "mnist_test.npz", "MobileNetV2-w0.35-style CNN, MNIST (TorchScript export)"),
    ("mcu_cnn_mnist_dynamo.onnx", "mnist_calib.npz", "mnist_test.npz", "same, dynamo export"),
    ("mcu_cnn_mnist_qdq.onnx", "mnist_calib.npz", "mnist_test.npz", "same, onnxruntime quantize_static QDQ (its scales)"),
    ("effnet_lite0_fmnist.onnx", "fmnist64_train.npz", "fmnist64_test.npz", "EfficientNet-Lite0 backbone + head, Fashion-MNIST 64x64"),
    ("imu_cnn.onnx", "basicmotions_train.npz", "basicmotions_test.npz", "1-D CNN, BasicMotions IMU"),
]


def main():
    print("# Post-training int8 quantization: float vs int8 top-1\n")
    print("Command: `python benchmarks/quantization.py > benchmarks/quantization.md`  ")
    print(f"Machine: {platform.machine()}, {platform.python_version()}, numpy {np.__version__}\n")
    print("| model | test samples | float top-1 (onnxruntime) | int8 top-1 min/max | agreement | "
          "int8 top-1 percentile 99.99 | worst layer SQNR dB | sim ms/sample |")
    print("|---|---|---|---|---|---|---|---|")
    for model, calib, test, what in CASES:
        if not (M / model).exists():
            print(f"| {model} | missing | | | | | | |")
            continue
        cx, _ = load_dataset(D / calib)
        tx, ty = load_dataset(D / test)
        g = tt.load(M / model)
        gq = tt.quantize(g, cx[:500])
        t0 = time.perf_counter()
        a = accuracy(M / model, gq, tx, ty)
        ms = 1000 * (time.perf_counter() - t0) / len(tx)
        gp = tt.quantize(g, cx[:500], method="percentile", percentile=99.99)
        p = accuracy(M / model, gp, tx, ty)
        worst = min((r["sqnr_db"] for r in layer_errors(g, gq, tx[:50]) if r["sqnr_db"] is not None))
        print(f"| {model}: {what} | {a['samples']} | {100 * a['float_top1']:.2f}% | {100 * a['int8_top1']:.2f}% | "
              f"{100 * a['top1_agreement']:.2f}% | {100 * p['int8_top1']:.2f}% | {worst:.1f} | {ms:.2f} |")
        sys.stdout.flush()
    print("\nint8 = the integer-only simulator (bit-exact kernels), calibrated on up to 500 samples of the "
          "calibration file; `sim ms/sample` includes onnxruntime's float run (batched, 1 process).")


if __name__ == "__main__":
    main()
