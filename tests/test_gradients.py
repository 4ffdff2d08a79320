"""tinytrain's gradients against a torch replay of the quantized graph
(tests/torch_ref.py: straight-through estimator on the dequantized tensors,
clamp masks, the float op evaluated at the dequantized int8 inputs), finite
differences of the loss, and the structure of the pruned sparse-update graphs.

1. every op case: parameter gradients, the gradient dL/dy arriving at every
   masked node, the graph input's gradient (unpruned autodiff graph) and the
   loss; sparse weight gradients are the first channels of the full ones.
2. the shipped MCU CNN end to end (scheme "full").
3. finite differences in float64: softmax_xent's dlogits, and the loss as a
   function of the dequantized parameters of a fully-connected graph with the
   int8 forward frozen (the straight-through linearisation).
4. pruning of the MCU CNN for every preset and a JSON scheme: expected counts
   derived from the scheme and the layer list.
"""
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from tinytrain.compiler.errors import TinytrainError  # noqa: E402
from tinytrain.compiler.ops import get_op  # noqa: E402
from tinytrain.compiler.passes.autodiff import autodiff  # noqa: E402
from tinytrain.compiler.passes.prune import saved_tensors  # noqa: E402
# weight_headroom=1.0 everywhere: these tests compare the gradients of graphs with different trained
# layers, which must share one forward (the headroom rescales exactly the trained layers)
from tinytrain.compiler.pipeline import load, quantize_graph, training_graph  # noqa: E402

# the autodiff + prune graph as it is: one gradient per parameter (chunk_grads, which splits big
# weight gradients into row slices with identical results, is tested in test_compile/test_lowmem)
WHOLE = 1 << 30
from tinytrain.compiler.scheme import is_depthwise, resolve, weighted_layers  # noqa: E402
from tinytrain.data import load_dataset  # noqa: E402
from tinytrain.sim.simulator import Simulator  # noqa: E402
from tinytrain.train.backprop import BackpropTrainer  # noqa: E402

from .onnx_builder import Builder  # noqa: E402
from .op_cases import CASES, _conv, build_case, matmul_add_logsoftmax, pools  # noqa: E402
from .torch_ref import _windows, dequant, replay, run_int8  # noqa: E402

MODELS = Path(__file__).resolve().parent.parent / "models"
SAMPLES = 3


# Configurations the op cases do not reach, in the op_cases format: a broadcast add
# (sum_to), a tensor read twice by one node (mul(y, y), add(y, y)), a dilated max_pool
# with a fused ReLU, an avg_pool with asymmetric pads, a concat that is not the output,
# and table activations driven into their saturated parts (zero / one derivative).

def broadcast_add_square_double(rng):
    b = Builder([1, 4, 5, 5])
    g = _conv(b, b.op("GlobalAveragePool", ["x"]), rng, 4, 4, 1)
    y = b.op("Add", [g, "x"])                                      # [1,4,1,1] + [1,4,5,5]
    y = b.op("Mul", [y, y])
    y = b.op("Add", [y, y])
    y = b.op("Sigmoid", [y])
    return b, _conv(b, y, rng, 4, 3, 3), (-1, 1)


def maxpool_dilated_relu_avgpool_concat(rng):
    b = Builder([1, 3, 9, 9])
    y = _conv(b, "x", rng, 3, 4, 3, pads=[1, 1, 1, 1])
    y = b.op("MaxPool", [y], kernel_shape=[2, 2], strides=[1, 1], dilations=[2, 2], pads=[0, 1, 1, 0])
    y = b.op("Relu", [y])
    a = b.op("AveragePool", [y], kernel_shape=[3, 2], strides=[2, 1], pads=[0, 1, 1, 0], count_include_pad=0)
    y = b.op("Concat", [_conv(b, a, rng, 4, 2, 1), _conv(b, a, rng, 4, 3, 1)], axis=1)
    return b, _conv(b, y, rng, 5, 3, 2), (-1, 1)


