"""conv2d: regular, depthwise and grouped 2-D convolution (1-D as H = 1).

Layouts: x [N, H, W, Cin] int8, w [Cout, KH, KW, Cin/groups] int8 (per output
channel scales), b [Cout] int32, y [N, OH, OW, Cout] int8.

int8 reference, for each output element:
    acc = b[co] + sum_{kh, kw, ci} (x - x_zp) * w      (int32; padding adds 0)
    y   = requantize_s8(acc, mult[co], shift[co], y_zp, act_min, act_max)
with mult/shift the fixed-point form of s_x * s_w[co] / s_y.
No overflow: |x - x_zp| <= 255 and |w| <= 127, so with K = KH*KW*Cin/groups
|acc| <= K * 32385 + |b|; quantize() refuses graphs where K * 32512 + |b| reaches 2^31
(32512 = 256 * 127 also bounds the C pointwise kernel's sum x w - zp sum w).
"""
import numpy as np
from numba import njit

from ..quant.fixedpoint import clamp_s32, requantize_zp
from .base import Op, register
from .common import apply_act, conv_out_size, keep_mask, quantize_weighted  # noqa: F401  (conv_out_size: importers)
from .common import Requant
from .common import conv_params as _conv_params


@njit(cache=True)
def _depthwise_conv2d_s8(x, w, b, out, mask, sh, sw, pt, pl, dh, dw, in_zp, out_zp, mult, shift, act_min, act_max):
    """groups == channels, one output per channel: the inner loop runs over
    contiguous channels.  Integer sums, so the same result as _conv2d_s8."""
    n_b, h, wd, c_n = x.shape
    kh_n, kw_n = w.shape[1], w.shape[2]
    acc = np.empty(c_n, np.int32)
    for n in range(n_b):
        for oh in range(out.shape[1]):
            for ow in range(out.shape[2]):
                for c in range(c_n):
                    acc[c] = b[c]
                for kh in range(kh_n):
                    ih = oh * sh - pt + kh * dh
                    if ih < 0 or ih >= h:
                        continue
                    for kw in range(kw_n):
                        iw = ow * sw - pl + kw * dw
                        if iw < 0 or iw >= wd:
                            continue
                        for c in range(c_n):
                            acc[c] += (np.int32(x[n, ih, iw, c]) - np.int32(in_zp)) * np.int32(w[c, kh, kw, 0])
                for c in range(c_n):
                    v = requantize_zp(acc[c], mult[c], shift[c], out_zp)
                    mask[n, oh, ow, c] = np.uint8(act_min <= v <= act_max)
                    out[n, oh, ow, c] = np.int8(clamp_s32(v, act_min, act_max))


@njit(cache=True)
def _tap_range(start, dil, k_n, size):
    """The kernel taps k in [k0, k1) with 0 <= start + k * dil < size."""
    a, b = 0, k_n
    while a < b and start + a * dil < 0:
        a += 1
    while b > a and start + (b - 1) * dil >= size:
        b -= 1
    return a, b


@njit(cache=True)
def _conv2d_s8(x, w, b, out, mask, sh, sw, pt, pl, dh, dw, groups, in_zp, out_zp, mult, shift, act_min, act_max):
    """Integer sums are exact, so the loop nest is free: per output pixel the valid taps only
    (no per-tap test), four output channels sharing each input value."""
    n_b, h, wd, c_in = x.shape
    co_n, kh_n, kw_n, cg = w.shape
    oh_n, ow_n = out.shape[1], out.shape[2]
    cog = co_n // groups
    # x - x_zp and w widened once, so the inner loop is a plain int32 dot product
    xs = np.empty((h, wd, c_in), np.int32)
    w32 = w.astype(np.int32)
    acc = np.empty(co_n, np.int32)
    for n in range(n_b):
        for i in range(h):
            for j in range(wd):
                for c in range(c_in):
                    xs[i, j, c] = np.int32(x[n, i, j, c]) - np.int32(in_zp)
        for oh in range(oh_n):
            h0 = oh * sh - pt
            kh0, kh1 = _tap_range(h0, dh, kh_n, h)
            for ow in range(ow_n):
                w0 = ow * sw - pl
                kw0, kw1 = _tap_range(w0, dw, kw_n, wd)
                for co in range(co_n):
                    acc[co] = b[co]
                for g in range(groups):
                    c0 = g * cg
                    co = g * cog
                    while co < (g + 1) * cog:
                        four = co + 4 <= (g + 1) * cog
                        a0 = acc[co]
                        a1 = acc[co + 1] if four else np.int32(0)
                        a2 = acc[co + 2] if four else np.int32(0)
                        a3 = acc[co + 3] if four else np.int32(0)
                        for kh in range(kh0, kh1):
                            ih = h0 + kh * dh
                            for kw in range(kw0, kw1):
                                iw = w0 + kw * dw
                                if four:
                                    for ci in range(cg):
                                        xv = xs[ih, iw, c0 + ci]
                                        a0 += xv * w32[co, kh, kw, ci]
                                        a1 += xv * w32[co + 1, kh, kw, ci]
                                        a2 += xv * w32[co + 2, kh, kw, ci]
                                        a3 += xv * w32[co + 3, kh, kw, ci]
                                else:
                                    for ci in range(cg):
                                        a0 += xs[ih, iw, c0 + ci] * w32[co, kh, kw, ci]
                        acc[co] = a0
                        if four:
                            acc[co + 1] = a1
                            acc[co + 2] = a2
                            acc[co + 3] = a3
                            co += 4
                        else:
                            co += 1
                for co in range(co_n):
                    v = requantize_zp(acc[co], mult[co], shift[co], out_zp)
                    mask[n, oh, ow, co] = np.uint8(act_min <= v <= act_max)
                    out[n, oh, ow, co] = np.int8(clamp_s32(v, act_min, act_max))


