"""The fast memory planner gives exactly the plans of the slow reference
(tests/plan_reference.py: the planner as first written): the same arena size, the
same placement algorithm and every tensor at the same offset, on several models,
update schemes, with and without in-place buffers and patched prefixes; and the
pruned patch-grid search chooses the patching the exhaustive one chooses."""
from pathlib import Path

import numpy as np
import pytest

import tinytrain as tt
from tinytrain.compiler.passes.inplace_depthwise import inplace_depthwise
from tinytrain.compiler.passes.patch_prefix import best_patching, cuts, patch_prefix
from tinytrain.compiler.passes.plan_memory import lower_bound, plan_memory, state_bytes, verify_plan
from tinytrain.compiler.pipeline import memory_plan, training_graph

from . import plan_reference as ref

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gq():
    x = np.load(ROOT / "models" / "data" / "mnist_calib.npz")["x"][:32]
    return tt.quantize(tt.load(ROOT / "models" / "mcu_cnn_mnist.onnx"), x, output_range=(-16, 16))


@pytest.fixture(scope="module")
def mbv2():
    g = tt.load(ROOT / "models" / "paper" / "mbv2_w035_128.onnx")
    return tt.quantize(g, np.random.default_rng(0).random((4, 3, 128, 128), dtype=np.float32))


def _same(graph, in_place=True):
    new, old = plan_memory(graph, in_place=in_place), ref.plan_memory(graph, in_place=in_place)
    assert (new.arena_size, new.algorithm) == (old.arena_size, old.algorithm)
    assert new.offsets == old.offsets
    assert [(b.tensors, b.offset, b.size, b.start, b.end) for b in new.buffers] == \
        [(b.tensors, b.offset, b.size, b.start, b.end) for b in old.buffers]
    assert verify_plan(graph, new)
    assert lower_bound(graph, in_place) <= new.arena_size
    return new


@pytest.mark.parametrize("update", ["full", "sparse", "tte", "bias", "classifier", "last-2"])
def test_same_plans_as_the_reference_on_the_mcu_cnn(gq, update):
    tg = training_graph(gq, update)
    for in_place in (True, False):
        _same(tg, in_place)
        _same(inplace_depthwise(tg), in_place)
    pos = cuts(tg)
    for p, grid in ((pos[len(pos) // 2][0], 2), (pos[-1][0], 3)) if pos else ():
        _same(inplace_depthwise(patch_prefix(tg, p, grid)[0]))


@pytest.mark.parametrize("update", ["sparse", "tte"])
def test_same_plans_as_the_reference_on_mobilenet(mbv2, update):
    tg = training_graph(mbv2, update)
    _same(tg)
    _same(tg, in_place=False)
    _same(inplace_depthwise(patch_prefix(tg, cuts(tg)[-1][0], 4)[0]))


def _choice(result):
    g, plan, info = result
    return (None if info is None else (info.split, info.grid), plan.arena_size, plan.offsets)


@pytest.mark.parametrize("budget_kb", [None, 40, 60, 100, 1 << 20])
def test_pruned_grid_search_chooses_as_the_exhaustive_one(mbv2, budget_kb):
    tg = training_graph(mbv2, "sparse")
    fn = lambda g: plan_memory(inplace_depthwise(g))  # noqa: E731
    budget = None if budget_kb is None else budget_kb * 1024
    new = best_patching(tg, fn, budget, bound_fn=lambda g: lower_bound(inplace_depthwise(g)))
    old = ref.best_patching(tg, lambda g: ref.plan_memory(inplace_depthwise(g)), budget)
    assert _choice(new) == _choice(old)


@pytest.mark.parametrize("update,sram_kb", [("classifier", None), ("classifier", 30), ("sparse", 80), ("bias", 1)])
def test_memory_plan_chooses_as_the_exhaustive_search(gq, update, sram_kb):
    tg = training_graph(gq, update)
    sram = None if sram_kb is None else sram_kb * 1024
    g, plan = memory_plan(tg, sram=sram)
    budget = None if sram is None else sram - state_bytes(tg)[0]
    og, oplan, _ = ref.best_patching(tg, lambda h: ref.plan_memory(inplace_depthwise(h)), budget)
    assert (plan.arena_size, plan.offsets) == (oplan.arena_size, oplan.offsets)
    assert len(g.nodes) == len(inplace_depthwise(og).nodes)
