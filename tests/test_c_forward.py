"""The C forward kernels (runtime_c/src: tt_conv.c, tt_fc.c, tt_pool.c, tt_eltwise.c, tt_shape.c)
against the numba kernels of the simulator (compiler/ops): identical int8 outputs, identical clamp masks
(C packs them in bits), bit-identical floats; then the shipped MNIST model run
node by node through C.

TT_FWD_SANITIZE=1 builds the library with -fsanitize=address,undefined;
test_sanitizers reruns this file that way in a child process (libasan preloaded).
"""
import os
import subprocess
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tinytrain.compiler.ops import activation, conv, eltwise, linear, pool
from tinytrain.compiler.ops import shape as shape_ops
from tinytrain.compiler.ops.conv import conv_out_size
from tinytrain.compiler.quant.fixedpoint import quantize_multiplier, quantize_multipliers
from tinytrain.sim.simulator import quantize_input

from .cbuild import CFLAGS, INCLUDE, ROOT, RUNTIME_SOURCES, build, header_cdef

SANITIZE = os.environ.get("TT_FWD_SANITIZE") == "1"
SAN_FLAGS = ["-fsanitize=address,undefined,float-cast-overflow", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]

CDEF = header_cdef()          # the prototypes of runtime_c/include/tt_kernels.h, verbatim

_CTYPES = {np.dtype(np.int8): "int8_t", np.dtype(np.uint8): "uint8_t", np.dtype(np.int32): "int32_t",
           np.dtype(np.float32): "float"}


# ---------------------------------------------------------------------------
# The library and thin wrappers: numpy in, (out, unpacked mask) back.
# ---------------------------------------------------------------------------

