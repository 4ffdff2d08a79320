"""Divergence is detected and said: the monitor on synthetic streams; --lr 1e3 (the largest the guards allow) stops
`train` (sim and C, backprop and MeZO) with one line, exit 2 and the last good
weights saved; one-class labels are refused; normal training is not stopped."""
import json
from pathlib import Path

import numpy as np
import pytest

import tinytrain as tt
from tinytrain.api import DivergenceError
from tinytrain.cli import main
from tinytrain.compiler.passes.autodiff import strip_training
from tinytrain.compiler.pipeline import training_graph
from tinytrain.data import load_dataset
from tinytrain.train.backprop import BackpropTrainer
from tinytrain.train.loop import fit
from tinytrain.train.mezo import MezoTrainer
from tinytrain.train.monitor import Monitor, loss_cap

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "mcu_cnn_mnist.onnx"
D = ROOT / "models" / "data"
CAP = 32.0


@pytest.fixture(scope="module")
def mnist():
    x, y = load_dataset(D / "mnist_calib.npz")          # 200 samples, 20 of each class
    tx, ty = load_dataset(D / "mnist_test.npz")
    return x, y, tx[:300], ty[:300]


@pytest.fixture(scope="module")
def gq(mnist):
    return tt.quantize(tt.load(MODEL), mnist[0], output_range=(-16, 16))


def accuracy(g, tx, ty):
    return float(np.mean(tt.Simulator(g).predict(tx) == ty))


# The monitor alone, on synthetic streams (window 200, warm-up 50: windows end at steps 250, 450, ...).

def feed(mon, losses, preds, labels, skipped=None):
    for k in range(len(losses)):
        mon.observe(losses[k], preds[k], labels[k], None if skipped is None else skipped[k])


def healthy(n, rng):
    """Noisy but learning: losses spread over [0, 6] with rare spikes near the cap, predictions
    right two times in three, labels of all ten classes."""
    labels = rng.integers(0, 10, n)
    preds = np.where(rng.random(n) < 0.66, labels, rng.integers(0, 10, n))
    losses = rng.exponential(1.0, n).clip(0, 6)
    spikes = rng.random(n) < 0.05
    losses[spikes] = CAP                           # confidently wrong now and then
    losses[rng.random(n) < 0.02] = np.nan          # a rare non-finite step the guard skips
    return losses, preds, labels


def test_monitor_healthy_noisy_stream_passes():
    rng = np.random.default_rng(0)
    mon = Monitor(None, 10_000, loss_cap=CAP, lr=0.02)
    assert mon.window == 200 and mon.warmup == 50
    feed(mon, *healthy(3000, rng))
    mon.finish()
    assert mon.good_step == 3000                     # every window was judged good, the last partial one too


def test_monitor_window_is_capped_by_the_epoch():
    mon = Monitor(None, 60, loss_cap=CAP)
    assert mon.window == 60 and mon.warmup == 15


@pytest.mark.parametrize("reason", ["pinned", "nonfinite", "collapse", "skipped"])
def test_monitor_detects(reason):
    rng = np.random.default_rng(1)
    losses, preds, labels = healthy(1000, rng)
    bad = slice(450, 1000)                           # healthy for two windows, then broken
    skipped = None
    if reason == "pinned":
        losses[bad] = np.where(rng.random(550) < 0.35, CAP, 0.0)
    elif reason == "nonfinite":
        losses[bad] = np.where(rng.random(550) < 0.3, np.nan, 1.0)
    elif reason == "collapse":
        preds[bad] = 7
    else:
        skipped = np.concatenate([np.zeros(450, int), np.arange(1, 551)])
    mon = Monitor(None, 10_000, loss_cap=CAP, lr=1e6)
    with pytest.raises(DivergenceError) as ei:
        feed(mon, losses, preds, labels, skipped)
    e = ei.value
    assert (e.reason, e.step, e.last_good_step) == (reason, 650, 450)
    msg = str(e)
    assert "\n" not in msg and msg.startswith("training diverged at step 650: ")
    assert "lower --lr (now 1e+06)" in msg


def test_monitor_collapse_needs_labels_of_several_classes():
    """Predicting the class that most labels hold is not a collapse; all labels equal neither."""
    rng = np.random.default_rng(2)
    n = 700
    labels = np.where(rng.random(n) < 0.6, 3, rng.integers(0, 10, n))
    mon = Monitor(None, 10_000, loss_cap=CAP)
    feed(mon, np.full(n, 0.5), np.full(n, 3), labels)
    mon = Monitor(None, 10_000, loss_cap=CAP)
    feed(mon, np.full(n, 0.1), np.full(n, 3), np.full(n, 3))
    assert mon.good_step == 650