def saturating_table_activations(rng):
    b = Builder([1, 4, 5, 5], opset=14)
    y = b.op("Mul", [_conv(b, "x", rng, 4, 6, 1), b.init(np.float32(4.0))])
    y = b.op("HardSwish", [y])                                    # inputs well beyond +-3
    y = b.op("HardSigmoid", [_conv(b, y, rng, 6, 6, 1)], alpha=0.2, beta=0.5)   # beyond +-2.5
    return b, _conv(b, y, rng, 6, 4, 3), (-3, 3)


EXTRA_CASES = [broadcast_add_square_double, maxpool_dilated_relu_avgpool_concat, saturating_table_activations]
ALL_CASES = CASES + EXTRA_CASES


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def assert_grad_close(ours, ref, what):
    ref = np.asarray(ref, np.float64)
    ours = np.asarray(ours)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs reference {ref.shape}"
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6 * scale + 1e-12, err_msg=what)


def param_grads(graph, env):
    """{parameter tensor id: its gradient} from the sgd_update nodes (input 1)."""
    return {n.inputs[0]: env[n.inputs[1]] for n in graph.nodes if n.op == "sgd_update"}


def output_grads(graph, env):
    """{forward output id: dL/dy} read at every mask_grad (input 0 = dy, input 1 = the
    mask, an output of the forward node)."""
    out = {}
    for n in graph.nodes:
        if n.op == "mask_grad":
            fwd = graph.producer(n.inputs[1])
            out[fwd.outputs[0]] = env[n.inputs[0]]
    return out


def input_grad_tensor(graph):
    """The total gradient of the graph input in an unpruned autodiff graph: the last
    tensor autodiff named d_<input> (its grad op or the grad_add of several
    contributions); None when every consumer passes its dpre through unchanged."""
    name = "d_" + graph.t(graph.inputs[0]).name
    found = [o for n in graph.nodes for o in n.outputs if graph.t(o).name == name]
    return found[-1] if found else None


def samples_for(graph, test, n=SAMPLES):
    """n test samples, plus one rounded to multiples of 0.5 (ties in every max_pool
    window and saturated values), each with its least likely class as the label.

    The label is chosen so that the loss is large: for a well-classified sample
    softmax - onehot cancels in float32 (an absolute error of ~1 ulp of 1.0 on a
    tiny dlogit), which is inherent in float32 training, not a gradient bug, and
    would need a tolerance unrelated to the size of the gradients."""
    xs = list(test[:n]) + [np.round(test[n] * 2) / 2]
    # softmax_xent takes all of a sample's logits as classes, BackpropTrainer only
    # accepts labels below the last dimension: stay valid for both
    k = int(graph.t(graph.outputs[0]).shape[-1])
    logits = Simulator(graph).run(np.stack(xs)).reshape(len(xs), -1)[:, :k]
    return [(x, int(np.argmin(z))) for x, z in zip(xs, logits)]


def weight_update_shape(graph, layer, ratio):
    """The part of a layer's weight a sparse update trains: the first input channels
    (the first output channels for a depthwise conv)."""
    w = graph.t(layer.inputs[1]).shape
    r = lambda c: max(1, int(np.ceil(c * ratio)))  # noqa: E731
    if layer.op == "fully_connected":
        return (w[0], r(w[1]))
    if is_depthwise(graph, layer):
        return (r(w[0]),) + tuple(w[1:])
    return tuple(w[:3]) + (r(w[3]),)


def check_against_torch(gq, graph, env, label, what):
    """Every gradient of one tinytrain step against the torch replay of the same forward."""
    r = replay(graph, env[graph.inputs[0]], label)
    # the replay runs the training graph's own forward (trained layers carry their weight headroom)
    for n in graph.nodes:
        if n.id in graph.meta["training"]["forward"]:
            np.testing.assert_array_equal(dequant(graph.t(n.outputs[0]), env[n.outputs[0]]), r.values[n.outputs[0]])
            if n.attrs.get("keep_mask"):
                np.testing.assert_array_equal(env[n.outputs[1]], r.masks[n.id])
    loss = float(env[graph.outputs[1]][0])
    np.testing.assert_allclose(loss, r.loss, rtol=1e-4, atol=1e-6, err_msg=f"{what}: loss")
    grads = param_grads(graph, env)
    for p, d in grads.items():
        ref = r.param_grads[p]
        if d.shape != ref.shape:              # a sparse update: the first channels
            ref = ref[tuple(slice(0, s) for s in d.shape)]
        assert_grad_close(d, ref, f"{what}: gradient of parameter t{p} '{graph.t(p).name}'")
    for y, d in output_grads(graph, env).items():
        assert_grad_close(d, r.act_grads[y], f"{what}: dL/dy of t{y} '{graph.t(y).name}'")
    return r, grads


