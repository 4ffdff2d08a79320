"""autodiff: the int8 inference graph -> a training graph, at compile time.

Appends the loss (softmax cross-entropy on the dequantized logits, against an
int32 label input) and walks the forward nodes backwards, emitting for each
node the grad ops its op class lists as data (`uses_mask`, `input_grads`,
`param_grads`), gradient accumulation where a tensor is read twice, and an
in-place `sgd_update` for every parameter right after its gradient.  Input
gradients come before parameter gradients, so each dx still reads the
weights of this step.  The result trains everything; `prune` then cuts it
down to the sparse-update scheme.
"""
import numpy as np

from ..errors import TinytrainError
from ..ops import get_op
from ..ops.train import MaskGrad, SumTo
from ..quant.qparams import bias_limit


def _qas_factor(graph, node, k, qas):
    """Per output channel: QAS 1/s (s = s_w, or s_w s_x for the bias), else s.
    Float parameters (a float classifier) need no factor."""
    w = graph.t(node.inputs[1])
    if w.q is None:
        return np.ones(w.shape[0], np.float32)
    s = w.q.scale.astype(np.float64)
    if k == 2:
        s = s * float(graph.t(node.inputs[0]).q.scale)
    return (1.0 / s if qas else s).astype(np.float32)


def _bias_limit(graph, node):
    """The int32 bias range updates saturate to: |b| <= bias_limit(K), K products per output."""
    w = graph.t(node.inputs[1])
    lim = bias_limit(w.size // w.shape[0])
    if lim < (1 << 20):
        raise TinytrainError(f"the int32 accumulator could overflow while its bias trains "
                             f"({w.size // w.shape[0]} products per output); freeze this bias", node=node.name,
                             op=node.op)
    return lim


def autodiff(graph, qas=True):
    g = graph.copy()
    for t in g.tensors.values():                  # training changes weights in place: own copies
        if t.kind == "const":
            t.data = t.data.copy()
    forward = list(g.nodes)
    logits = g.outputs[0]
    if g.t(logits).dtype != "int8" and g.t(logits).dtype != "float32":
        raise TinytrainError("the model's output is not a tensor of logits")
    label = g.add_tensor("label", (1,), "int32", kind="input")
    g.inputs.append(label.id)
    loss = g.add_tensor("loss", (1,), "float32")
    dlogits = g.add_tensor("d_logits", g.t(logits).shape, "float32")
    g.add_node("softmax_xent", [logits, label.id], [loss.id, dlogits.id], name="loss")
    grads = {logits: dlogits.id}
    blocked = {}                                   # tensor -> op that has no gradient rule for it

    def emit(op, ins, name, attrs, like=None, shape=None):
        t = g.add_tensor(name, shape if shape is not None else g.t(like).shape, "float32")
        g.add_node(op, ins, [t.id], attrs, name=node.name)
        return t.id

    def contribute(x, d):
        if x in grads:
            total = g.add_tensor(f"d_{g.t(x).name}", g.t(x).shape, "float32")
            g.add_node("grad_add", [grads[x], d], [total.id], name=node.name)
            grads[x] = total.id
        else:
            grads[x] = d

    for node in reversed(forward):
        y = node.outputs[0]
        if y not in grads:
            continue
        op = get_op(node.op)
        dy = grads[y]
        dpre = dy
        # The logits' own saturation does not gate the loss gradient: a wrong class whose logit sits at
        # the top of the int8 range must still be pushed down (else a new head that starts saturated
        # never learns).  Straight-through there; every other clamp keeps its mask.
        if op.uses_mask and not (y == logits and node.attrs.get("act") is None):
            m = g.add_tensor(f"{g.t(y).name}:mask", g.t(y).shape, "uint8")
            m.role = "mask"
            node.outputs = (y, m.id)
            node.attrs["keep_mask"] = True
            dpre = emit(MaskGrad.name, [dy, m.id], f"dpre_{g.t(y).name}", {}, like=y)
        operands = {"dy": dy, "dpre": dpre}
        operands.update({f"in{k}": t for k, t in enumerate(node.inputs)})
        # a bias gradient (a sum over positions) is taken before the input gradient, so that dpre
        # can die at the input gradient (an in-place depthwise dx, passes/inplace_depthwise.py);
        # its update stays after the weight's (the same order of rounding draws)
        early = {}
        for k, (gop, args) in op.param_grads.items():
            if k == op.bias_input:
                p = node.inputs[k]
                attrs = op.grad_attrs(node, g, gop, k)
                early[k] = emit(gop, [operands[a] for a in args], f"d_{g.t(p).name}", attrs,
                                shape=attrs.get("dw_shape", g.t(p).shape))
        for k, x in enumerate(node.inputs):
            if g.t(x).kind == "const":
                continue
            rule = op.input_grads.get(k, op.input_grads.get("*"))
            if rule is None:
                blocked[x] = node
                continue
            gop, args = rule
            attrs = op.grad_attrs(node, g, gop, k)
            if gop == "pass" or (gop == SumTo.name and tuple(attrs["shape"]) == g.t(dpre).shape):
                contribute(x, operands[args[0]])
                continue
            d = emit(gop, [operands[a] for a in args], f"d_{g.t(x).name}", attrs, shape=g.t(x).shape)
            contribute(x, d)
        for k, (gop, args) in op.param_grads.items():
            p = node.inputs[k]
            attrs = op.grad_attrs(node, g, gop, k)
            shape = attrs.get("dw_shape", g.t(p).shape)
            d = early[k] if k in early else emit(gop, [operands[a] for a in args], f"d_{g.t(p).name}", attrs,
                                                 shape=shape)
            attrs = {"factor": _qas_factor(g, node, k, qas), "param_of": node.id,
                     "role": "weight" if k == 1 else "bias"}
            if g.t(p).dtype == "int32":
                attrs["limit"] = _bias_limit(g, node)
            g.add_node("sgd_update", [p, d], [], attrs, name=node.name)
    g.outputs = [logits, loss.id]
    g.meta["training"] = {"qas": bool(qas), "forward": [n.id for n in forward],
                          "blocked": {int(t): n.name for t, n in blocked.items()}}
    return g


def strip_training(train_graph):
    """The inference graph inside a training graph, with the current (trained)
    weights: forward nodes only, no masks, no label."""
    g = train_graph.copy()
    fwd = set(g.meta["training"]["forward"])
    g.nodes = [n for n in g.nodes if n.id in fwd]
    for n in g.nodes:
        if n.attrs.pop("keep_mask", False):
            n.outputs = n.outputs[:1]
    g.inputs = g.inputs[:1]
    g.outputs = g.outputs[:1]
    for t in g.tensors.values():
        if t.kind == "const":
            t.data = t.data.copy()
    g.meta["trained"] = {k: v for k, v in g.meta.pop("training").items() if k in ("qas", "scheme")}
    g.remove_unused()
    return g
