"""quantize: float IR + calibrated ranges -> the int8 IR.

Activations get per-tensor asymmetric int8 parameters (from the model's own
QuantizeLinear nodes when it has them, else from calibration); ops that only
move data (max_pool, reshape, transpose, clamp) keep their input's.  Then
every op turns its constants and attributes into the integer form
(per-channel int8 weights, int32 bias, multipliers and shifts, clamp bounds,
lookup tables).  Tensor ids do not change, so a float tensor and its int8
twin can be compared one to one.
"""
from ..errors import TinytrainError
from ..ops import get_op
from ..quant.qparams import act_qparams


def quantize(graph, ranges, calibration=None):
    g = graph.copy()
    # a weight shared by two layers gets its own copy per layer
    seen = set()
    for n in g.nodes:
        op = get_op(n.op)
        if op.weighted:
            ins = list(n.inputs)
            for k in (op.weight_input, op.bias_input):
                if ins[k] in seen:
                    t = g.t(ins[k])
                    ins[k] = g.add_const(t.name, t.data.copy(), q=t.q).id
                seen.add(ins[k])
            n.inputs = tuple(ins)
    producer = {o: n for n in g.nodes for o in n.outputs}
    order = list(g.inputs) + [o for n in g.nodes for o in n.outputs]
    for tid in order:
        t = g.t(tid)
        p = producer.get(tid)
        op = get_op(p.op) if p is not None else None
        if op is not None and op.float_only:
            raise TinytrainError("float-only op left in the graph", node=p.name, op=p.op)
        if op is not None and op.same_qparams:
            t.q = g.t(p.inputs[0]).q
        elif t.q is None:
            if tid not in ranges:
                raise TinytrainError(f"no calibration range for '{t.name}'", node=p.name if p else None)
            t.q = act_qparams(*ranges[tid])
    for n in g.nodes:
        try:
            get_op(n.op).quantize(n, g)
        except ValueError as e:
            raise TinytrainError(f"cannot quantize: {e}", node=n.name, op=n.op) from None
    for tid in order:
        g.t(tid).dtype = "int8"
    g.meta["calibration"] = calibration or {}
    return g