class CForward:
    """The runtime's kernels through cffi.  Every wrapper hands C exactly-sized buffers
    (so ASan sees any overrun), a mask pre-filled with random bits (so each bit
    must be written, 0 as well as 1), and returns the mask unpacked to uint8."""

    def __init__(self, ffi, lib):
        self.ffi, self.lib = ffi, lib
        self._rng = np.random.default_rng(99)

    def ptr(self, a):
        assert a.flags.c_contiguous, "C kernels take contiguous arrays"
        return self.ffi.cast(_CTYPES[a.dtype] + " *", self.ffi.from_buffer(a))

    def dims(self, shape):
        shape = tuple(int(s) for s in shape)
        assert len(shape) == 4
        return self.ffi.new("tt_dims *", shape)

    def quant(self, in_zp, out_zp, act_min, act_max):
        return self.ffi.new("tt_quant_params *", [int(in_zp), int(out_zp), int(act_min), int(act_max)])

    def new_mask(self, n, keep):
        if not keep:
            return None, self.ffi.NULL
        m = self._rng.integers(0, 256, (n + 7) // 8, dtype=np.uint8)
        return m, self.ptr(m)

    @staticmethod
    def unpack(m, n):
        return None if m is None else np.unpackbits(m, bitorder="little")[:n]

    def conv2d(self, x, w, b, out_hw, stride, pads, dil, groups, in_zp, out_zp, mult, shift, lo, hi, keep=True):
        x, w = np.ascontiguousarray(x, np.int8), np.ascontiguousarray(w, np.int8)
        b, mult, shift = (np.ascontiguousarray(a, np.int32) for a in (b, mult, shift))
        out = np.empty((x.shape[0], *out_hw, w.shape[0]), np.int8)
        m, mp = self.new_mask(out.size, keep)
        p = self.ffi.new("tt_conv_params *", [int(stride[0]), int(stride[1]), int(pads[0]), int(pads[1]),
                                              int(dil[0]), int(dil[1]), int(groups)])
        self.lib.tt_conv2d_s8(p, self.quant(in_zp, out_zp, lo, hi), self.ptr(mult), self.ptr(shift),
                              self.dims(x.shape), self.ptr(x), self.dims(w.shape), self.ptr(w), self.ptr(b),
                              self.dims(out.shape), self.ptr(out), mp)
        return out, self.unpack(m, out.size)

    def fully_connected(self, x, w, b, in_zp, out_zp, mult, shift, lo, hi, keep=True):
        x, w = np.ascontiguousarray(x, np.int8), np.ascontiguousarray(w, np.int8)
        b, mult, shift = (np.ascontiguousarray(a, np.int32) for a in (b, mult, shift))
        out = np.empty((x.shape[0], w.shape[0]), np.int8)
        m, mp = self.new_mask(out.size, keep)
        self.lib.tt_fully_connected_s8(self.quant(in_zp, out_zp, lo, hi), self.ptr(mult), self.ptr(shift),
                                       x.shape[0], x.shape[1], w.shape[0], self.ptr(x), self.ptr(w), self.ptr(b),
                                       self.ptr(out), mp)
        return out, self.unpack(m, out.size)

    def fully_connected_f32(self, x, in_zp, in_scale, w, b):
        x = np.ascontiguousarray(x, np.int8)
        w, b = np.ascontiguousarray(w, np.float32), np.ascontiguousarray(b, np.float32)
        out = np.empty((x.shape[0], w.shape[0]), np.float32)
        self.lib.tt_fully_connected_f32(x.shape[0], x.shape[1], w.shape[0], self.ptr(x), int(in_zp),
                                        float(np.float32(in_scale)), self.ptr(w), self.ptr(b), self.ptr(out))
        return out

    def _binary(self, fn, x1, x2, args1, args2, tail, keep):
        x1, x2 = np.ascontiguousarray(x1, np.int8), np.ascontiguousarray(x2, np.int8)
        shp = np.broadcast_shapes(x1.shape, x2.shape)
        out = np.empty(shp, np.int8)
        m, mp = self.new_mask(out.size, keep)
        fn(self.dims(shp), self.dims(x1.shape), self.ptr(x1), *args1, self.dims(x2.shape), self.ptr(x2), *args2,
           *tail, self.ptr(out), mp)
        return out, self.unpack(m, out.size)

    def add(self, x1, x2, a, keep=True):
        return self._binary(self.lib.tt_add_s8, x1, x2, (a["z1"], a["m1"], a["s1"]), (a["z2"], a["m2"], a["s2"]),
                            (a["left_shift"], a["mult"], a["shift"], a["out_zp"], a["act_min"], a["act_max"]), keep)

    def mul(self, x1, x2, a, keep=True):
        return self._binary(self.lib.tt_mul_s8, x1, x2, (a["z1"],), (a["z2"],),
                            (a["mult"], a["shift"], a["out_zp"], a["act_min"], a["act_max"]), keep)

    def _pool_params(self, kernel, stride, pads, dil, include_pad):
        return self.ffi.new("tt_pool_params *", [int(kernel[0]), int(kernel[1]), int(stride[0]), int(stride[1]),
                                                 int(pads[0]), int(pads[1]), int(dil[0]), int(dil[1]),
                                                 int(include_pad)])

    def avg_pool(self, x, out_hw, kernel, stride, pads, include_pad, in_zp, out_zp, mult, shift, lo, hi,
                 dil=(1, 1), keep=True):
        x = np.ascontiguousarray(x, np.int8)
        mult, shift = np.ascontiguousarray(mult, np.int32), np.ascontiguousarray(shift, np.int32)
        out = np.empty((x.shape[0], *out_hw, x.shape[3]), np.int8)
        m, mp = self.new_mask(out.size, keep)
        self.lib.tt_avg_pool_s8(self._pool_params(kernel, stride, pads, dil, include_pad),
                                self.quant(in_zp, out_zp, lo, hi), self.ptr(mult), self.ptr(shift),
                                self.dims(x.shape), self.ptr(x), self.dims(out.shape), self.ptr(out), mp)
        return out, self.unpack(m, out.size)

    def max_pool(self, x, out_hw, kernel, stride, pads, dil, lo, hi, keep=True):
        x = np.ascontiguousarray(x, np.int8)
        out = np.empty((x.shape[0], *out_hw, x.shape[3]), np.int8)
        m, mp = self.new_mask(out.size, keep)
        self.lib.tt_max_pool_s8(self._pool_params(kernel, stride, pads, dil, 0), self.quant(0, 0, lo, hi),
                                self.dims(x.shape), self.ptr(x), self.dims(out.shape), self.ptr(out), mp)
        return out, self.unpack(m, out.size)

    def global_avg_pool(self, x, in_zp, out_zp, mult, shift, lo, hi, keep=True):
        x = np.ascontiguousarray(x, np.int8)
        out = np.empty((x.shape[0], 1, 1, x.shape[3]), np.int8)
        m, mp = self.new_mask(out.size, keep)
        self.lib.tt_global_avg_pool_s8(self.quant(in_zp, out_zp, lo, hi), int(mult), int(shift),
                                       self.dims(x.shape), self.ptr(x), self.ptr(out), mp)
        return out, self.unpack(m, out.size)

    def lut(self, x, table):
        x, table = np.ascontiguousarray(x, np.int8), np.ascontiguousarray(table, np.int8)
        assert table.size == 256
        out = np.empty_like(x)
        self.lib.tt_lut_s8(x.size, self.ptr(x), self.ptr(table), self.ptr(out))
        return out

    def clamp(self, x, lo, hi, keep=True):
        x = np.ascontiguousarray(x, np.int8)
        out = np.empty_like(x)
        m, mp = self.new_mask(out.size, keep)
        self.lib.tt_clamp_s8(x.size, self.ptr(x), int(lo), int(hi), self.ptr(out), mp)
        return out, self.unpack(m, out.size)

    def requant_copy(self, x, in_zp, mult, shift, out_zp):
        x = np.ascontiguousarray(x, np.int8)
        out = np.empty_like(x)
        self.lib.tt_requant_copy_s8(x.size, self.ptr(x), int(in_zp), int(mult), int(shift), int(out_zp),
                                    self.ptr(out))
        return out

    def quantize(self, x, scale, zp):
        x = np.ascontiguousarray(x, np.float32)
        out = np.empty(x.shape, np.int8)
        self.lib.tt_quantize_f32_s8(x.size, self.ptr(x), float(np.float32(scale)), int(zp), self.ptr(out))
        return out


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    ffi, lib = build(RUNTIME_SOURCES, CDEF, tmp_path_factory.mktemp("fwd"), name="ttforward",
                     extra=SAN_FLAGS if SANITIZE else ())
    return CForward(ffi, lib)


def assert_same(c_res, py_out, py_mask=None):
    """C (out, unpacked mask) == numba (out, uint8 mask); masks of clipping cases hold both values."""
    out, mask = c_res
    np.testing.assert_array_equal(out.reshape(-1), py_out.reshape(-1))
    if py_mask is not None:
        np.testing.assert_array_equal(mask, py_mask.reshape(-1))


def both_values(mask):
    assert 0 < int(mask.sum()) < mask.size, "the case should clip some elements and keep others"


def realistic_multipliers(rng, n, k):
    """Per channel s_x * s_w / s_y for an accumulator of k products (int8 data):
    outputs of a few tens of codes, spread over a decade, one tiny ratio that
    quantizes to (0, 0)."""
    ratio = 10.0 ** rng.uniform(-0.5, 0.5, n) * 0.012 / np.sqrt(k)
    if n > 2:
        ratio[1] = 1e-12
    return quantize_multipliers(ratio)


# ---------------------------------------------------------------------------
# conv2d
# ---------------------------------------------------------------------------

CONV_CASES = {
    # name: (x shape NHWC, w shape [Cout, KH, KW, Cin/g], stride, pads (t, l, b, r), dilation, groups)
    "regular": ((2, 9, 11, 5), (7, 3, 3, 5), (2, 1), (1, 0, 2, 1), (1, 2), 1),
    "regular_1x1": ((2, 6, 5, 12), (9, 1, 1, 12), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "regular_big_k": ((1, 5, 5, 64), (4, 3, 3, 64), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "depthwise": ((2, 8, 7, 6), (6, 3, 3, 1), (1, 2), (2, 1, 0, 1), (2, 1), 6),
    "depthwise_s2": ((1, 9, 9, 10), (10, 3, 3, 1), (2, 2), (1, 1, 1, 1), (1, 1), 10),
    "depthwise_mult2": ((2, 7, 7, 4), (8, 3, 3, 1), (1, 1), (1, 2, 1, 0), (1, 1), 4),
    "grouped": ((2, 6, 6, 6), (9, 2, 3, 2), (1, 2), (0, 1, 1, 1), (2, 1), 3),
    "grouped_cog1": ((1, 5, 6, 8), (4, 3, 1, 2), (2, 1), (1, 0, 1, 0), (1, 1), 4),
    "conv1d": ((3, 1, 20, 4), (5, 1, 5, 4), (1, 2), (0, 2, 0, 1), (1, 2), 1),
    "conv1d_depthwise": ((2, 1, 16, 8), (8, 1, 3, 1), (1, 1), (0, 1, 0, 1), (1, 3), 8),
    # wide enough for the blocked paths: 16-element inner blocks, 4-channel blocks with a remainder
    "wide_1x1": ((1, 5, 6, 37), (11, 1, 1, 37), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "wide_1x1_strided": ((2, 7, 7, 20), (6, 1, 1, 20), (2, 2), (0, 0, 0, 0), (1, 1), 1),
    "wide_regular": ((1, 6, 7, 35), (9, 3, 3, 35), (2, 1), (1, 1, 1, 1), (1, 1), 1),
    "wide_depthwise": ((1, 7, 6, 40), (40, 3, 3, 1), (1, 1), (1, 1, 1, 1), (1, 1), 40),
    "wide_grouped": ((1, 5, 5, 40), (10, 3, 3, 20), (1, 1), (1, 1, 1, 1), (1, 1), 2),
    # few inputs per output, 16k outputs: the output-channel-vectorized path on SIMD hosts
    "small_k_stem": ((2, 9, 9, 3), (16, 3, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),
    "small_k_pointwise": ((1, 6, 5, 8), (48, 1, 1, 8), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "depthwise_16k": ((2, 7, 6, 32), (32, 3, 3, 1), (2, 1), (1, 0, 1, 2), (1, 2), 32),
}


def run_conv_numba(x, w, b, out_hw, stride, pads, dil, groups, in_zp, out_zp, mult, shift, lo, hi):
    """Conv2d.sim's dispatch: depthwise kernel when groups == Cin == Cout."""
    out = np.empty((x.shape[0], *out_hw, w.shape[0]), np.int8)
    mask = np.empty(out.shape, np.uint8)
    if groups == x.shape[3] == w.shape[0]:
        conv._depthwise_conv2d_s8(x, w, b, out, mask, stride[0], stride[1], pads[0], pads[1], dil[0], dil[1],
                                  in_zp, out_zp, mult, shift, lo, hi)
    else:
        conv._conv2d_s8(x, w, b, out, mask, stride[0], stride[1], pads[0], pads[1], dil[0], dil[1], groups,
                        in_zp, out_zp, mult, shift, lo, hi)
    return out, mask


@pytest.mark.parametrize("act", [(-128, 127), (-100, 90), (-128, 0)], ids=["full", "clip", "relu_like"])
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d(c, case, act):
    xs, ws, stride, pads, dil, groups = CONV_CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()) + act[0] + 128)
    x = rng.integers(-128, 128, xs, dtype=np.int8)
    w = rng.integers(-127, 128, ws, dtype=np.int8)
    k = ws[1] * ws[2] * ws[3]
    b = rng.integers(-4000, 4000, ws[0]).astype(np.int32) * int(np.sqrt(k))
    assert k * 255 * 127 + np.abs(b).max() < 2**31      # the accumulator bound quantize() guarantees
    mult, shift = realistic_multipliers(rng, ws[0], k)
    in_zp, out_zp = int(rng.integers(-128, 128)), int(rng.integers(-20, 20))
    lo, hi = act
    oh = conv_out_size(xs[1], ws[1], stride[0], pads[0], pads[2], dil[0])
    ow = conv_out_size(xs[2], ws[2], stride[1], pads[1], pads[3], dil[1])
    args = ((oh, ow), stride, pads, dil, groups, in_zp, out_zp, mult, shift, lo, hi)
    py_out, py_mask = run_conv_numba(x, w, b, *args)
    assert_same(c.conv2d(x, w, b, *args), py_out, py_mask)
    if act != (-128, 127):
        both_values(py_mask)
        assert ((py_out == lo) | (py_out == hi)).any() and ((py_out > lo) & (py_out < hi)).any()
    out_nomask, m = c.conv2d(x, w, b, *args, keep=False)      # NULL mask: inference
    assert m is None
    np.testing.assert_array_equal(out_nomask, py_out)


def test_conv2d_depthwise_kernels_agree(c):
    """The depthwise numba kernel and the general one agree (C has one loop nest for both)."""
    xs, ws, stride, pads, dil, groups = CONV_CASES["depthwise"]
    rng = np.random.default_rng(5)
    x = rng.integers(-128, 128, xs, dtype=np.int8)
    w = rng.integers(-127, 128, ws, dtype=np.int8)
    b = rng.integers(-20000, 20000, ws[0]).astype(np.int32)
    mult, shift = realistic_multipliers(rng, ws[0], 9)
    oh = conv_out_size(xs[1], ws[1], stride[0], pads[0], pads[2], dil[0])
    ow = conv_out_size(xs[2], ws[2], stride[1], pads[1], pads[3], dil[1])
    out = np.empty((xs[0], oh, ow, ws[0]), np.int8)
    mask = np.empty(out.shape, np.uint8)
    conv._conv2d_s8(x, w, b, out, mask, stride[0], stride[1], pads[0], pads[1], dil[0], dil[1], groups,
                    3, -7, mult, shift, -90, 100)
    assert_same(c.conv2d(x, w, b, (oh, ow), stride, pads, dil, groups, 3, -7, mult, shift, -90, 100), out, mask)


# ---------------------------------------------------------------------------
# fully connected
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(5, 37, 11), (1, 160, 10), (3, 1000, 4), (2, 1, 1)])
def test_fully_connected_s8(c, shape):
    n, k, m_n = shape
    rng = np.random.default_rng(k)
    x = rng.integers(-128, 128, (n, k), dtype=np.int8)
    w = rng.integers(-127, 128, (m_n, k), dtype=np.int8)
    b = rng.integers(-4000, 4000, m_n).astype(np.int32) * int(np.sqrt(k))
    mult, shift = realistic_multipliers(rng, m_n, k)
    in_zp, out_zp, lo, hi = int(rng.integers(-128, 128)), 7, -110, 100
    out = np.empty((n, m_n), np.int8)
    mask = np.empty(out.shape, np.uint8)
    linear._fully_connected_s8(x, w, b, out, mask, in_zp, out_zp, mult, shift, lo, hi)
    assert_same(c.fully_connected(x, w, b, in_zp, out_zp, mult, shift, lo, hi), out, mask)
    if out.size > 20:
        both_values(mask)
    np.testing.assert_array_equal(c.fully_connected(x, w, b, in_zp, out_zp, mult, shift, lo, hi, keep=False)[0], out)


def test_fully_connected_extreme_multipliers(c):
    """Any mult in [2^30, 2^31) and shift in [-31, 30]: values far outside int8 (and int32) clamp and
    mask as the numba kernel's requantize_zp + clamp does."""
    rng = np.random.default_rng(3)
    for trial in range(20):
        n, k, m_n = 2, int(rng.integers(1, 70)), int(rng.integers(1, 40))
        x = rng.integers(-128, 128, (n, k), dtype=np.int8)
        w = rng.integers(-127, 128, (m_n, k), dtype=np.int8)
        b = rng.integers(-2 ** 24, 2 ** 24, m_n).astype(np.int32)
        mult = rng.integers(2 ** 30, 2 ** 31, m_n).astype(np.int32)
        shift = rng.integers(-31, 31, m_n).astype(np.int32)
        in_zp, out_zp = int(rng.integers(-128, 128)), int(rng.integers(-128, 128))
        lo = int(rng.integers(-128, 0))
        hi = int(rng.integers(lo, 128))
        out = np.empty((n, m_n), np.int8)
        mask = np.empty(out.shape, np.uint8)
        linear._fully_connected_s8(x, w, b, out, mask, in_zp, out_zp, mult, shift, lo, hi)
        assert_same(c.fully_connected(x, w, b, in_zp, out_zp, mult, shift, lo, hi), out, mask)


@pytest.mark.parametrize("shape", [(4, 50, 10), (1, 160, 10), (3, 777, 5)])
def test_fully_connected_f32(c, shape):
    n, k, m_n = shape
    rng = np.random.default_rng(k + 1)
    x = rng.integers(-128, 128, (n, k), dtype=np.int8)
    w = (rng.standard_normal((m_n, k)) * 0.3).astype(np.float32)
    b = rng.standard_normal(m_n).astype(np.float32)
    x_zp, x_scale = int(rng.integers(-128, 128)), np.float32(0.0371)
    out = np.empty((n, m_n), np.float32)
    linear._fully_connected_f32(x, x_zp, x_scale, w, b, out)
    got = c.fully_connected_f32(x, x_zp, x_scale, w, b)
    np.testing.assert_array_equal(got.view(np.uint32), out.view(np.uint32))      # bit for bit


# ---------------------------------------------------------------------------
# add, mul (with numpy broadcasting, as Add.sim / Mul.sim do)
# ---------------------------------------------------------------------------

BINARY_SHAPES = {
    "equal": ((2, 5, 6, 7), (2, 5, 6, 7)),
    "bcast_hw": ((2, 5, 6, 7), (2, 1, 1, 7)),
    "bcast_hw_first": ((2, 1, 1, 7), (2, 5, 6, 7)),
    "bcast_c": ((2, 4, 3, 1), (2, 4, 3, 9)),
    "bcast_both": ((1, 4, 1, 6), (3, 1, 5, 6)),
}


def _binary_inputs(rng, shapes):
    return (rng.integers(-128, 128, shapes[0], dtype=np.int8), rng.integers(-128, 128, shapes[1], dtype=np.int8))


@pytest.mark.parametrize("case", list(BINARY_SHAPES))
def test_add_s8(c, case):
    rng = np.random.default_rng(len(case) * 7 + 1)
    x1, x2 = _binary_inputs(rng, BINARY_SHAPES[case])
    for s1, s2, sy, act in [(0.05, 0.031, 0.06, (-128, 127)), (0.02, 0.09, 0.05, (-80, 100)),
                            (0.11, 0.0123, 0.03, (-128, 60))]:
        tw = 2.0 * max(s1, s2)
        (m1, sh1), (m2, sh2) = quantize_multiplier(s1 / tw), quantize_multiplier(s2 / tw)
        m, sh = quantize_multiplier(tw / ((1 << eltwise.ADD_LEFT_SHIFT) * sy))
        a = dict(z1=int(rng.integers(-128, 128)), m1=m1, s1=sh1, z2=int(rng.integers(-128, 128)), m2=m2, s2=sh2,
                 left_shift=eltwise.ADD_LEFT_SHIFT, mult=m, shift=sh, out_zp=int(rng.integers(-30, 30)),
                 act_min=act[0], act_max=act[1])
        f1, f2, shp = eltwise._broadcast_pair(x1, x2)
        out = np.empty(f1.shape[0], np.int8)
        mask = np.empty(out.shape, np.uint8)
        eltwise._add_s8(f1, a["z1"], a["m1"], a["s1"], f2, a["z2"], a["m2"], a["s2"], a["left_shift"], a["mult"],
                        a["shift"], a["out_zp"], a["act_min"], a["act_max"], out, mask)
        res = c.add(x1, x2, a)
        assert res[0].shape == shp
        assert_same(res, out, mask)
        both_values(mask)
        np.testing.assert_array_equal(c.add(x1, x2, a, keep=False)[0].reshape(-1), out)


@pytest.mark.parametrize("case", list(BINARY_SHAPES))
def test_mul_s8(c, case):
    rng = np.random.default_rng(len(case) * 11 + 2)
    x1, x2 = _binary_inputs(rng, BINARY_SHAPES[case])
    for s1, s2, sy, act in [(0.05, 0.031, 0.3, (-128, 127)), (0.02, 0.09, 0.02, (-100, 90)),
                            (0.11, 0.0123, 0.01, (-128, 0))]:
        m, sh = quantize_multiplier(s1 * s2 / sy)
        z1, z2, zp = int(rng.integers(-128, 128)), int(rng.integers(-128, 128)), int(rng.integers(-30, 30))
        f1, f2, shp = eltwise._broadcast_pair(x1, x2)
        out = np.empty(f1.shape[0], np.int8)
        mask = np.empty(out.shape, np.uint8)
        eltwise._mul_s8(f1, z1, f2, z2, m, sh, zp, act[0], act[1], out, mask)
        a = dict(z1=z1, z2=z2, mult=m, shift=sh, out_zp=zp, act_min=act[0], act_max=act[1])
        res = c.mul(x1, x2, a)
        assert res[0].shape == shp
        assert_same(res, out, mask)
        both_values(mask)


# ---------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------

POOL_CASES = {
    # name: (x shape, kernel, stride, pads (t, l, b, r))
    "padded": ((2, 9, 8, 5), (3, 2), (2, 2), (1, 0, 1, 1)),
    "no_pad": ((1, 8, 8, 3), (2, 2), (2, 2), (0, 0, 0, 0)),
    "overlap_asym": ((2, 7, 10, 4), (3, 3), (1, 2), (2, 1, 0, 2)),
    "empty_windows": ((1, 4, 5, 3), (2, 2), (1, 1), (2, 2, 1, 1)),     # pad == kernel: some windows see no input
    "pool1d": ((3, 1, 15, 6), (1, 4), (1, 3), (0, 2, 0, 1)),
}


@pytest.mark.parametrize("include_pad", [0, 1])
@pytest.mark.parametrize("case", list(POOL_CASES))
def test_avg_pool_s8(c, case, include_pad):
    xs, kernel, stride, pads = POOL_CASES[case]
    rng = np.random.default_rng(len(case) + include_pad)
    x = rng.integers(-128, 128, xs, dtype=np.int8)
    counts = np.arange(kernel[0] * kernel[1] + 1, dtype=np.float64)
    sx, sy = 0.043, 0.021                  # output scale finer than the input's: some averages clip
    mult, shift = quantize_multipliers(np.where(counts > 0, sx / (sy * np.maximum(counts, 1)), 0.0))
    in_zp, out_zp, lo, hi = int(rng.integers(-128, 128)), 3, -120, 110
    oh = conv_out_size(xs[1], kernel[0], stride[0], pads[0], pads[2], 1)
    ow = conv_out_size(xs[2], kernel[1], stride[1], pads[1], pads[3], 1)
    out = np.empty((xs[0], oh, ow, xs[3]), np.int8)
    mask = np.empty(out.shape, np.uint8)
    pool._avg_pool_s8(x, out, mask, kernel[0], kernel[1], stride[0], stride[1], pads[0], pads[1],
                      bool(include_pad), in_zp, out_zp, mult, shift, lo, hi)
    args = ((oh, ow), kernel, stride, pads, include_pad, in_zp, out_zp, mult, shift, lo, hi)
    assert_same(c.avg_pool(x, *args), out, mask)
    both_values(mask)
    # avg_pool has no dilation (nor has the numba kernel): the dil fields are not read
    assert_same(c.avg_pool(x, *args, dil=(3, 2)), out, mask)
    np.testing.assert_array_equal(c.avg_pool(x, *args, keep=False)[0], out)


MAX_POOL_CASES = {
    # name: (x shape, kernel, stride, pads (t, l, b, r), dilation)
    "padded": ((2, 9, 8, 5), (3, 3), (2, 1), (1, 1, 1, 2), (1, 1)),
    "dilated": ((2, 10, 9, 4), (3, 2), (1, 2), (2, 1, 2, 0), (2, 3)),
    "empty_windows": ((1, 4, 5, 3), (2, 2), (1, 1), (2, 2, 1, 1), (1, 1)),
    "pool1d_dilated": ((2, 1, 17, 3), (1, 3), (1, 2), (0, 2, 0, 2), (1, 2)),
}


@pytest.mark.parametrize("act", [(-128, 127), (-40, 100)], ids=["full", "clip"])
@pytest.mark.parametrize("case", list(MAX_POOL_CASES))
def test_max_pool_s8(c, case, act):
    xs, kernel, stride, pads, dil = MAX_POOL_CASES[case]
    rng = np.random.default_rng(len(case) + 50)
    x = rng.integers(-128, 128, xs, dtype=np.int8)
    oh = conv_out_size(xs[1], kernel[0], stride[0], pads[0], pads[2], dil[0])
    ow = conv_out_size(xs[2], kernel[1], stride[1], pads[1], pads[3], dil[1])
    out = np.empty((xs[0], oh, ow, xs[3]), np.int8)
    mask = np.empty(out.shape, np.uint8)
    pool._max_pool_s8(x, out, mask, kernel[0], kernel[1], stride[0], stride[1], pads[0], pads[1], dil[0], dil[1],
                      act[0], act[1])
    assert_same(c.max_pool(x, (oh, ow), kernel, stride, pads, dil, *act), out, mask)
    if act != (-128, 127):
        both_values(mask)
    if case == "empty_windows":
        assert (out == max(-128, act[0])).any()
    np.testing.assert_array_equal(c.max_pool(x, (oh, ow), kernel, stride, pads, dil, *act, keep=False)[0], out)


@pytest.mark.parametrize("xs", [(3, 5, 6, 10), (1, 1, 1, 7), (2, 16, 16, 3)])
def test_global_avg_pool_s8(c, xs):
    rng = np.random.default_rng(xs[1] * 100 + xs[3])
    x = rng.integers(-128, 128, xs, dtype=np.int8)
    hw = xs[1] * xs[2]
    (mult,), (shift,) = quantize_multipliers([0.05 / (0.006 * hw)])
    mult, shift = int(mult), int(shift)
    in_zp, out_zp, lo, hi = int(rng.integers(-6, 7)), -4, -100, 100
    out = np.empty((xs[0], 1, 1, xs[3]), np.int8)
    mask = np.empty(out.shape, np.uint8)
    pool._global_avg_pool_s8(x, out, mask, in_zp, out_zp, mult, shift, lo, hi)
    assert_same(c.global_avg_pool(x, in_zp, out_zp, mult, shift, lo, hi), out, mask)
    if out.size >= 10:
        both_values(mask)
    np.testing.assert_array_equal(c.global_avg_pool(x, in_zp, out_zp, mult, shift, lo, hi, keep=False)[0], out)


# ---------------------------------------------------------------------------
# element-wise
# ---------------------------------------------------------------------------

def all_codes_and_random(rng, n=1000):
    return np.concatenate([np.arange(-128, 128, dtype=np.int8), rng.integers(-128, 128, n, dtype=np.int8)])


def test_lut_s8(c):
    rng = np.random.default_rng(11)
    x = all_codes_and_random(rng)
    table = rng.integers(-128, 128, 256, dtype=np.int8)
    out = np.empty_like(x)
    activation._lut_s8(x, table, out)
    np.testing.assert_array_equal(c.lut(x, table), out)


@pytest.mark.parametrize("lo_hi", [(-20, 60), (-128, 127), (0, 0), (-128, -128), (127, 127)])
def test_clamp_s8(c, lo_hi):
    x = all_codes_and_random(np.random.default_rng(12))
    out = np.empty_like(x)
    mask = np.empty(x.shape, np.uint8)
    activation._clamp_s8(x, lo_hi[0], lo_hi[1], out, mask)
    assert_same(c.clamp(x, *lo_hi), out, mask)
    np.testing.assert_array_equal(c.clamp(x, *lo_hi, keep=False)[0], out)


@pytest.mark.parametrize("ratio", [1.0, 0.37, 2.9, 0.5, 1e-12])
def test_requant_copy_s8(c, ratio):
    rng = np.random.default_rng(13)
    x = all_codes_and_random(rng)
    mult, shift = quantize_multiplier(ratio)
    for in_zp, out_zp in [(0, 0), (-128, 127), (17, -5), (127, -128)]:
        out = np.empty_like(x)
        shape_ops._requant_copy_s8(x, in_zp, mult, shift, out_zp, out)
        np.testing.assert_array_equal(c.requant_copy(x, in_zp, mult, shift, out_zp), out)
        if ratio == 2.9 and in_zp == 17:
            assert (out == -128).any() and (out == 127).any()


# ---------------------------------------------------------------------------
# int8 data movement: concat (each input requantized) and transpose
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [1, 2, 3])
def test_concat_s8(c, axis):
    """tt_concat_s8 against Concat.sim (the simulator's _requant_copy_s8 per input, np.concatenate)."""
    rng = np.random.default_rng(20 + axis)
    base = [2, 5, 4, 3]
    shapes = []
    for extent in (3, 1, 6):
        s = list(base)
        s[axis] = extent
        shapes.append(tuple(s))
    xs = [rng.integers(-128, 128, sh, dtype=np.int8) for sh in shapes]
    ratios = (1.0, 0.37, 2.9)
    node = SimpleNamespace(attrs=dict(axis=axis, out_zp=-3, in_zp=[0, 17, -128],
                                      mult=[quantize_multiplier(r)[0] for r in ratios],
                                      shift=[quantize_multiplier(r)[1] for r in ratios]))
    want = shape_ops.Concat().sim(node, None, xs)[0]
    outer = int(np.prod(base[:axis]))
    lens = np.array([int(np.prod(sh[axis:])) for sh in shapes], np.int32)
    keep = [c.ffi.from_buffer("int8_t[]", np.ascontiguousarray(x)) for x in xs]     # alive during the call
    parts = c.ffi.new("const int8_t *[]", keep)
    a = node.attrs
    zp, mult, shift = (np.array(a[k], np.int32) for k in ("in_zp", "mult", "shift"))
    out = np.empty(want.shape, np.int8)
    c.lib.tt_concat_s8(outer, len(xs), parts, c.ptr(lens), c.ptr(zp), c.ptr(mult), c.ptr(shift), a["out_zp"],
                       c.ptr(out))
    np.testing.assert_array_equal(out, want)
    assert (want == -128).any() and (want == 127).any()          # the 2.9 part saturates


@pytest.mark.parametrize("perm", [(0, 1, 2, 3), (0, 3, 1, 2), (0, 2, 3, 1), (0, 3, 2, 1), (0, 2, 1, 3), (1, 0, 3, 2)])
def test_transpose_s8(c, perm):
    rng = np.random.default_rng(30)
    x = rng.integers(-128, 128, (2, 3, 4, 5), dtype=np.int8)
    out = np.empty(tuple(x.shape[p] for p in perm), np.int8)
    p = np.array(perm, np.int32)
    c.lib.tt_transpose_s8(c.dims(x.shape), c.ptr(x), c.ptr(p), c.ptr(out))
    np.testing.assert_array_equal(out, np.transpose(x, perm))


@pytest.mark.skipif(SANITIZE, reason="builds a compiled model")
def test_concat_and_int8_transpose_train_through_the_emitted_c(tmp_path):
    """A model whose int8 graph keeps a concat (two convs side by side) and an int8 transpose (the
    NHWC map flattened in ONNX order before a sigmoid): compiled to C, it trains bit for bit like
    the simulator (losses, classes, learned state)."""
    import tinytrain as tt
    from tinytrain.compiler.codegen.emit_c import Emitter
    from tinytrain.compiler.pipeline import compile_graph
    from tinytrain.host import HostModel
    from tinytrain.train.backprop import BackpropTrainer

    from .onnx_builder import Builder, rand
    rng = np.random.default_rng(0)
    b = Builder((1, 3, 6, 6))
    a = b.op("Relu", [b.op("Conv", ["x", b.init(rand(rng, 4, 3, 3, 3)), b.init(rand(rng, 4))], pads=[1, 1, 1, 1])])
    cc = b.op("Conv", ["x", b.init(rand(rng, 6, 3, 1, 1)), b.init(rand(rng, 6))])
    s = b.op("Sigmoid", [b.op("Flatten", [b.op("Concat", [a, cc], axis=1)])])
    b.model(b.op("Gemm", [s, b.init(rand(rng, 5, 360)), b.init(rand(rng, 5))], transB=1), tmp_path / "cat.onnx")
    x = rand(rng, 12, 3, 6, 6, lo=0, hi=1)
    y = rng.integers(0, 5, 12)
    gq = tt.quantize(tt.load(tmp_path / "cat.onnx"), x, output_range=(-16, 16))
    ops = [n.op for n in gq.nodes]
    assert "concat" in ops and "transpose" in ops
    tg, plan, facts = compile_graph(gq, tmp_path / "c", name="m", update="full")
    assert "tt_concat_s8(" in (tmp_path / "c" / "m.c").read_text()
    assert "tt_transpose_s8(" in (tmp_path / "c" / "m.c").read_text()
    hm = HostModel(tmp_path / "c", "m", tg, facts, lr=0.05, seed=2)
    sim = BackpropTrainer(tg, lr=0.05, seed=2)
    for i in range(24):
        k = i % len(x)
        lc, pc = hm.train_step(x[k], y[k])
        ls, logits = sim.step(x[k], y[k])
        assert np.float32(lc).tobytes() == np.float32(ls).tobytes(), (i, lc, ls)
        assert pc == int(np.argmax(np.asarray(logits).reshape(-1)))
    e = Emitter(tg, plan, "m")
    st = hm.state_bytes()
    for tid, off in e.state_off.items():
        t = tg.t(tid)
        np.testing.assert_array_equal(np.frombuffer(st, t.data.dtype, t.size, off), t.data.reshape(-1))


# ---------------------------------------------------------------------------
# host input quantization
# ---------------------------------------------------------------------------

def quantize_values(rng, s):
    s = np.float32(s)
    k = np.arange(-300, 300, dtype=np.float32)
    ties = (k + np.float32(0.5)) * s                                   # x / s lands on (or next to) a .5 tie
    exact_ties = (k + np.float32(0.5)) * np.float32(0.25)              # exact ties for power-of-two scales
    big = np.array([1e7, 8388607.0, 8388608.0, 8388609.0, 16777216.0, 1e10, 1e30, 3.4e38, np.inf], np.float32)
    edges = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-38, -1e-38, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5], np.float32)
    edges = np.concatenate([edges, edges * s, np.nextafter(ties[:50], np.float32(np.inf)),
                            np.nextafter(ties[:50], np.float32(-np.inf))])
    rnd = (rng.standard_normal(3000) * 4).astype(np.float32)
    return np.concatenate([ties, exact_ties, big, -big, big * s, -big * s, edges, rnd]).astype(np.float32)


