"""add and mul of two activations (residual adds; squeeze-excite gating),
with numpy broadcasting (e.g. [N, H, W, C] * [N, 1, 1, C]).

add (TFLM's scheme): both inputs go to a common scale with 20 fraction bits,
    y = requantize_s8(requantize((x1 - z1) << 20, m1) + requantize((x2 - z2) << 20, m2), m_out)
    m1 = s1 / 2max, m2 = s2 / 2max, m_out = 2max / (2^20 s_y), max = max(s1, s2)
mul: y = requantize_s8((x1 - z1) * (x2 - z2), s1 s2 / s_y)   (|acc| <= 255^2)
"""
import numpy as np
from numba import njit

from ..quant.fixedpoint import add_zp, clamp_s32, quantize_multiplier, requantize_zp
from ..quant.qparams import clamp_range
from .base import Op, register
from .common import apply_act, keep_mask

ADD_LEFT_SHIFT = 20


@njit(cache=True)
def _add_s8(x1, z1, m1, s1, x2, z2, m2, s2, left_shift, mult, shift, zp, act_min, act_max, out, mask):
    for i in range(out.shape[0]):
        v = add_zp(x1[i], z1, m1, s1, x2[i], z2, m2, s2, left_shift, mult, shift, zp)
        mask[i] = np.uint8(act_min <= v <= act_max)
        out[i] = np.int8(clamp_s32(v, act_min, act_max))


@njit(cache=True)
def _mul_s8(x1, z1, x2, z2, mult, shift, zp, act_min, act_max, out, mask):
    for i in range(out.shape[0]):
        acc = (np.int32(x1[i]) - np.int32(z1)) * (np.int32(x2[i]) - np.int32(z2))
        v = requantize_zp(acc, mult, shift, zp)
        mask[i] = np.uint8(act_min <= v <= act_max)
        out[i] = np.int8(clamp_s32(v, act_min, act_max))


def _broadcast_pair(a, b):
    shape = np.broadcast_shapes(a.shape, b.shape)
    return (np.ascontiguousarray(np.broadcast_to(a, shape)).reshape(-1),
            np.ascontiguousarray(np.broadcast_to(b, shape)).reshape(-1), shape)


class _Binary(Op):
    def infer(self, node, graph):
        a, b = (graph.t(i).shape for i in node.inputs)
        return [tuple(np.broadcast_shapes(a, b))]

    def check(self, node, graph, fail):
        a, b = (graph.t(i) for i in node.inputs)
        if a.dtype != b.dtype:
            fail(f"n{node.id} {self.name}: input dtypes {a.dtype} / {b.dtype}")


# C emitters.

def _emit_add(self, node, g, e):
    a = node.attrs
    x1, x2, y = node.inputs[0], node.inputs[1], node.outputs[0]
    e.line(f"tt_add_s8({e.dims(g.t(y).shape)}, {e.dims(g.t(x1).shape)}, {e.ptr(x1)}, {a['z1']}, {a['m1']}, "
           f"{a['s1']}, {e.dims(g.t(x2).shape)}, {e.ptr(x2)}, {a['z2']}, {a['m2']}, {a['s2']}, {a['left_shift']}, "
           f"{a['mult']}, {a['shift']}, {a['out_zp']}, {a['act_min']}, {a['act_max']}, {e.ptr(y)}, {e.mask(node)});")


def _emit_mul(self, node, g, e):
    a = node.attrs
    x1, x2, y = node.inputs[0], node.inputs[1], node.outputs[0]
    e.line(f"tt_mul_s8({e.dims(g.t(y).shape)}, {e.dims(g.t(x1).shape)}, {e.ptr(x1)}, {a['z1']}, "
           f"{e.dims(g.t(x2).shape)}, {e.ptr(x2)}, {a['z2']}, {a['mult']}, {a['shift']}, {a['out_zp']}, "
           f"{a['act_min']}, {a['act_max']}, {e.ptr(y)}, {e.mask(node)});")


def _emit_mul_grad(self, node, g, e):
    from ..cfmt import c_float
    a = node.attrs
    d, other, y = node.inputs[0], node.inputs[1], node.outputs[0]
    e.line(f"tt_mul_grad_f32({e.dims(g.t(d).shape)}, {e.ptr(d)}, {e.dims(g.t(other).shape)}, {e.ptr(other)}, "
           f"{a['o_zp']}, {c_float(a['o_scale'])}, {e.dims(g.t(y).shape)}, {e.ptr(y)});")


def _add_grad_attrs(node, graph, grad_op, k):
    return dict(shape=graph.t(node.inputs[k]).shape)


