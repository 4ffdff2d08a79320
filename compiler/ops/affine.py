"""affine: y = x * scale[c] + shift[c] over the last (channel) axis.

A float-only op: the importer turns BatchNormalization and Mul/Add/Sub/Div by
a per-channel or scalar constant into it, and the fold_affine pass folds it
into the producing conv2d / fully_connected (or, standalone on an NHWC tensor,
turns it into a 1x1 depthwise conv2d).  It never reaches quantization.
"""
import numpy as np

from .base import Op, register


@register
class Affine(Op):
    name = "affine"
    channelwise = True
    float_only = True

    def infer(self, node, graph):
        return [graph.t(node.inputs[0]).shape]

    def check(self, node, graph, fail):
        c = graph.t(node.inputs[0]).shape[-1]
        for i in node.inputs[1:]:
            if graph.t(i).shape != (c,):
                fail(f"n{node.id} affine parameter t{i} shape {graph.t(i).shape} for {c} channels")

    def ref(self, node, graph, ins):
        s, b = graph.t(node.inputs[1]).data, graph.t(node.inputs[2]).data
        return [(ins[0] * s + b).astype(np.float32)]
