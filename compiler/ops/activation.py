"""Elementwise activations that are not fused into a producer.

clamp:  ReLU / ReLU6 / Clip left standalone (the producer could not take it);
        int8: clamp to the quantized bounds, the output keeps the input's
        quantization parameters.
sigmoid, hard_sigmoid, hard_swish: int8 through a 256-entry table computed
        at compile time, table[q + 128] = quantize_y(f(dequantize_x(q))), so the
        device does one load per element and no float math.
"""
import numpy as np
from numba import njit

from ..quant.qparams import clamp_range
from .base import Op, get_op, register


@njit(cache=True)
def _lut_s8(x, table, out):
    for i in range(x.shape[0]):
        out[i] = table[np.int32(x[i]) + np.int32(128)]


@njit(cache=True)
def _clamp_s8(x, lo, hi, out, mask):
    for i in range(x.shape[0]):
        v = np.int32(x[i])
        mask[i] = np.uint8(lo <= v <= hi)
        if v < lo:
            v = np.int32(lo)
        if v > hi:
            v = np.int32(hi)
        out[i] = np.int8(v)


# C emitters.

def _emit_clamp(self, node, g, e):
    x, y = node.inputs[0], node.outputs[0]
    e.line(f"tt_clamp_s8({g.t(x).size}, {e.ptr(x)}, {node.attrs['act_min']}, {node.attrs['act_max']}, "
           f"{e.ptr(y)}, {e.mask(node)});")


def _emit_lut(self, node, g, e):
    x, y = node.inputs[0], node.outputs[0]
    e.line(f"tt_lut_s8({g.t(x).size}, {e.ptr(x)}, {e.array('lut', node.attrs['table'], 'int8_t')}, {e.ptr(y)});")


def _emit_lut_grad(self, node, g, e):
    d, x, dx = node.inputs[0], node.inputs[1], node.outputs[0]
    e.line(f"tt_lut_grad_f32({g.t(d).size}, {e.ptr(d)}, {e.ptr(x)}, {e.array('dlut', node.attrs['dtable'], 'float')}, "
           f"{e.ptr(dx)});")


class _Elementwise(Op):
    def infer(self, node, graph):
        return [graph.t(node.inputs[0]).shape]


@register
class Clamp(_Elementwise):
    name = "clamp"
    emit_c = _emit_clamp
    fuses_activation = True        # a clamp after a clamp: the two merge
    channelwise = True
    uses_mask = True               # backward: the mask does it all (dx = dpre)
    input_grads = {0: ("pass", ("dpre",))}
    in_place = True
    pointwise = True
    same_qparams = True

    def ref(self, node, graph, ins):
        lo, hi = node.attrs["act"]
        return [np.clip(ins[0], -np.inf if lo is None else lo, np.inf if hi is None else hi).astype(np.float32)]

    def quantize(self, node, graph):
        lo, hi = clamp_range(graph.t(node.outputs[0]).q, node.attrs["act"])
        node.attrs.update(act_min=lo, act_max=hi)

    def sim(self, node, graph, ins, masks=None):
        x = np.ascontiguousarray(ins[0])
        out = np.empty(x.size, np.int8)
        mask = np.empty(x.size, np.uint8)
        _clamp_s8(x.reshape(-1), node.attrs["act_min"], node.attrs["act_max"], out, mask)
        if masks is not None:
            masks[node.id] = mask.reshape(x.shape)
        return [out.reshape(x.shape)]


def _lut_grad_attrs(node, graph, grad_op, k=0):
    qx = graph.t(node.inputs[0]).q
    x = float(qx.scale) * (np.arange(-128, 128, dtype=np.float64) - int(qx.zero_point))
    return dict(dtable=get_op(node.op).df(x, node.attrs).astype(np.float32))


