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
from . import Op, register
from .conv import apply_act, conv_out_size, keep_mask


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


@register
class AvgPool(Op):
    name = "avg_pool"

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
    same_qparams = True

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
