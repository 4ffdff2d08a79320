"""Pooling over H and W of NHWC tensors: avg_pool, max_pool, global_avg_pool.

avg_pool / global_avg_pool int8: acc = sum over the window of (x - x_zp)
(|acc| <= 255 * window, padding adds 0), then y = requantize_s8(acc,
mult[count], shift[count]) with mult[count] the fixed-point s_x / (s_y count);
count is the window size, or the number of valid taps when padding is
excluded (ONNX count_include_pad = 0), so the table has KH*KW + 1 entries.
max_pool works on the int8 values directly: its output keeps the input's
quantization parameters.
"""
import numpy as np
from numba import njit

from ..quant.fixedpoint import clamp_s32, quantize_multipliers, requantize_zp
from ..quant.qparams import clamp_range
from .base import Op, register
from .common import apply_act, conv_out_size, keep_mask


@njit(cache=True)
def _avg_pool_s8(x, out, mask, kh_n, kw_n, sh, sw, pt, pl, include_pad, in_zp, out_zp, mult, shift, act_min, act_max):
    n_b, h, wd, c_n = x.shape
    for n in range(n_b):
        for oh in range(out.shape[1]):
            for ow in range(out.shape[2]):
                for c in range(c_n):
                    acc = np.int32(0)
                    count = np.int32(0)
                    for kh in range(kh_n):
                        ih = oh * sh - pt + kh
                        if ih < 0 or ih >= h:
                            continue
                        for kw in range(kw_n):
                            iw = ow * sw - pl + kw
                            if iw < 0 or iw >= wd:
                                continue
                            acc += np.int32(x[n, ih, iw, c]) - np.int32(in_zp)
                            count += np.int32(1)
                    if include_pad:
                        count = np.int32(kh_n * kw_n)
                    v = requantize_zp(acc, mult[count], shift[count], out_zp)
                    mask[n, oh, ow, c] = np.uint8(act_min <= v <= act_max)
                    out[n, oh, ow, c] = np.int8(clamp_s32(v, act_min, act_max))


@njit(cache=True)
def _max_pool_s8(x, out, mask, kh_n, kw_n, sh, sw, pt, pl, dh, dw, act_min, act_max):
    n_b, h, wd, c_n = x.shape
    for n in range(n_b):
        for oh in range(out.shape[1]):
            for ow in range(out.shape[2]):
                for c in range(c_n):
                    m = np.int32(-128)
                    for kh in range(kh_n):
                        ih = oh * sh - pt + kh * dh
                        if ih < 0 or ih >= h:
                            continue
                        for kw in range(kw_n):
                            iw = ow * sw - pl + kw * dw
                            if iw < 0 or iw >= wd:
                                continue
                            v = np.int32(x[n, ih, iw, c])
                            if v > m:
                                m = v
                    mask[n, oh, ow, c] = np.uint8(act_min <= m <= act_max)
                    out[n, oh, ow, c] = np.int8(clamp_s32(m, act_min, act_max))


@njit(cache=True)
def _global_avg_pool_s8(x, out, mask, in_zp, out_zp, mult, shift, act_min, act_max):
    n_b, h, wd, c_n = x.shape
    for n in range(n_b):
        for c in range(c_n):
            acc = np.int32(0)
            for ih in range(h):
                for iw in range(wd):
                    acc += np.int32(x[n, ih, iw, c]) - np.int32(in_zp)
            v = requantize_zp(acc, mult, shift, out_zp)
            mask[n, 0, 0, c] = np.uint8(act_min <= v <= act_max)
            out[n, 0, 0, c] = np.int8(clamp_s32(v, act_min, act_max))


def _pool_shape(node, graph):
    x = graph.t(node.inputs[0]).shape
    a = node.attrs
    kh, kw = a["kernel"]
    pt, pl, pb, pr = a["pads"]
    dil = a.get("dilation", (1, 1))
    oh = conv_out_size(x[1], kh, a["stride"][0], pt, pb, dil[0])
    ow = conv_out_size(x[2], kw, a["stride"][1], pl, pr, dil[1])
    return (x[0], oh, ow, x[3])


def _windows(x, a, pad_value):
    """[N, OH, OW, C, KH*KW] float windows (for the float references)."""
    kh, kw = a["kernel"]
    pt, pl, pb, pr = a["pads"]
    dh, dw = a.get("dilation", (1, 1))
    sh, sw = a["stride"]
    n, h, w, c = x.shape
    xp = np.full((n, h + pt + pb, w + pl + pr, c), pad_value, np.float32)
    xp[:, pt:pt + h, pl:pl + w, :] = x
    oh = conv_out_size(h, kh, sh, pt, pb, dh)
    ow = conv_out_size(w, kw, sw, pl, pr, dw)
    taps = [xp[:, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw, :]
            for i in range(kh) for j in range(kw)]
    return np.stack(taps, axis=-1)


