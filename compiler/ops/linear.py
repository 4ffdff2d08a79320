"""fully_connected: y[N, M] = x[N, K] . w[M, K]^T + b (Gemm, MatMul + Add).

int8 reference: acc = b[m] + sum_k (x - x_zp) * w[m, k]  (int32, same bound as
conv2d), y = requantize_s8(acc, mult[m], shift[m], y_zp, act_min, act_max).
"""
import numpy as np
from numba import njit

from ..quant.fixedpoint import clamp_s32, requantize_zp
from . import Op, register
from .conv import apply_act, keep_mask, quantize_weighted


@njit(cache=True)
def _fully_connected_s8(x, w, b, out, mask, in_zp, out_zp, mult, shift, act_min, act_max):
    n_b, k_n = x.shape
    m_n = w.shape[0]
    for n in range(n_b):
        for m in range(m_n):
            acc = np.int32(b[m])
            for k in range(k_n):
                acc += (np.int32(x[n, k]) - np.int32(in_zp)) * np.int32(w[m, k])
            v = requantize_zp(acc, mult[m], shift[m], out_zp)
            mask[n, m] = np.uint8(act_min <= v <= act_max)
            out[n, m] = np.int8(clamp_s32(v, act_min, act_max))


@register
class FullyConnected(Op):
    name = "fully_connected"

    def infer(self, node, graph):
        x = graph.t(node.inputs[0]).shape
        w = graph.t(node.inputs[1]).shape
        return [(x[0], w[0])]

    def check(self, node, graph, fail):
        x, w, b = (graph.t(i) for i in node.inputs)
        if len(x.shape) != 2 or len(w.shape) != 2 or x.shape[1] != w.shape[1] or b.shape != (w.shape[0],):
            fail(f"n{node.id} fully_connected: x {x.shape}, w {w.shape}, b {b.shape}")
        if x.dtype == "int8" and (w.dtype != "int8" or b.dtype != "int32" or "mult" not in node.attrs):
            fail(f"n{node.id} fully_connected: int8 input needs int8 weights, int32 bias and multipliers")

    def ref(self, node, graph, ins):
        w = graph.t(node.inputs[1])
        b = graph.t(node.inputs[2])
        wf = w.q.dequantize(w.data) if w.dtype == "int8" else w.data
        bf = b.q.dequantize(b.data) if b.dtype == "int32" else b.data
        y = (ins[0].astype(np.float32) @ wf.T + bf).astype(np.float32)
        return [apply_act(y, node.attrs.get("act"))]

    def quantize(self, node, graph):
        quantize_weighted(node, graph, k=graph.t(node.inputs[1]).shape[1])

    def sim(self, node, graph, ins, masks=None):
        a = node.attrs
        x = ins[0]
        out = np.empty((x.shape[0], graph.t(node.outputs[0]).shape[1]), np.int8)
        mask = keep_mask(masks, node, out.shape)
        _fully_connected_s8(x, graph.t(node.inputs[1]).data, graph.t(node.inputs[2]).data, out, mask,
                            a["in_zp"], a["out_zp"], a["mult"], a["shift"], a["act_min"], a["act_max"])
        return [out]

    def macs(self, node, graph):
        w = graph.t(node.inputs[1]).shape
        return int(w[0] * w[1])
