"""weight_headroom: room for trained int8 weights to grow.

Post-training quantization puts each channel's largest weight at +-127: an
update that wants to make it larger saturates, and a new task often does
(benchmarks/learning.md: +1.1 points on the sparse transfer with a headroom of
2, the "no weight headroom" row).  For every layer whose weights the scheme
trains, the weight scale is multiplied by `h`: w_q' = round(w_q / h), the
int32 bias (scale s_w s_x) likewise, and the requantization multipliers are
recomputed.  Frozen layers keep their full precision.
"""
import numpy as np

from ..errors import TinytrainError
from ..ir import QParams
from ..ops import get_op
from ..ops.common import Requant
from ..quant.fixedpoint import quantize_multipliers


def weight_headroom(graph, scheme, h=2.0):
    if h == 1.0:
        return graph
    if not h > 1.0:
        raise TinytrainError(f"weight headroom {h} must be >= 1", field="weight_headroom")
    g = graph.copy()
    for n in g.nodes:
        op = get_op(n.op)
        if n.id not in scheme.weights or not op.weighted or g.t(n.inputs[op.weight_input]).dtype != "int8":
            continue
        x, w, b, y = (g.t(i) for i in (n.inputs[0], n.inputs[op.weight_input], n.inputs[op.bias_input], n.outputs[0]))
        # the copied graph's tensors are new objects: new data and scales leave the input graph alone
        w.data = np.clip(np.round(w.data.astype(np.float64) / h), -127, 127).astype(np.int8)
        w.q = QParams(w.q.scale * np.float32(h), w.q.zero_point, w.q.axis)
        b.data = np.round(b.data.astype(np.float64) / h).astype(np.int32)
        b.q = QParams(b.q.scale * np.float32(h), b.q.zero_point, b.q.axis)
        mult, shift = quantize_multipliers(float(x.q.scale) * w.q.scale.astype(np.float64) / float(y.q.scale))
        n.attrs = dict(n.attrs)
        Requant.of(n).with_multipliers(mult, shift).store(n)
    return g
