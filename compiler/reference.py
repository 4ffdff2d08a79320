"""Float execution of an IR graph (numpy, float32): each op's `ref`.

Used to calibrate activation ranges, to check the import against onnxruntime,
and as the float side of the per-layer quantization error report."""
import numpy as np

from .ops import get_op


def to_ir_layout(graph, x):
    """Host data in the ONNX input layout (any batch) -> the IR input layout."""
    order = graph.meta.get("input_order")
    x = np.asarray(x, dtype=np.float32)
    return np.ascontiguousarray(np.transpose(x, order)) if order else x


def run_float(graph, x_onnx, keep=False):
    """Run the graph on a batch in ONNX layout.  Returns the outputs (a list),
    and with keep=True also {tensor id: value} for every activation."""
    env = {graph.inputs[0]: to_ir_layout(graph, x_onnx)}
    for node in graph.nodes:
        ins = [env[i] if i in env else graph.t(i).data for i in node.inputs]
        for o, v in zip(node.outputs, get_op(node.op).ref(node, graph, ins)):
            env[o] = v
    outs = [env[o] for o in graph.outputs]
    return (outs, env) if keep else outs
