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

`verify(graph)` (compiler/verify.py: it needs the ops, and the ops import the
IR) checks all of this and every op's shape rule; the pipeline runs it after
every pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .quant.qparams import QParams      # a tensor's quantization parameters (owned by quant/)

DTYPES = ("float32", "int8", "int32", "int64", "uint8")
KINDS = ("input", "const", "act")


@dataclass
class Tensor:
    id: int
    name: str
    shape: tuple
    dtype: str = "float32"
    kind: str = "act"
    data: np.ndarray | None = None
    q: QParams | None = None
    # what the pass that made it says it is, when that matters to a later pass: "mask" (a 1-bit
    # clamp mask, stored as packed bits: passes/autodiff.py), "tile" (one patch of a prefix
    # tensor: passes/patch_prefix.py), "" otherwise
    role: str = ""

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
        """Drop nodes whose outputs nobody needs and tensors nothing refers to.
        A node without outputs exists for its side effect (sgd_update) and stays
        (compiler/verify.py checks that exactly the side-effect ops have no outputs)."""
        live = set(self.outputs)
        kept = []
        for n in reversed(self.nodes):
            if not n.outputs or any(o in live for o in n.outputs):
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
