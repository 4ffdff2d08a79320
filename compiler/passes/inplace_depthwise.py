"""inplace_depthwise: a frozen depthwise conv2d whose input dies at it writes
its output over its input (TinyEngine's in-place depthwise), so an inverted
bottleneck needs one wide tensor instead of two.

A conv2d qualifies when it is depthwise with one output per channel
(Conv2d.is_depthwise, channel multiplier 1), keeps
no clamp mask (nothing backpropagates through it), and its input is read by
nothing later (not the backward, not an output) and is not the graph input or
a view shared with another tensor (reshape).  The node becomes
`depthwise_conv2d_inplace` (ops/lowmem.py) with a Ho x Wo scratch output; the
memory plan gives its output the input's buffer.

Likewise in the backward: the float32 input gradient of a stride-1 depthwise
conv (dx shaped like dpre) whose dpre dies there becomes
`depthwise_conv2d_grad_input_inplace`, with an H x W float scratch.
"""
from ..ops import get_op
from ..ops.conv import Conv2d, Conv2dGradInput
from ..ops.lowmem import DepthwiseConv2dGradInputInplace, DepthwiseConv2dInplace


def _is_view(n):
    """The output is a view of an input (reshape, paste: declared by view_of)."""
    return get_op(n.op).view_of(n) is not None


def inplace_depthwise(graph):
    g = graph.copy()
    last = {}
    for pos, n in enumerate(g.nodes):
        for i in n.inputs:
            last[i] = pos
    producer = {o: n for n in g.nodes for o in n.outputs}
    aliased = {i for n in g.nodes if _is_view(n) for i in n.inputs}
    for pos, n in enumerate(g.nodes):
        if n.op == Conv2dGradInput.name:
            _grad_input(g, n, pos, last, producer, aliased)
            continue
        if n.op != Conv2d.name or n.attrs.get("keep_mask") or len(n.outputs) != 1:
            continue
        x, w = g.t(n.inputs[0]), g.t(n.inputs[1])
        y = g.t(n.outputs[0])
        if not (Conv2d.is_depthwise(n, g) and Conv2d.channel_multiplier(n, g) == 1 and len(x.shape) == 4):
            continue
        if x.id in g.inputs or x.id in g.outputs or last.get(x.id) != pos or x.id in aliased \
                or x.dtype != "int8" or producer.get(x.id) is None or _is_view(producer[x.id]):
            continue
        if y.shape[1] > x.shape[1] or y.shape[2] > x.shape[2]:
            continue
        span = (w.shape[1] - 1) * n.attrs["dilation"][0] + 1       # the input rows one output row reads
        if n.attrs["pads"][0] >= span:
            continue
        scratch = g.add_tensor(f"{y.name}:scratch", (1, span, x.shape[2], x.shape[3]), "int8", q=y.q)
        n.op = DepthwiseConv2dInplace.name
        n.outputs = (y.id, scratch.id)
    return g


def _grad_input(g, n, pos, last, producer, aliased):
    d, w = g.t(n.inputs[0]), g.t(n.inputs[1])
    if not (Conv2d.is_depthwise(n, g) and Conv2d.channel_multiplier(n, g) == 1
            and tuple(n.attrs["x_shape"]) == d.shape):
        return
    if d.id in g.outputs or last.get(d.id) != pos or d.id in aliased or producer.get(d.id) is None \
            or _is_view(producer[d.id]):
        return
    scratch = g.add_tensor(f"{d.name}:scratch", (1, d.shape[1], d.shape[2], 1), "float32")
    n.op = DepthwiseConv2dGradInputInplace.name
    n.outputs = (n.outputs[0], scratch.id)
