"""Training in the simulator: updates, rounding, QAS, guard, determinism, CLI."""
import json
from pathlib import Path

import numpy as np
import pytest

import tinytrain as tt
from tinytrain.cli import main
from tinytrain.compiler.ops import update as upd
from tinytrain.compiler.pipeline import training_graph
from tinytrain.data import load_dataset
from tinytrain.train.backprop import BackpropTrainer, TrainContext

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "mcu_cnn_mnist.onnx"
D = ROOT / "models" / "data"


@pytest.fixture(scope="module")
def fmnist():
    x, y = load_dataset(D / "fmnist_train.npz")
    tx, ty = load_dataset(D / "fmnist_test.npz")
    return x, y, tx, ty


@pytest.fixture(scope="module")
def gq(fmnist):
    return tt.quantize(tt.load(MODEL), fmnist[0][:200], output_range=(-16, 16))


def test_stochastic_rounding_keeps_small_updates_in_expectation():
    ctx = TrainContext(lr=1.0, seed=3)
    w = np.zeros((1, 4000), np.int8)
    g = np.full((1, 4000), 0.3, np.float32)           # a step of 0.3 of one quantization step
    upd._sgd_s8_stochastic(w, g, np.ones(1, np.float32), np.float32(1.0), ctx.prng)
    # truncation would move nothing; stochastic rounding moves 30% of the weights by one step
    assert -0.33 < w.mean() < -0.27 and set(np.unique(w)) == {-1, 0}


def test_shadow_weights_accumulate_small_updates():
    w = np.zeros((1, 8), np.int8)
    sh = np.zeros((1, 8), np.int16)
    g = np.full((1, 8), 0.25, np.float32)
    seen = []
    for _ in range(7):
        upd._sgd_s8_shadow(w, sh, g, np.ones(1, np.float32), np.float32(1.0))
        seen.append((int(sh[0, 0]), int(w[0, 0])))
    # quarter steps add up in the 8 fraction bits; w is sh / 256 rounded half up
    assert seen == [(-64, 0), (-128, 0), (-192, -1), (-256, -1), (-320, -1), (-384, -1), (-448, -2)]


def test_updates_saturate_at_int8_limits():
    ctx = TrainContext(lr=1.0, seed=1)
    w = np.array([[120, -120]], np.int8)
    upd._sgd_s8_stochastic(w, np.array([[-50.0, 50.0]], np.float32), np.ones(1, np.float32), np.float32(1.0),
                           ctx.prng)
    assert w.tolist() == [[127, -127]]


def test_qas_makes_the_int8_step_a_float_step(gq):
    """With QAS the factor is 1/s_w, so w_float moves by lr * g; without it by lr * g * s_w^2."""
    tg = training_graph(gq, "classifier")
    no = training_graph(gq, "classifier", qas=False)
    u = [n for n in tg.nodes if n.op == "sgd_update" and n.attrs["role"] == "weight"][0]
    v = [n for n in no.nodes if n.op == "sgd_update" and n.attrs["role"] == "weight"][0]
    s_w = tg.t(u.inputs[0]).q.scale
    np.testing.assert_allclose(u.attrs["factor"], 1.0 / s_w, rtol=1e-6)
    np.testing.assert_allclose(v.attrs["factor"], s_w, rtol=1e-6)


def test_training_learns_and_is_deterministic(gq, fmnist):
    x, y, tx, ty = fmnist
    runs = []
    for seed in (0, 0, 1):
        tr = BackpropTrainer(training_graph(gq, "sparse"), lr=0.02, seed=seed)
        before = tr.evaluate(tx[:300], ty[:300])
        for i in range(300):
            tr.step(x[i], y[i])
        runs.append((tr.evaluate(tx[:300], ty[:300]), [tr.graph.t(t).data.copy()
                                                        for t in tr.graph.meta["training"]["trainable"]]))
    assert runs[0][0] > before + 0.15                      # it learns the new task
    for a, b in zip(runs[0][1], runs[1][1]):               # same seed: identical weights
        np.testing.assert_array_equal(a, b)
    assert any((a != b).any() for a, b in zip(runs[0][1], runs[2][1]))   # another seed: other rounding draws
    # the original int8 model is untouched by training
    np.testing.assert_array_equal(tt.Simulator(gq).predict(tx[:50]),
                                  tt.Simulator(tt.quantize(tt.load(MODEL), x[:200], output_range=(-16, 16)))
                                  .predict(tx[:50]))


