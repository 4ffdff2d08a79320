"""Choosing quantization parameters (host side, compile time).

* weights: symmetric int8 per output channel, scale = max|w| / 127, zero point 0
* bias:    int32, b / (s_w * s_x) rounded half away from zero, zero point 0
* activations: asymmetric int8 per tensor, the calibrated range widened to contain 0
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class QParams:
    """Affine quantization: real = scale * (q - zero_point).

    Per-tensor when `axis` is None (scale and zero_point are 0-d), otherwise per
    channel along `axis` (1-d arrays of that axis' length)."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None

    def __post_init__(self):
        self.scale = np.asarray(self.scale, dtype=np.float32)
        self.zero_point = np.asarray(self.zero_point, dtype=np.int32)

    @property
    def per_tensor(self):
        return self.axis is None

    def dequantize(self, q):
        q = np.asarray(q)
        if self.axis is None:
            return (self.scale * (q.astype(np.float32) - np.float32(self.zero_point))).astype(np.float32)
        shp = [1] * q.ndim
        shp[self.axis] = -1
        s = self.scale.reshape(shp)
        z = self.zero_point.reshape(shp).astype(np.float32)
        return (s * (q.astype(np.float32) - z)).astype(np.float32)


def weight_qparams(w, axis=0):
    w = np.asarray(w, dtype=np.float32)
    red = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.max(np.abs(w), axis=red) if w.size else np.zeros(w.shape[axis], np.float32)
    scale = np.where(amax > 0, amax / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    return QParams(scale, np.zeros_like(scale, dtype=np.int32), axis)


def quantize_weights(w, q: QParams):
    w = np.asarray(w, dtype=np.float32)
    shp = [1] * w.ndim
    shp[q.axis] = -1
    return np.clip(np.round(w / q.scale.reshape(shp)), -127, 127).astype(np.int8)


def quantize_bias(b, s_w, s_x):
    """int32 bias = b / (s_w * s_x); the scale of the accumulator."""
    s = (np.asarray(s_w, np.float64) * np.float64(s_x))
    q = np.round(np.asarray(b, np.float64) / s)
    q = np.clip(q, -(2 ** 31) + 1, 2 ** 31 - 1).astype(np.int32)
    return q, QParams(s.astype(np.float32), np.zeros(s.shape, np.int32), 0 if s.ndim else None)


PRODUCT_BOUND = 1 << 15      # |(x - x_zp) * w| and |x * w| + |x_zp * w| for any int8 x, x_zp, w


def bias_limit(k):
    """The largest |int32 bias| that training may leave in a layer with k products per
    output: |bias| + k * 2^15 <= 2^31 - 1 keeps the accumulator (and the C pointwise
    kernel's sum x w - zp sum w) free of overflow for every input and every int8
    weight, even -128 (docs/architecture.md, Numerics).  A layer too large for that
    gets 0 (its bias cannot be trained safely; training refuses it)."""
    return max(0, (1 << 31) - 1 - int(k) * PRODUCT_BOUND)


def act_qparams(lo, hi):
    """Asymmetric int8 parameters for the real range [lo, hi] (widened to hold 0)."""
    lo = min(float(lo), 0.0)
    hi = max(float(hi), 0.0)
    if hi - lo < 1e-8:
        hi = lo + 1e-8
    scale = np.float32((hi - lo) / 255.0)
    zp = int(np.clip(np.round(-128.0 - lo / float(scale)), -128, 127))
    return QParams(scale, np.int32(zp), None)


def clamp_range(q: QParams, act):
    """Integer output clamp for a fused activation range act=(lo, hi) or None."""
    if act is None:
        return -128, 127
    lo, hi = act
    s, z = float(q.scale), int(q.zero_point)
    qlo = -128 if lo is None or lo == -np.inf else int(np.clip(z + np.round(lo / s), -128, 127))
    qhi = 127 if hi is None or hi == np.inf else int(np.clip(z + np.round(hi / s), -128, 127))
    return qlo, qhi