def _pool_window(self, node, graph):
    a = node.attrs
    return tuple(a["kernel"]), tuple(a["stride"]), tuple(a["pads"]), tuple(a.get("dilation", (1, 1)))


# C emitters.

def _pool_params(e, a):
    dil = a.get("dilation", (1, 1))
    return e.struct("tt_pool_params", (a["kernel"][0], a["kernel"][1], a["stride"][0], a["stride"][1],
                                       a["pads"][0], a["pads"][1], dil[0], dil[1], int(a.get("count_include_pad", 0))))


def _emit_avg_pool(self, node, g, e):
    a = node.attrs
    x, y = node.inputs[0], node.outputs[0]
    q = e.struct("tt_quant_params", (a["in_zp"], a["out_zp"], a["act_min"], a["act_max"]))
    e.line(f"tt_avg_pool_s8({_pool_params(e, a)}, {q}, {e.array('mult', a['mult'], 'int32_t')}, "
           f"{e.array('shift', a['shift'], 'int32_t')}, {e.dims(g.t(x).shape)}, {e.ptr(x)}, {e.dims(g.t(y).shape)}, "
           f"{e.ptr(y)}, {e.mask(node)});")


def _emit_max_pool(self, node, g, e):
    a = node.attrs
    x, y = node.inputs[0], node.outputs[0]
    q = e.struct("tt_quant_params", (0, 0, a["act_min"], a["act_max"]))
    e.line(f"tt_max_pool_s8({_pool_params(e, a)}, {q}, {e.dims(g.t(x).shape)}, {e.ptr(x)}, "
           f"{e.dims(g.t(y).shape)}, {e.ptr(y)}, {e.mask(node)});")


def _emit_global_avg_pool(self, node, g, e):
    a = node.attrs
    x, y = node.inputs[0], node.outputs[0]
    q = e.struct("tt_quant_params", (a["in_zp"], a["out_zp"], a["act_min"], a["act_max"]))
    e.line(f"tt_global_avg_pool_s8({q}, {a['mult']}, {a['shift']}, {e.dims(g.t(x).shape)}, {e.ptr(x)}, "
           f"{e.ptr(y)}, {e.mask(node)});")


def _emit_avg_pool_grad(self, node, g, e):
    a = node.attrs
    d, dx = node.inputs[0], node.outputs[0]
    e.line(f"tt_avg_pool_grad_f32({_pool_params(e, a)}, {e.dims(g.t(d).shape)}, {e.ptr(d)}, "
           f"{e.array('inv', a['inv_count'], 'float')}, {e.dims(g.t(dx).shape)}, {e.ptr(dx)});")


def _emit_max_pool_grad(self, node, g, e):
    a = node.attrs
    d, x, dx = node.inputs[0], node.inputs[1], node.outputs[0]
    e.line(f"tt_max_pool_grad_f32({_pool_params(e, a)}, {e.dims(g.t(d).shape)}, {e.ptr(d)}, {e.ptr(x)}, "
           f"{e.dims(g.t(dx).shape)}, {e.ptr(dx)});")


def _emit_global_avg_pool_grad(self, node, g, e):
    from ..cfmt import c_float
    d, dx = node.inputs[0], node.outputs[0]
    e.line(f"tt_global_avg_pool_grad_f32({e.dims(g.t(dx).shape)}, {e.ptr(d)}, {c_float(node.attrs['inv_hw'])}, "
           f"{e.ptr(dx)});")


def _pool_grad_attrs(node, graph, grad_op, k=0):
    x = graph.t(node.inputs[0])
    a = dict(node.attrs, x_shape=x.shape)
    for key in ("mult", "shift", "in_zp", "out_zp", "act_min", "act_max", "act", "keep_mask"):
        a.pop(key, None)
    if grad_op == "avg_pool_grad":
        kh, kw = node.attrs["kernel"]
        a["inv_count"] = np.array([0.0] + [1.0 / c for c in range(1, kh * kw + 1)], np.float32)
    if grad_op == "global_avg_pool_grad":
        a["inv_hw"] = float(np.float32(1.0 / (x.shape[1] * x.shape[2])))
    return a


