"""Hyper-parameters and numeric invariants are guarded on every path (issue 10).

- the CLI, the Python API, the trainers and the generated C refuse NaN, infinite,
  negative and huge hyper-parameters (one line naming the flag / ERR_PARAM);
- adversarial state blobs (biases at the int32 limits, weights at +-127 and -128) and
  the largest learning rate train without undefined behaviour, and the C stays bit-exact
  with the simulator (TT_GUARDS_UBSAN=1: the library is built with
  -fsanitize=undefined,float-cast-overflow -fno-sanitize-recover=all; test_ubsan_run
  re-runs the C tests of this file that way in a subprocess);
- the saturation and skip counters move, in the simulator and in the C alike;
- the bias QAS factor is checked against a hand-computed float SGD step, and the C's
  divergence guard against a non-finite gradient behind a finite loss.
"""
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinytrain as tt
from tinytrain.api import train as api_train
from tinytrain.cli import main
from tinytrain.compiler.codegen.emit_c import Emitter
from tinytrain.compiler.errors import TinytrainError
from tinytrain.compiler.hparams import LR_MAX
from tinytrain.compiler.pipeline import compile_graph, compile_mezo, training_graph
from tinytrain.compiler.quant.qparams import bias_limit
from tinytrain.data import load_dataset
from tinytrain.host import HostModel, HostTrainer
from tinytrain.train.backprop import BackpropTrainer
from tinytrain.train.mezo import MezoTrainer

ROOT = Path(__file__).resolve().parent.parent
D = ROOT / "models" / "data"
UBSAN = os.environ.get("TT_GUARDS_UBSAN") == "1"
SAN_FLAGS = ["-fsanitize=undefined,float-cast-overflow", "-fno-sanitize-recover=all", "-g"] if UBSAN else []
IMAX = 2147483647


@pytest.fixture(scope="module")
def fmnist():
    return load_dataset(D / "fmnist_train.npz")


@pytest.fixture(scope="module")
def gq(fmnist):
    return tt.quantize(tt.load(ROOT / "models" / "mcu_cnn_mnist.onnx"), fmnist[0][:200], output_range=(-16, 16))


# ---------------------------------------------------------------------------
# CLI and Python API

BAD_TRAIN_FLAGS = [("--lr", "nan"), ("--lr", "inf"), ("--lr", "-0.1"), ("--lr", "0"), ("--lr", "1e39"),
                   ("--lr", "abc"), ("--momentum", "1"), ("--momentum", "-0.5"), ("--momentum", "nan"),
                   ("--eps", "0"), ("--eps", "17"), ("--eps", "1.5"), ("--queries", "0"), ("--accumulate", "0"),
                   ("--weight-headroom", "inf"), ("--weight-headroom", "0.5"), ("--logit-range", "nan"),
                   ("--logit-range", "-1")]


