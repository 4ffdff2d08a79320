"""Memory-saving execution: patch-based prefixes (passes/patch_prefix.py), in-place
depthwise convolutions (passes/inplace_depthwise.py).  Both must change where bytes
live, never a result: the simulator and the C agree with the unmodified graph bit for bit."""
from pathlib import Path

import numpy as np
import pytest

import tinytrain as tt
from tinytrain.compiler.verify import verify
from tinytrain.compiler.passes.inplace_depthwise import inplace_depthwise
from tinytrain.compiler.passes.patch_prefix import best_patching, cuts, patch_prefix
from tinytrain.compiler.passes.plan_memory import plan_memory
from tinytrain.compiler.pipeline import compile_graph, memory_plan, training_graph
from tinytrain.data import load_dataset
from tinytrain.host import HostModel
from tinytrain.train.backprop import BackpropTrainer

ROOT = Path(__file__).resolve().parent.parent
D = ROOT / "models" / "data"


@pytest.fixture(scope="module")
def fmnist():
    return load_dataset(D / "fmnist_train.npz")


@pytest.fixture(scope="module")
def gq(fmnist):
    return tt.quantize(tt.load(ROOT / "models" / "mcu_cnn_mnist.onnx"), fmnist[0][:200], output_range=(-16, 16))


@pytest.fixture(scope="module")
def mbv2():
    g = tt.load(ROOT / "models" / "paper" / "mbv2_w035_128.onnx")
    return tt.quantize(g, np.random.default_rng(0).random((4, 3, 128, 128), dtype=np.float32))


def _logits(graph, x):
    return tt.Simulator(graph).run_int8(tt.Simulator(graph).quantize_input(x))[0]