class _Lut(_Elementwise):
    """A table op declares f (float semantics) and df (its derivative): the int8 forward is
    table[q + 128] = quantize_y(f(dequantize_x(q))), the backward dx = dy * dtable[x] with
    dtable[q + 128] = df(dequantize_x(q)) (lut_grad): no C kernel of its own."""
    emit_c = _emit_lut
    in_place = True
    pointwise = True
    input_grads = {0: ("lut_grad", ("dy", "in0"))}
    grad_attrs = staticmethod(_lut_grad_attrs)

    def f(self, x, attrs):
        raise NotImplementedError

    @staticmethod
    def df(x, attrs):
        raise NotImplementedError

    def ref(self, node, graph, ins):
        return [self.f(ins[0].astype(np.float64), node.attrs).astype(np.float32)]

    def quantize(self, node, graph):
        qx, qy = graph.t(node.inputs[0]).q, graph.t(node.outputs[0]).q
        q = np.arange(-128, 128, dtype=np.float64)
        y = self.f(float(qx.scale) * (q - int(qx.zero_point)), node.attrs)
        yq = np.floor(y / float(qy.scale) + 0.5) + int(qy.zero_point)
        node.attrs["table"] = np.clip(yq, -128, 127).astype(np.int8)

    def sim(self, node, graph, ins, masks=None):
        x = np.ascontiguousarray(ins[0])
        out = np.empty(x.size, np.int8)
        _lut_s8(x.reshape(-1), node.attrs["table"], out)
        return [out.reshape(x.shape)]


@register
class Sigmoid(_Lut):
    name = "sigmoid"

    def f(self, x, attrs):
        return 1.0 / (1.0 + np.exp(-x))

    @staticmethod
    def df(x, a):
        s = 1.0 / (1.0 + np.exp(-x))
        return s * (1.0 - s)


@register
class HardSigmoid(_Lut):
    """max(0, min(1, alpha x + beta)); torch's Hardsigmoid is alpha = 1/6, beta = 1/2."""
    name = "hard_sigmoid"

    def f(self, x, attrs):
        return np.clip(attrs["alpha"] * x + attrs["beta"], 0.0, 1.0)

    @staticmethod
    def df(x, a):
        return np.where((a["alpha"] * x + a["beta"] > 0) & (a["alpha"] * x + a["beta"] < 1), a["alpha"], 0.0)


@register
class HardSwish(_Lut):
    """x * hard_sigmoid(x) with alpha = 1/6, beta = 1/2."""
    name = "hard_swish"

    def f(self, x, attrs):
        return x * np.clip(x / 6.0 + 0.5, 0.0, 1.0)

    @staticmethod
    def df(x, a):
        return np.where(x < -3, 0.0, np.where(x > 3, 1.0, (2.0 * x + 3.0) / 6.0))


@register
class LeakyRelu(_Lut):
    """x for x >= 0, alpha x below (ONNX LeakyRelu, alpha 0.01 by default).  The derivative
    at 0 is alpha, as torch takes it."""
    name = "leaky_relu"

    def f(self, x, attrs):
        return np.where(x >= 0, x, attrs["alpha"] * x)

    @staticmethod
    def df(x, a):
        return np.where(x > 0, 1.0, a["alpha"])


# Backward of the table ops: a second, float32 table of f'(dequantize(q)) built at
# compile time, dx = dy * dtable[x].

@njit(cache=True)
def _lut_grad_f32(dy, x, dtable, dx):
    for i in range(dx.shape[0]):
        dx[i] = dy[i] * dtable[np.int32(x[i]) + np.int32(128)]


@register
class LutGrad(Op):
    name = "lut_grad"
    emit_c = _emit_lut_grad
    in_place = True

    def infer(self, node, graph):
        return [graph.t(node.inputs[0]).shape]

    def sim(self, node, graph, ins, masks=None):
        dy = np.ascontiguousarray(ins[0], np.float32)
        dx = np.empty(dy.size, np.float32)
        _lut_grad_f32(dy.reshape(-1), np.ascontiguousarray(ins[1]).reshape(-1), node.attrs["dtable"], dx)
        return [dx.reshape(dy.shape)]