# ---------------------------------------------------------------------------
# 1. every op case against the torch replay
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built_cases(tmp_path_factory):
    cache = {}

    def get(case):
        if case not in cache:
            path, calib, test = build_case(case, tmp_path_factory.mktemp(case.__name__))
            cache[case] = (quantize_graph(load(path), calib), test)
        return cache[case]
    return get


@pytest.mark.parametrize("case", ALL_CASES, ids=[c.__name__ for c in ALL_CASES])
def test_op_case_gradients_match_torch(case, built_cases):
    """Scheme "full": every parameter gradient, dL/dy at every masked node and the loss.
    The unpruned autodiff graph also gives the graph input's gradient (prune drops it:
    nothing reads it), which exercises each op's input-gradient rule at the input;
    for `pools` (no conv or linear layer, so no scheme can train anything and
    training_graph refuses) this is what checks avg_pool / max_pool / concat."""
    gq, test = built_cases(case)
    layers = weighted_layers(gq)
    ag = autodiff(gq)
    dx_id = input_grad_tensor(ag)
    if dx_id is None:
        passthrough = all(n.op in ("clamp", "add") for n in gq.consumers(gq.inputs[0]))
        assert passthrough, "the graph input has an input-gradient op but no d_<input> tensor"
    if layers:
        tg = training_graph(gq, "full", weight_headroom=1.0, chunk_bytes=WHOLE)
        trained = {n.inputs[0] for n in tg.nodes if n.op == "sgd_update"}
        assert trained == {i for n in layers for i in n.inputs[1:]}
    else:
        tg = None
        with pytest.raises(TinytrainError, match="no conv or linear layer"):
            training_graph(gq, "full", weight_headroom=1.0, chunk_bytes=WHOLE)
    full_trainer = BackpropTrainer(ag)
    trainer = BackpropTrainer(tg) if tg is not None else None
    for s, (x, label) in enumerate(samples_for(gq, test)):
        env_a = full_trainer.gradients(x, label)
        r, grads_a = check_against_torch(gq, ag, env_a, label, f"{case.__name__} sample {s} (unpruned)")
        if dx_id is not None:
            assert_grad_close(env_a[dx_id], r.act_grads[ag.inputs[0]],
                              f"{case.__name__} sample {s}: gradient of the graph input")
        if trainer is not None:
            env_t = trainer.gradients(x, label)
            _, grads_t = check_against_torch(gq, tg, env_t, label, f"{case.__name__} sample {s}")
            # pruning to "full" changes nothing in the arithmetic
            assert grads_t.keys() == grads_a.keys()
            for p in grads_t:
                np.testing.assert_array_equal(grads_t[p], grads_a[p])