@register
class AvgPool(Op):
    name = "avg_pool"
    emit_c = _emit_avg_pool
    fuses_activation = True
    windowed = True
    window = _pool_window
    uses_mask = True
    input_grads = {0: ("avg_pool_grad", ("dpre",))}
    grad_attrs = staticmethod(_pool_grad_attrs)

    def infer(self, node, graph):
        return [_pool_shape(node, graph)]

    def ref(self, node, graph, ins):
        a = node.attrs
        win = _windows(ins[0], a, np.nan)
        if a["count_include_pad"]:
            y = np.nansum(win, axis=-1) / np.float32(win.shape[-1])
        else:
            y = np.nanmean(win, axis=-1)
        return [apply_act(y.astype(np.float32), a.get("act"))]

    def quantize(self, node, graph):
        qx, qy = graph.t(node.inputs[0]).q, graph.t(node.outputs[0]).q
        kh, kw = node.attrs["kernel"]
        counts = np.arange(kh * kw + 1, dtype=np.float64)
        real = np.where(counts > 0, float(qx.scale) / (float(qy.scale) * np.maximum(counts, 1)), 0.0)
        mult, shift = quantize_multipliers(real)
        lo, hi = clamp_range(qy, node.attrs.get("act"))
        node.attrs.update(in_zp=int(qx.zero_point), out_zp=int(qy.zero_point), mult=mult, shift=shift,
                          act_min=lo, act_max=hi)

    def sim(self, node, graph, ins, masks=None):
        a = node.attrs
        x = ins[0]
        out = np.empty((x.shape[0],) + graph.t(node.outputs[0]).shape[1:], np.int8)
        _avg_pool_s8(x, out, keep_mask(masks, node, out.shape), a["kernel"][0], a["kernel"][1], a["stride"][0], a["stride"][1], a["pads"][0],
                     a["pads"][1], bool(a["count_include_pad"]), a["in_zp"], a["out_zp"], a["mult"], a["shift"],
                     a["act_min"], a["act_max"])
        return [out]


@register
class MaxPool(Op):
    name = "max_pool"
    emit_c = _emit_max_pool
    fuses_activation = True
    windowed = True
    window = _pool_window
    same_qparams = True
    uses_mask = True
    input_grads = {0: ("max_pool_grad", ("dpre", "in0"))}
    grad_attrs = staticmethod(_pool_grad_attrs)

    def infer(self, node, graph):
        return [_pool_shape(node, graph)]

    def ref(self, node, graph, ins):
        y = np.max(_windows(ins[0], node.attrs, -np.inf), axis=-1)
        return [apply_act(y.astype(np.float32), node.attrs.get("act"))]

    def quantize(self, node, graph):
        lo, hi = clamp_range(graph.t(node.outputs[0]).q, node.attrs.get("act"))
        node.attrs.update(act_min=lo, act_max=hi)

    def sim(self, node, graph, ins, masks=None):
        a = node.attrs
        x = ins[0]
        out = np.empty((x.shape[0],) + graph.t(node.outputs[0]).shape[1:], np.int8)
        dil = a.get("dilation", (1, 1))
        _max_pool_s8(x, out, keep_mask(masks, node, out.shape), a["kernel"][0], a["kernel"][1], a["stride"][0], a["stride"][1], a["pads"][0],
                     a["pads"][1], dil[0], dil[1], a["act_min"], a["act_max"])
        return [out]


@register
class GlobalAvgPool(Op):
    """Mean over H and W, keeping them as 1 x 1: [N, H, W, C] -> [N, 1, 1, C]."""
    name = "global_avg_pool"
    emit_c = _emit_global_avg_pool
    fuses_activation = True
    uses_mask = True
    input_grads = {0: ("global_avg_pool_grad", ("dpre",))}
    grad_attrs = staticmethod(_pool_grad_attrs)

    def infer(self, node, graph):
        x = graph.t(node.inputs[0]).shape
        return [(x[0], 1, 1, x[3])]

    def ref(self, node, graph, ins):
        y = ins[0].mean(axis=(1, 2), keepdims=True, dtype=np.float32)
        return [apply_act(y.astype(np.float32), node.attrs.get("act"))]

    def quantize(self, node, graph):
        x = graph.t(node.inputs[0])
        qx, qy = x.q, graph.t(node.outputs[0]).q
        hw = x.shape[1] * x.shape[2]
        mult, shift = quantize_multipliers([float(qx.scale) / (float(qy.scale) * hw)])
        lo, hi = clamp_range(qy, node.attrs.get("act"))
        node.attrs.update(in_zp=int(qx.zero_point), out_zp=int(qy.zero_point), mult=int(mult[0]),
                          shift=int(shift[0]), act_min=lo, act_max=hi)

    def sim(self, node, graph, ins, masks=None):
        a = node.attrs
        x = ins[0]
        out = np.empty((x.shape[0], 1, 1, x.shape[3]), np.int8)
        _global_avg_pool_s8(x, out, keep_mask(masks, node, out.shape), a["in_zp"], a["out_zp"], a["mult"], a["shift"], a["act_min"], a["act_max"])
        return [out]

    def macs(self, node, graph):
        return graph.t(node.inputs[0]).size


