"""Helpers shared by the op modules (conv, linear, pool, eltwise, lowmem):
output sizes of a sliding window, the clamp mask buffer, the float clamp, the
int8 preparation of a weighted layer (weights, bias, multipliers, clamp) and
the C parameter struct of a conv-like call.  A leaf of the ops package: it
imports nothing from the op modules.
"""
from dataclasses import dataclass

import numpy as np

from ..errors import TinytrainError
from ..ir import QParams
from ..quant.fixedpoint import quantize_multipliers
from ..quant.qparams import clamp_range, quantize_bias, quantize_weights, weight_qparams


@dataclass(frozen=True)
class Requant:
    """The prepared int8 parameters of a weighted op (TFLM's OpData): computed once by
    quantize (all float work there), read by the op's integer-only kernels.

      in_zp, out_zp       the input's and the output's zero points
      mult, shift         int32 [C]: s_x * s_w[c] / s_y as a Q31 multiplier and a shift
      act_min, act_max    the (fused) output clamp, in output steps

    Stored in node.attrs under the same keys (so saved models, the serializer and the
    emitters read them unchanged): `Requant.of(node)` reads them, `store` writes them."""
    in_zp: int
    out_zp: int
    mult: np.ndarray
    shift: np.ndarray
    act_min: int
    act_max: int

    KEYS = ("in_zp", "out_zp", "mult", "shift", "act_min", "act_max")

    @classmethod
    def of(cls, node):
        a = node.attrs
        return cls(*(a[k] for k in cls.KEYS))

    def store(self, node):
        node.attrs.update({k: getattr(self, k) for k in self.KEYS})

    def with_multipliers(self, mult, shift):
        return Requant(self.in_zp, self.out_zp, mult, shift, self.act_min, self.act_max)


def conv_out_size(size, k, stride, pad0, pad1, dil):
    return (size + pad0 + pad1 - dil * (k - 1) - 1) // stride + 1


def keep_mask(masks, node, shape):
    """The 1-bit clamp mask of a node's output (uint8 0/1 here; packed bits on
    the device): kept in `masks` when training, scratch otherwise."""
    mask = np.empty(shape, np.uint8)
    if masks is not None:
        masks[node.id] = mask
    return mask


def apply_act(y, act):
    if act is None:
        return y
    lo, hi = act
    return np.clip(y, -np.inf if lo is None else lo, np.inf if hi is None else hi).astype(np.float32)


def quantize_weighted(node, graph, k):
    """Shared by conv2d and fully_connected: per-channel int8 weights (axis 0),
    int32 bias, per-channel requantization multipliers, the fused clamp."""
    x, w, b, y = graph.t(node.inputs[0]), graph.t(node.inputs[1]), graph.t(node.inputs[2]), graph.t(node.outputs[0])
    wq = w.q if (w.q is not None and w.q.axis == 0) else weight_qparams(w.data, axis=0)
    s_x, s_y = float(x.q.scale), float(y.q.scale)
    # The accumulator must hold K products (each |.| <= 256 * 127, which also covers the C pointwise
    # kernel's sum x w - zp sum w) plus the bias.  A channel whose
    # weights are tiny next to its bias (e.g. a BatchNorm with gamma ~ 0) would need a bias beyond
    # int32: give it a coarser weight scale instead, so that |bias| <= 2^31 - 1 - K * 32512.
    room = float(2 ** 31 - 1 - int(k) * 256 * 127)
    if room <= 2 ** 20:
        raise TinytrainError(f"int32 accumulator could overflow ({k} products per output); "
                             "split the layer", node=node.name, op=node.op)
    need = np.abs(b.data.astype(np.float64)) / (s_x * room) * 1.0001
    if np.any(need > wq.scale):
        wq = QParams(np.maximum(wq.scale, need).astype(np.float32), wq.zero_point, 0)
    bias, bq = quantize_bias(b.data, wq.scale, s_x)
    w.data, w.dtype, w.q = quantize_weights(w.data, wq), "int8", wq
    b.data, b.dtype, b.q = bias, "int32", bq
    try:
        mult, shift = quantize_multipliers(s_x * wq.scale.astype(np.float64) / s_y)
    except ValueError as e:
        raise TinytrainError(f"scales cannot be requantized: {e}", node=node.name, op=node.op) from None
    lo, hi = clamp_range(y.q, node.attrs.get("act"))
    Requant(int(x.q.zero_point), int(y.q.zero_point), mult, shift, lo, hi).store(node)


def conv_params(e, a):
    """A conv-like op's tt_conv_params struct (stride, pads, dilation, groups) for its C call."""
    return e.struct("tt_conv_params", (a["stride"][0], a["stride"][1], a["pads"][0], a["pads"][1],
                                       a["dilation"][0], a["dilation"][1], a["groups"]))