def test_monitor_checks_a_long_enough_last_window():
    mon = Monitor(None, 10_000, loss_cap=CAP)
    feed(mon, np.full(150, CAP), np.arange(150) % 10, np.arange(150) % 10)   # warm-up 50, 100 in the window
    with pytest.raises(DivergenceError):
        mon.finish()
    mon = Monitor(None, 10_000, loss_cap=CAP)
    feed(mon, np.full(120, CAP), np.arange(120) % 10, np.arange(120) % 10)   # 70 < 200 / 2: not judged
    mon.finish()


def test_loss_cap_is_the_int8_logits_range(gq):
    assert loss_cap(training_graph(gq, "classifier")) == pytest.approx(255 * float(gq.t(gq.outputs[0]).q.scale))
    assert loss_cap(training_graph(gq, "classifier")) == pytest.approx(32.0, abs=0.01)
    assert loss_cap(training_graph(gq, "classifier", float_classifier=True)) is None


# Trainers: the weights that come back are the last good checkpoint's.

class LrJump:
    """A backprop trainer whose learning rate jumps to 1e6 after `at` steps."""

    def __init__(self, tr, at):
        self.tr, self.at, self.graph, self.ctx = tr, at, tr.graph, tr.ctx

    def step(self, x, label):
        if self.tr.steps == self.at:
            self.tr.ctx.lr = np.float32(1e6)
        return self.tr.step(x, label)

    @property
    def skipped(self):
        return self.tr.skipped


def trainable(g):
    return {t: g.t(t).data.copy() for t in g.meta["training"]["trainable"]}


def test_divergence_mid_run_restores_the_last_good_window(gq, mnist):
    """Healthy at lr 0.02 for 260 steps, then 1e6: with 100 steps an epoch the windows end at
    125, 225, 325; the run stops at 325 with the weights of step 225, the same as an unmonitored
    run stopped there."""
    x, y, tx, ty = mnist
    tr = BackpropTrainer(training_graph(gq, "classifier"), lr=0.02, seed=3)
    with pytest.raises(DivergenceError) as ei:
        fit(LrJump(tr, 260), x, y, epochs=5, seed=3, progress=False, limit=100)
    e = ei.value
    assert (e.step, e.last_good_step, e.reason) == (325, 225, "pinned")
    assert len(e.history) == 3

    class Stop(Exception):
        pass

    ref = BackpropTrainer(training_graph(gq, "classifier"), lr=0.02, seed=3)

    class Upto:
        graph, skipped = ref.graph, 0

        def step(self, xi, label):
            if ref.steps == 225:
                raise Stop
            return ref.step(xi, label)

    with pytest.raises(Stop):
        fit(Upto(), x, y, epochs=5, seed=3, progress=False, limit=100, monitor=False)
    got, want = trainable(tr.graph), trainable(ref.graph)
    for t in want:
        np.testing.assert_array_equal(got[t], want[t])
    # the collapsed weights of step 325, without the monitor, score far worse
    bad = BackpropTrainer(training_graph(gq, "classifier"), lr=0.02, seed=3)
    fit(LrJump(bad, 260), x, y, epochs=5, seed=3, progress=False, limit=100, monitor=False)
    assert tr.evaluate(tx, ty) > bad.evaluate(tx, ty) + 0.3


@pytest.mark.parametrize("hybrid", [False, True])
def test_mezo_divergence_restores_every_trained_tensor(gq, mnist, hybrid):
    x, y, _, _ = mnist
    tr = MezoTrainer(gq, "sparse", lr=1e3, seed=1, hybrid=hybrid, bp_lr=1e3)
    tensors = [tr.graph.t(it["tid"]) for it in tr.items]
    if hybrid:
        tensors += [tr.backprop.graph.t(t) for t in tr.backprop.graph.meta["training"]["trainable"]]
    before = [t.data.copy() for t in tensors]
    with pytest.raises(DivergenceError) as ei:
        fit(tr, x, y, epochs=3, seed=1, progress=False)
    assert ei.value.last_good_step == 0
    for t, b in zip(tensors, before):
        np.testing.assert_array_equal(t.data, b)
    if hybrid:                        # the two trainers still share their arrays
        head = tr.backprop.graph.meta["training"]["trainable"][0]
        assert tr.backprop.graph.t(head).data is tr.graph.t(head).data


