"""Data movement: reshape, transpose, concat.

reshape and transpose keep the input's quantization parameters (the bytes
move, the values do not change).  concat requantizes every input to the
output's scale: y = requantize_s8(x - x_zp, s_x / s_y) + y_zp, |x - x_zp| <= 255.
Axis 0 is the batch in every shape attribute (the IR is built for batch 1).
"""
import numpy as np
from numba import njit

from ..quant.fixedpoint import clamp_s32, quantize_multiplier, requantize_zp
from .base import Op, register


# C emitters.  A reshape moves no data (the memory plan gives the output the
# input's bytes); a float transpose or a slice copies.

def _emit_reshape(self, node, g, e):
    x, y = node.inputs[0], node.outputs[0]
    if e.plan.offsets.get(x) != e.plan.offsets.get(y):
        e.line(f"memmove({e.ptr(y)}, {e.ptr(x)}, {g.t(y).nbytes});")


def _perm4(shape, perm):
    """perm of a rank <= 4 tensor as a perm of its 4-D tt_dims (emit_c.Emitter.dims: [N, C] is
    (N, 1, 1, C), [N, L, C] is (N, 1, L, C)), so the output's dims come out the same way."""
    axes = {4: (0, 1, 2, 3), 3: (0, 2, 3), 2: (0, 3), 1: (3,)}.get(len(shape))
    if axes is None:
        return None
    out = [a for a in range(4) if a not in axes]           # the inserted size-1 axes stay in front
    return out + [axes[p] for p in perm]


def _emit_transpose(self, node, g, e):
    x, y = node.inputs[0], node.outputs[0]
    t = g.t(x)
    kernel = {"float32": "tt_transpose_f32", "int8": "tt_transpose_s8"}.get(t.dtype)
    perm = _perm4(t.shape, node.attrs["perm"])
    if kernel is None or perm is None:
        from ..errors import TinytrainError
        raise TinytrainError(f"a transpose of a rank-{len(t.shape)} {t.dtype} tensor has no C kernel",
                             node=node.name, op=node.op)
    e.line(f"{kernel}({e.dims(t.shape)}, {e.ptr(x)}, {e.array('perm', perm, 'int32_t')}, {e.ptr(y)});")


def _emit_concat(self, node, g, e):
    """tt_concat_s8: rows = the product of the dims before the axis; input k gives each row
    its extent on the axis times the product of the dims after it."""
    a = node.attrs
    ins = [g.t(i) for i in node.inputs]
    if any(t.dtype != "int8" for t in ins):
        from ..errors import TinytrainError
        raise TinytrainError("a float concat has no C kernel", node=node.name, op=node.op)
    ax = a["axis"]
    outer = int(np.prod(ins[0].shape[:ax]))
    lens = [int(np.prod(t.shape[ax:])) for t in ins]
    ptrs = ", ".join(f"(const int8_t *){e.ptr(t.id)}" for t in ins)
    e.line(f"{{ const int8_t *const parts[{len(ins)}] = {{{ptrs}}};")
    e.line(f"  tt_concat_s8({outer}, {len(ins)}, parts, {e.array('len', lens, 'int32_t')}, "
           f"{e.array('zp', a['in_zp'], 'int32_t')}, {e.array('mult', a['mult'], 'int32_t')}, "
           f"{e.array('shift', a['shift'], 'int32_t')}, {a['out_zp']}, {e.ptr(node.outputs[0])}); }}")


def _emit_slice(self, node, g, e):
    a = node.attrs
    x, y = node.inputs[0], node.outputs[0]
    e.line(f"tt_slice_f32({e.dims(g.t(x).shape)}, {e.ptr(x)}, {a['axis']}, {a['start']}, {a['stop']}, {e.ptr(y)});")


def _shape_grad_attrs(node, graph, grad_op, k=0):
    x = graph.t(node.inputs[k])
    if grad_op == "reshape":
        return dict(shape=x.shape)
    if grad_op == "transpose":
        perm = list(node.attrs["perm"])
        return dict(perm=tuple(perm.index(i) for i in range(len(perm))))
    ax = node.attrs["axis"]
    start = sum(graph.t(i).shape[ax] for i in node.inputs[:k])
    return dict(axis=ax, start=start, stop=start + x.shape[ax])