@pytest.mark.parametrize("scale", [0.25, 0.1, 0.0123, 3.0, 1.0 / 255])
@pytest.mark.parametrize("zp", [-128, -3, 0, 17, 127])
def test_quantize_f32_s8(c, scale, zp):
    with np.errstate(over="ignore"):             # x / s of the largest floats overflows to inf, as intended
        x = quantize_values(np.random.default_rng(14), scale)
        want = quantize_input(x, SimpleNamespace(scale=np.float32(scale), zero_point=np.int32(zp)))
    np.testing.assert_array_equal(c.quantize(x, scale, zp), want)
    assert (want == -128).any() and (want == 127).any()


def test_quantize_f32_s8_nan_gives_zero_point(c):
    """numpy leaves a NaN's int8 cast undefined; the C kernel maps NaN to the zero point (real 0)."""
    x = np.array([np.nan, -np.nan, 1.0], np.float32)
    np.testing.assert_array_equal(c.quantize(x, 0.5, -7), np.array([-7, -7, -5], np.int8))


# ---------------------------------------------------------------------------
# The shipped model, node by node through C
# ---------------------------------------------------------------------------

def c_node(c, node, g, ins):
    """One node of an int8 graph through its C kernel -> (out, mask or None)."""
    a, op = node.attrs, node.op
    out_shape = (ins[0].shape[0],) + tuple(g.t(node.outputs[0]).shape[1:])
    if op == "conv2d":
        w, b = g.t(node.inputs[1]).data, g.t(node.inputs[2]).data
        return c.conv2d(ins[0], w, b, out_shape[1:3], a["stride"], a["pads"], a["dilation"], a["groups"],
                        a["in_zp"], a["out_zp"], a["mult"], a["shift"], a["act_min"], a["act_max"])
    if op == "fully_connected":
        w, b = g.t(node.inputs[1]).data, g.t(node.inputs[2]).data
        return c.fully_connected(ins[0], w, b, a["in_zp"], a["out_zp"], a["mult"], a["shift"], a["act_min"],
                                 a["act_max"])
    if op in ("add", "mul"):
        x1, x2 = (x.reshape((1,) * (4 - x.ndim) + x.shape) for x in ins)
        out, mask = (c.add if op == "add" else c.mul)(x1, x2, a)
        return out.reshape(out_shape), mask
    if op == "global_avg_pool":
        return c.global_avg_pool(ins[0], a["in_zp"], a["out_zp"], a["mult"], a["shift"], a["act_min"], a["act_max"])
    if op == "reshape":                    # no kernel: the same bytes
        return np.ascontiguousarray(ins[0]).reshape(out_shape).copy(), None
    raise AssertionError(f"no C kernel wired for op {op}")


