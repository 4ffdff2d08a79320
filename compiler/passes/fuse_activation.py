"""fuse_activation: ReLU / ReLU6 / Clip absorbed into the output clamp of the
op that produces their input (conv, linear, add, mul, pooling), as TTE and
TFLM do; the int8 kernels then clamp to the quantized bounds for free.
Chains of clamps merge into one.  A clamp whose producer has other consumers
stays a standalone `clamp` op.  Which producers take one: the ops that declare
`fuses_activation` (compiler/ops/base.py).
"""
from ..ops import get_op
from ..ops.activation import Clamp


def _intersect(a, b):
    def pick(x, y, f):
        if x is None:
            return y
        if y is None:
            return x
        return f(x, y)
    return (pick(a[0], b[0], max), pick(a[1], b[1], min))


def fuse_activation(graph):
    for node in list(graph.nodes):
        if node.op != Clamp.name:
            continue
        x = node.inputs[0]
        p = graph.producer(x)
        if p is None or not get_op(p.op).fuses_activation or len(graph.consumers(x)) != 1 or x in graph.outputs:
            continue
        old = p.attrs.get("act")
        p.attrs["act"] = node.attrs["act"] if old is None else _intersect(old, node.attrs["act"])
        p.outputs = node.outputs
        graph.nodes.remove(node)
    graph.remove_unused()
    return graph
