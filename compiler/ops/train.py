"""Ops of the training graph that belong to no single forward op: the loss,
the clamp-mask gate, gradient accumulation, broadcast reduction.

All float32; the loop nests are the contract with the C kernels."""
import numpy as np
from numba import njit

from ..quant.fmath import softmax_xent
from .base import Op, register


@njit(cache=True)
def _mask_grad_f32(dy, mask, out):
    for i in range(out.shape[0]):
        out[i] = dy[i] if mask[i] != 0 else np.float32(0.0)


@njit(cache=True)
def _add_f32(a, b, out):
    for i in range(out.shape[0]):
        out[i] = a[i] + b[i]


@njit(cache=True)
def _sum_to_4d_f32(d, out):
    """out (broadcast to d's shape) receives the sum of d, d in memory order."""
    out[:] = np.float32(0.0)
    for n in range(d.shape[0]):
        a = n if out.shape[0] > 1 else 0
        for h in range(d.shape[1]):
            b = h if out.shape[1] > 1 else 0
            for w in range(d.shape[2]):
                c_ = w if out.shape[2] > 1 else 0
                for c in range(d.shape[3]):
                    out[a, b, c_, c if out.shape[3] > 1 else 0] += d[n, h, w, c]


def to4d(a):
    return a.reshape((1,) * (4 - a.ndim) + a.shape)


# C emitters.

def _emit_mask_grad(self, node, g, e):
    d, m, y = node.inputs[0], node.inputs[1], node.outputs[0]
    e.line(f"tt_mask_grad_f32({g.t(d).size}, {e.ptr(d)}, {e.ptr(m)}, {e.ptr(y)});")


def _emit_grad_add(self, node, g, e):
    a, b, y = node.inputs[0], node.inputs[1], node.outputs[0]
    e.line(f"tt_add_f32({g.t(a).size}, {e.ptr(a)}, {e.ptr(b)}, {e.ptr(y)});")


def _emit_sum_to(self, node, g, e):
    d, y = node.inputs[0], node.outputs[0]
    e.line(f"tt_sum_to_f32({e.dims(g.t(d).shape)}, {e.ptr(d)}, {e.dims(g.t(y).shape)}, {e.ptr(y)});")


def _emit_softmax_xent(self, node, g, e):
    """Dequantize int8 logits (s * (q - zp), float32), then the loss; a non-finite
    loss ends the step before any update (the divergence guard)."""
    from ..cfmt import c_float
    lg, label = node.inputs
    loss, dz = node.outputs
    t = g.t(lg)
    k = t.size                      # one sample's logits, flattened
    if t.dtype == "int8":
        e.line(f"{{ float z[{k}]; int32_t i; for (i = 0; i < {k}; ++i) {{ z[i] = {c_float(t.q.scale)} * "
               f"(float)((int32_t){e.ptr(lg)}[i] - {int(t.q.zero_point)}); }}")
        e.line(f"  *loss = tt_softmax_xent(z, {k}, {e.ptr(label)}[0], {e.ptr(dz)}); }}")
    else:
        e.line(f"*loss = tt_softmax_xent({e.ptr(lg)}, {k}, {e.ptr(label)}[0], {e.ptr(dz)});")
    e.line(f"{e.ptr(loss)}[0] = *loss;")
    e.line(f"if (!(*loss - *loss == 0.0f)) {{ {e.name}_count(&ctx->skipped, 1); return; }}")


@register
class MaskGrad(Op):
    """dpre = dy where the forward value was inside its clamp range, else 0."""
    name = "mask_grad"
    emit_c = _emit_mask_grad
    in_place = True

    def infer(self, node, graph):
        return [graph.t(node.inputs[0]).shape]

    def sim(self, node, graph, ins, masks=None):
        dy = np.ascontiguousarray(ins[0], np.float32)
        out = np.empty(dy.size, np.float32)
        _mask_grad_f32(dy.reshape(-1), np.ascontiguousarray(ins[1]).reshape(-1), out)
        return [out.reshape(dy.shape)]


@register
class GradAdd(Op):
    """Two gradient contributions to one tensor (a tensor read twice, e.g. a residual)."""
    name = "grad_add"
    emit_c = _emit_grad_add
    in_place = True

    def infer(self, node, graph):
        return [graph.t(node.inputs[0]).shape]

    def sim(self, node, graph, ins, masks=None):
        a = np.ascontiguousarray(ins[0]).reshape(-1)
        out = np.empty(a.size, np.float32)
        _add_f32(a, np.ascontiguousarray(ins[1]).reshape(-1), out)
        return [out.reshape(ins[0].shape)]


@register
class SumTo(Op):
    """The gradient of a broadcast: sum d over the axes where `shape` is 1."""
    name = "sum_to"
    emit_c = _emit_sum_to

    def infer(self, node, graph):
        return [tuple(node.attrs["shape"])]

    def sim(self, node, graph, ins, masks=None):
        d = ins[0]
        shape = (d.shape[0],) + tuple(node.attrs["shape"][1:])      # activations always carry the batch
        out = np.empty(shape, np.float32)
        _sum_to_4d_f32(to4d(np.ascontiguousarray(d)), to4d(out))
        return [out]


@register
class SoftmaxXent(Op):
    """loss = cross-entropy of softmax(logits) with the label; dlogits = softmax - onehot.

    Inputs: the logits (int8, dequantized here with their scale, or float32 from a
    float classifier) and the label (int32 [N]).  Outputs: loss [N], dlogits."""
    name = "softmax_xent"
    emit_c = _emit_softmax_xent
    loss = True

    def infer(self, node, graph):
        lg = graph.t(node.inputs[0]).shape
        return [(lg[0],), lg]

    def sim(self, node, graph, ins, masks=None):
        logits, label = ins
        t = graph.t(node.inputs[0])
        if t.dtype == "int8":
            z = (np.float32(t.q.scale) * (logits.astype(np.int32) - np.int32(t.q.zero_point)).astype(np.float32))
        else:
            z = logits
        z = np.ascontiguousarray(z, np.float32).reshape(logits.shape[0], -1)
        loss = np.empty(z.shape[0], np.float32)
        grad = np.empty_like(z)
        for n in range(z.shape[0]):
            loss[n] = softmax_xent(z[n], np.int32(label[n]), grad[n])
        return [loss, grad.reshape(logits.shape)]
