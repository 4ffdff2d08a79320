"""absorb_transpose: a transpose that only feeds Flatten -> fully_connected is
free: the linear layer's weight columns are permuted instead.

ONNX models flatten NCHW maps in C-major order; the IR keeps NHWC, so the
importer emits transpose(NHWC -> NCHW) -> reshape -> fully_connected.  Reading
the NHWC tensor directly with permuted weight columns gives the same sums
(the same products, added in a different order: exact in the int8 graph's
integer arithmetic), and the device moves no data.
"""
import numpy as np

from ..ops.linear import FullyConnected
from ..ops.shape import Reshape, Transpose


def absorb_transpose(graph):
    for t_node in list(graph.nodes):
        if t_node.op != Transpose.name:
            continue
        mid = t_node.outputs[0]
        users = graph.consumers(mid)
        if len(users) != 1 or users[0].op != Reshape.name or mid in graph.outputs:
            continue
        r_node = users[0]
        flat = r_node.outputs[0]
        fc_users = graph.consumers(flat)
        if (len(graph.t(flat).shape) != 2 or len(fc_users) != 1 or fc_users[0].op != FullyConnected.name
                or flat in graph.outputs):
            continue
        fc = fc_users[0]
        src = graph.t(t_node.inputs[0])
        perm = t_node.attrs["perm"]
        idx = np.arange(src.size).reshape(src.shape)
        order = np.transpose(idx, perm).reshape(-1)          # post-transpose position k reads pre index order[k]
        w = graph.t(fc.inputs[1])
        new = np.empty_like(w.data)
        new[:, order] = w.data
        w.data = new
        r_node.inputs = (t_node.inputs[0],)
        graph.nodes.remove(t_node)
    graph.remove_unused()
    return graph