@pytest.mark.parametrize("case", ALL_CASES, ids=[c.__name__ for c in ALL_CASES])
def test_sparse_weight_gradient_is_first_channels_of_full(case, built_cases):
    """Layer 0 trains half of its input channels (output channels if depthwise): its
    gradient covers exactly the first channels and equals that slice of the full
    gradient, bit for bit (and of the torch reference)."""
    gq, test = built_cases(case)
    layers = weighted_layers(gq)
    spec = {"weights": {"0": 0.5}}
    if len(layers) > 1:
        spec["classifier"] = True          # (with one layer it would override the 0.5)
    if not layers:
        with pytest.raises(TinytrainError):
            training_graph(gq, spec, weight_headroom=1.0, chunk_bytes=WHOLE)
        return
    tg = training_graph(gq, spec, weight_headroom=1.0, chunk_bytes=WHOLE)
    full = training_graph(gq, "full", weight_headroom=1.0, chunk_bytes=WHOLE)
    ups = [n for n in tg.nodes if n.op == "sgd_update"]
    assert len(ups) == (3 if len(layers) > 1 else 1)
    (w_up,) = [n for n in ups if n.attrs["param_of"] == layers[0].id and n.attrs["role"] == "weight"]
    want = weight_update_shape(gq, layers[0], 0.5)
    assert tg.t(w_up.inputs[1]).shape == want
    assert want != gq.t(layers[0].inputs[1]).shape
    sparse_t, full_t = BackpropTrainer(tg), BackpropTrainer(full)
    for s, (x, label) in enumerate(samples_for(gq, test, 1)):
        env = sparse_t.gradients(x, label)
        env_f = full_t.gradients(x, label)
        assert env[w_up.inputs[1]].shape == want
        gf = param_grads(full, env_f)
        for p, d in param_grads(tg, env).items():
            np.testing.assert_array_equal(d, gf[p][tuple(slice(0, k) for k in d.shape)])
        check_against_torch(gq, tg, env, label, f"{case.__name__} sparse sample {s}")


def test_cases_reach_ties_and_saturation(built_cases):
    """The samples above do reach what the replay is meant to pin down: max_pool windows
    whose maximum is tied (the gradient goes to the first one) and table activations
    evaluated in their flat parts."""
    gq, test = built_cases(pools)
    x, _ = samples_for(gq, test)[-1]
    xq = Simulator(gq).quantize_input(x[None])
    for n in gq.nodes:
        if n.op == "max_pool":
            win = _windows(torch.tensor(xq.astype(np.float64)), n.attrs, float("-inf")).numpy()
            ties = np.sum(win == win.max(axis=2, keepdims=True), axis=2) > 1
            assert ties.sum() >= 10, ties.sum()
    gq, test = built_cases(saturating_table_activations)
    xs = np.stack([x for x, _ in samples_for(gq, test)])
    env, _ = run_int8(gq, Simulator(gq).quantize_input(xs))
    for n in gq.nodes:
        v = dequant(gq.t(n.inputs[0]), env[n.inputs[0]])
        if n.op == "hard_swish":
            assert (v < -3).sum() >= 5 and (v > 3).sum() >= 5 and (np.abs(v) < 3).sum() >= 5
        if n.op == "hard_sigmoid":
            u = n.attrs["alpha"] * v + n.attrs["beta"]
            assert (u < 0).sum() >= 5 and (u > 1).sum() >= 5 and ((u > 0) & (u < 1)).sum() >= 5


# ---------------------------------------------------------------------------
# 2. the shipped MCU CNN end to end
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist_gq():
    path = MODELS / "mcu_cnn_mnist.onnx"
    calib = MODELS / "data" / "mnist_calib.npz"
    for p in (path, calib):
        if not p.exists():
            pytest.fail(f"shipped file {p} is missing (regenerate with the scripts in models/)")
    g = load(path)
    x, y = load_dataset(calib, g.meta["input_shape"])
    return quantize_graph(g, x), x, y


def test_mcu_cnn_full_gradients_match_torch(mnist_gq):
    gq, x, y = mnist_gq
    tg = training_graph(gq, "full", weight_headroom=1.0, chunk_bytes=WHOLE)
    layers = weighted_layers(gq)
    trainer = BackpropTrainer(tg)
    # the true label (small loss, small gradients) and a wrong one (large gradients)
    for s, label in ((0, int(y[0])), (57, (int(y[57]) + 3) % 10)):
        env = trainer.gradients(x[s], label)
        _, grads = check_against_torch(gq, tg, env, label, f"mcu_cnn sample {s}")
        assert len(grads) == 2 * len(layers)
        assert all(np.any(d != 0) for d in grads.values())


