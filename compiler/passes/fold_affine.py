"""fold_affine: BatchNormalization (and Mul/Add/Sub/Div by a per-channel
constant, which the importer also turns into `affine`) folded into the conv or
linear layer that produces its input:  w' = w * s[c],  b' = b * s[c] + t[c].

An affine with no foldable producer (several consumers, an activation in
between, or a graph input) becomes a 1x1 depthwise conv2d on NHWC tensors, so
that nothing float-only reaches quantization.
"""
import numpy as np

from ..errors import TinytrainError
from ..ops import get_op
from ..ops.affine import Affine
from ..ops.conv import Conv2d
from ..ops.linear import FullyConnected


def _foldable_producer(graph, node):
    x = node.inputs[0]
    p = graph.producer(x)
    # a weighted layer (output channels on the weight's axis 0, a bias) or another affine
    if p is None or not (get_op(p.op).weighted or p.op == Affine.name) or p.attrs.get("act") is not None:
        return None
    if len(graph.consumers(x)) != 1 or x in graph.outputs:
        return None
    return p


def fold_affine(graph):
    for node in list(graph.nodes):
        if node.op != Affine.name:
            continue
        s = graph.t(node.inputs[1]).data.astype(np.float32)
        t = graph.t(node.inputs[2]).data.astype(np.float32)
        p = _foldable_producer(graph, node)
        if p is not None:
            if p.op == Affine.name:
                ps, pt = graph.t(p.inputs[1]), graph.t(p.inputs[2])
                ps.data, pt.data = (ps.data * s).astype(np.float32), (pt.data * s + t).astype(np.float32)
            else:
                w, b = graph.t(p.inputs[1]), graph.t(p.inputs[2])
                shp = (-1,) + (1,) * (w.data.ndim - 1)
                w.data = (w.data * s.reshape(shp)).astype(np.float32)
                w.q = None            # a given weight scale no longer applies
                b.data = (b.data * s + t).astype(np.float32)
            p.outputs = node.outputs
            graph.nodes.remove(node)
            continue
        x = graph.t(node.inputs[0])
        if len(x.shape) == 4:
            c = x.shape[3]
            w = graph.add_const(f"{x.name}:affine_w", s.reshape(c, 1, 1, 1))
            node.op = Conv2d.name
            node.inputs = (node.inputs[0], w.id, node.inputs[2])
            node.attrs = dict(stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=c, act=None)
        elif len(x.shape) == 2:
            w = graph.add_const(f"{x.name}:affine_w", np.diag(s).astype(np.float32))
            node.op = FullyConnected.name
            node.inputs = (node.inputs[0], w.id, node.inputs[2])
            node.attrs = dict(act=None)
        else:
            raise TinytrainError(f"a per-channel scale/shift on a rank-{len(x.shape)} tensor cannot be folded",
                                 node=node.name, op="affine")
    graph.remove_unused()
    return graph
