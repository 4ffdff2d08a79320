"""ONNX -> tinytrain float IR (NHWC).

The importer walks the ONNX nodes in topological order.  Nodes whose inputs
are all constants are folded (evaluated once with onnx's reference
evaluator); `Shape` of an activation folds to its static shape.  Every other
node goes to its converter in onnx_ops.py.

Layouts: each ONNX activation maps to an IR tensor plus an `order`, the ONNX
axis held by each IR axis (ir.shape[k] == onnx_shape[order[k]]).  4-D
activations live as NHWC, order (0, 2, 3, 1); 1-D sensor data [N, C, L] as
[N, L, C], order (0, 2, 1).  A layout-only ONNX Transpose only changes the
order (no data moves); an IR transpose is emitted only where an op needs the
ONNX element order (Flatten/Reshape of a tensor with H, W > 1) and the memory
order really differs.
"""
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from ..errors import TinytrainError
from ..ir import Graph, QParams
from .onnx_layout import channels_last
from .onnx_load import MAX_ELEMENTS, read_model, tensor_to_array, topo_sort

# ops that are evaluated when all their inputs are constants
FOLDABLE = {
    "Add", "Sub", "Mul", "Div", "Neg", "Sqrt", "Reciprocal", "Pow", "Cast", "Reshape", "Flatten", "Squeeze",
    "Unsqueeze", "Concat", "Gather", "Slice", "Transpose", "Identity", "ConstantOfShape", "Range", "Shape",
    "Expand", "Equal", "Where", "Min", "Max", "Floor", "Ceil", "Abs", "ReduceProd", "ReduceSum",
    "DequantizeLinear", "QuantizeLinear", "Size", "Tile", "Clip", "Relu", "Sign", "Not", "Less", "Greater",
    "CastLike",
}


_A = onnx.AttributeProto
ATTR_TYPES = {
    "strides": _A.INTS, "pads": _A.INTS, "dilations": _A.INTS, "kernel_shape": _A.INTS, "perm": _A.INTS,
    "axes": _A.INTS, "group": _A.INT, "axis": _A.INT, "keepdims": _A.INT, "transA": _A.INT, "transB": _A.INT,
    "count_include_pad": _A.INT, "ceil_mode": _A.INT, "allowzero": _A.INT, "block_size": _A.INT,
    "auto_pad": _A.STRING, "epsilon": _A.FLOAT, "alpha": _A.FLOAT, "beta": _A.FLOAT, "min": _A.FLOAT,
    "max": _A.FLOAT, "starts": _A.INTS, "ends": _A.INTS,
}
BROADCASTING = {"Add", "Sub", "Mul", "Div", "Pow", "Equal", "Where", "Min", "Max", "Less", "Greater"}


