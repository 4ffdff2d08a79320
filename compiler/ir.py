"""The tinytrain IR: a small explicit graph.

* Tensors and nodes have integer ids handed out in creation order, so every
  pass is deterministic (no sets, no hashing of objects).
* Nodes keep their inputs in order and the node list is kept topological.
* Tensors are typed (float32, int8, int32) and carry their quantization
  parameters.  Activations of rank 4 are NHWC: the layout the MCU kernels use
  (channels innermost, so a pixel's channels are contiguous for the int8 dot
  products of 1x1 and depthwise convolutions).
* Axis 0 is always the batch; the IR is built for batch 1 (the device trains on
  one sample at a time) and the simulator may run any batch size.

`verify(graph)` checks all of this and every op's shape rule; the pipeline
runs it after every pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DTYPES = ("float32", "int8", "int32", "int64", "uint8")
KINDS = ("input", "const", "act")


@dataclass
class QParams:
    """Affine quantization: real = scale * (q - zero_point).

    Per-tensor when `axis` is None (scale and zero_point are 0-d), otherwise per
    channel along `axis` (1-d arrays of that axis' length)."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None

    def __post_init__(self):
        self.scale = np.asarray(self.scale, dtype=np.float32)
        self.zero_point = np.asarray(self.zero_point, dtype=np.int32)

    @property
    def per_tensor(self):
        return self.axis is None

    def dequantize(self, q):
        q = np.asarray(q)
        if self.axis is None:
            return (self.scale * (q.astype(np.float32) - np.float32(self.zero_point))).astype(np.float32)
        shp = [1] * q.ndim
        shp[self.axis] = -1
        s = self.scale.reshape(shp)
        z = self.zero_point.reshape(shp).astype(np.float32)
        return (s * (q.astype(np.float32) - z)).astype(np.float32)


@dataclass
class Tensor:
    id: int
    name: str
    shape: tuple
    dtype: str = "float32"
    kind: str = "act"
    data: np.ndarray | None = None
    q: QParams | None = None

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self):
        return self.size * np.dtype(self.dtype).itemsize


@dataclass
class Node:
    id: int
    op: str
    inputs: tuple
    outputs: tuple
    attrs: dict = field(default_factory=dict)
    name: str = ""          # the source (ONNX) node name, for error messages


class Graph:
    def __init__(self, name="graph"):
        self.name = name
        self.tensors: dict[int, Tensor] = {}
        self.nodes: list[Node] = []
        self.inputs: list[int] = []
        self.outputs: list[int] = []
        # free-form facts about the source model: file, input layout orders,
        # output activation, calibration settings ...
        self.meta: dict = {}
        self._next_tensor = 0
        self._next_node = 0

    # -- building ----------------------------------------------------------
    def add_tensor(self, name, shape, dtype="float32", kind="act", data=None, q=None) -> Tensor:
        if data is not None:
            data = np.ascontiguousarray(data, dtype=np.dtype(dtype))
            shape = tuple(int(d) for d in data.shape)
        t = Tensor(self._next_tensor, name, tuple(int(d) for d in shape), dtype, kind, data, q)
        self.tensors[t.id] = t
        self._next_tensor += 1
        return t

    def add_const(self, name, data, dtype=None, q=None) -> Tensor:
        data = np.asarray(data)
        return self.add_tensor(name, data.shape, dtype or str(data.dtype), "const", data, q)

    def add_node(self, op, inputs, outputs, attrs=None, name="") -> Node:
        n = Node(self._next_node, op, tuple(int(i) for i in inputs), tuple(int(o) for o in outputs),
                 dict(attrs or {}), name)
        self._next_node += 1
        self.nodes.append(n)
        return n

    # -- queries -------------------------------------------------------------
    def producer(self, tid):
        for n in self.nodes:
            if tid in n.outputs:
                return n
        return None

    def consumers(self, tid):
        return [n for n in self.nodes if tid in n.inputs]

    def t(self, tid) -> Tensor:
        return self.tensors[tid]

    def remove_unused(self):
        """Drop nodes whose outputs nobody needs and tensors nothing refers to."""
        from .ops import get_op
        live = set(self.outputs)
        kept = []
        for n in reversed(self.nodes):
            if get_op(n.op).side_effect or any(o in live for o in n.outputs):
                kept.append(n)
                live.update(n.inputs)
        self.nodes = kept[::-1]
        live.update(self.inputs)
        self.tensors = {k: v for k, v in self.tensors.items() if k in live}

    def replace_uses(self, old, new):
        for n in self.nodes:
            if old in n.inputs:
                n.inputs = tuple(new if i == old else i for i in n.inputs)
        self.outputs = [new if o == old else o for o in self.outputs]

    def copy(self) -> "Graph":
        import copy as _copy
        g = Graph(self.name)
        g.tensors = {k: _copy.copy(v) for k, v in self.tensors.items()}
        g.nodes = [Node(n.id, n.op, n.inputs, n.outputs, dict(n.attrs), n.name) for n in self.nodes]
        g.inputs, g.outputs = list(self.inputs), list(self.outputs)
        g.meta = _copy.deepcopy(self.meta)
        g._next_tensor, g._next_node = self._next_tensor, self._next_node
        return g

    def summary(self):
        lines = [f"graph {self.name}: {len(self.nodes)} nodes, {len(self.tensors)} tensors"]
        for n in self.nodes:
            outs = ", ".join(f"t{o}{list(self.tensors[o].shape)}:{self.tensors[o].dtype}" for o in n.outputs)
            lines.append(f"  n{n.id} {n.op}({', '.join(f't{i}' for i in n.inputs)}) -> {outs}  [{n.name}]")
        return "\n".join(lines)


class IRError(AssertionError):
    """The IR broke an invariant: a compiler bug, not a user mistake."""


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
    for o in graph.outputs:
        if o not in defined:
            fail(f"graph output t{o} is never produced")
    return graph