# Backward.

@njit(cache=True)
def _avg_pool_grad_f32(d, dx, kh_n, kw_n, sh, sw, pt, pl, include_pad, inv_count):
    """Each output's gradient times 1/count, scattered to its window (order n, oh, ow, c, kh, kw)."""
    n_b, h, wd, c_n = dx.shape
    dx[:] = np.float32(0.0)
    for n in range(n_b):
        for oh in range(d.shape[1]):
            for ow in range(d.shape[2]):
                for c in range(c_n):
                    count = 0
                    for kh in range(kh_n):
                        ih = oh * sh - pt + kh
                        for kw in range(kw_n):
                            iw = ow * sw - pl + kw
                            if 0 <= ih < h and 0 <= iw < wd:
                                count += 1
                    if include_pad:
                        count = kh_n * kw_n
                    g = d[n, oh, ow, c] * inv_count[count]
                    for kh in range(kh_n):
                        ih = oh * sh - pt + kh
                        if ih < 0 or ih >= h:
                            continue
                        for kw in range(kw_n):
                            iw = ow * sw - pl + kw
                            if iw < 0 or iw >= wd:
                                continue
                            dx[n, ih, iw, c] += g


@njit(cache=True)
def _max_pool_grad_f32(d, x, dx, kh_n, kw_n, sh, sw, pt, pl, dh, dw):
    """Each output's gradient goes to the first position holding the window's maximum."""
    n_b, h, wd, c_n = dx.shape
    dx[:] = np.float32(0.0)
    for n in range(n_b):
        for oh in range(d.shape[1]):
            for ow in range(d.shape[2]):
                for c in range(c_n):
                    best = -1000
                    bi, bj = -1, -1
                    for kh in range(kh_n):
                        ih = oh * sh - pt + kh * dh
                        if ih < 0 or ih >= h:
                            continue
                        for kw in range(kw_n):
                            iw = ow * sw - pl + kw * dw
                            if iw < 0 or iw >= wd:
                                continue
                            if np.int32(x[n, ih, iw, c]) > best:
                                best = np.int32(x[n, ih, iw, c])
                                bi, bj = ih, iw
                    if bi >= 0:
                        dx[n, bi, bj, c] += d[n, oh, ow, c]


@njit(cache=True)
def _global_avg_pool_grad_f32(d, dx, inv_hw):
    for n in range(dx.shape[0]):
        for i in range(dx.shape[1]):
            for j in range(dx.shape[2]):
                for c in range(dx.shape[3]):
                    dx[n, i, j, c] = d[n, 0, 0, c] * inv_hw


class _PoolGrad(Op):
    def infer(self, node, graph):
        return [tuple(node.attrs["x_shape"])]

    def _dx(self, node, d):
        return np.empty((d.shape[0],) + tuple(node.attrs["x_shape"][1:]), np.float32)


@register
class AvgPoolGrad(_PoolGrad):
    name = "avg_pool_grad"
    emit_c = _emit_avg_pool_grad

    def sim(self, node, graph, ins, masks=None):
        a = node.attrs
        dx = self._dx(node, ins[0])
        _avg_pool_grad_f32(ins[0], dx, a["kernel"][0], a["kernel"][1], a["stride"][0], a["stride"][1],
                           a["pads"][0], a["pads"][1], bool(a["count_include_pad"]), a["inv_count"])
        return [dx]


@register
class MaxPoolGrad(_PoolGrad):
    name = "max_pool_grad"
    emit_c = _emit_max_pool_grad

    def sim(self, node, graph, ins, masks=None):
        a = node.attrs
        dx = self._dx(node, ins[0])
        dil = a.get("dilation", (1, 1))
        _max_pool_grad_f32(ins[0], ins[1], dx, a["kernel"][0], a["kernel"][1], a["stride"][0], a["stride"][1],
                           a["pads"][0], a["pads"][1], dil[0], dil[1])
        return [dx]


@register
class GlobalAvgPoolGrad(_PoolGrad):
    name = "global_avg_pool_grad"
    emit_c = _emit_global_avg_pool_grad

    def sim(self, node, graph, ins, masks=None):
        dx = self._dx(node, ins[0])
        _global_avg_pool_grad_f32(ins[0], dx, np.float32(node.attrs["inv_hw"]))
        return [dx]
