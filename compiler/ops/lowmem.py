"""Memory-saving forms of forward ops: patch-based execution (passes/patch_prefix.py:
crop, paste) and the in-place depthwise convolution (passes/inplace_depthwise.py).

    crop   x [N, H, W, C] -> y [N, h, w, C] = x[:, y0:y0+h, x0:x0+w, :]
    paste  (patch [N, h, w, C], prev [N, H, W, C]?) -> full [N, H, W, C]:
           the patch written at (y0, x0) into `prev`'s bytes (the memory plan
           gives a paste's output the buffer of its `prev` input), or into a
           fresh buffer for the first patch

Both move int8 bytes only (output qparams = input qparams); they exist in the
frozen, forward-only prefix of a training graph, which has no gradient.

    depthwise_conv2d_inplace  (x, w, b) -> (y, scratch): a frozen depthwise conv2d
           whose output takes its input's bytes.  The C kernel keeps the input rows one
           output row reads in `scratch` (kernel-span rows of W x C bytes), computes that
           row from them and writes it over rows no later output row still needs from x.
           Same integers as conv2d.

    depthwise_conv2d_grad_input_inplace  (dpre, w) -> (dx, scratch): the float32 input
           gradient of a stride-1 depthwise conv (dx and dpre of one shape) written over
           dpre, which dies there: per channel, the dx plane is summed in `scratch`
           (H x W floats) in conv2d_grad_input's order, then stored in that channel's slots.
"""
import numpy as np

from .base import Op, get_op, register
from .common import conv_params as _conv_params


@register
class Crop(Op):
    name = "crop"
    same_qparams = True

    def infer(self, node, graph):
        return [tuple(node.attrs["shape"])]

    def check(self, node, graph, fail):
        x, (y0, x0) = graph.t(node.inputs[0]).shape, node.attrs["origin"]
        _, h, w, c = node.attrs["shape"]
        if len(x) != 4 or y0 < 0 or x0 < 0 or y0 + h > x[1] or x0 + w > x[2] or c != x[3]:
            fail(f"n{node.id} crop {node.attrs['shape']} at {(y0, x0)} is outside its input {x}")

    def ref(self, node, graph, ins):
        (y0, x0), (_, h, w, _) = node.attrs["origin"], node.attrs["shape"]
        return [np.ascontiguousarray(ins[0][:, y0:y0 + h, x0:x0 + w, :])]

    def sim(self, node, graph, ins, masks=None):
        return self.ref(node, graph, ins)

    def emit_c(self, node, g, e):
        x, y = g.t(node.inputs[0]), g.t(node.outputs[0])
        y0, x0 = node.attrs["origin"]
        if x.id == g.inputs[0] and g.meta.get("input_external"):
            from ..cfmt import c_float
            e.line(f"tt_quantize_crop_f32_s8({e.dims(x.shape)}, input, {y0}, {x0}, {e.dims(y.shape)}, "
                   f"{c_float(x.q.scale)}, {int(x.q.zero_point)}, {e.ptr(y.id)});")
            return
        e.line(f"tt_crop_s8({e.dims(x.shape)}, {e.ptr(x.id)}, {y0}, {x0}, {e.dims(y.shape)}, {e.ptr(y.id)});")


@register
class Paste(Op):
    name = "paste"
    same_qparams = True

    def view_of(self, node):
        return 1 if len(node.inputs) > 1 else None      # a tile pasted into the tensor built so far

    def infer(self, node, graph):
        return [tuple(node.attrs["shape"])]

    def check(self, node, graph, fail):
        p, (y0, x0) = graph.t(node.inputs[0]).shape, node.attrs["origin"]
        full = tuple(node.attrs["shape"])
        if y0 < 0 or x0 < 0 or y0 + p[1] > full[1] or x0 + p[2] > full[2] or p[3] != full[3]:
            fail(f"n{node.id} paste of {p} at {(y0, x0)} is outside {full}")
        if len(node.inputs) > 1 and graph.t(node.inputs[1]).shape != full:
            fail(f"n{node.id} paste into a tensor of another shape")

    def ref(self, node, graph, ins):
        y0, x0 = node.attrs["origin"]
        p = ins[0]
        full = (p.shape[0],) + tuple(node.attrs["shape"][1:])        # the simulator runs batches
        out = ins[1].copy() if len(ins) > 1 else np.zeros(full, p.dtype)
        out[:, y0:y0 + p.shape[1], x0:x0 + p.shape[2], :] = p
        return [out]

    def sim(self, node, graph, ins, masks=None):
        return self.ref(node, graph, ins)

    def emit_c(self, node, g, e):
        p, y = g.t(node.inputs[0]), g.t(node.outputs[0])
        y0, x0 = node.attrs["origin"]
        e.line(f"tt_paste_s8({e.dims(p.shape)}, {e.ptr(p.id)}, {y0}, {x0}, {e.dims(y.shape)}, {e.ptr(y.id)});")