def test_divergence_guard_skips_the_update(gq, fmnist, monkeypatch):
    x, y, _, _ = fmnist
    tr = BackpropTrainer(training_graph(gq, "classifier"), lr=0.05)
    before = [tr.graph.t(t).data.copy() for t in tr.graph.meta["training"]["trainable"]]
    from tinytrain.compiler.ops import train as train_ops
    monkeypatch.setattr(train_ops, "softmax_xent", lambda z, label, grad: np.float32(np.nan))
    loss, _ = tr.step(x[0], y[0])
    assert np.isnan(loss) and tr.ctx.skipped == 1
    for t, b in zip(tr.graph.meta["training"]["trainable"], before):
        np.testing.assert_array_equal(tr.graph.t(t).data, b)


def test_gradient_accumulation_updates_every_n(gq, fmnist):
    x, y, _, _ = fmnist
    tr = BackpropTrainer(training_graph(gq, "classifier"), lr=0.5, accumulate=3)
    w = tr.graph.meta["training"]["trainable"]
    first = [tr.graph.t(t).data.copy() for t in w]
    tr.step(x[0], y[0])
    tr.step(x[1], y[1])
    assert all((tr.graph.t(t).data == f).all() for t, f in zip(w, first))
    tr.step(x[2], y[2])
    assert any((tr.graph.t(t).data != f).any() for t, f in zip(w, first))


def test_float_classifier_trains_float_weights(gq, fmnist):
    x, y, _, _ = fmnist
    tg = training_graph(gq, "classifier", float_classifier=True)
    head = [n for n in tg.nodes if n.op == "fully_connected_f32"]
    assert len(head) == 1 and tg.t(tg.outputs[0]).dtype == "float32"
    w = tg.t(head[0].inputs[1])
    before = w.data.copy()
    tr = BackpropTrainer(tg, lr=0.05)
    tr.step(x[0], y[0])
    assert w.dtype == "float32" and not np.array_equal(before, w.data)


@pytest.mark.parametrize("update,backend", [("last-2", "sim"), ("sparse", "c"), ("classifier", "c")])
def test_cli_train_saves_a_model_that_reloads(update, backend, tmp_path, capsys, fmnist):
    """Also through the C build, whose graph is patched (classifier) or has in-place kernels
    (sparse): the saved model is the plain graph with the trained weights."""
    rc = main(["train", str(MODEL), "--data", str(D / "fmnist_train.npz"), "--test", str(D / "fmnist_test.npz"),
               "--update", update, "--epochs", "1", "--max-samples", "100", "--quiet", "--backend", backend,
               "-o", str(tmp_path)])
    assert rc == 0
    rep = json.loads((tmp_path / "train_report.json").read_text())
    assert rep["scheme"] == update and len(rep["history"]) == 1
    g = tt.load(rep["trained_model"])
    acc = float(np.mean(tt.Simulator(g).predict(fmnist[2]) == fmnist[3]))
    assert acc == pytest.approx(rep["history"][-1]["test_accuracy"])


@pytest.mark.parametrize("bad", ["scheme", "ratio", "label", "lr"])
def test_cli_train_errors(bad, tmp_path, capsys):
    args = ["train", str(MODEL), "--data", str(D / "fmnist_train.npz"), "--max-samples", "5", "--quiet",
            "-o", str(tmp_path / "o")]
    if bad == "scheme":
        args += ["--update", "everything"]
    elif bad == "ratio":
        (tmp_path / "s.json").write_text(json.dumps({"weights": {"-1": 0.3}}))
        args += ["--update", str(tmp_path / "s.json")]
    elif bad == "label":
        np.savez(tmp_path / "d.npz", x=np.zeros((3, 1, 28, 28), np.float32), y=np.array([0, 1, 12]))
        args[3] = str(tmp_path / "d.npz")
    else:
        args += ["--lr", "-1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tinytrain: error:"), err


def test_weight_headroom_rescales_only_trained_weights(gq, fmnist):
    x, _, tx, _ = fmnist
    tg = training_graph(gq, "last-2")
    trained = set(tg.meta["training"]["trainable"])
    for t in tg.tensors.values():
        if t.kind == "const" and t.dtype == "int8":
            orig = gq.t(t.id)
            if t.id in trained:
                np.testing.assert_allclose(t.q.scale, 2 * orig.q.scale, rtol=1e-6)
                assert np.abs(t.data).max() <= 64          # half the range is left to grow into
            else:
                np.testing.assert_array_equal(t.data, orig.data)
    # the rescaled layers compute nearly the same function
    from tinytrain.sim.simulator import Simulator
    fwd = [n for n in tg.nodes if n.id in set(tg.meta["training"]["forward"])]
    a = Simulator(tg, fwd).predict(tx[:200])
    b = tt.Simulator(gq).predict(tx[:200])
    assert np.mean(a == b) > 0.9