@register
class Add(_Binary):
    name = "add"
    emit_c = _emit_add
    fuses_activation = True
    in_place = True
    pointwise = True          # on inputs of the output's shape (patch_prefix checks the shapes)
    uses_mask = True
    input_grads = {0: ("sum_to", ("dpre",)), 1: ("sum_to", ("dpre",))}
    grad_attrs = staticmethod(_add_grad_attrs)

    def ref(self, node, graph, ins):
        return [apply_act((ins[0] + ins[1]).astype(np.float32), node.attrs.get("act"))]

    def quantize(self, node, graph):
        q1, q2, qy = (graph.t(i).q for i in (*node.inputs, node.outputs[0]))
        s1, s2, sy = float(q1.scale), float(q2.scale), float(qy.scale)
        twice_max = 2.0 * max(s1, s2)
        m1, sh1 = quantize_multiplier(s1 / twice_max)
        m2, sh2 = quantize_multiplier(s2 / twice_max)
        m, sh = quantize_multiplier(twice_max / ((1 << ADD_LEFT_SHIFT) * sy))
        lo, hi = clamp_range(qy, node.attrs.get("act"))
        node.attrs.update(z1=int(q1.zero_point), m1=m1, s1=sh1, z2=int(q2.zero_point), m2=m2, s2=sh2,
                          left_shift=ADD_LEFT_SHIFT, mult=m, shift=sh, out_zp=int(qy.zero_point),
                          act_min=lo, act_max=hi)

    def sim(self, node, graph, ins, masks=None):
        a = node.attrs
        x1, x2, shape = _broadcast_pair(ins[0], ins[1])
        out = np.empty(x1.shape[0], np.int8)
        mask = keep_mask(masks, node, out.shape)
        _add_s8(x1, a["z1"], a["m1"], a["s1"], x2, a["z2"], a["m2"], a["s2"], a["left_shift"],
                a["mult"], a["shift"], a["out_zp"], a["act_min"], a["act_max"], out, mask)
        if masks is not None:
            masks[node.id] = mask.reshape(shape)
        return [out.reshape(shape)]


def _mul_grad_attrs(node, graph, grad_op, k):
    other = graph.t(node.inputs[1 - k])
    return dict(shape=graph.t(node.inputs[k]).shape, o_zp=int(other.q.zero_point), o_scale=float(other.q.scale))


@register
class Mul(_Binary):
    name = "mul"
    emit_c = _emit_mul
    fuses_activation = True
    in_place = True
    uses_mask = True
    input_grads = {0: ("mul_grad", ("dpre", "in1")), 1: ("mul_grad", ("dpre", "in0"))}
    grad_attrs = staticmethod(_mul_grad_attrs)

    def ref(self, node, graph, ins):
        return [apply_act((ins[0] * ins[1]).astype(np.float32), node.attrs.get("act"))]

    def quantize(self, node, graph):
        q1, q2, qy = (graph.t(i).q for i in (*node.inputs, node.outputs[0]))
        m, sh = quantize_multiplier(float(q1.scale) * float(q2.scale) / float(qy.scale))
        lo, hi = clamp_range(qy, node.attrs.get("act"))
        node.attrs.update(z1=int(q1.zero_point), z2=int(q2.zero_point), mult=m, shift=sh,
                          out_zp=int(qy.zero_point), act_min=lo, act_max=hi)

    def sim(self, node, graph, ins, masks=None):
        a = node.attrs
        x1, x2, shape = _broadcast_pair(ins[0], ins[1])
        out = np.empty(x1.shape[0], np.int8)
        mask = keep_mask(masks, node, out.shape)
        _mul_s8(x1, a["z1"], x2, a["z2"], a["mult"], a["shift"], a["out_zp"], a["act_min"], a["act_max"], out, mask)
        if masks is not None:
            masks[node.id] = mask.reshape(shape)
        return [out.reshape(shape)]

    def macs(self, node, graph):
        return int(np.prod(graph.t(node.outputs[0]).shape[1:]))


# Backward.  add: d(x1 + x2) passes dpre to both inputs (summed over broadcast
# axes); mul: d x1 = dpre * x2, d x2 = dpre * x1 (dequantized, summed likewise).

@njit(cache=True)
def _mul_grad_4d_f32(d, other, o_zp, o_scale, out):
    """out (shape of the input, broadcast to d) += d * s_o (other - o_zp), d in memory order."""
    out[:] = np.float32(0.0)
    for n in range(d.shape[0]):
        for h in range(d.shape[1]):
            for w in range(d.shape[2]):
                for c in range(d.shape[3]):
                    v = np.float32(np.int32(other[n if other.shape[0] > 1 else 0, h if other.shape[1] > 1 else 0,
                                                  w if other.shape[2] > 1 else 0, c if other.shape[3] > 1 else 0])
                                   - np.int32(o_zp)) * o_scale
                    out[n if out.shape[0] > 1 else 0, h if out.shape[1] > 1 else 0, w if out.shape[2] > 1 else 0,
                        c if out.shape[3] > 1 else 0] += d[n, h, w, c] * v


@register
class MulGrad(Op):
    name = "mul_grad"
    emit_c = _emit_mul_grad

    def infer(self, node, graph):
        return [tuple(node.attrs["shape"])]

    def sim(self, node, graph, ins, masks=None):
        from .train import to4d
        d, other = ins
        a = node.attrs
        shape = (d.shape[0],) + tuple(a["shape"][1:])      # activations always carry the batch
        out = np.empty(shape, np.float32)
        _mul_grad_4d_f32(to4d(np.ascontiguousarray(d)), to4d(np.ascontiguousarray(other)), a["o_zp"],
                         np.float32(a["o_scale"]), to4d(out))
        return [out]
