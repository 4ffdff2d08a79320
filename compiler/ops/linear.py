"""fully_connected: y[N, M] = x[N, K] . w[M, K]^T + b (Gemm, MatMul + Add).

int8 reference: acc = b[m] + sum_k (x - x_zp) * w[m, k]  (int32, same bound as
conv2d), y = requantize_s8(acc, mult[m], shift[m], y_zp, act_min, act_max).
"""
import numpy as np
from numba import njit

from ..quant.fixedpoint import clamp_s32, requantize_zp
from .base import Op, register
from .common import Requant, apply_act, keep_mask, quantize_weighted


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


# C emitters.

def _emit_fc(self, node, g, e):
    a = node.attrs
    x, w, b, y = node.inputs[0], node.inputs[1], node.inputs[2], node.outputs[0]
    m, k = g.t(w).shape
    q = e.struct("tt_quant_params", (a["in_zp"], a["out_zp"], a["act_min"], a["act_max"]))
    e.line(f"tt_fully_connected_s8({q}, {e.array('mult', a['mult'], 'int32_t')}, "
           f"{e.array('shift', a['shift'], 'int32_t')}, 1, {k}, {m}, {e.ptr(x)}, {e.ptr(w)}, {e.ptr(b)}, "
           f"{e.ptr(y)}, {e.mask(node)});")


def _emit_fc_f32(self, node, g, e):
    from ..cfmt import c_float
    x, w, b, y = node.inputs[0], node.inputs[1], node.inputs[2], node.outputs[0]
    m, k = g.t(w).shape
    q = g.t(x).q
    e.line(f"tt_fully_connected_f32(1, {k}, {m}, {e.ptr(x)}, {int(q.zero_point)}, {c_float(q.scale)}, "
           f"{e.ptr(w)}, {e.ptr(b)}, {e.ptr(y)});")


def _emit_fc_grad_input(self, node, g, e):
    d, w, dx = node.inputs[0], node.inputs[1], node.outputs[0]
    m, k = g.t(w).shape
    e.line(f"tt_fc_grad_input_f32(1, {k}, {m}, {e.ptr(d)}, {e.ptr(w)}, "
           f"{e.array('ws', node.attrs['w_scale'], 'float')}, {e.ptr(dx)});")


def _emit_fc_grad_weight(self, node, g, e):
    from ..cfmt import c_float
    a = node.attrs
    d, x, dw = node.inputs[0], node.inputs[1], node.outputs[0]
    k = g.t(x).shape[1]
    m, k_n = a["dw_shape"]
    e.line(f"tt_fc_grad_weight_f32(1, {k}, {m}, {k_n}, {e.ptr(d)}, {e.ptr(x)}, {a['x_zp']}, "
           f"{c_float(a['x_scale'])}, {e.ptr(dw)});")


def _emit_fc_f32_grad_input(self, node, g, e):
    d, w, dx = node.inputs[0], node.inputs[1], node.outputs[0]
    m, k = g.t(w).shape
    e.line(f"tt_fc_f32_grad_input(1, {k}, {m}, {e.ptr(d)}, {e.ptr(w)}, {e.ptr(dx)});")


def _fc_grad_attrs(node, graph, grad_op, k, ratio=1.0):
    x, w = graph.t(node.inputs[0]), graph.t(node.inputs[1])
    if grad_op == "fully_connected_grad_input":
        return dict(x_shape=x.shape, w_scale=w.q.scale.astype(np.float32))
    if grad_op == "fully_connected_grad_weight":
        return dict(x_zp=int(x.q.zero_point), x_scale=float(x.q.scale),
                    dw_shape=(w.shape[0], max(1, int(np.ceil(w.shape[1] * ratio)))))
    return {}


@register
class FullyConnected(Op):
    name = "fully_connected"
    emit_c = _emit_fc
    fuses_activation = True
    weight_input, bias_input = 1, 2
    uses_mask = True
    input_grads = {0: ("fully_connected_grad_input", ("dpre", "in1"))}
    param_grads = {1: ("fully_connected_grad_weight", ("dpre", "in0")), 2: ("bias_grad", ("dpre",))}
    grad_attrs = staticmethod(_fc_grad_attrs)

    def update_shape(self, node, graph, ratio):
        """The part of the weight a sparse update trains: the first input columns."""
        w = graph.t(node.inputs[1]).shape
        return (w[0], max(1, int(np.ceil(w[1] * ratio))))

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
        x = ins[0]
        out = np.empty((x.shape[0], graph.t(node.outputs[0]).shape[1]), np.int8)
        mask = keep_mask(masks, node, out.shape)
        r = Requant.of(node)
        _fully_connected_s8(x, graph.t(node.inputs[1]).data, graph.t(node.inputs[2]).data, out, mask,
                            r.in_zp, r.out_zp, r.mult, r.shift, r.act_min, r.act_max)
        return [out]

    def macs(self, node, graph):
        w = graph.t(node.inputs[1]).shape
        return int(w[0] * w[1])


# Backward (see conv.py for the conventions).

@njit(cache=True)
def _fc_grad_input_f32(dpre, w, w_scale, dx):
    """dx[n, k] = sum_m (dpre[n, m] * s_w[m]) * w[m, k], m ascending."""
    for n in range(dx.shape[0]):
        for k in range(dx.shape[1]):
            acc = np.float32(0.0)
            for m in range(w.shape[0]):
                acc += (dpre[n, m] * w_scale[m]) * np.float32(w[m, k])
            dx[n, k] = acc


