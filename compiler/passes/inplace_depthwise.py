"""inplace_depthwise: a frozen depthwise conv2d whose input dies at it writes
its output over its input (TinyEngine's in-place depthwise), so an inverted
bottleneck needs one wide tensor instead of two.

A conv2d qualifies when it is depthwise (groups == channels == outputs), keeps
no clamp mask (nothing backpropagates through it), and its input is read by
nothing later (not the backward, not an output) and is not the graph input or
a view shared with another tensor (reshape).  The node becomes
`depthwise_conv2d_inplace` (ops/lowmem.py) with a Ho x Wo scratch output; the
memory plan gives its output the input's buffer.

Likewise in the backward: the float32 input gradient of a stride-1 depthwise
conv (dx shaped like dpre) whose dpre dies there becomes
`depthwise_conv2d_grad_input_inplace`, with an H x W float scratch.
"""
from ..ops.lowmem import DepthwiseConv2dInplace  # noqa: F401  (registers the op)

ALIASING = ("reshape", "paste")


def inplace_depthwise(graph):
    g = graph.copy()
    last = {}
    for pos, n in enumerate(g.nodes):
        for i in n.inputs:
            last[i] = pos
    producer = {o: n for n in g.nodes for o in n.outputs}
    aliased = {i for n in g.nodes if n.op in ALIASING for i in n.inputs}
    for pos, n in enumerate(g.nodes):
        if n.op == "conv2d_grad_input":
            _grad_input(g, n, pos, last, producer, aliased)
            continue
        if n.op != "conv2d" or n.attrs.get("keep_mask") or len(n.outputs) != 1:
            continue
        x, w = g.t(n.inputs[0]), g.t(n.inputs[1])
        y = g.t(n.outputs[0])
        if not (n.attrs["groups"] == x.shape[3] == w.shape[0] and w.shape[3] == 1 and len(x.shape) == 4):
            continue
        if x.id in g.inputs or x.id in g.outputs or last.get(x.id) != pos or x.id in aliased \
                or x.dtype != "int8" or producer.get(x.id) is None or producer[x.id].op in ALIASING:
            continue
        if y.shape[1] > x.shape[1] or y.shape[2] > x.shape[2]:
            continue
        span = (w.shape[1] - 1) * n.attrs["dilation"][0] + 1       # the input rows one output row reads
        if n.attrs["pads"][0] >= span:
            continue
        scratch = g.add_tensor(f"{y.name}:scratch", (1, span, x.shape[2], x.shape[3]), "int8", q=y.q)
        n.op = "depthwise_conv2d_inplace"
        n.outputs = (y.id, scratch.id)
    return g


def _grad_input(g, n, pos, last, producer, aliased):
    d, w = g.t(n.inputs[0]), g.t(n.inputs[1])
    if not (n.attrs["groups"] == w.shape[0] == d.shape[3] and w.shape[3] == 1
            and tuple(n.attrs["x_shape"]) == d.shape):
        return
    if d.id in g.outputs or last.get(d.id) != pos or d.id in aliased or producer.get(d.id) is None \
            or producer[d.id].op in ALIASING:
        return
    scratch = g.add_tensor(f"{d.name}:scratch", (1, d.shape[1], d.shape[2], 1), "float32")
    n.op = "depthwise_conv2d_grad_input_inplace"
    n.outputs = (n.outputs[0], scratch.id)