def conv2d_float(x, w, b, stride, pads, dil, groups):
    """Float reference in NHWC (numpy, float32)."""
    n, h, wd, c = x.shape
    co, kh, kw, cg = w.shape
    pt, pl, pb, pr = pads
    oh = conv_out_size(h, kh, stride[0], pt, pb, dil[0])
    ow = conv_out_size(wd, kw, stride[1], pl, pr, dil[1])
    xp = np.zeros((n, h + pt + pb, wd + pl + pr, c), np.float32)
    xp[:, pt:pt + h, pl:pl + wd, :] = x
    cog = co // groups
    wg = w.reshape(groups, cog, kh, kw, cg)
    out = np.zeros((n, oh, ow, groups, cog), np.float32)
    for i in range(kh):
        for j in range(kw):
            hs, ws = i * dil[0], j * dil[1]
            patch = xp[:, hs:hs + stride[0] * (oh - 1) + 1:stride[0], ws:ws + stride[1] * (ow - 1) + 1:stride[1], :]
            patch = patch.reshape(n, oh, ow, groups, cg)
            out += np.einsum("nhwgc,goc->nhwgo", patch, wg[:, :, i, j, :], optimize=True)
    return (out.reshape(n, oh, ow, co) + b.astype(np.float32)).astype(np.float32)


# C emitters (compiler/codegen/emit_c.py gives the helpers).

def _emit_conv2d(self, node, g, e):
    a = node.attrs
    x, w, b, y = node.inputs[0], node.inputs[1], node.inputs[2], node.outputs[0]
    q = e.struct("tt_quant_params", (a["in_zp"], a["out_zp"], a["act_min"], a["act_max"]))
    e.line(f"tt_conv2d_s8({_conv_params(e, a)}, {q}, {e.array('mult', a['mult'], 'int32_t')}, "
           f"{e.array('shift', a['shift'], 'int32_t')}, {e.dims(g.t(x).shape)}, {e.ptr(x)}, "
           f"{e.dims(g.t(w).shape)}, {e.ptr(w)}, {e.ptr(b)}, {e.dims(g.t(y).shape)}, {e.ptr(y)}, {e.mask(node)});")


def _emit_conv2d_grad_input(self, node, g, e):
    a = node.attrs
    d, w, dx = node.inputs[0], node.inputs[1], node.outputs[0]
    e.line(f"tt_conv2d_grad_input_f32({_conv_params(e, a)}, {e.dims(g.t(d).shape)}, {e.ptr(d)}, "
           f"{e.dims(g.t(w).shape)}, {e.ptr(w)}, {e.array('ws', a['w_scale'], 'float')}, "
           f"{e.dims(g.t(dx).shape)}, {e.ptr(dx)});")


def _emit_conv2d_grad_weight(self, node, g, e):
    from ..cfmt import c_float
    a = node.attrs
    d, x, dw = node.inputs[0], node.inputs[1], node.outputs[0]
    dp = e.ptr(d) if not a.get("co_offset") else f"{e.ptr(d)} + {a['co_offset']}"   # rows from co_offset on
    e.line(f"tt_conv2d_grad_weight_f32({_conv_params(e, a)}, {e.dims(g.t(d).shape)}, {dp}, "
           f"{e.dims(g.t(x).shape)}, {e.ptr(x)}, {a['x_zp']}, {c_float(a['x_scale'])}, "
           f"{e.dims(a['dw_shape'])}, {e.ptr(dw)});")


