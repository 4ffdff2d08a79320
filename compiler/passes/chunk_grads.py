"""chunk_grads: compute a large weight gradient and apply its update a slice of
output channels at a time.

A trained 1x1 conv of 448 x 112 has a float32 gradient of 196 KB: held whole
until its update, it alone sets the training peak.  This pass splits every
conv2d_grad_weight (groups 1) whose gradient exceeds `max_bytes`, together
with its sgd_update, into pairs over consecutive output-channel rows:

    grad rows [r0, r1) -> dW_k (r1 - r0, kh, kw, ci)   (attr co_offset = r0)
    sgd_update rows [r0, r1) of the weight            (attr row_offset = r0)

so only one slice's gradient is ever live.  Every gradient element is summed
in the same order as before (the kernels loop positions per element), and the
updates visit the weight's elements in the same order, so the stochastic-
rounding draws are the same: the result is bit for bit the unchunked one.
One difference: the divergence guard (skip an update whose gradient is not
finite) decides per slice.
"""
import numpy as np

from ..ir import Node
from ..ops.conv import Conv2dGradWeight
from ..ops.update import SgdUpdate

DEFAULT_MAX_BYTES = 8192


def chunk_grads(graph, max_bytes=DEFAULT_MAX_BYTES):
    g = graph.copy()
    new_nodes = []
    dropped = set()
    for node in g.nodes:
        if node.id in dropped:
            continue
        if node.op != Conv2dGradWeight.name or node.attrs.get("groups", 1) != 1 or "co_offset" in node.attrs:
            new_nodes.append(node)
            continue
        dw = g.t(node.outputs[0])
        users = g.consumers(dw.id)
        if dw.nbytes <= max_bytes or len(users) != 1 or users[0].op != SgdUpdate.name \
                or users[0].inputs[1] != dw.id or dw.id in g.outputs:
            new_nodes.append(node)
            continue
        upd = users[0]
        rows = dw.shape[0]
        row_bytes = dw.nbytes // rows
        per = max(1, max_bytes // row_bytes)
        for r0 in range(0, rows, per):
            r1 = min(rows, r0 + per)
            part = g.add_tensor(f"{dw.name}[{r0}:{r1}]", (r1 - r0,) + tuple(dw.shape[1:]), "float32")
            gn = Node(g._next_node, node.op, node.inputs, (part.id,),
                      dict(node.attrs, co_offset=r0, dw_shape=part.shape), node.name)
            g._next_node += 1
            un = Node(g._next_node, SgdUpdate.name, (upd.inputs[0], part.id), (),
                      dict(upd.attrs, row_offset=r0, factor=np.ascontiguousarray(upd.attrs["factor"][r0:r1])),
                      upd.name)
            g._next_node += 1
            new_nodes += [gn, un]
        dropped.add(upd.id)
    g.nodes = [n for n in new_nodes if n.id not in dropped]
    g.remove_unused()
    return g