@register
class DepthwiseConv2dInplace(Op):
    name = "depthwise_conv2d_inplace"
    overwrites_input = True

    def infer(self, node, graph):
        y = get_op("conv2d").infer(node, graph)[0]
        x, w = graph.t(node.inputs[0]).shape, graph.t(node.inputs[1]).shape
        return [y, (1, (w[1] - 1) * node.attrs["dilation"][0] + 1, x[2], x[3])]

    def check(self, node, graph, fail):
        x, w = graph.t(node.inputs[0]), graph.t(node.inputs[1])
        if node.attrs["groups"] != x.shape[3] or w.shape[0] != x.shape[3] or w.shape[3] != 1:
            fail(f"n{node.id} depthwise_conv2d_inplace needs groups == channels == outputs")

    def ref(self, node, graph, ins):
        y = get_op("conv2d").ref(node, graph, ins)[0]
        return [y, np.zeros(graph.t(node.outputs[1]).shape, np.int8)]

    def sim(self, node, graph, ins, masks=None):
        y = get_op("conv2d").sim(node, graph, ins)[0]
        return [y, np.zeros((y.shape[0],) + graph.t(node.outputs[1]).shape[1:], np.int8)]

    def macs(self, node, graph):
        return get_op("conv2d").macs(node, graph)

    def emit_c(self, node, g, e):
        a = node.attrs
        x, w, b = node.inputs
        y, scratch = node.outputs
        assert e.plan.offsets[x] == e.plan.offsets[y], "the memory plan must give y the bytes of x"
        q = e.struct("tt_quant_params", (a["in_zp"], a["out_zp"], a["act_min"], a["act_max"]))
        p = _conv_params(e, a)
        e.line(f"tt_depthwise_conv2d_inplace_s8({p}, {q}, {e.array('mult', a['mult'], 'int32_t')}, "
               f"{e.array('shift', a['shift'], 'int32_t')}, {e.dims(g.t(x).shape)}, {e.ptr(x)}, "
               f"{e.dims(g.t(w).shape)}, {e.ptr(w)}, {e.ptr(b)}, {e.dims(g.t(y).shape)}, {e.ptr(scratch)});")


@register
class DepthwiseConv2dGradInputInplace(Op):
    name = "depthwise_conv2d_grad_input_inplace"
    overwrites_input = True

    def infer(self, node, graph):
        x = tuple(node.attrs["x_shape"])
        return [x, (1, x[1], x[2], 1)]

    def check(self, node, graph, fail):
        d, w = graph.t(node.inputs[0]), graph.t(node.inputs[1])
        if d.shape != tuple(node.attrs["x_shape"]) or w.shape[3] != 1 or node.attrs["groups"] != w.shape[0]:
            fail(f"n{node.id} depthwise_conv2d_grad_input_inplace needs a depthwise conv with dx shaped like dpre")

    def sim(self, node, graph, ins, masks=None):
        dx = get_op("conv2d_grad_input").sim(node, graph, ins)[0]
        return [dx, np.zeros((dx.shape[0],) + graph.t(node.outputs[1]).shape[1:], np.float32)]

    def macs(self, node, graph):
        return get_op("conv2d_grad_input").macs(node, graph)

    def emit_c(self, node, g, e):
        a = node.attrs
        d, w = node.inputs
        dx, scratch = node.outputs
        assert e.plan.offsets[d] == e.plan.offsets[dx], "the memory plan must give dx the bytes of dpre"
        p = _conv_params(e, a)
        e.line(f"tt_depthwise_conv2d_grad_input_inplace_f32({p}, {e.dims(g.t(d).shape)}, {e.ptr(d)}, "
               f"{e.dims(g.t(w).shape)}, {e.ptr(w)}, {e.array('ws', a['w_scale'], 'float')}, {e.ptr(scratch)});")