def _emit_bias_grad(self, node, g, e):
    d = g.t(node.inputs[0])
    e.line(f"tt_bias_grad_f32({d.size // d.shape[-1]}, {d.shape[-1]}, {e.ptr(d.id)}, {e.ptr(node.outputs[0])});")


def _conv_grad_attrs(node, graph, grad_op, k, ratio=1.0):
    a = node.attrs
    x, w = graph.t(node.inputs[0]), graph.t(node.inputs[1])
    base = dict(stride=a["stride"], pads=a["pads"], dilation=a["dilation"], groups=a["groups"])
    if grad_op == "conv2d_grad_input":
        return dict(base, x_shape=x.shape, w_scale=w.q.scale.astype(np.float32))
    if grad_op == "conv2d_grad_weight":
        dw_shape = grad_update_shape(w.shape, ratio, Conv2d.is_depthwise(node, graph))
        return dict(base, x_zp=int(x.q.zero_point), x_scale=float(x.q.scale), dw_shape=dw_shape)
    return {}


@register
class Conv2d(Op):
    name = "conv2d"
    emit_c = _emit_conv2d
    fuses_activation = True
    windowed = True
    weight_input, bias_input = 1, 2
    uses_mask = True
    input_grads = {0: ("conv2d_grad_input", ("dpre", "in1"))}
    param_grads = {1: ("conv2d_grad_weight", ("dpre", "in0")), 2: ("bias_grad", ("dpre",))}
    grad_attrs = staticmethod(_conv_grad_attrs)

    @staticmethod
    def is_depthwise(node, graph):
        """The one definition: one input channel per group, groups > 1 (any channel
        multiplier).  Also read on conv2d_grad_input nodes (same groups attr, weight input 1)."""
        return node.attrs["groups"] > 1 and graph.t(node.inputs[1]).shape[3] == 1

    @staticmethod
    def channel_multiplier(node, graph):
        return graph.t(node.inputs[1]).shape[0] // node.attrs["groups"]

    def window(self, node, graph):
        a = node.attrs
        return (tuple(graph.t(node.inputs[1]).shape[1:3]), tuple(a["stride"]), tuple(a["pads"]),
                tuple(a.get("dilation", (1, 1))))

    def update_shape(self, node, graph, ratio):
        """The part of the weight a sparse update trains (grad_update_shape)."""
        return grad_update_shape(graph.t(node.inputs[1]).shape, ratio, self.is_depthwise(node, graph))

    def infer(self, node, graph):
        x = graph.t(node.inputs[0]).shape
        w = graph.t(node.inputs[1]).shape
        a = node.attrs
        pt, pl, pb, pr = a["pads"]
        oh = conv_out_size(x[1], w[1], a["stride"][0], pt, pb, a["dilation"][0])
        ow = conv_out_size(x[2], w[2], a["stride"][1], pl, pr, a["dilation"][1])
        return [(x[0], oh, ow, w[0])]

    def check(self, node, graph, fail):
        x, w, b = (graph.t(i) for i in node.inputs)
        g = node.attrs["groups"]
        if len(x.shape) != 4 or len(w.shape) != 4 or x.shape[3] != w.shape[3] * g or w.shape[0] % g:
            fail(f"n{node.id} conv2d: x {x.shape}, w {w.shape}, groups {g} do not match")
        if b.shape != (w.shape[0],):
            fail(f"n{node.id} conv2d: bias {b.shape} for {w.shape[0]} channels")
        if x.dtype == "int8" and (w.dtype != "int8" or b.dtype != "int32" or "mult" not in node.attrs):
            fail(f"n{node.id} conv2d: int8 input needs int8 weights, int32 bias and multipliers")

    def ref(self, node, graph, ins):
        a = node.attrs
        w = graph.t(node.inputs[1])
        b = graph.t(node.inputs[2])
        wf = w.q.dequantize(w.data) if w.dtype == "int8" else w.data
        bf = b.q.dequantize(b.data) if b.dtype == "int32" else b.data
        y = conv2d_float(ins[0], wf, bf, a["stride"], a["pads"], a["dilation"], a["groups"])
        return [apply_act(y, a.get("act"))]

    def quantize(self, node, graph):
        quantize_weighted(node, graph, k=int(np.prod(graph.t(node.inputs[1]).shape[1:])))

    def sim(self, node, graph, ins, masks=None):
        a = node.attrs
        x = ins[0]
        shape = (x.shape[0],) + graph.t(node.outputs[0]).shape[1:]
        out = np.empty(shape, np.int8)
        mask = keep_mask(masks, node, shape)
        w = graph.t(node.inputs[1]).data
        r = Requant.of(node)
        if self.is_depthwise(node, graph) and self.channel_multiplier(node, graph) == 1:
            _depthwise_conv2d_s8(x, w, graph.t(node.inputs[2]).data, out, mask, a["stride"][0], a["stride"][1],
                                 a["pads"][0], a["pads"][1], a["dilation"][0], a["dilation"][1], r.in_zp,
                                 r.out_zp, r.mult, r.shift, r.act_min, r.act_max)
            return [out]
        _conv2d_s8(x, w, graph.t(node.inputs[2]).data, out, mask,
                   a["stride"][0], a["stride"][1], a["pads"][0], a["pads"][1], a["dilation"][0],
                   a["dilation"][1], a["groups"], r.in_zp, r.out_zp, r.mult, r.shift,
                   r.act_min, r.act_max)
        return [out]

    def macs(self, node, graph):
        y = graph.t(node.outputs[0]).shape
        w = graph.t(node.inputs[1]).shape
        return int(np.prod(y[1:]) * np.prod(w[1:]))