def test_mcu_cnn_sparse_preset_gradients_are_slices_of_full(mnist_gq):
    gq, x, y = mnist_gq
    full, sparse = training_graph(gq, "full", weight_headroom=1.0, chunk_bytes=WHOLE), training_graph(gq, "sparse", weight_headroom=1.0, chunk_bytes=WHOLE)
    scheme = resolve(gq, "sparse")
    by_id = {n.id: n for n in gq.nodes}
    narrowed = 0
    for n in sparse.nodes:
        if n.op == "sgd_update" and n.attrs["role"] == "weight":
            layer = by_id[n.attrs["param_of"]]
            want = weight_update_shape(gq, layer, scheme.weights[layer.id])
            assert sparse.t(n.inputs[1]).shape == want
            narrowed += want != gq.t(layer.inputs[1]).shape
    assert narrowed == sum(r < 1 for r in scheme.weights.values()) == 2
    env_f = BackpropTrainer(full).gradients(x[3], int(y[3]) ^ 1)
    env_s = BackpropTrainer(sparse).gradients(x[3], int(y[3]) ^ 1)
    gf = param_grads(full, env_f)
    gs = param_grads(sparse, env_s)
    assert len(gs) == len(scheme.weights) + len(scheme.biases)
    for p, d in gs.items():
        np.testing.assert_array_equal(d, gf[p][tuple(slice(0, k) for k in d.shape)])


# ---------------------------------------------------------------------------
# 3. finite differences (float64)
# ---------------------------------------------------------------------------

def _xent(z, label):
    z = np.asarray(z, np.float64)
    m = z.max()
    return float(np.log(np.sum(np.exp(z - m))) + m - z[label])


def _central(f, x0, h):
    x0 = np.asarray(x0, np.float64)
    g = np.zeros_like(x0)
    for i in np.ndindex(x0.shape):
        e = np.zeros_like(x0)
        e[i] = h
        g[i] = (f(x0 + e) - f(x0 - e)) / (2 * h)
    return g


@pytest.fixture(scope="module")
def tiny_fc(tmp_path_factory):
    path, calib, test = build_case(matmul_add_logsoftmax, tmp_path_factory.mktemp("fc"))
    gq = quantize_graph(load(path), calib)
    assert [n.op for n in gq.nodes] == ["fully_connected", "fully_connected"]
    return gq, test


def test_softmax_xent_matches_finite_differences(tiny_fc):
    """dlogits and the loss of softmax_xent against float64 cross-entropy of the
    dequantized logits, differentiated by central differences."""
    gq, test = tiny_fc
    tg = training_graph(gq, "full", weight_headroom=1.0, chunk_bytes=WHOLE)
    (sx,) = [n for n in tg.nodes if n.op == "softmax_xent"]
    trainer = BackpropTrainer(tg)
    for s in range(6):
        label = s % 3
        env = trainer.gradients(test[s], label)
        z = dequant(tg.t(sx.inputs[0]), env[sx.inputs[0]])[0]
        np.testing.assert_allclose(env[sx.outputs[0]][0], _xent(z, label), rtol=1e-5, atol=1e-6)
        fd = _central(lambda v: _xent(v, label), z, 1e-5)
        np.testing.assert_allclose(env[sx.outputs[1]][0], fd, rtol=1e-4, atol=1e-6)


def test_fc_parameter_gradients_match_finite_differences(tiny_fc):
    """The straight-through loss of the two-layer FC graph, written out in numpy
    float64 with the int8 forward frozen:
        h(W1, b1) = h_q + m1 * (W1 x + b1 - (W1_0 x + b1_0))
        z         = z_q + m2 * (W2 h + b2 - (W2_0 h_q + b2_0))
        L         = xent(z, label)
    (h_q, z_q the dequantized int8 outputs, m1 the clamp mask, m2 = 1: the logits do not gate).  Its central
    differences with respect to every parameter give tinytrain's gradients; this
    checks the mask gate, fully_connected_grad_input and both weight/bias rules
    without torch."""
    gq, test = tiny_fc
    tg = training_graph(gq, "full", weight_headroom=1.0, chunk_bytes=WHOLE)
    fc1, fc2 = weighted_layers(tg)
    t = tg.t
    p0 = {i: dequant(t(i), t(i).data) for n in (fc1, fc2) for i in n.inputs[1:]}
    w1, b1, w2, b2 = fc1.inputs[1], fc1.inputs[2], fc2.inputs[1], fc2.inputs[2]
    trainer = BackpropTrainer(tg)
    for s, (xs, label) in enumerate(samples_for(gq, test)):
        env = trainer.gradients(xs, label)
        x = dequant(t(fc1.inputs[0]), env[fc1.inputs[0]])[0]
        hq = dequant(t(fc1.outputs[0]), env[fc1.outputs[0]])[0]
        zq = dequant(t(fc2.outputs[0]), env[fc2.outputs[0]])[0]
        m1 = env[fc1.outputs[1]][0].astype(np.float64)
        m2 = np.ones_like(zq)            # the logits' saturation does not gate the loss gradient
        assert 0 < m1.sum() and 0 < m2.sum()

        def loss(p):
            h = hq + m1 * ((p[w1] @ x + p[b1]) - (p0[w1] @ x + p0[b1]))
            z = zq + m2 * ((p[w2] @ h + p[b2]) - (p0[w2] @ hq + p0[b2]))
            return _xent(z, label)

        grads = param_grads(tg, env)
        for pid in (w1, b1, w2, b2):
            fd = _central(lambda v: loss({**p0, pid: v}), p0[pid], 1e-4)
            assert_grad_close(grads[pid], fd, f"sample {s}: t{pid} '{t(pid).name}' vs finite differences")