@pytest.fixture(scope="module")
def mnist():
    from tinytrain.compiler.pipeline import load, quantize_graph
    from tinytrain.compiler.reference import to_ir_layout
    from tinytrain.data import load_dataset
    from tinytrain.sim.simulator import Simulator

    g = load(str(ROOT / "models" / "mcu_cnn_mnist.onnx"))
    x, _ = load_dataset(str(ROOT / "models" / "data" / "mnist_calib.npz"))
    # the sanitizer run only checks memory and UB: a smaller calibration set is enough (and 3x faster there)
    gq = quantize_graph(g, x[:40] if SANITIZE else x)
    sim = Simulator(gq)
    x20 = x[:20]
    xq = sim.quantize_input(x20)
    masks = {}
    outs, env = sim.run_int8(xq, keep=True, masks=masks)
    return SimpleNamespace(g=gq, x_ir=to_ir_layout(gq, x20), xq=xq, env=env, masks=masks, logits=outs[0])


def test_mnist_model_node_by_node(c, mnist):
    g, env = mnist.g, mnist.env
    ops = [n.op for n in g.nodes]
    assert {"conv2d", "add", "global_avg_pool", "reshape", "fully_connected"} <= set(ops)
    assert any(n.op == "conv2d" and n.attrs["groups"] > 1 for n in g.nodes)      # depthwise layers too
    for node in g.nodes:
        ins = [env[i] if i in env else g.t(i).data for i in node.inputs]
        out, mask = c_node(c, node, g, ins)
        want = env[node.outputs[0]]
        assert out.shape == want.shape, (node.id, node.op)
        np.testing.assert_array_equal(out, want, err_msg=f"n{node.id} {node.op}")
        if mask is not None:
            np.testing.assert_array_equal(mask, mnist.masks[node.id].reshape(-1), err_msg=f"n{node.id} mask")


