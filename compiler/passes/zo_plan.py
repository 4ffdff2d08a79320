"""zo_plan: what a zeroth-order step perturbs and updates, decided at compile time.

For the sparse-update scheme (the same presets and JSON as backprop), in graph
order: each trained weight (rows = output channels, the first channels of a
partial update) and bias, with its perturbation size and its update factor (see
compiler/ops/zo.py).  Trained weights are clipped to [-(127 - e), 127 - e] here,
and trained biases to +-(L - a) (L: bias_limit, a: the bias perturbation), so that
perturbations restore exactly.
"""
import numpy as np

from ..errors import TinytrainError
from ..ops import get_op
from ..quant.qparams import bias_limit


def zo_plan(graph, scheme, eps=1):
    if not 1 <= int(eps) <= 16:
        raise TinytrainError(f"perturbation {eps} must be 1..16 quantization steps", field="eps")
    e = int(eps)
    g = graph.copy()
    for t in g.tensors.values():
        if t.kind == "const":
            t.data = t.data.copy()
    items = []
    for n in g.nodes:
        op = get_op(n.op)
        if not op.weighted or g.t(n.inputs[op.weight_input]).dtype != "int8" or not scheme.trains(n.id):
            continue
        x, w, b = g.t(n.inputs[0]), g.t(n.inputs[op.weight_input]), g.t(n.inputs[op.bias_input])
        s_w = w.q.scale.astype(np.float64)
        s_x = float(x.q.scale)
        if n.id in scheme.weights:
            r = scheme.weights[n.id]
            shape = op.update_shape(n, g, r)
            w.data = np.clip(w.data, -(127 - e), 127 - e).astype(np.int8)
            items.append(dict(kind="weight", tid=w.id, node=n.name, rows=int(shape[0]),
                              g_inner=int(np.prod(shape[1:])), g_k=int(shape[-1]),
                              w_inner=int(w.size // w.shape[0]), w_k=int(w.shape[-1]),
                              factor=(1.0 / (e * s_w * s_w)).astype(np.float32), limit=127 - e))
        if n.id in scheme.biases:
            # the bias saturates to +-L (the accumulator-safe range, quant/qparams.py bias_limit) and is
            # kept inside +-(L - a) so that its perturbations by a restore exactly, like the weights
            L = bias_limit(w.size // w.shape[0])
            a = max(1, int(round(e / s_x)))
            if L - a < (1 << 20):
                raise TinytrainError(f"the int32 accumulator could overflow while its bias trains "
                                     f"({w.size // w.shape[0]} products per output, perturbation {a})",
                                     node=n.name, op=n.op)
            b.data = np.clip(b.data, -(L - a), L - a).astype(np.int32)
            items.append(dict(kind="bias", tid=b.id, node=n.name,
                              amount=np.full(b.shape, a, np.int32),
                              factor=(1.0 / (e * s_w * s_w * s_x)).astype(np.float32), limit=L - a,
                              perturb_limit=L))
    if not items:
        raise TinytrainError("the scheme trains nothing")
    g.meta["zo"] = {"eps": e, "scheme": scheme.name, "items": items}
    g.meta["training"] = zo_training_meta(g)
    return g


def zo_training_meta(g):
    """The one meta["training"] of a zeroth-order graph (what the emitter, the state layout, the
    simulator's checks and the reports read): every node is forward, the trainable tensors are
    the zo items', QAS is implied (the update is scaled per tensor)."""
    return {"forward": [n.id for n in g.nodes], "trainable": [it["tid"] for it in g.meta["zo"]["items"]],
            "scheme": g.meta["zo"]["scheme"], "qas": True}
