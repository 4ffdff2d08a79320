"""Learning quality of on-device int8 training vs fp32 fine-tuning, on two real
transfer tasks, same scheme, same samples, same order, several seeds.

    python benchmarks/learning.py > benchmarks/learning.md      (needs torch: pip install torch==2.13.0)
    python benchmarks/learning.py --only tte                    (just the rows whose name contains "tte")

Task A: the MNIST-pretrained MCU CNN (models/mcu_cnn_mnist.onnx) fine-tuned on
        Fashion-MNIST (models/data/fmnist_train.npz, 1400 images; test 1000).
Task B: the ImageNet-pretrained EfficientNet-Lite0 backbone with a new, randomly
        initialised 10-class head (models/effnet_lite0_fmnist.onnx, head re-drawn)
        on Fashion-MNIST 64x64 (240 train, 200 test).
"""
import json
import sys
import time
from pathlib import Path

import numpy as np

import tinytrain as tt
from tinytrain.compiler.pipeline import training_graph
from tinytrain.compiler.scheme import resolve
from tinytrain.data import load_dataset
from tinytrain.train.backprop import BackpropTrainer
from tinytrain.train.loop import fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_baseline import finetune  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
D = ROOT / "models" / "data"
SEEDS = (0, 1, 2)
OUTPUT_RANGE = (-16.0, 16.0)


def task_a():
    g = tt.load(ROOT / "models" / "mcu_cnn_mnist.onnx")
    x, y = load_dataset(D / "fmnist_train.npz")
    tx, ty = load_dataset(D / "fmnist_test.npz")
    return "A: MCU CNN, MNIST -> Fashion-MNIST", g, (x, y, tx, ty), dict(epochs=2, lr=0.02, k=4)


def task_b():
    g = tt.load(ROOT / "models" / "effnet_lite0_fmnist.onnx")
    fc = [n for n in g.nodes if n.op == "fully_connected"][-1]
    w = g.t(fc.inputs[1])
    rng = np.random.default_rng(1234)
    w.data = (rng.standard_normal(w.shape) / np.sqrt(w.shape[1])).astype(np.float32)
    g.t(fc.inputs[2]).data = np.zeros(w.shape[0], np.float32)
    x, y = load_dataset(D / "fmnist64_train.npz")
    tx, ty = load_dataset(D / "fmnist64_test.npz")
    return "B: EfficientNet-Lite0 backbone, new head -> Fashion-MNIST 64x64", g, (x, y, tx, ty), \
        dict(epochs=3, lr=0.002, k=4)


def int8_run(gq, update, data, cfg, seed, qas=True, rounding="stochastic", float_classifier=False, headroom=2.0):
    x, y, tx, ty = data
    tr = BackpropTrainer(training_graph(gq, update, qas=qas, float_classifier=float_classifier,
                                        weight_headroom=headroom), lr=cfg["lr"], rounding=rounding, seed=seed)
    fit(tr, x, y, epochs=cfg["epochs"], seed=seed, progress=False)
    return tr.evaluate(tx, ty)


def main():
    results = {}
    print("# On-device training: learning quality\n")
    print("Command: `python benchmarks/learning.py > benchmarks/learning.md` (raw numbers: "
          "`benchmarks/learning.json`)  ")
    print(f"Seeds {SEEDS}; batch 1, plain SGD, the same samples in the same order for every column; logits "
          f"range fixed to {OUTPUT_RANGE} for int8 training; trained int8 weights get a headroom of 2 (their "
          "scale doubled) unless the row says otherwise; stochastic rounding unless the row says shadow.  "
          "Accuracy on the task's test set, mean +- std.  Learning rates: the fp32 baseline's best of a short "
          "sweep on one seed, the same for every column.\n")
    for make in (task_a, task_b):
        name, gf, data, cfg = make()
        x, y, tx, ty = data
        gq = tt.quantize(gf, x[:500], output_range=OUTPUT_RANGE)
        before = tt.Simulator(gq).predict(tx)
        cols = {
            "fp32 fine-tune (torch), sparse": lambda s: finetune(gf, resolve(gf, "sparse"), x, y, tx, ty, cfg["lr"],
                                                                 cfg["epochs"], s),
            "int8, no QAS, sparse": lambda s: int8_run(gq, "sparse", data, cfg, s, qas=False),
            "int8 + QAS, sparse": lambda s: int8_run(gq, "sparse", data, cfg, s),
            "int8 + QAS, sparse, int16 shadow": lambda s: int8_run(gq, "sparse", data, cfg, s, rounding="shadow"),
            "int8 + QAS, sparse, no weight headroom": lambda s: int8_run(gq, "sparse", data, cfg, s, headroom=1.0),
            "int8 + QAS, sparse, float32 classifier": lambda s: int8_run(gq, "sparse", data, cfg, s,
                                                                         float_classifier=True),
            "fp32 fine-tune (torch), tte": lambda s: finetune(gf, resolve(gf, "tte"), x, y, tx, ty, cfg["lr"],
                                                              cfg["epochs"], s),
            "int8 + QAS, tte": lambda s: int8_run(gq, "tte", data, cfg, s),
            "int8 + QAS, bias-only": lambda s: int8_run(gq, "bias", data, cfg, s),
            f"int8 + QAS, last-{cfg['k']}": lambda s: int8_run(gq, f"last-{cfg['k']}", data, cfg, s),
            "int8 + QAS, classifier only": lambda s: int8_run(gq, "classifier", data, cfg, s),
            "fp32 fine-tune (torch), classifier only": lambda s: finetune(gf, resolve(gf, "classifier"), x, y, tx,
                                                                          ty, cfg["lr"], cfg["epochs"], s),
        }
        res = {"before": float(np.mean(before == ty)), "config": cfg}
        print(f"## {name}\n")
        print(f"{len(x)} training samples, {cfg['epochs']} epochs, lr {cfg['lr']}; int8 before training: "
              f"{100 * res['before']:.1f}%\n")
        print("| configuration | test accuracy % | seconds per run |")
        print("|---|---|---|")
        only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None
        for col, fn in cols.items():
            if only is not None and only not in col:
                continue
            t0 = time.perf_counter()
            accs = [fn(s) for s in SEEDS]
            sec = (time.perf_counter() - t0) / len(SEEDS)
            res[col] = accs
            print(f"| {col} | {100 * np.mean(accs):.2f} +- {100 * np.std(accs):.2f} | {sec:.0f} |")
            sys.stdout.flush()
        print()
        results[name] = res
    if "--only" not in sys.argv:
        (Path(__file__).resolve().parent / "learning.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