@register
class Reshape(Op):
    name = "reshape"
    emit_c = _emit_reshape
    uses_mask = False
    input_grads = {0: ("reshape", ("dy",))}
    grad_attrs = staticmethod(_shape_grad_attrs)

    def view_of(self, node):
        return 0
    same_qparams = True

    def infer(self, node, graph):
        return [tuple(graph.t(node.inputs[0]).shape[:1]) + tuple(node.attrs["shape"][1:])]

    def check(self, node, graph, fail):
        x, y = graph.t(node.inputs[0]), graph.t(node.outputs[0])
        if x.size != y.size:
            fail(f"n{node.id} reshape {x.shape} -> {y.shape} changes the size")

    def ref(self, node, graph, ins):
        return [ins[0].reshape((ins[0].shape[0],) + tuple(node.attrs["shape"][1:]))]

    def sim(self, node, graph, ins, masks=None):
        return self.ref(node, graph, ins)


@register
class Transpose(Op):
    name = "transpose"
    emit_c = _emit_transpose
    same_qparams = True
    uses_mask = False
    input_grads = {0: ("transpose", ("dy",))}
    grad_attrs = staticmethod(_shape_grad_attrs)

    def infer(self, node, graph):
        x = graph.t(node.inputs[0]).shape
        return [tuple(x[p] for p in node.attrs["perm"])]

    def check(self, node, graph, fail):
        perm = tuple(node.attrs["perm"])
        if sorted(perm) != list(range(len(graph.t(node.inputs[0]).shape))) or perm[0] != 0:
            fail(f"n{node.id} transpose perm {perm} (must keep the batch first)")

    def ref(self, node, graph, ins):
        return [np.ascontiguousarray(np.transpose(ins[0], node.attrs["perm"]))]

    def sim(self, node, graph, ins, masks=None):
        return self.ref(node, graph, ins)


@njit(cache=True)
def _requant_copy_s8(x, in_zp, mult, shift, out_zp, out):
    for i in range(x.shape[0]):
        out[i] = np.int8(clamp_s32(requantize_zp(np.int32(x[i]) - np.int32(in_zp), mult, shift, out_zp), -128, 127))


@register
class Concat(Op):
    name = "concat"
    emit_c = _emit_concat
    uses_mask = False
    input_grads = {"*": ("slice", ("dy",))}       # every input: its slice
    grad_attrs = staticmethod(_shape_grad_attrs)

    def infer(self, node, graph):
        shapes = [graph.t(i).shape for i in node.inputs]
        ax = node.attrs["axis"]
        out = list(shapes[0])
        out[ax] = sum(s[ax] for s in shapes)
        return [tuple(out)]

    def check(self, node, graph, fail):
        shapes = [graph.t(i).shape for i in node.inputs]
        ax = node.attrs["axis"]
        if ax == 0 or any(len(s) != len(shapes[0]) or s[:ax] + s[ax + 1:] != shapes[0][:ax] + shapes[0][ax + 1:]
                          for s in shapes):
            fail(f"n{node.id} concat of {shapes} on axis {ax}")

    def ref(self, node, graph, ins):
        return [np.concatenate(ins, axis=node.attrs["axis"]).astype(np.float32)]

    def quantize(self, node, graph):
        qy = graph.t(node.outputs[0]).q
        node.attrs["out_zp"] = int(qy.zero_point)
        node.attrs["in_zp"], node.attrs["mult"], node.attrs["shift"] = [], [], []
        for i in node.inputs:
            qx = graph.t(i).q
            m, s = quantize_multiplier(float(qx.scale) / float(qy.scale))
            node.attrs["in_zp"].append(int(qx.zero_point))
            node.attrs["mult"].append(m)
            node.attrs["shift"].append(s)

    def sim(self, node, graph, ins, masks=None):
        a = node.attrs
        parts = []
        for k, x in enumerate(ins):
            xf = np.ascontiguousarray(x).reshape(-1)
            out = np.empty(xf.size, np.int8)
            _requant_copy_s8(xf, a["in_zp"][k], a["mult"][k], a["shift"][k], a["out_zp"], out)
            parts.append(out.reshape(x.shape))
        return [np.concatenate(parts, axis=a["axis"])]


# Backward: reshape back, transpose by the inverse permutation, slice a concat.

@register
class Slice(Op):
    """The part [start, stop) of axis `axis` (a concat's gradient, per input)."""
    name = "slice"
    emit_c = _emit_slice

    def infer(self, node, graph):
        s = list(graph.t(node.inputs[0]).shape)
        s[node.attrs["axis"]] = node.attrs["stop"] - node.attrs["start"]
        return [tuple(s)]

    def sim(self, node, graph, ins, masks=None):
        a = node.attrs
        idx = [slice(None)] * ins[0].ndim
        idx[a["axis"]] = slice(a["start"], a["stop"])
        return [np.ascontiguousarray(ins[0][tuple(idx)])]

    ref = sim