# ---------------------------------------------------------------------------
# 4. pruning of the MCU CNN
# ---------------------------------------------------------------------------

JSON_SCHEME = {"bias": [-4], "weights": {"-4": 0.5, "-3": 0.25, "-2": 1.0}, "classifier": True}
PRESETS = ["full", "last-2", "last-4", "bias", "classifier", "sparse", "json"]
GRAD_INPUT_OPS = ("conv2d_grad_input", "fully_connected_grad_input")
GRAD_WEIGHT_OPS = ("conv2d_grad_weight", "fully_connected_grad_weight")


@pytest.fixture(scope="module")
def mnist_schemes(mnist_gq, tmp_path_factory):
    gq = mnist_gq[0]
    path = tmp_path_factory.mktemp("scheme") / "my_scheme.json"
    # one layer given by its ONNX node name, to exercise that form too
    spec = dict(JSON_SCHEME, weights={**JSON_SCHEME["weights"]})
    spec["weights"][weighted_layers(gq)[-2].name] = spec["weights"].pop("-2")
    path.write_text(json.dumps(spec))
    out = {}
    for name in PRESETS:
        update = str(path) if name == "json" else name
        out[name] = (resolve(gq, update), training_graph(gq, update, weight_headroom=1.0, chunk_bytes=WHOLE))
    return out


def _downstream(gq, trained_ids):
    """Forward nodes at or after a trained layer: the ones whose output gradient is needed."""
    prod = {o: n.id for n in gq.nodes for o in n.outputs}
    d = set()
    for n in gq.nodes:
        if n.id in trained_ids or any(prod.get(i) in d for i in n.inputs):
            d.add(n.id)
    return d, prod


