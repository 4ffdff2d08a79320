"""prune: cut the full training graph down to a sparse-update scheme.

Drops the updates of frozen parameters, narrows the weight gradients of
partially trained layers to their first channels, then removes every
backward node whose result nothing needs any more (dead-code elimination):
no weight gradient for a frozen tensor, no input gradient below the lowest
trained layer, and no saved clamp mask or activation that no remaining
gradient reads.
"""
from ..errors import TinytrainError
from ..ops import get_op
from ..ops.update import SgdUpdate


def prune(graph, scheme):
    g = graph
    by_id = {n.id: n for n in g.nodes}
    kept = set()
    for n in list(g.nodes):
        if n.op != SgdUpdate.name:
            continue
        owner, role = by_id[n.attrs["param_of"]], n.attrs["role"]
        if role == "weight" and owner.id in scheme.weights:
            ratio = scheme.weights[owner.id]
            if ratio < 1.0:
                gnode = g.producer(n.inputs[1])
                gnode.attrs.update(get_op(owner.op).grad_attrs(owner, g, gnode.op, 1, ratio))
                g.t(gnode.outputs[0]).shape = tuple(gnode.attrs["dw_shape"])
            kept.add((owner.id, role))
        elif role == "bias" and owner.id in scheme.biases:
            kept.add((owner.id, role))
        else:
            g.nodes.remove(n)
    for nid, role in [(i, "weight") for i in scheme.weights] + [(i, "bias") for i in scheme.biases]:
        if (nid, role) not in kept:
            blocked = sorted(set(g.meta["training"].get("blocked", {}).values()))
            why = f" (no gradient rule through: {', '.join(blocked)})" if blocked else ""
            raise TinytrainError(f"the scheme trains this layer, but no gradient reaches it{why}",
                                 node=by_id[nid].name, op=by_id[nid].op)
    _dead_code(g)
    g.meta["training"]["scheme"] = scheme.name
    g.meta["training"]["trainable"] = sorted({n.inputs[0] for n in g.nodes if n.op == SgdUpdate.name})
    return g


def _dead_code(g):
    """Keep the forward, the loss and the updates; drop backward nodes nothing reads,
    then the clamp masks nothing reads."""
    forward = set(g.meta["training"]["forward"])
    changed = True
    while changed:
        changed = False
        read = {i for n in g.nodes for i in n.inputs} | set(g.outputs)
        for n in list(g.nodes):
            if n.id in forward or get_op(n.op).loss or get_op(n.op).side_effect:
                continue
            if not any(o in read for o in n.outputs):
                g.nodes.remove(n)
                changed = True
    read = {i for n in g.nodes for i in n.inputs} | set(g.outputs)
    for n in g.nodes:
        if n.attrs.get("keep_mask") and n.outputs[1] not in read:
            n.outputs = n.outputs[:1]
            del n.attrs["keep_mask"]
    g.remove_unused()


def saved_tensors(g):
    """Forward tensors that the backward reads (activations and masks): what
    the forward pass must keep alive for training."""
    forward = set(g.meta["training"]["forward"])
    produced_fwd = {o for n in g.nodes if n.id in forward for o in n.outputs} | set(g.inputs)
    saved = set()
    for n in g.nodes:
        if n.id in forward or get_op(n.op).loss:
            continue
        saved.update(i for i in n.inputs if i in produced_fwd)
    return sorted(saved)