@pytest.mark.parametrize("flag,value", BAD_TRAIN_FLAGS)
def test_cli_refuses_bad_hyper_parameters(flag, value, tmp_path, capsys):
    rc = main(["train", str(ROOT / "models" / "mcu_cnn_mnist.onnx"), "--data", str(D / "fmnist_train.npz"),
               flag, value, "-o", str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"tinytrain: error: train: argument {flag}:"), err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_bad_percentile(tmp_path, capsys):
    assert main(["quantize", str(ROOT / "models" / "mcu_cnn_mnist.onnx"), "--calib", str(D / "fmnist_train.npz"),
                 "--method", "percentile", "--percentile", "101", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tinytrain: error: quantize: argument --percentile:"), err


@pytest.mark.parametrize("kw,field", [(dict(lr=float("nan")), "lr"), (dict(lr=float("inf")), "lr"),
                                      (dict(lr=-1.0), "lr"), (dict(lr=1e39), "lr"), (dict(lr="0.1"), "lr"),
                                      (dict(momentum=1.0), "momentum"), (dict(momentum=float("nan")), "momentum"),
                                      (dict(accumulate=0), "accumulate"), (dict(accumulate=1.5), "accumulate"),
                                      (dict(weight_headroom=float("inf")), "weight_headroom"),
                                      (dict(logit_range=0.0), "logit_range")])
def test_api_train_refuses_bad_hyper_parameters_before_any_work(kw, field):
    # the model path does not exist: the check must come first
    with pytest.raises(TinytrainError) as ex:
        api_train("does-not-exist.onnx", np.zeros((1, 1, 28, 28), np.float32), np.zeros(1, np.int64), **kw)
    assert ex.value.field == field, str(ex.value)
    assert "\n" not in str(ex.value)


def test_trainers_refuse_bad_hyper_parameters(gq, tmp_path):
    tg = training_graph(gq, "classifier")
    for kw in (dict(lr=float("nan")), dict(lr=-0.5), dict(lr=np.float64(1e39)), dict(momentum=-0.1),
               dict(momentum=1.0), dict(accumulate=0)):
        with pytest.raises(TinytrainError):
            BackpropTrainer(tg, **kw)
    for kw in (dict(lr=float("inf")), dict(lr=0.0), dict(eps=0), dict(eps=17), dict(queries=0), dict(queries=1e9),
               dict(hybrid=True, bp_lr=float("nan"))):
        with pytest.raises(TinytrainError):
            MezoTrainer(gq, "classifier", **kw)
    with pytest.raises(TinytrainError) as ex:             # refused before gcc runs
        HostTrainer(tmp_path, "nope", tg, None, {}, lr=float("nan"))
    assert ex.value.field == "lr"
    with pytest.raises(TinytrainError):
        tt.quantize(gq, np.zeros((1, 1, 28, 28), np.float32), method="percentile", percentile=float("nan"))
    with pytest.raises(TinytrainError):
        compile_mezo(gq, tmp_path / "z", update="classifier", queries=0)
    BackpropTrainer(tg, lr=LR_MAX, momentum=0.9)                   # the bounds themselves are fine


# ---------------------------------------------------------------------------
# the generated C

def _c_model(gq, tmp_path, update="sparse", lr=0.05, seed=3, **kw):
    tg, plan, facts = compile_graph(gq, tmp_path, name="m", update=update, **kw)
    hm = HostModel(tmp_path, "m", tg, facts, lr=lr, seed=seed, extra_cflags=SAN_FLAGS)
    return tg, plan, facts, hm


def _state_views(hm, graph, offsets):
    """Writable numpy views of the trained tensors inside the C state blob."""
    buf = hm.ffi.buffer(hm.state, hm.facts["state"])
    return {tid: np.frombuffer(buf, dtype=graph.t(tid).data.dtype, count=graph.t(tid).size, offset=off)
            for tid, off in offsets.items()}


def test_c_init_and_set_lr_refuse_bad_learning_rates(gq, tmp_path):
    tg, plan, facts, hm = _c_model(gq, tmp_path, update="classifier")
    ffi, lib = hm.ffi, hm.lib
    assert "M_ERR_PARAM = -7" in (tmp_path / "m.h").read_text()
    ctx = ffi.new("m_ctx *")
    A, S = facts["arena"], facts["state"]
    bad = [math.nan, math.inf, -math.inf, -1.0, 0.0, -0.0, 1e39, LR_MAX * 1.001, 5e-324]
    for lr in bad:
        assert lib.m_init(ctx, hm.arena, A, hm.state, S, lr, 1, 0) == -7, lr
    for lr in (1e-30, 0.05, LR_MAX):
        assert lib.m_init(ctx, hm.arena, A, hm.state, S, lr, 1, 0) == 0, lr
    for lr in bad:
        assert lib.m_set_lr(ctx, lr) == -7, lr
        assert ctx.lr == np.float32(LR_MAX)                          # unchanged
    assert lib.m_set_lr(ctx, 0.25) == 0 and ctx.lr == np.float32(0.25)
    assert lib.m_set_lr(ffi.NULL, 0.25) == -1
    sk, sa = ffi.new("int32_t *"), ffi.new("int32_t *")
    assert lib.m_stats(ctx, sk, sa) == 0 and sk[0] == 0 and sa[0] == 0
    assert lib.m_stats(ctx, ffi.NULL, ffi.NULL) == 0 and lib.m_stats(ffi.NULL, sk, sa) == -1


def _adversarial(graph, tid, rng):
    """Biases at INT32_MAX / INT32_MIN (and just inside), int8 weights at +-127 and -128."""
    t = graph.t(tid)
    v = t.data.reshape(-1).copy()
    if t.dtype == "int32":
        v[0::4], v[1::4] = IMAX, -IMAX - 1
        v[2::4] = IMAX - rng.integers(0, 1000, v[2::4].size)
    elif t.dtype == "int8":
        v[0::3], v[1::3], v[2::5] = 127, -127, -128
    return v


def _compare(hm, sim_graph, offsets):
    views = _state_views(hm, sim_graph, offsets)
    for tid, c in views.items():
        np.testing.assert_array_equal(c, sim_graph.t(tid).data.reshape(-1), err_msg=sim_graph.t(tid).name)


def _run_both(hm, sim, x, y, steps):
    for i in range(steps):
        lc, pc = hm.train_step(x[i], y[i])
        ls, logits = sim.step(x[i], y[i])
        assert np.float32(lc).tobytes() == np.float32(ls).tobytes(), (i, lc, ls)
        assert pc == int(np.argmax(np.asarray(logits).reshape(-1))), i


@pytest.mark.parametrize("lr", [0.05, LR_MAX])
def test_c_adversarial_state_trains_bit_exact(lr, gq, fmnist, tmp_path):
    x, y = fmnist
    tg, plan, facts, hm = _c_model(gq, tmp_path, update="sparse", lr=lr)
    sim = BackpropTrainer(tg, lr=lr, seed=3)
    offsets = Emitter(tg, plan, "m").state_off
    views = _state_views(hm, tg, offsets)
    rng = np.random.default_rng(0)
    biases = [tid for tid in offsets if tg.t(tid).dtype == "int32"]
    assert biases and any(tg.t(tid).dtype == "int8" for tid in offsets)
    for tid in offsets:                       # the same hostile blob in the C's RAM and the simulator's graph
        v = _adversarial(tg, tid, rng)
        views[tid][...] = v
        tg.t(tid).data.reshape(-1)[...] = v
    _run_both(hm, sim, x, y, 8)
    _compare(hm, tg, offsets)
    skipped, saturated = hm.stats()
    assert (skipped, saturated) == (sim.skipped, sim.saturated)
    assert saturated > 0
    limits = dict(sim.bias_limits)
    for tid in biases:                        # every trained bias is back inside its accumulator-safe range
        assert np.abs(tg.t(tid).data.astype(np.int64)).max() <= limits[tid] < IMAX


def test_c_huge_lr_run_is_clean_and_bit_exact(gq, fmnist, tmp_path):
    """The largest accepted learning rate, from the factory state: every step clips, weights and biases
    saturate, and the C still matches the simulator."""
    x, y = fmnist
    tg, plan, facts, hm = _c_model(gq, tmp_path, update="full", lr=LR_MAX, seed=5)
    sim = BackpropTrainer(tg, lr=LR_MAX, seed=5)
    _run_both(hm, sim, x, y, 6)
    _compare(hm, tg, Emitter(tg, plan, "m").state_off)
    assert hm.stats() == (sim.skipped, sim.saturated) and sim.saturated > 0


def test_c_mezo_adversarial_state_is_bit_exact(gq, fmnist, tmp_path):
    x, y = fmnist
    gz, plan, facts = compile_mezo(gq, tmp_path, name="zm", update="sparse", eps=2)
    hm = HostModel(tmp_path, "zm", gz, facts, lr=0.5, seed=4, extra_cflags=SAN_FLAGS)
    tr = MezoTrainer(gq, "sparse", lr=0.5, seed=4, eps=2)
    offsets = Emitter(gz, plan, "zm").state_off
    views = _state_views(hm, gz, offsets)
    rng = np.random.default_rng(1)
    for tid in offsets:
        v = _adversarial(tr.graph, tid, rng)
        views[tid][...] = v
        tr.graph.t(tid).data.reshape(-1)[...] = v
    _run_both(hm, tr, x, y, 6)
    _compare(hm, tr.graph, offsets)
    assert hm.stats() == (tr.skipped, tr.saturated) and tr.saturated > 0
    for it in tr.items:                      # biases inside +-(L - a); weights may keep a -128 (safe: 2^15 bound)
        if it["kind"] == "bias":
            assert np.abs(tr.graph.t(it["tid"]).data.astype(np.int64)).max() <= it["limit"]


def test_mezo_bias_perturbation_restores_exactly_at_its_limit(gq):
    """A trained bias sitting on its update limit L - a: +a, -2a, +a leave it where it was."""
    tr = MezoTrainer(gq, "sparse", eps=1)
    for it in tr.items:
        if it["kind"] == "bias":
            b = tr.graph.t(it["tid"]).data
            b[0::2], b[1::2] = it["limit"], -it["limit"]
            assert it["perturb_limit"] == bias_limit(_k_of(tr.graph, it["tid"])) == it["limit"] + it["amount"][0]
    before = {it["tid"]: tr.graph.t(it["tid"]).data.copy() for it in tr.items}
    for sign in (1, -2, 1):
        tr._perturb(12345, sign)
    for tid, v in before.items():
        np.testing.assert_array_equal(tr.graph.t(tid).data, v)
    assert tr.saturated == 0


def _k_of(graph, bias_tid):
    for n in graph.nodes:
        if n.op in ("conv2d", "fully_connected") and n.inputs[2] == bias_tid:
            w = graph.t(n.inputs[1])
            return w.size // w.shape[0]
    raise AssertionError(bias_tid)


def test_bias_limit_is_the_accumulator_invariant(gq):
    """autodiff's per-layer limit: |b| + K * 2^15 <= 2^31 - 1, and not one less than needed."""
    tg = training_graph(gq, "full")
    seen = 0
    for n in tg.nodes:
        if n.op == "sgd_update" and tg.t(n.inputs[0]).dtype == "int32":
            k = _k_of(tg, n.inputs[0])
            lim = n.attrs["limit"]
            assert lim + k * 128 * 256 == IMAX and lim > 0
            seen += 1
    assert seen >= 3


def test_c_loss_guard_skips_and_counts(gq, fmnist, tmp_path):
    """A NaN float classifier bias: the loss is NaN, the step is skipped (once), nothing moves."""
    x, y = fmnist
    tg, plan, facts, hm = _c_model(gq, tmp_path, update="last-2", float_classifier=True)
    sim = BackpropTrainer(tg, lr=0.05, seed=3)
    offsets = Emitter(tg, plan, "m").state_off
    views = _state_views(hm, tg, offsets)
    fb = [tid for tid in offsets if tg.t(tid).dtype == "float32" and tg.t(tid).data.ndim == 1][0]
    views[fb][3] = np.nan
    tg.t(fb).data[3] = np.nan
    before = {tid: v.copy() for tid, v in views.items()}
    lc, _ = hm.train_step(x[0], y[0])
    ls, _ = sim.step(x[0], y[0])
    assert math.isnan(lc) and math.isnan(ls)
    assert hm.stats()[0] == 1 == sim.skipped
    for tid, v in before.items():
        np.testing.assert_array_equal(views[tid], v)


def test_c_gradient_guard_skips_a_non_finite_gradient_behind_a_finite_loss(gq, fmnist, tmp_path):
    """A float classifier with one huge input column: the logits (and the loss) stay finite, but the
    gradient into the layer below overflows to infinity.  That layer's updates are skipped and
    counted, in the C as in the simulator, and the other updates happen (the C's divergence guard)."""
    x, y = fmnist
    tg, plan, facts, hm = _c_model(gq, tmp_path, update="last-2", float_classifier=True)
    sim = BackpropTrainer(tg, lr=0.05, seed=3)
    head = [n for n in tg.nodes if n.op == "fully_connected_f32"][0]
    xin, wtid = head.inputs[0], head.inputs[1]
    env = sim.gradients(x[0], y[0])
    xq = env[xin].reshape(-1).astype(np.int32)
    q = tg.t(xin).q
    xr = np.float32(q.scale) * (xq - np.int32(q.zero_point)).astype(np.float32)
    cand = np.flatnonzero((np.abs(xr) > 0) & (np.abs(xr) <= 0.4) & (xq < 127))
    assert cand.size, xr
    i0 = int(cand[-1])                       # not channel 0: a guard that checked only the gradient's
    assert i0 > 0                            # first element would let this one through
    w = tg.t(wtid).data                      # (classes, inputs)
    label = int(y[0])
    sgn = np.float32(np.sign(xr[i0]))
    col = np.full(w.shape[0], np.float32(3e38) * sgn, np.float32)
    col[label] = -col[label]                 # the label's logit far below the others: dz_label = -1
    offsets = Emitter(tg, plan, "m").state_off
    views = _state_views(hm, tg, offsets)
    w[:, i0] = col
    views[wtid].reshape(w.shape)[:, i0] = col
    before = {tid: v.copy() for tid, v in views.items()}
    lc, _ = hm.train_step(x[0], y[0])
    ls, _ = sim.step(x[0], y[0])
    assert np.isfinite(lc) and np.float32(lc).tobytes() == np.float32(ls).tobytes()
    assert sim.skipped >= 1 and hm.stats() == (sim.skipped, sim.saturated)
    _compare(hm, tg, offsets)
    moved = [tid for tid, v in before.items() if not np.array_equal(views[tid], v, equal_nan=True)]
    assert wtid in moved                     # the head itself learned
    assert len(moved) < len(before)          # the layer below did not


def test_bias_qas_factor_matches_a_float_sgd_step(gq, fmnist):
    """QAS: the classifier's int32 bias moves by lr * G_b / (s_w s_x) integer steps, i.e. the real bias
    by lr * G_b, as float SGD would (G_b = softmax(z) - onehot for the logits' layer); checked
    against numpy, not against the graph's own factor."""
    x, y = fmnist
    tg = training_graph(gq, "classifier")
    head = [n for n in tg.nodes if n.op == "fully_connected"][-1]
    b = tg.t(head.inputs[2])
    s_w = tg.t(head.inputs[1]).q.scale.astype(np.float64)
    s_x = float(tg.t(head.inputs[0]).q.scale)
    lr = 0.5
    sim = BackpropTrainer(tg, lr=lr, seed=2)
    factory = {tid: tg.t(tid).data.copy() for tid in tg.meta["training"]["trainable"]}
    for i in range(3):
        for tid, v in factory.items():        # each sample from the factory weights: real-sized gradients
            tg.t(tid).data[...] = v
        b0 = b.data.astype(np.int64).copy()
        _, logits = sim.step(x[i], y[i])
        lq = tg.t(tg.outputs[0]).q
        z = float(lq.scale) * (logits.reshape(-1).astype(np.float64) - int(lq.zero_point))
        p = np.exp(z - z.max())
        p /= p.sum()
        g = p.copy()
        g[int(y[i])] -= 1.0
        step = lr * g / (s_w * s_x)          # integer steps of the int32 bias
        assert np.abs(step).max() > 50       # a wrong factor cannot hide in the rounding
        moved = b0 - b.data.astype(np.int64)
        assert np.all(np.abs(moved - step) <= 1.0 + 1e-3 * np.abs(step)), (moved, step)


@pytest.mark.skipif(UBSAN, reason="this run is the sanitized one")
def test_ubsan_run():
    """The C tests of this file again, the library built with -fsanitize=undefined,float-cast-overflow
    -fno-sanitize-recover=all (any report aborts the run)."""
    env = dict(os.environ, TT_GUARDS_UBSAN="1", UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    res = subprocess.run([sys.executable, "-m", "pytest", str(Path(__file__).resolve()), "-q", "-x", "-p",
                          "no:cacheprovider", "-k", "test_c_"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=1200)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-6000:]
    assert " passed" in res.stdout and "runtime error" not in res.stdout + res.stderr


def test_cli_train_backend_c_reports_the_counters(tmp_path, capsys):
    """`train --backend c` at the largest learning rate: the C's counters reach the report (the
    divergence monitor may stop such a run: the report is written either way)."""
    import json
    rc = main(["train", str(ROOT / "models" / "mcu_cnn_mnist.onnx"), "--data", str(D / "fmnist_train.npz"),
               "--update", "classifier", "--lr", "1000", "--max-samples", "6", "--backend", "c", "--quiet",
               "-o", str(tmp_path / "out")])
    assert rc in (0, 2)
    rep = json.loads((tmp_path / "out" / "train_report.json").read_text())
    assert rep["saturated_updates"] > 0 and rep["skipped_updates"] == 0
    assert f"{rep['saturated_updates']} elements saturated" in capsys.readouterr().out