def test_mnist_model_chained_in_c(c, mnist):
    """The whole forward in C alone: C input quantization, each node fed by C outputs."""
    g = mnist.g
    q = g.t(g.inputs[0]).q
    xq = c.quantize(mnist.x_ir, q.scale, q.zero_point)
    np.testing.assert_array_equal(xq, mnist.xq)
    env = {g.inputs[0]: xq}
    for node in g.nodes:
        ins = [env[i] if i in env else g.t(i).data for i in node.inputs]
        env[node.outputs[0]] = c_node(c, node, g, ins)[0]
    np.testing.assert_array_equal(env[g.outputs[0]], mnist.logits)


# ---------------------------------------------------------------------------
# Build hygiene and sanitizers
# ---------------------------------------------------------------------------

@pytest.mark.skipif(SANITIZE, reason="already the sanitizer run")
@pytest.mark.parametrize("opt", ["-O0", "-O3", "-Os"])
def test_compiles_warning_free(tmp_path, opt):
    flags = [f for f in CFLAGS if f not in ("-O2", "-shared", "-fPIC")]
    for src in RUNTIME_SOURCES:
        cmd = ["gcc", *flags, opt, "-Wshadow", "-Wconversion", "-Wstrict-prototypes", "-Wcast-qual",
               f"-I{INCLUDE}", "-c", str(src), "-o", str(tmp_path / (src.stem + ".o"))]
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0 and not res.stderr, res.stderr


def _libasan():
    res = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True)
    path = res.stdout.strip()
    return path if res.returncode == 0 and os.path.isabs(path) and Path(path).exists() else None


@pytest.mark.skipif(SANITIZE, reason="already the sanitizer run")
def test_sanitizers():
    """This file again with the library built with -fsanitize=address,undefined (abort on any report)."""
    asan = _libasan()
    if asan is None:
        pytest.skip("gcc has no libasan")
    env = dict(os.environ, TT_FWD_SANITIZE="1", LD_PRELOAD=asan,
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-s", "-p", "no:cacheprovider",
           str(Path(__file__).relative_to(ROOT)), "-k", "not sanitizers and not warning_free"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    log = res.stdout + res.stderr
    reports = [line for line in log.splitlines() if "Sanitizer" in line or "runtime error" in line]
    assert res.returncode == 0 and not reports, "\n".join(reports[:20]) or log[-4000:]
    assert " passed" in res.stdout, log[-4000:]