@pytest.mark.parametrize("name", PRESETS)
def test_mcu_cnn_pruned_graph_structure(name, mnist_gq, mnist_schemes):
    gq = mnist_gq[0]
    scheme, tg = mnist_schemes[name]
    layers = weighted_layers(gq)
    by_id = {n.id: n for n in gq.nodes}
    trained = set(scheme.weights) | set(scheme.biases)
    down, prod = _downstream(gq, trained)
    fwd_ids = set(tg.meta["training"]["forward"])
    assert fwd_ids == {n.id for n in gq.nodes}
    backward = [n for n in tg.nodes if n.id not in fwd_ids]

    # one sgd_update per trained tensor, and exactly the scheme's
    ups = [n for n in backward if n.op == "sgd_update"]
    want_ups = {(i, "weight") for i in scheme.weights} | {(i, "bias") for i in scheme.biases}
    assert len(ups) == len(want_ups)
    assert {(n.attrs["param_of"], n.attrs["role"]) for n in ups} == want_ups
    assert tg.meta["training"]["trainable"] == sorted(
        {by_id[i].inputs[1] for i in scheme.weights} | {by_id[i].inputs[2] for i in scheme.biases})

    # weight gradients only for trained weights (narrowed to the scheme's ratio), bias grads likewise
    consumers = {i: n for n in ups for i in n.inputs[1:]}
    gw = [n for n in backward if n.op in GRAD_WEIGHT_OPS]
    assert len(gw) == len(scheme.weights)
    for n in gw:
        up = consumers[n.outputs[0]]
        layer = by_id[up.attrs["param_of"]]
        assert up.attrs["role"] == "weight" and layer.id in scheme.weights
        assert tg.t(n.outputs[0]).shape == weight_update_shape(gq, layer, scheme.weights[layer.id])
    assert len([n for n in backward if n.op == "bias_grad"]) == len(scheme.biases)

    # input gradients exactly for the layers after the lowest trained one
    want_gi = {n.id for n in layers if n.id in down and prod.get(n.inputs[0]) in down}
    w_of = {n.inputs[1]: n.id for n in layers}
    gi = [w_of[n.inputs[1]] for n in backward if n.op in GRAD_INPUT_OPS]
    assert len(gi) == len(set(gi)) == len(want_gi)
    assert set(gi) == want_gi
    assert layers[0].id not in gi                     # the stem never gets an input gradient
    lowest = min(layers.index(by_id[i]) for i in trained)
    assert all(layers.index(by_id[i]) > lowest for i in gi)
    if name == "classifier":
        assert not any(n.op.startswith("conv2d") for n in backward)
        # (the logits are not gated; the bias gradient comes first, its update after the weight's)
        assert [n.op for n in backward if n.op != "softmax_xent"] == [
            "bias_grad", "fully_connected_grad_weight", "sgd_update", "sgd_update"]

    # the other backward ops: one per needed input gradient of a downstream node, and a
    # grad_add for every extra reader of a tensor whose gradient is needed
    for op, gop in (("global_avg_pool", "global_avg_pool_grad"), ("reshape", "reshape")):
        want = sum(1 for n in gq.nodes if n.op == op and prod.get(n.inputs[0]) in down)
        assert len([n for n in backward if n.op == gop]) == want, gop
    want_adds = sum(max(len(gq.consumers(n.outputs[0])) - 1, 0) for n in gq.nodes if n.id in down)
    assert len([n for n in backward if n.op == "grad_add"]) == want_adds

    # clamp masks only for the masked nodes on the gradient path, each read by one mask_grad
    logits_node = next(n.id for n in gq.nodes if gq.outputs[0] in n.outputs)
    masked = {n.id for n in gq.nodes if n.id in down and get_op(n.op).uses_mask and n.id != logits_node}
    fwd = [n for n in tg.nodes if n.id in fwd_ids]
    assert {n.id for n in fwd if n.attrs.get("keep_mask")} == masked
    mask_ids = {n.outputs[1] for n in fwd if n.attrs.get("keep_mask")}
    assert {t.id for t in tg.tensors.values() if t.dtype == "uint8"} == mask_ids
    assert len([n for n in backward if n.op == "mask_grad"]) == len(masked)
    assert {n.inputs[1] for n in backward if n.op == "mask_grad"} == mask_ids

    # what the forward must keep: those masks and the inputs of the trained weights
    want_saved = mask_ids | {by_id[i].inputs[0] for i in scheme.weights}
    assert set(saved_tensors(tg)) == want_saved


def test_mcu_cnn_saved_tensors_shrink_with_the_scheme(mnist_schemes):
    saved = {k: set(saved_tensors(tg)) for k, (_, tg) in mnist_schemes.items()}
    assert saved["classifier"] <= saved["last-2"] <= saved["last-4"] <= saved["full"]
    assert len(saved["classifier"]) < len(saved["last-2"]) < len(saved["last-4"]) < len(saved["full"])
    assert saved["bias"] < saved["full"]
    assert saved["json"] <= saved["full"] and saved["sparse"] <= saved["full"]
    assert saved["classifier"] <= saved["json"] and saved["classifier"] <= saved["sparse"]
    scheme, tg = mnist_schemes["json"]
    assert tg.meta["training"]["scheme"] == "my_scheme"
    assert sorted(scheme.weights.values()) == [0.25, 0.5, 1.0, 1.0]
