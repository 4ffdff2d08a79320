"""The int8 simulator: runs the quantized IR with each op's integer-only numba
kernel (compiler/ops/*: `sim`).  Bit-exact with the C runtime by construction:
both use the same fixed-point helpers, mirrored function by function."""
import numpy as np

from ..compiler.errors import TinytrainError
from ..compiler.ops import get_op
from ..compiler.reference import to_ir_layout


def quantize_input(x_ir, q):
    """float32 -> int8 codes: clamp(floor(x / s + 0.5) + zp, -128, 127), in float32."""
    s = np.float32(q.scale)
    v = np.floor(np.asarray(x_ir, np.float32) / s + np.float32(0.5))
    return np.clip(v + np.float32(q.zero_point), -128, 127).astype(np.int8)


class Simulator:
    """Runs an int8 graph; with `nodes`, only those (the forward part of a training
    graph, with its current weights) and only the first output (the logits)."""

    def __init__(self, graph, nodes=None):
        if graph.t(graph.inputs[0]).dtype != "int8":
            raise TinytrainError("the simulator runs quantized graphs; quantize the model first")
        self.graph = graph
        self.nodes = graph.nodes if nodes is None else nodes
        self.outputs = graph.outputs if nodes is None else graph.outputs[:1]

    @property
    def input_q(self):
        return self.graph.t(self.graph.inputs[0]).q

    def quantize_input(self, x_onnx):
        x = np.asarray(x_onnx, np.float32)
        want = tuple(self.graph.meta["input_shape"][1:])
        if x.ndim != len(want) + 1 or tuple(x.shape[1:]) != want:
            raise TinytrainError(f"input has shape {list(x.shape)}, the model takes [N, {', '.join(map(str, want))}]",
                                 field="x")
        return quantize_input(to_ir_layout(self.graph, x), self.input_q)

    def run_int8(self, xq, keep=False, masks=None):
        """int8 forward.  keep=True also returns every activation; a dict `masks`
        receives the 1-bit clamp masks that training needs."""
        g = self.graph
        env = {g.inputs[0]: np.ascontiguousarray(xq, dtype=np.int8)}
        for node in self.nodes:
            ins = [env[i] if i in env else g.t(i).data for i in node.inputs]
            for o, v in zip(node.outputs, get_op(node.op).sim(node, g, ins, masks)):
                env[o] = v
        outs = [env[o] for o in self.outputs]
        return (outs, env) if keep else outs

    def run(self, x_onnx, batch=256):
        """Float input in ONNX layout -> dequantized float outputs (first output)."""
        x = np.asarray(x_onnx, np.float32)
        res = []
        for s in range(0, len(x), batch):
            out = self.run_int8(self.quantize_input(x[s:s + batch]))[0]
            q = self.graph.t(self.graph.outputs[0]).q
            res.append(out if q is None else q.dequantize(out))      # a float classifier gives float logits
        return np.concatenate(res)

    def predict(self, x_onnx, batch=256):
        return np.argmax(self.run(x_onnx, batch).reshape(len(x_onnx), -1), axis=1)