@njit(cache=True)
def _fc_grad_weight_f32(dpre, x, x_zp, x_scale, dwt):
    """dwt[m, k] = s_x * sum_n dpre[n, m] * (x[n, k] - x_zp), first dwt.shape[1] inputs."""
    for m in range(dwt.shape[0]):
        for k in range(dwt.shape[1]):
            acc = np.float32(0.0)
            for n in range(x.shape[0]):
                acc += dpre[n, m] * np.float32(np.int32(x[n, k]) - np.int32(x_zp))
            dwt[m, k] = acc * x_scale


@register
class FcGradInput(Op):
    name = "fully_connected_grad_input"
    emit_c = _emit_fc_grad_input

    def infer(self, node, graph):
        return [tuple(node.attrs["x_shape"])]

    def sim(self, node, graph, ins, masks=None):
        dpre, w = ins[0], graph.t(node.inputs[1]).data
        dx = np.empty((dpre.shape[0], node.attrs["x_shape"][1]), np.float32)
        _fc_grad_input_f32(dpre, w, node.attrs["w_scale"], dx)
        return [dx]

    def macs(self, node, graph):
        w = graph.t(node.inputs[1]).shape
        return int(w[0] * w[1])


@register
class FcGradWeight(Op):
    name = "fully_connected_grad_weight"
    emit_c = _emit_fc_grad_weight

    def infer(self, node, graph):
        return [tuple(node.attrs["dw_shape"])]

    def sim(self, node, graph, ins, masks=None):
        a = node.attrs
        dwt = np.empty(tuple(a["dw_shape"]), np.float32)
        _fc_grad_weight_f32(ins[0], ins[1], a["x_zp"], np.float32(a["x_scale"]), dwt)
        return [dwt]

    def macs(self, node, graph):
        return int(np.prod(node.attrs["dw_shape"]))


# The float32 classifier option (TTE reports +2.3 points for a float head):
# the last layer keeps float weights; its input is the dequantized int8 tensor.

@njit(cache=True)
def _fully_connected_f32(x, x_zp, x_scale, w, b, out):
    """out[n, m] = sum_k (s_x (x[n, k] - x_zp)) * w[m, k] + b[m], k ascending."""
    for n in range(x.shape[0]):
        for m in range(w.shape[0]):
            acc = np.float32(0.0)
            for k in range(w.shape[1]):
                acc += (np.float32(np.int32(x[n, k]) - np.int32(x_zp)) * x_scale) * w[m, k]
            out[n, m] = acc + b[m]


@njit(cache=True)
def _fc_f32_grad_input(dy, w, dx):
    """dx[n, k] = sum_m dy[n, m] * w[m, k], m ascending."""
    for n in range(dx.shape[0]):
        for k in range(dx.shape[1]):
            acc = np.float32(0.0)
            for m in range(w.shape[0]):
                acc += dy[n, m] * w[m, k]
            dx[n, k] = acc


@register
class FullyConnectedF32(Op):
    name = "fully_connected_f32"
    weight_input, bias_input = 1, 2       # float32 parameters (passes for int8 weights check the dtype)
    emit_c = _emit_fc_f32
    uses_mask = False
    input_grads = {0: ("fully_connected_f32_grad_input", ("dy", "in1"))}
    param_grads = {1: ("fully_connected_grad_weight", ("dy", "in0")), 2: ("bias_grad", ("dy",))}

    def infer(self, node, graph):
        return [(graph.t(node.inputs[0]).shape[0], graph.t(node.inputs[1]).shape[0])]

    def ref(self, node, graph, ins):
        w, b = graph.t(node.inputs[1]).data, graph.t(node.inputs[2]).data
        return [(ins[0].astype(np.float32) @ w.T + b).astype(np.float32)]

    def sim(self, node, graph, ins, masks=None):
        x = graph.t(node.inputs[0])
        out = np.empty((ins[0].shape[0], graph.t(node.inputs[1]).shape[0]), np.float32)
        _fully_connected_f32(ins[0], int(x.q.zero_point), np.float32(x.q.scale), graph.t(node.inputs[1]).data,
                             graph.t(node.inputs[2]).data, out)
        return [out]

    def macs(self, node, graph):
        w = graph.t(node.inputs[1]).shape
        return int(w[0] * w[1])

    @staticmethod
    def grad_attrs(node, graph, grad_op, k, ratio=1.0):
        if grad_op == "fully_connected_f32_grad_input":
            return dict(x_shape=graph.t(node.inputs[0]).shape)
        return _fc_grad_attrs(node, graph, grad_op, k, ratio)


@register
class FcF32GradInput(Op):
    name = "fully_connected_f32_grad_input"
    emit_c = _emit_fc_f32_grad_input

    def infer(self, node, graph):
        return [tuple(node.attrs["x_shape"])]

    def sim(self, node, graph, ins, masks=None):
        dx = np.empty((ins[0].shape[0], node.attrs["x_shape"][1]), np.float32)
        _fc_f32_grad_input(ins[0], graph.t(node.inputs[1]).data, dx)
        return [dx]