def test_api_train_raises_divergence_with_the_last_good_model(gq, mnist):
    x, y, tx, ty = mnist
    before = accuracy(gq, tx, ty)
    with pytest.raises(DivergenceError) as ei:
        tt.train(gq, x, y, update="classifier", epochs=2, lr=1e3, progress=False)
    e = ei.value
    assert isinstance(e, tt.TinytrainError) and "lower lr (now 1e+03)" in str(e)
    start = strip_training(training_graph(gq, "classifier"))    # the trained layer rescaled (headroom)
    assert e.last_good_step == 0 and accuracy(e.model, tx, ty) == accuracy(start, tx, ty)
    assert abs(accuracy(start, tx, ty) - before) < 0.02 and before > 0.9


def test_api_train_refuses_one_class(gq, mnist):
    x = mnist[0][:30]
    with pytest.raises(tt.TinytrainError, match="every label is 3"):
        tt.train(gq, x, np.full(30, 3), update="bias", progress=False)
    tt.train(gq, x, np.full(30, 3), update="bias", progress=False, allow_one_class=True)


# The CLI.

def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tinytrain: error: "), err
    return err[0]


@pytest.mark.parametrize("backend,trainer", [("sim", "backprop"), ("c", "backprop"), ("sim", "mezo")])
def test_cli_lr_1e3_stops_and_keeps_the_last_good_weights(backend, trainer, mnist, tmp_path, capsys):
    out = tmp_path / "o"
    tx, ty = load_dataset(D / "mnist_test.npz")
    tx, ty = tx[:200], ty[:200]
    np.savez(tmp_path / "test.npz", x=tx, y=ty)
    rc = main(["train", str(MODEL), "--data", str(D / "mnist_calib.npz"), "--test", str(tmp_path / "test.npz"),
               "--update", "classifier", "--lr", "1e3", "--epochs", "3", "--max-samples", "100", "--quiet",
               "--backend", backend, "--trainer", trainer, "-o", str(out)])
    assert rc == 2
    line = one_error_line(capsys)
    assert "training diverged at step 125: " in line
    assert "lower --lr (now 1e+03)" in line and "mcu_cnn_mnist.last-good.tt.npz" in line
    assert not (out / "mcu_cnn_mnist.trained.tt.npz").exists()
    rep = json.loads((out / "train_report.json").read_text())
    assert rep["divergence"]["reason"] in ("pinned", "collapse") and rep["divergence"]["last_good_step"] == 0
    assert rep["divergence"]["explanation"] in line
    g = tt.load(rep["last_good_model"])
    # the weights before divergence (here the starting ones), not the collapsed ones of epoch 1
    acc = accuracy(g, tx, ty)
    assert acc == pytest.approx(rep["test_accuracy_before"]) and acc > 0.9
    assert rep["history"][0]["test_accuracy"] < acc - 0.3


def test_cli_refuses_one_class_labels(mnist, tmp_path, capsys):
    np.savez(tmp_path / "d.npz", x=mnist[0][:20], y=np.full(20, 3))
    args = ["train", str(MODEL), "--data", str(tmp_path / "d.npz"), "--calib", str(D / "mnist_calib.npz"),
            "--update", "bias", "--quiet", "-o", str(tmp_path / "o")]
    assert main(args) == 2
    line = one_error_line(capsys)
    assert "every label is 3" in line and "--allow-one-class" in line and "d.npz" in line
    assert main(args + ["--allow-one-class"]) == 0


@pytest.mark.parametrize("extra", [["--update", "sparse"], ["--update", "sparse", "--trainer", "mezo", "--lr", "1e-4"]])
def test_cli_normal_training_is_not_stopped(extra, tmp_path, capsys):
    """The README's main command (in the simulator, on fewer samples)."""
    rc = main(["train", str(MODEL), "--calib", str(D / "mnist_calib.npz"), "--data", str(D / "fmnist_train.npz"),
               "--epochs", "2", "--max-samples", "300", "--quiet", "-o", str(tmp_path), *extra])
    assert rc == 0, capsys.readouterr().err
    rep = json.loads((tmp_path / "train_report.json").read_text())
    assert "divergence" not in rep and len(rep["history"]) == 2
    assert Path(rep["trained_model"]).exists()
