"""simplify_reshapes: keep reshapes out of the way of folding and fusion.

1-D convolutions run as 2-D ones on [N, 1, L, C], so the importer wraps them in
reshapes ([N, L, C] <-> [N, 1, L, C]).  This pass
  * moves a per-channel op (one that declares `channelwise`: affine, clamp) above
    a reshape that keeps the last (channel) axis, so BatchNorm and ReLU meet the
    conv that produces them;
  * merges a chain reshape -> reshape into one reshape;
  * drops a reshape to the shape it already has.
All of these are exact: reshapes move no data, and the moved ops act per element.
"""
from ..ops import get_op
from ..ops.shape import Reshape


def _swap_channelwise(graph):
    for r in list(graph.nodes):
        if r.op != Reshape.name:
            continue
        y = r.outputs[0]
        users = graph.consumers(y)
        x = graph.t(r.inputs[0])
        if (len(users) != 1 or not get_op(users[0].op).channelwise or y in graph.outputs
                or x.shape[-1] != graph.t(y).shape[-1]):
            continue
        a = users[0]
        # the reshape keeps quantization parameters, so the moved op's output takes any given ones
        moved = graph.add_tensor(f"{x.name}:{a.op}", x.shape, q=graph.t(a.outputs[0]).q)
        a.inputs = (x.id,) + tuple(a.inputs[1:])
        r.inputs, r.outputs, a.outputs = (moved.id,), a.outputs, (moved.id,)
        i, j = graph.nodes.index(r), graph.nodes.index(a)
        graph.nodes[i], graph.nodes[j] = a, r
        return True
    return False


def _merge_chains(graph):
    for r in list(graph.nodes):
        if r.op != Reshape.name:
            continue
        p = graph.producer(r.inputs[0])
        if p is not None and p.op == Reshape.name and len(graph.consumers(r.inputs[0])) == 1 \
                and r.inputs[0] not in graph.outputs:
            r.inputs = p.inputs
            graph.nodes.remove(p)
            return True
        x, y = graph.t(r.inputs[0]), graph.t(r.outputs[0])
        if x.shape == y.shape and y.id not in graph.outputs and x.kind != "input":
            graph.replace_uses(y.id, x.id)
            graph.nodes.remove(r)
            return True
    return False


def simplify_reshapes(graph):
    while _swap_channelwise(graph) or _merge_chains(graph):
        pass
    graph.remove_unused()
    return graph