def test_every_cut_and_grid_gives_the_same_integers(gq, fmnist):
    x = fmnist[0][:6]
    want = _logits(gq, x)
    found = cuts(gq)
    assert len(found) >= 5
    for pos, t in found:
        for grid in (2, 3, 4):
            g2, info = patch_prefix(gq, pos, grid)
            verify(g2, "patch")
            h, w = gq.t(t).shape[1:3]
            tiles = sum(h * i // grid < h * (i + 1) // grid for i in range(grid)) * \
                sum(w * i // grid < w * (i + 1) // grid for i in range(grid))
            assert sum(n.op == "paste" for n in g2.nodes) == tiles and info.grid == grid
            np.testing.assert_array_equal(_logits(g2, x), want, err_msg=f"cut {gq.t(t).name} grid {grid}")


def test_patching_mobilenet_cuts_the_forward_peak(mbv2):
    x = np.random.default_rng(1).random((1, 3, 128, 128), dtype=np.float32)
    want = _logits(mbv2, x)
    base = plan_memory(mbv2).arena_size
    g2, plan, info = best_patching(mbv2, lambda g: plan_memory(inplace_depthwise(g)))
    assert info is not None and info.grid >= 2 and info.patched_macs > info.macs
    g2 = verify(inplace_depthwise(g2), "inplace")
    assert plan.arena_size < base / 2, (plan.arena_size, base)       # 240 KB -> about 72 KB
    assert any(n.op == "depthwise_conv2d_inplace" for n in g2.nodes)
    np.testing.assert_array_equal(_logits(g2, x), want)


def test_budget_picks_the_cheapest_patching_that_fits(mbv2):
    fn = lambda g: plan_memory(inplace_depthwise(g))  # noqa: E731
    smallest = best_patching(mbv2, fn)
    loose = best_patching(mbv2, fn, budget=160 * 1024)
    assert loose[1].arena_size <= 160 * 1024
    assert loose[2].patched_macs - loose[2].macs <= smallest[2].patched_macs - smallest[2].macs
    assert best_patching(mbv2, fn, budget=1 << 30)[2] is None          # fits unpatched: no recompute


def test_inplace_depthwise_only_where_nothing_reads_the_input_later(gq):
    full = inplace_depthwise(training_graph(gq, "full"))
    assert not any(n.op == "depthwise_conv2d_inplace" for n in full.nodes)   # every input is saved
    g = verify(inplace_depthwise(training_graph(gq, "classifier")), "inplace")
    done = [n for n in g.nodes if n.op == "depthwise_conv2d_inplace"]
    assert done
    plan = plan_memory(g)
    for n in done:
        assert plan.offsets[n.inputs[0]] == plan.offsets[n.outputs[0]]
        assert all(n.inputs[0] not in m.inputs for m in g.nodes[g.nodes.index(n) + 1:])


def test_patched_in_place_c_matches_the_plain_simulator(mbv2, tmp_path):
    """MobileNetV2-w0.35 at 128x128, classifier update: the compiled C (patched prefix,
    in-place depthwise) trains bit for bit like the simulator on the unmodified graph."""
    tg, plan, facts = compile_graph(mbv2, tmp_path, name="mb", update="classifier")
    assert tg.meta.get("patch") and any(n.op == "depthwise_conv2d_inplace" for n in tg.nodes)
    # tiles are quantized straight from the caller's input: no int8 copy of it in the arena
    assert tg.meta.get("input_external") and tg.inputs[0] not in plan.offsets
    assert "tt_quantize_crop_f32_s8" in (tmp_path / "mb.c").read_text()
    plain = BackpropTrainer(training_graph(mbv2, "classifier"), lr=0.05, seed=1)
    hm = HostModel(tmp_path, "mb", tg, facts, lr=0.05, seed=1)
    rng = np.random.default_rng(2)
    for i in range(3):
        x = rng.random((3, 128, 128), dtype=np.float32)
        lc, pc = hm.train_step(x, i % 10)
        ls, logits = plain.step(x, i % 10)
        assert np.float32(lc).tobytes() == np.float32(ls).tobytes()
        assert pc == int(np.argmax(logits.reshape(-1)))
    lc, _ = hm.predict(x)
    ls = plain.sim.run(x[None])[0]
    assert lc.tobytes() == np.asarray(ls, np.float32).tobytes()


def test_memory_plan_without_in_place_or_patching(gq):
    tg = training_graph(gq, "classifier")
    g1, p1 = memory_plan(tg)
    g2, p2 = memory_plan(tg, in_place=False, patch=False)
    assert not any(n.op in ("paste", "depthwise_conv2d_inplace") for n in g2.nodes)
    assert p1.arena_size < p2.arena_size


def test_depthwise_input_gradient_in_place_is_bit_exact_in_c(gq, fmnist, tmp_path):
    """Biases everywhere, depthwise weights frozen: each stride-1 depthwise dx is written
    over its dpre (which dies there); C and simulator agree over 40 steps."""
    tg, plan, facts = compile_graph(gq, tmp_path, name="m", update="bias")
    done = [n for n in tg.nodes if n.op == "depthwise_conv2d_grad_input_inplace"]
    assert len(done) >= 3
    for n in done:
        assert plan.offsets[n.inputs[0]] == plan.offsets[n.outputs[0]]
    sim = BackpropTrainer(training_graph(gq, "bias"), lr=0.02, seed=5)
    hm = HostModel(tmp_path, "m", tg, facts, lr=0.02, seed=5)
    x, y = fmnist
    for i in range(40):
        lc, _ = hm.train_step(x[i], y[i])
        ls, _ = sim.step(x[i], y[i])
        assert np.float32(lc).tobytes() == np.float32(ls).tobytes(), i
    plain = plan_memory(training_graph(gq, "bias")).arena_size
    assert plan.arena_size < plain


def test_tte_preset_fits_far_below_the_sparse_preset(mbv2):
    from tinytrain.compiler.passes.plan_memory import state_bytes
    tte, sparse = training_graph(mbv2, "tte"), training_graph(mbv2, "sparse")
    assert state_bytes(tte)[0] < state_bytes(sparse)[0] / 2
    g, plan = memory_plan(tte)
    assert plan.arena_size + state_bytes(tte)[0] < 141 * 1024         # TTE's figure for this network


def test_presets_pick_the_same_layers_for_the_float_and_the_int8_graph(gq):
    """The fp32 baseline and the int8 run of a benchmark must train the same parameters."""
    from tinytrain.compiler.scheme import preset, weighted_layers
    gf = tt.load(ROOT / "models" / "mcu_cnn_mnist.onnx")
    for name in ("full", "bias", "classifier", "sparse", "tte", "last-3"):
        picked = []
        for g in (gf, gq):
            s, layers = preset(g, name), weighted_layers(g)
            picked.append(([layers.index(n) for n in layers if n.id in s.weights],
                           sorted(s.weights.values()), [layers.index(n) for n in layers if n.id in s.biases]))
        assert picked[0] == picked[1], name