# ---------------------------------------------------------------------------
# Backward.  Gradients are float32 and are taken with respect to the
# dequantized tensors (straight-through rounding); the clamp mask is applied
# by the `mask_grad` op before these run.  Every loop nest below is the
# contract with the C kernels: the same float operations in the same order.
# ---------------------------------------------------------------------------

@njit(cache=True)
def _conv2d_grad_input_f32(dpre, w, w_scale, dx, sh, sw, pt, pl, dh, dw, groups):
    """dx[n, ih, iw, ci] += (dpre[n, oh, ow, co] * s_w[co]) * w[co, kh, kw, ci],
    scattered in the order n, oh, ow, co, kh, kw, ci.

    That order is what each dx element sees: for one output pixel (oh, ow) an element is
    reached by at most one tap, so it receives its terms in the order (oh, ow), then co
    ascending.  The loops keep exactly that while running, per output pixel, the valid taps
    outside and the output channels inside (runtime_c/src/tt_conv.c has the same nest)."""
    n_b, h, wd, _ = dx.shape
    co_n, kh_n, kw_n, cg = w.shape
    cog = co_n // groups
    dx[:] = np.float32(0.0)
    wf = w.astype(np.float32)
    d = np.empty(co_n, np.float32)
    for n in range(n_b):
        for oh in range(dpre.shape[1]):
            h0 = oh * sh - pt
            kh0, kh1 = _tap_range(h0, dh, kh_n, h)
            for ow in range(dpre.shape[2]):
                w0 = ow * sw - pl
                kw0, kw1 = _tap_range(w0, dw, kw_n, wd)
                for co in range(co_n):
                    d[co] = dpre[n, oh, ow, co] * w_scale[co]
                for kh in range(kh0, kh1):
                    ih = h0 + kh * dh
                    for kw in range(kw0, kw1):
                        iw = w0 + kw * dw
                        if cg == 1 and cog == 1:            # depthwise: channel co is input channel co
                            for co in range(co_n):
                                dx[n, ih, iw, co] += d[co] * wf[co, kh, kw, 0]
                            continue
                        for co in range(co_n):
                            c0 = (co // cog) * cg
                            dco = d[co]
                            for ci in range(cg):
                                dx[n, ih, iw, c0 + ci] += dco * wf[co, kh, kw, ci]


@njit(cache=True)
def _conv2d_grad_weight_f32(dpre, x, x_zp, x_scale, dwt, sh, sw, pt, pl, dh, dw, groups, co_n):
    """dwt[co, kh, kw, ci] = s_x * sum_{n, oh, ow} dpre[n, oh, ow, co] * (x - x_zp),
    for the first co_n output and dwt.shape[3] input channels (sparse update).

    Each element: 0, then += over the valid (n, oh, ow) in that order, then * s_x.  The loops
    run the positions outside and the channels inside (independent accumulators, the same
    sequence per element; runtime_c/src/tt_conv.c has the same nests)."""
    n_b, h, wd, _ = x.shape
    _, kh_n, kw_n, ci_n = dwt.shape
    cog = dpre.shape[3] // groups
    cg = x.shape[3] // groups
    oh_n, ow_n = dpre.shape[1], dpre.shape[2]
    xs = np.float32(0.0)
    if cg == 1 and cog == 1 and ci_n == 1:          # depthwise: channel co of x, channels innermost
        acc = np.empty(co_n, np.float32)
        for kh in range(kh_n):
            for kw in range(kw_n):
                acc[:] = np.float32(0.0)
                for n in range(n_b):
                    for oh in range(oh_n):
                        ih = oh * sh - pt + kh * dh
                        if ih < 0 or ih >= h:
                            continue
                        for ow in range(ow_n):
                            iw = ow * sw - pl + kw * dw
                            if iw < 0 or iw >= wd:
                                continue
                            for co in range(co_n):
                                xs = np.float32(np.int32(x[n, ih, iw, co]) - np.int32(x_zp))
                                acc[co] += dpre[n, oh, ow, co] * xs
                for co in range(co_n):
                    dwt[co, kh, kw, 0] = acc[co] * x_scale
        return
    acc = np.empty(ci_n, np.float32)
    for co in range(co_n):
        c0 = (co // cog) * cg
        for kh in range(kh_n):
            for kw in range(kw_n):
                acc[:] = np.float32(0.0)
                for n in range(n_b):
                    for oh in range(oh_n):
                        ih = oh * sh - pt + kh * dh
                        if ih < 0 or ih >= h:
                            continue
                        for ow in range(ow_n):
                            iw = ow * sw - pl + kw * dw
                            if iw < 0 or iw >= wd:
                                continue
                            d = dpre[n, oh, ow, co]
                            for ci in range(ci_n):
                                acc[ci] += d * np.float32(np.int32(x[n, ih, iw, c0 + ci]) - np.int32(x_zp))
                for ci in range(ci_n):
                    dwt[co, kh, kw, ci] = acc[ci] * x_scale


@njit(cache=True)
def _bias_grad_f32(dpre, db):
    """db[c] = sum over every position of dpre[..., c], positions in memory order."""
    flat = dpre.reshape(-1, dpre.shape[-1])
    for c in range(db.shape[0]):
        acc = np.float32(0.0)
        for i in range(flat.shape[0]):
            acc += flat[i, c]
        db[c] = acc


def grad_update_shape(w_shape, ratio, depthwise):
    """The part of a weight that a sparse update trains: the first channels."""
    co, kh, kw, ci = w_shape
    if depthwise:
        return (max(1, int(np.ceil(co * ratio))), kh, kw, ci)
    return (co, kh, kw, max(1, int(np.ceil(ci * ratio))))


@register
class Conv2dGradInput(Op):
    name = "conv2d_grad_input"
    is_depthwise = staticmethod(Conv2d.is_depthwise)
    channel_multiplier = staticmethod(Conv2d.channel_multiplier)
    emit_c = _emit_conv2d_grad_input

    def infer(self, node, graph):
        return [tuple(node.attrs["x_shape"])]

    def sim(self, node, graph, ins, masks=None):
        a = node.attrs
        dpre, w = ins[0], graph.t(node.inputs[1]).data
        dx = np.empty((dpre.shape[0],) + tuple(a["x_shape"][1:]), np.float32)
        _conv2d_grad_input_f32(dpre, w, a["w_scale"], dx, a["stride"][0], a["stride"][1], a["pads"][0],
                               a["pads"][1], a["dilation"][0], a["dilation"][1], a["groups"])
        return [dx]

    def macs(self, node, graph):
        dpre, w = graph.t(node.inputs[0]).shape, graph.t(node.inputs[1]).shape
        return int(np.prod(dpre[1:]) * np.prod(w[1:]))


@register
class Conv2dGradWeight(Op):
    name = "conv2d_grad_weight"
    emit_c = _emit_conv2d_grad_weight

    def infer(self, node, graph):
        return [tuple(node.attrs["dw_shape"])]

    def sim(self, node, graph, ins, masks=None):
        a = node.attrs
        dpre, x = ins
        dpre = dpre[..., a.get("co_offset", 0):]          # a slice of output channels (passes/chunk_grads.py)
        dwt = np.empty(tuple(a["dw_shape"]), np.float32)
        _conv2d_grad_weight_f32(dpre, x, a["x_zp"], np.float32(a["x_scale"]), dwt, a["stride"][0], a["stride"][1],
                                a["pads"][0], a["pads"][1], a["dilation"][0], a["dilation"][1], a["groups"],
                                dwt.shape[0])
        return [dwt]

    def macs(self, node, graph):
        dpre = graph.t(node.inputs[0]).shape
        return int(dpre[1] * dpre[2] * np.prod(node.attrs["dw_shape"]))


@register
class BiasGrad(Op):
    name = "bias_grad"
    emit_c = _emit_bias_grad

    def infer(self, node, graph):
        return [(graph.t(node.inputs[0]).shape[-1],)]

    def sim(self, node, graph, ins, masks=None):
        db = np.empty(ins[0].shape[-1], np.float32)
        _bias_grad_f32(np.ascontiguousarray(ins[0]), db)
        return [db]
