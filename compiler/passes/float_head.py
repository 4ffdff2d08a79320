"""float_head: keep the classifier in float32 for training (an option).

The last fully_connected layer, the one that produces the logits, becomes
`fully_connected_f32`: float weights and bias (the dequantized int8 ones), the
dequantized int8 input, float logits.  Its updates are plain float SGD, so
they never lose a step to rounding; TTE reports +2.3 points for this."""
import numpy as np

from ..errors import TinytrainError
from ..ops.linear import FullyConnected, FullyConnectedF32


def float_head(graph):
    g = graph.copy()
    logits = g.outputs[0]
    node = g.producer(logits)
    if node is None or node.op != FullyConnected.name:
        raise TinytrainError("a float classifier needs the logits to come from a linear layer",
                             node=None if node is None else node.name, op=None if node is None else node.op)
    w, b = g.t(node.inputs[1]), g.t(node.inputs[2])
    wf = g.add_const(f"{w.name}:f32", w.q.dequantize(w.data).astype(np.float32))
    bf = g.add_const(f"{b.name}:f32", b.q.dequantize(b.data).astype(np.float32))
    node.op = FullyConnectedF32.name
    node.inputs = (node.inputs[0], wf.id, bf.id)
    node.attrs = {}
    y = g.t(logits)
    y.dtype, y.q = "float32", None
    g.remove_unused()
    return g
