"""The IR checker: every invariant of compiler/ir.py and every op's shape rule.

It lives above the ops (it asks each node's op for its rule), so that the IR
itself imports no op; the pipeline runs it after every pass.
"""
from .ir import DTYPES, KINDS, Graph, IRError


def verify(graph: Graph, stage: str = "") -> Graph:
    from .ops import get_op

    where = f" after {stage}" if stage else ""

    def fail(msg):
        raise IRError(f"IR check failed{where}: {msg}")

    defined = set()
    for tid in graph.inputs:
        t = graph.tensors.get(tid)
        if t is None or t.kind != "input":
            fail(f"graph input t{tid} is not an input tensor")
        defined.add(tid)
    for t in graph.tensors.values():
        if t.dtype not in DTYPES or t.kind not in KINDS:
            fail(f"t{t.id} has dtype {t.dtype} / kind {t.kind}")
        if any((not isinstance(d, int)) or d <= 0 for d in t.shape):
            fail(f"t{t.id} '{t.name}' has shape {t.shape}")
        if t.kind == "const":
            if t.data is None or tuple(t.data.shape) != t.shape or str(t.data.dtype) != t.dtype:
                fail(f"const t{t.id} '{t.name}' data does not match {t.shape} {t.dtype}")
            defined.add(t.id)
        if t.dtype == "int8" and t.q is None:
            fail(f"int8 tensor t{t.id} '{t.name}' has no quantization parameters")
        if t.q is not None and t.q.axis is not None and t.q.scale.shape != (t.shape[t.q.axis],):
            fail(f"t{t.id} '{t.name}' per-channel scale shape {t.q.scale.shape} vs axis {t.q.axis}")
    produced = set()
    ids = set()
    for n in graph.nodes:
        if n.id in ids:
            fail(f"duplicate node id n{n.id}")
        ids.add(n.id)
        for i in n.inputs:
            if i not in graph.tensors:
                fail(f"n{n.id} {n.op} reads missing tensor t{i}")
            if i not in defined:
                fail(f"n{n.id} {n.op} reads t{i} before it is produced (not topological)")
        for o in n.outputs:
            if o not in graph.tensors or graph.tensors[o].kind != "act":
                fail(f"n{n.id} {n.op} writes t{o}, which is not an activation")
            if o in produced:
                fail(f"t{o} is produced twice")
            produced.add(o)
            defined.add(o)
        op = get_op(n.op)
        if op is None:
            fail(f"n{n.id} has unknown op {n.op}")
        shapes = list(op.infer(n, graph))
        if n.attrs.get("keep_mask"):
            shapes.append(shapes[0])             # the 1-bit clamp mask of the output
        if len(shapes) != len(n.outputs):
            fail(f"n{n.id} {n.op} has {len(n.outputs)} outputs, rule says {len(shapes)}")
        for o, s in zip(n.outputs, shapes):
            if tuple(graph.tensors[o].shape) != tuple(s):
                fail(f"n{n.id} {n.op} output t{o} has shape {graph.tensors[o].shape}, rule says {tuple(s)}")
        op.check(n, graph, fail)
        if op.side_effect != (not n.outputs):
            fail(f"n{n.id} {n.op}: exactly the side-effect ops have no outputs (Graph.remove_unused keeps those)")
    for o in graph.outputs:
        if o not in defined:
            fail(f"graph output t{o} is never produced")
    return graph
