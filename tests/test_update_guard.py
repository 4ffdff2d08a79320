"""The simulator's per-update divergence guard (tinytrain/train/backprop.py): a parameter whose
gradient holds a NaN or an Inf while the loss is finite is left as it was and counted in
ctx.skipped; the other parameters of the step are updated.  (tests/test_training.py's guard test
makes the loss NaN, which stops the step before any update runs.)"""
import numpy as np
import pytest

from tinytrain.compiler.ops import get_op
from tinytrain.compiler.pipeline import training_graph
from tinytrain.train.backprop import BackpropTrainer

from .test_training import fmnist, gq  # noqa: F401  (fixtures)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_gradient_skips_that_update_only(bad, gq, fmnist, monkeypatch):  # noqa: F811
    x, y, _, _ = fmnist
    tr = BackpropTrainer(training_graph(gq, "classifier"), lr=0.05)
    g = tr.graph
    updates = [n for n in g.nodes if n.op == "sgd_update"]
    assert len(updates) >= 2
    target = next(n for n in updates if n.attrs["role"] == "weight")
    grad = target.inputs[1]
    producer = next(n for n in g.nodes if grad in n.outputs)
    op = get_op(producer.op)
    sim = op.sim

    def poisoned(node, graph, ins, masks=None):
        outs = sim(node, graph, ins, masks)
        if node is producer:
            outs = [o.copy() for o in outs]
            k = node.outputs.index(grad)
            outs[k].reshape(-1)[outs[k].size // 2] = bad          # one element of the weight's gradient
        return outs

    monkeypatch.setattr(op, "sim", poisoned)
    params = {n.inputs[0]: g.t(n.inputs[0]).data.copy() for n in updates}
    loss, _ = tr.step(x[0], y[0])
    assert np.isfinite(loss)
    assert tr.ctx.skipped == 1
    np.testing.assert_array_equal(g.t(target.inputs[0]).data, params[target.inputs[0]])
    others = [p for p in params if p != target.inputs[0]]
    assert any(not np.array_equal(g.t(p).data, params[p]) for p in others), "the other updates did not run"
    for p in params:
        assert np.all(np.isfinite(g.t(p).data.astype(np.float64)))
