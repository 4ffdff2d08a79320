"""Zeroth-order training on onnxruntime (tinytrain/mezo_ort.py): a 2-layer MLP made
here on a separable toy set.  MeZO lowers the loss, the checkpoint's seeds replay
to the same weights bit for bit, the bound buffers are onnxruntime's memory, z is
the shared PRNG's stream, and user mistakes are TinytrainErrors."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tinytrain.cli import main
from tinytrain.compiler.errors import TinytrainError
from tinytrain.compiler.quant.prng import prng_normal, prng_rademacher, prng_seed
from tinytrain.mezo_ort import (MezoSession, MezoTrainer, draw_z, estimate_pass, load_checkpoint, perturb, replay,
                                save_checkpoint, select_trainable)
from tinytrain.mezo_ort_cli import evaluate


def make_mlp(path, seed=0, hidden=16):
    """x [N, 4] -> Reshape (int64 shape initializer) -> MatMul+Add -> Relu -> MatMul+Add -> logits [N, 2]."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(np.array([-1, 4], np.int64), "shape"),
             numpy_helper.from_array((rng.normal(size=(4, hidden)) * 0.5).astype(np.float32), "fc1.weight"),
             numpy_helper.from_array(np.zeros(hidden, np.float32), "fc1.bias"),
             numpy_helper.from_array((rng.normal(size=(hidden, 2)) * 0.1).astype(np.float32), "head.weight"),
             numpy_helper.from_array(np.zeros(2, np.float32), "head.bias")]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["x2"]),
             helper.make_node("MatMul", ["x2", "fc1.weight"], ["h0"]),
             helper.make_node("Add", ["h0", "fc1.bias"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h"]),
             helper.make_node("MatMul", ["h", "head.weight"], ["o0"]),
             helper.make_node("Add", ["o0", "head.bias"], ["logits"])]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def make_data(n=256, seed=1):
    """Two Gaussian blobs, linearly separable with a margin."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 4)).astype(np.float32) * 0.7
    x[:, 0] += np.where(y == 1, 1.5, -1.5)
    x[:, 1] -= np.where(y == 1, 1.0, -1.0)
    return x.astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    return make_mlp(tmp_path_factory.mktemp("mezo") / "mlp.onnx")


def train(model, steps=200, queries=1, z="rademacher", lr=0.05, eps=1e-3, trainable=None, batch=32):
    sess = MezoSession(model, trainable)
    x, y = make_data()
    tr = MezoTrainer(sess, lr=lr, eps=eps, queries=queries, z=z, seed=7)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        idx = rng.integers(0, len(y), batch)
        tr.step({"x": x[idx]}, y[idx])
    return sess, tr, x, y


def bits(arrays):
    return [np.ascontiguousarray(a).view(np.uint32) for a in arrays]


def test_mezo_lowers_the_loss(mlp):
    sess = MezoSession(mlp)
    x, y = make_data()
    acc0, loss0 = evaluate(sess, {"x": x}, y)
    sess, tr, x, y = train(mlp)
    acc1, loss1 = evaluate(sess, {"x": x}, y)
    assert sess.names == ["fc1.weight", "fc1.bias", "head.weight", "head.bias"]   # not the int64 shape
    assert loss1 < 0.5 * loss0 and acc1 >= 0.95 > acc0
    assert len(tr.steps) == 200 and all(len(s) == 1 for s in tr.steps)


@pytest.mark.parametrize("queries,z", [(1, "rademacher"), (3, "normal")])
def test_replay_is_bit_exact(mlp, tmp_path, queries, z):
    sess, tr, _, _ = train(mlp, steps=60, queries=queries, z=z)
    save_checkpoint(tr.checkpoint(), tmp_path / "c.json")
    ckpt = load_checkpoint(tmp_path / "c.json")
    names, w = replay(ckpt, mlp)
    assert names == sess.names
    for a, b in zip(bits(w), bits(sess.weights)):
        assert np.array_equal(a, b)
    # the weights moved, and a replay that skips the perturb/restore passes would not be exact
    base = [numpy_helper.to_array(i) for i in onnx.load(str(mlp)).graph.initializer if i.name in names]
    assert not all(np.array_equal(a, b) for a, b in zip(base, w))
    naive = [b.astype(np.float32).copy() for b in base]
    for est in ckpt["steps"]:
        for seed, g in est:
            perturb(naive, seed, -(np.float32(ckpt["lr"]) * np.float32(g)) / np.float32(queries), z)
    assert not all(np.array_equal(a, b) for a, b in zip(bits(naive), bits(w)))


def test_float_restore_is_not_exact():
    w = [np.random.default_rng(0).normal(size=1000).astype(np.float32)]
    w0 = w[0].copy()
    for _ in estimate_pass(w, 123, 1e-3, "rademacher"):
        pass
    assert np.allclose(w[0], w0, atol=1e-6) and not np.array_equal(w[0], w0)


def test_cli_train_and_replay_into_onnx(mlp, tmp_path, capsys):
    x, y = make_data()
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savetxt(tmp_path / "test.csv", np.concatenate([x[:64], y[:64, None]], 1), delimiter=",")
    out = tmp_path / "out"
    assert main(["mezo", str(mlp), "--data", str(tmp_path / "train.npz"), "--test", str(tmp_path / "test.csv"),
                 "--trainable", "head.*,fc1.bias", "--steps", "40", "--batch", "16", "--lr", "0.05",
                 "--queries", "2", "--seed", "3", "--quiet", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "test accuracy before" in text and "test accuracy after 40 steps" in text
    ckpt = json.loads((out / "mlp.mezo.json").read_text())
    assert ckpt["trainable"] == ["fc1.bias", "head.weight", "head.bias"] and len(ckpt["steps"]) == 40
    report = json.loads((out / "mezo_report.json").read_text())
    assert len(report["history"]) == 40 and report["evals"][0]["step"] == 0
    assert main(["mezo", str(mlp), "--replay", str(out / "mlp.mezo.json"), "-o", str(out),
                 "--test", str(tmp_path / "test.csv")]) == 0
    assert "identical to training's (sha256): yes" in capsys.readouterr().out
    trained = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out / "mlp.mezo.onnx")).graph.initializer}
    base = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(mlp)).graph.initializer}
    assert np.array_equal(trained["fc1.weight"], base["fc1.weight"])          # frozen
    assert not np.array_equal(trained["head.weight"], base["head.weight"])    # trained
    # the written model, run by a plain session, scores what training reported
    s = ort.InferenceSession(str(out / "mlp.mezo.onnx"), providers=["CPUExecutionProvider"])
    acc = np.mean(s.run(None, {"x": x[:64]})[0].argmax(1) == y[:64])
    assert acc == pytest.approx(report["evals"][-1]["test_accuracy"])


def test_iobinding_buffers_are_shared(mlp):
    sess = MezoSession(mlp, "head.*")
    x, _ = make_data(8)
    before = sess.logits({"x": x}).copy()
    w = sess.weights[sess.names.index("head.bias")]
    w += np.float32(2.0)                         # in place, no rebinding
    after = sess.logits({"x": x})
    np.testing.assert_allclose(after, before + 2.0, rtol=0, atol=1e-5)
    for n, a, v in zip(sess.names, sess.weights, sess._values):
        assert v.data_ptr() == a.ctypes.data
    # a plain session of the base model with the same change agrees
    m = onnx.load(str(mlp))
    for i in m.graph.initializer:
        if i.name == "head.bias":
            i.CopyFrom(numpy_helper.from_array(w.copy(), "head.bias"))
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(after, ref)
    w -= np.float32(2.0)
    np.testing.assert_array_equal(sess.logits({"x": x}), before)


@pytest.mark.parametrize("kind,draw", [("rademacher", prng_rademacher), ("normal", prng_normal)])
def test_z_is_the_prng_stream(kind, draw):
    state = np.zeros(1, np.uint32)
    prng_seed(state, 4242)
    want = np.array([draw(state) for _ in range(300)], np.float32)
    np.testing.assert_array_equal(draw_z(4242, 300, kind), want)
    if kind == "rademacher":
        assert set(np.unique(want)) == {-1.0, 1.0}
    # one stream across tensors, in order
    a, b = np.zeros((10, 10), np.float32), np.zeros(200, np.float32)
    perturb([a, b], 4242, 1.0, kind)
    np.testing.assert_array_equal(np.concatenate([a.ravel(), b]), want)


def test_user_mistakes(mlp, tmp_path):
    with pytest.raises(TinytrainError, match="no such file"):
        MezoSession(tmp_path / "missing.onnx")
    with pytest.raises(TinytrainError, match="matches no initializer"):
        MezoSession(mlp, "encoder.*")
    with pytest.raises(TinytrainError, match="int64"):
        MezoSession(mlp, "shape")
    with pytest.raises(TinytrainError, match="int64"):
        select_trainable(onnx.load(str(mlp)), "*")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(TinytrainError, match="cannot read"):
        MezoSession(tmp_path / "bad.onnx")
    with pytest.raises(TinytrainError, match="learning rate"):
        MezoTrainer(MezoSession(mlp), lr=-1)
    x, y = make_data(32)
    np.savez(tmp_path / "nolabels.npz", x=x)
    np.savez(tmp_path / "wrong.npz", x=x[:, :3], y=y)
    np.savez(tmp_path / "badlabel.npz", x=x, y=y + 5)
    for data, msg in (("nolabels.npz", "needs labels"), ("wrong.npz", "shape"), ("badlabel.npz", "classes"),
                      ("missing.npz", "no such file")):
        assert main(["mezo", str(mlp), "--data", str(tmp_path / data), "--steps", "1", "-o", str(tmp_path / "o")]) == 2
    # a checkpoint replayed on another model
    sess, tr, _, _ = train(mlp, steps=2)
    save_checkpoint(tr.checkpoint(), tmp_path / "c.json")
    other = make_mlp(tmp_path / "other.onnx", seed=5)
    with pytest.raises(TinytrainError, match="sha256"):
        replay(load_checkpoint(tmp_path / "c.json"), other)
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(TinytrainError, match="checkpoint"):
        load_checkpoint(tmp_path / "junk.json")


def test_cli_error_is_one_line(mlp, tmp_path, capsys):
    assert main(["mezo", str(mlp), "--data", str(tmp_path / "x.npz"), "--trainable", "nothing*",
                 "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinytrain: error:") and "matches no initializer" in err and "\n" not in err