class Importer:
    def __init__(self, path, input_shape=None):
        self.path = Path(path)
        self.model, self.opset = read_model(self.path)
        self.graph = Graph(self.path.stem)
        self.consts = {}        # onnx name -> np.ndarray
        self.const_q = {}       # onnx name -> QParams of an int8 weight behind DequantizeLinear
        self.values = {}        # onnx name -> (tensor id, order)
        self.input_shape = input_shape
        self.node = None        # the ONNX node being converted (for errors)
        self.softmax_q = set()  # outputs of QuantizeLinear nodes after the final softmax (passed through)
        self.mean_chain = {}    # output of the 2nd ReduceMean of x.mean(3).mean(2) -> (1st node, its input)

    # -- errors --------------------------------------------------------------
    def error(self, problem, node=None):
        node = node or self.node
        label = None if node is None else (node.name or next((o for o in node.output if o), "") or "(unnamed)")
        return TinytrainError(problem, file=self.path, node=label, op=None if node is None else node.op_type)

    # -- values --------------------------------------------------------------
    def is_const(self, name):
        return name in self.consts

    def const(self, name, what="input"):
        if name not in self.consts:
            raise self.error(f"{what} '{name}' must be a constant (initializer), it is computed at run time")
        return self.consts[name]

    def weight(self, name, what="weight"):
        w = self.const(name, what)
        if np.issubdtype(w.dtype, np.floating) and not np.all(np.isfinite(w)):
            raise self.error(f"{what} '{name}' contains NaN or Inf values")
        return w.astype(np.float32)

    def act(self, name):
        if name not in self.values:
            if name in self.consts:
                raise self.error(f"input '{name}' is a constant where tinytrain expects an activation")
            raise self.error(f"input '{name}' is unknown")
        return self.values[name]

    def onnx_shape(self, name):
        tid, order = self.act(name)
        ir = self.graph.t(tid).shape
        shape = [0] * len(order)
        for k, a in enumerate(order):
            shape[a] = ir[k]
        return tuple(shape)

    def tensor(self, name, ir_shape):
        """A new activation tensor, refusing empty or oversized shapes."""
        if any(d <= 0 for d in ir_shape):
            raise self.error(f"output '{name}' would have shape {tuple(ir_shape)}")
        if float(np.prod(ir_shape, dtype=np.float64)) > MAX_ELEMENTS:
            raise self.error(f"output '{name}' would have shape {tuple(ir_shape)}, too large for a device model")
        return self.graph.add_tensor(name, ir_shape)

    def new_act(self, onnx_name, ir_shape, order, hint=None):
        t = self.tensor(hint or onnx_name, ir_shape)
        if onnx_name is not None:
            self.values[onnx_name] = (t.id, tuple(order))
        return t.id

    def alias(self, onnx_name, tid, order):
        self.values[onnx_name] = (tid, tuple(order))

    def emit(self, op, inputs, outputs, **attrs):
        n = self.node
        return self.graph.add_node(op, inputs, outputs, attrs, name=(n.name or n.output[0]) if n else "")

    def add_const(self, name, data):
        return self.graph.add_const(name, np.asarray(data, dtype=np.float32)).id

    def materialize(self, name, order, reshape_follows=False):
        """The IR tensor of ONNX value `name` in the given order (emitting a
        reshape when only size-1 axes move, a transpose otherwise).  With
        reshape_follows, a tensor whose bytes are already in that order is
        returned as it is (the caller reshapes it anyway)."""
        tid, cur = self.act(name)
        order = tuple(order)
        if cur == order:
            return tid
        shape = self.onnx_shape(name)
        new_shape = tuple(shape[a] for a in order)
        moved = [a for a in cur if shape[a] != 1]
        wanted = [a for a in order if shape[a] != 1]
        if moved == wanted and reshape_follows:
            return tid
        if moved == wanted:
            out = self.graph.add_tensor(f"{name}:reshape", new_shape).id
            self.emit("reshape", [tid], [out], shape=new_shape)
        else:
            if cur[0] != 0 or order[0] != 0:
                raise self.error(f"'{name}' would need the batch axis moved")
            perm = tuple(cur.index(a) for a in order)
            out = self.graph.add_tensor(f"{name}:transpose", new_shape).id
            self.emit("transpose", [tid], [out], perm=perm)
        self.values[name] = (out, order)     # later users reuse the materialized copy
        return out

    def attr(self, node, name, default=None):
        """An attribute's value, checked against the type ONNX gives it."""
        for a in node.attribute:
            if a.name == name:
                want = ATTR_TYPES.get(name)
                if want is not None and a.type != want:
                    raise self.error(f"attribute '{name}' should be {onnx.AttributeProto.AttributeType.Name(want)}, "
                                     f"is {onnx.AttributeProto.AttributeType.Name(a.type)}")
                return helper.get_attribute_value(a)
        return default

    def check_arity(self, node):
        """Inputs and outputs the op's schema requires (no IndexError later)."""
        try:
            schema = onnx.defs.get_schema(node.op_type, self.opset, node.domain or "")
        except Exception:
            return
        n_in = len(node.input)
        if n_in < schema.min_input or n_in > schema.max_input:
            raise self.error(f"has {n_in} inputs, the op takes {schema.min_input} to {schema.max_input}")
        for k, formal in enumerate(schema.inputs[:n_in]):
            if not node.input[k] and formal.option == onnx.defs.OpSchema.FormalParameterOption.Single:
                raise self.error(f"required input {k} ('{formal.name}') is empty")
        if len([o for o in node.output if o]) < max(schema.min_output, 1):
            raise self.error(f"has {len(node.output)} outputs, the op needs at least {max(schema.min_output, 1)}")

    # -- the walk ------------------------------------------------------------
    def run(self):
        g = self.model.graph
        base = self.path.parent
        for t in g.initializer:
            self.consts[t.name] = tensor_to_array(t, self.path, base)
        for sp in getattr(g, "sparse_initializer", []):
            raise TinytrainError(f"sparse initializer '{sp.values.name}' is not supported", file=self.path)
        inputs = [i for i in g.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise TinytrainError(f"the model has {len(inputs)} data inputs; tinytrain handles models with one",
                                 file=self.path)
        self._add_input(inputs[0])
        order = topo_sort(self.model, self.path, set(self.consts) | {inputs[0].name})
        from .onnx_ops import CONVERTERS
        for node in order:
            self.node = node
            if node.domain not in ("", "ai.onnx"):
                raise self.error(f"custom-domain op {node.domain}.{node.op_type} is not supported")
            known = node.op_type in CONVERTERS or node.op_type in FOLDABLE or node.op_type == "Constant"
            if not known:
                raise self.error(f"unsupported op {node.op_type}; supported: {', '.join(sorted(CONVERTERS))}")
            self.check_arity(node)
            if node.op_type == "Constant":
                self._constant(node)
            elif node.op_type == "Shape" and node.input[0] in self.values:
                self._fold(node, {node.input[0]: np.zeros(self.onnx_shape(node.input[0]), np.float32)})
            elif node.op_type in FOLDABLE and all((not i) or i in self.consts for i in node.input):
                self._fold(node)
            elif node.op_type in CONVERTERS:
                CONVERTERS[node.op_type](self, node)
            else:
                raise self.error(f"{node.op_type} is supported only on constants (it is folded at compile "
                                 "time); here it reads a run-time activation")
        self.node = None
        outs = []
        for o in g.output:
            if o.name in self.consts:
                raise TinytrainError(f"graph output '{o.name}' is a constant", file=self.path)
            tid = self.materialize(o.name, tuple(range(len(self.act(o.name)[1]))))
            outs.append(tid)
        self.graph.outputs = outs
        self.graph.meta.update(source=str(self.path), opset=self.opset, output_names=[o.name for o in g.output],
                               producer=f"{self.model.producer_name} {self.model.producer_version}".strip())
        self.graph.meta.setdefault("output_activation", None)
        self.graph.remove_unused()
        return self.graph

    def _add_input(self, vi):
        name = vi.name
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or tt.elem_type != onnx.TensorProto.FLOAT:
            raise TinytrainError(f"input '{name}' must be a float32 tensor", file=self.path, field=name)
        free_batch = None
        if self.input_shape is not None:
            shape = [int(d) for d in self.input_shape]
            if tt.HasField("shape") and len(tt.shape.dim) != len(shape):
                declared = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim]
                raise TinytrainError(f"--input-shape {shape} has {len(shape)} axes, input '{name}' has "
                                     f"{len(declared)} ({declared})", file=self.path, field="--input-shape")
        else:
            if not tt.HasField("shape"):
                raise TinytrainError(f"input '{name}' has no shape; pass --input-shape", file=self.path, field=name)
            shape = []
            for k, d in enumerate(tt.shape.dim):
                if d.HasField("dim_value") and d.dim_value > 0:
                    shape.append(int(d.dim_value))
                elif d.HasField("dim_value") and d.dim_value == 0:
                    raise TinytrainError(f"dimension {k} of input '{name}' is 0", file=self.path, field=name)
                elif k == 0:    # symbolic (or -1) batch: the device trains on one sample
                    shape.append(1)
                    free_batch = d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?")
                else:           # symbolic or -1 (some exporters' "any size")
                    what = str(d.dim_value) if d.HasField("dim_value") else f"symbolic ('{d.dim_param}')"
                    raise TinytrainError(f"dimension {k} of input '{name}' is {what}; pass --input-shape",
                                         file=self.path, field=name)
        if len(shape) < 2 or shape[0] != 1 or any(d <= 0 for d in shape):
            raise TinytrainError(f"input '{name}' shape {shape} is not [1, ...] with positive dims",
                                 file=self.path, field=name)
        if int(np.prod(shape, dtype=np.float64)) > MAX_ELEMENTS:
            raise TinytrainError(f"input '{name}' shape {shape} is too large", file=self.path, field=name)
        if free_batch is not None:
            import sys
            print(f"tinytrain: notice: {self.path}: input '{name}' has a free batch dimension ('{free_batch}'); "
                  "using batch 1 (the device trains on one sample at a time)", file=sys.stderr)
        order = channels_last(len(shape))
        t = self.graph.add_tensor(name, tuple(shape[a] for a in order), kind="input")
        self.graph.inputs = [t.id]
        self.values[name] = (t.id, order)
        self.graph.meta.update(input_name=name, input_shape=shape, input_order=list(order))
        # channels-last input (a TensorFlow export): every reader transposes it to channels-first
        to_first = {4: [0, 3, 1, 2], 3: [0, 2, 1]}.get(len(shape))
        users = [n for n in self.model.graph.node if name in n.input]
        if to_first and users and all(n.op_type == "Transpose" and list(self.attr(n, "perm", [])) == to_first
                                      for n in users):
            self.graph.meta["input_layout"] = {4: "nhwc", 3: "nwc"}[len(shape)]

    def _constant(self, node):
        a = node.attribute[0] if node.attribute else None
        if a is None:
            raise self.error("Constant without a value")
        if a.name == "value":
            val = tensor_to_array(a.t, self.path, what="constant")
        elif a.name in ("value_float", "value_int"):
            val = np.array(helper.get_attribute_value(a))
        elif a.name in ("value_floats", "value_ints"):
            val = np.array(list(helper.get_attribute_value(a)))
        else:
            raise self.error(f"Constant attribute '{a.name}' is not supported")
        self.consts[node.output[0]] = val

    def _fold(self, node, extra=None):
        feeds = {i: self.consts[i] for i in node.input if i in self.consts}
        feeds.update(extra or {})
        if node.op_type in ("ConstantOfShape", "Expand", "Tile", "Range"):
            self._guard_size(node, feeds)
        if node.op_type in BROADCASTING:
            try:
                shape = np.broadcast_shapes(*[np.shape(feeds[i]) for i in node.input if i])
            except ValueError:
                raise self.error("constant inputs do not broadcast") from None
            if float(np.prod(shape, dtype=np.float64)) > MAX_ELEMENTS:
                raise self.error(f"constant would have shape {list(shape)}, too large")
        if node.op_type == "DequantizeLinear":
            self.consts[node.output[0]] = self._dequantize(node, feeds)
            self._record_weight_qparams(node, feeds)
            return
        ins = [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(feeds[i].dtype), feeds[i].shape)
               for i in node.input if i]
        outs = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o]
        m = helper.make_model(helper.make_graph([node], "fold", ins, outs),
                              opset_imports=[helper.make_opsetid("", self.opset)])
        try:
            from onnx.reference import ReferenceEvaluator
            res = ReferenceEvaluator(m).run(None, {i: feeds[i] for i in node.input if i})
        except Exception as e:
            raise self.error(f"cannot evaluate constant node: {type(e).__name__}: {e}") from None
        for o, v in zip([o for o in node.output if o], res):
            self.consts[o] = np.asarray(v)

    def _dequantize(self, node, feeds):
        """DequantizeLinear of a constant (a QDQ model's weights and biases)."""
        x = np.asarray(feeds[node.input[0]])
        scale = np.asarray(feeds[node.input[1]], np.float32)
        zp = np.asarray(feeds[node.input[2]]) if len(node.input) > 2 and node.input[2] else np.zeros((), x.dtype)
        if self.attr(node, "block_size", 0):
            raise self.error("blocked quantization (block_size) is not supported")
        if scale.ndim == 1 and scale.shape[0] == 1:      # a per-tensor scale written as [1]
            scale, zp = scale.reshape(()), zp.reshape(()) if zp.size == 1 else zp
        if scale.ndim == 1 and x.ndim > 0:
            axis = int(self.attr(node, "axis", 1)) % x.ndim
            if scale.shape[0] != x.shape[axis]:
                raise self.error(f"scale of length {scale.shape[0]} for axis {axis} of {list(x.shape)}")
            shp = [1] * x.ndim
            shp[axis] = -1
            scale, zp = scale.reshape(shp), zp.reshape(shp) if zp.ndim == 1 else zp
        return ((x.astype(np.float64) - zp.astype(np.float64)) * scale).astype(np.float32)

    def _record_weight_qparams(self, node, feeds):
        x = feeds[node.input[0]]
        if x.dtype not in (np.int8, np.uint8) or x.ndim < 2:
            return
        scale = np.asarray(feeds[node.input[1]], np.float32)
        zp = np.asarray(feeds[node.input[2]]) if len(node.input) > 2 and node.input[2] else np.zeros_like(scale)
        axis = self.attr(node, "axis", 1)
        if np.any(zp != 0) or scale.ndim != 1 or scale.shape[0] != x.shape[axis % x.ndim]:
            return
        self.const_q[node.output[0]] = QParams(scale, np.zeros(scale.shape, np.int32), axis % x.ndim)

    def _guard_size(self, node, feeds):
        vals = [feeds.get(i) for i in node.input]
        n = None
        if node.op_type in ("ConstantOfShape", "Expand") and vals and vals[-1] is not None:
            n = float(np.prod(np.maximum(np.asarray(vals[-1], np.float64), 1)))
        if node.op_type == "Tile" and len(vals) == 2:
            n = float(np.asarray(vals[0]).size) * float(np.prod(np.asarray(vals[1], np.float64)))
        if node.op_type == "Range" and len(vals) == 3:
            if any(v is None or np.size(v) != 1 for v in vals):
                raise self.error("Range inputs must be scalars")
            s, l, d = (float(np.asarray(v).reshape(())) for v in vals)
            n = abs((l - s) / d) if d else float("inf")
        if n is not None and n > MAX_ELEMENTS:
            raise self.error(f"constant would have {n:.0f} elements, too large")


def import_onnx(path, input_shape=None) -> Graph:
    """Load an ONNX file into the float IR (NHWC, BatchNorm not yet folded)."""
    return Importer(path, input_shape).run()
