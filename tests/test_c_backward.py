"""The C backward and update kernels (runtime_c/src: the gradients of tt_conv.c, tt_fc.c, tt_pool.c,
tt_eltwise.c, tt_shape.c; tt_update.c) give
bit-identical results to the numba kernels of the simulator (compiler/ops/*.py):
the float32 outputs are compared on their raw bits, the updates on the new
weights and the PRNG state.  Then one training step of the shipped MNIST model:
every backward node of the training graph and every sgd_update, run by C on the
simulator's own inputs.

The whole module also runs once more in a subprocess against a build with
-fsanitize=address,undefined (test_sanitized_build_is_clean)."""
import math
import os
import re
import subprocess
import sys
from itertools import permutations
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tinytrain.compiler.ops import activation, conv, eltwise, get_op, linear, pool, train, update
from tinytrain.compiler.quant.prng import prng_seed

from .cbuild import CFLAGS, INCLUDE, ROOT, RUNTIME_SOURCES, build, header_cdef

SOURCES = RUNTIME_SOURCES
SANITIZE = os.environ.get("TT_BWD_SANITIZE") == "1"
SAN_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]
# stricter than cbuild's flags: catches implicit double arithmetic and narrowing on the device
EXTRA_WARNINGS = ["-Wconversion", "-Wsign-conversion", "-Wdouble-promotion", "-Wfloat-conversion", "-Wshadow",
                  "-Wstrict-prototypes", "-Wmissing-prototypes", "-Wcast-qual", "-Wcast-align", "-Wundef", "-Wvla",
                  "-Wfloat-equal"]


@pytest.fixture(scope="module")
def clib(tmp_path_factory):
    return build(SOURCES, header_cdef(), tmp_path_factory.mktemp("bwd"), name="ttbwd",
                 extra=SAN_FLAGS if SANITIZE else ())


# ---------------------------------------------------------------------------
# helpers

_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.int8): "int8_t", np.dtype(np.uint8): "uint8_t",
           np.dtype(np.int16): "int16_t", np.dtype(np.int32): "int32_t", np.dtype(np.uint32): "uint32_t"}


def ptr(ffi, a):
    """A typed array view of a's buffer; it keeps a alive (a cast pointer would not, for temporaries)."""
    assert a.flags.c_contiguous
    return ffi.from_buffer(_CTYPES[a.dtype] + "[]", a)


def dims(ffi, shape):
    s = (1,) * (4 - len(shape)) + tuple(int(v) for v in shape)
    return ffi.new("tt_dims *", dict(n=s[0], h=s[1], w=s[2], c=s[3]))


def conv_params(ffi, stride, pads, dil, groups):
    return ffi.new("tt_conv_params *", dict(stride_h=stride[0], stride_w=stride[1], pad_t=pads[0], pad_l=pads[1],
                                            dil_h=dil[0], dil_w=dil[1], groups=groups))


def pool_params(ffi, kernel, stride, pads, dil=(1, 1), include_pad=0):
    return ffi.new("tt_pool_params *", dict(kernel_h=kernel[0], kernel_w=kernel[1], stride_h=stride[0],
                                            stride_w=stride[1], pad_t=pads[0], pad_l=pads[1], dil_h=dil[0],
                                            dil_w=dil[1], count_include_pad=int(include_pad)))


def same_bits(c, py):
    assert c.dtype == py.dtype == np.float32 and c.shape == py.shape
    np.testing.assert_array_equal(c.view(np.uint32), py.view(np.uint32))


def rand_f32(rng, shape, zeros=0.1):
    """Signs, magnitudes over ~2^-12..2^8 and some zeros: float sums depend on their order."""
    v = rng.standard_normal(shape) * np.exp2(rng.integers(-12, 9, shape))
    v[rng.random(shape) < zeros] = 0.0
    return np.ascontiguousarray(v, np.float32)


def rand_s8(rng, shape, lo=-128, hi=127):
    return rng.integers(lo, hi + 1, shape).astype(np.int8)


def pack_mask(mask):
    """One uint8 per element -> packed bits (element i in bit i & 7 of byte i >> 3)."""
    return np.packbits(np.ascontiguousarray(mask).reshape(-1) != 0, bitorder="little")


def new_state(seed):
    s = np.zeros(1, np.uint32)
    prng_seed(s, np.uint32(seed))
    return s


# ---------------------------------------------------------------------------
# elementwise and reductions

def test_mask_grad(clib):
    ffi, lib = clib
    rng = np.random.default_rng(1)
    for n in (1, 7, 8, 9, 1000, 1003):
        dy = rand_f32(rng, n)
        mask = rng.integers(0, 256, n).astype(np.uint8)          # any nonzero byte counts as 1
        mask[rng.random(n) < 0.4] = 0
        py = np.empty(n, np.float32)
        train._mask_grad_f32(dy, mask, py)
        packed = pack_mask(mask)
        assert packed.size == math.ceil(n / 8)
        c = np.full(n, np.nan, np.float32)
        lib.tt_mask_grad_f32(n, ptr(ffi, dy), ptr(ffi, packed), ptr(ffi, c))
        same_bits(c, py)


def test_add(clib):
    ffi, lib = clib
    rng = np.random.default_rng(2)
    n = 2001
    a, b = rand_f32(rng, n), rand_f32(rng, n)
    a[:5] = [np.inf, -np.inf, 1e38, -0.0, 3e38]
    b[:5] = [1.0, -2.0, 1e38, 0.0, 3e38]
    py = np.empty(n, np.float32)
    train._add_f32(a, b, py)
    c = np.empty(n, np.float32)
    lib.tt_add_f32(n, ptr(ffi, a), ptr(ffi, b), ptr(ffi, c))
    same_bits(c, py)


@pytest.mark.parametrize("shape,out_shape", [
    ((2, 3, 4, 5), (2, 1, 1, 5)), ((1, 7, 6, 9), (1, 1, 1, 9)), ((2, 3, 4, 5), (2, 3, 4, 5)),
    ((2, 3, 4, 5), (2, 3, 4, 1)), ((2, 3, 4, 5), (2, 1, 4, 1)), ((1, 1, 1, 40), (1, 1, 1, 1))])
def test_sum_to(clib, shape, out_shape):
    ffi, lib = clib
    rng = np.random.default_rng(3)
    d = rand_f32(rng, shape)
    py = np.empty(out_shape, np.float32)
    train._sum_to_4d_f32(d, py)
    c = np.full(out_shape, np.nan, np.float32)
    lib.tt_sum_to_f32(dims(ffi, shape), ptr(ffi, d), dims(ffi, out_shape), ptr(ffi, c))
    same_bits(c, py)


# ---------------------------------------------------------------------------
# conv2d

CONV_CASES = {
    #                n  h   w  cin cout kh kw stride  pads (t, l, b, r)  dilation groups
    "regular": (1, 7, 6, 5, 4, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "batch2_pointwise": (2, 5, 4, 16, 8, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "depthwise": (1, 8, 8, 6, 6, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 6),
    "depthwise_strided": (2, 9, 8, 5, 5, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 5),
    "depthwise_mult2": (1, 7, 7, 4, 8, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 4),
    "grouped": (1, 6, 6, 8, 6, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 2),
    "grouped_3": (2, 5, 5, 9, 6, 2, 2, (1, 2), (0, 1, 1, 0), (1, 1), 3),
    "strided": (1, 10, 9, 3, 5, 3, 3, (2, 3), (1, 1, 1, 1), (1, 1), 1),
    "stride_gt_kernel": (1, 9, 10, 2, 3, 1, 2, (3, 3), (0, 0, 0, 0), (1, 1), 1),
    "padded_asymmetric": (1, 6, 7, 3, 4, 3, 2, (1, 1), (2, 0, 1, 3), (1, 1), 1),
    "dilated": (1, 9, 9, 3, 4, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2), 1),
    "dilated_depthwise": (1, 8, 9, 4, 4, 3, 3, (2, 1), (2, 3, 1, 2), (2, 3), 4),
    "1d": (2, 1, 20, 4, 5, 1, 5, (1, 2), (0, 2, 0, 2), (1, 2), 1),
    "1d_depthwise": (1, 1, 17, 6, 6, 1, 3, (1, 1), (0, 1, 0, 1), (1, 1), 6),
    # wide enough for the blocked loops (16-element inner blocks, 4 channels / 4 positions at a time)
    "wide_pointwise": (1, 4, 9, 37, 11, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "wide_regular": (1, 6, 11, 35, 9, 3, 3, (2, 1), (1, 1, 1, 1), (1, 1), 1),
    "wide_depthwise": (2, 6, 6, 40, 40, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 40),
    "wide_grouped": (1, 5, 9, 40, 10, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 2),
}


def conv_case(name, rng):
    n, h, w, cin, cout, kh, kw, stride, pads, dil, groups = CONV_CASES[name]
    oh = conv.conv_out_size(h, kh, stride[0], pads[0], pads[2], dil[0])
    ow = conv.conv_out_size(w, kw, stride[1], pads[1], pads[3], dil[1])
    assert oh > 0 and ow > 0
    x = rand_s8(rng, (n, h, w, cin))
    wt = rand_s8(rng, (cout, kh, kw, cin // groups), -127, 127)
    dpre = rand_f32(rng, (n, oh, ow, cout))
    w_scale = (rng.random(cout) * 0.05 + 1e-4).astype(np.float32)
    return x, wt, dpre, w_scale, stride, pads, dil, groups


@pytest.mark.parametrize("name", sorted(CONV_CASES))
def test_conv2d_grad_input(clib, name):
    ffi, lib = clib
    x, wt, dpre, w_scale, stride, pads, dil, groups = conv_case(name, np.random.default_rng(10))
    py = np.empty(x.shape, np.float32)
    conv._conv2d_grad_input_f32(dpre, wt, w_scale, py, stride[0], stride[1], pads[0], pads[1], dil[0], dil[1],
                                groups)
    c = np.full(x.shape, np.nan, np.float32)
    lib.tt_conv2d_grad_input_f32(conv_params(ffi, stride, pads, dil, groups), dims(ffi, dpre.shape),
                                 ptr(ffi, dpre), dims(ffi, wt.shape), ptr(ffi, wt), ptr(ffi, w_scale),
                                 dims(ffi, x.shape), ptr(ffi, c))
    same_bits(c, py)


@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.25])
@pytest.mark.parametrize("name", sorted(CONV_CASES))
def test_conv2d_grad_weight(clib, name, ratio):
    ffi, lib = clib
    x, wt, dpre, _, stride, pads, dil, groups = conv_case(name, np.random.default_rng(11))
    depthwise = groups > 1 and wt.shape[3] == 1
    dw_shape = conv.grad_update_shape(wt.shape, ratio, depthwise)
    if ratio < 1.0:       # partial: the first channels (output channels for depthwise, else input channels)
        assert dw_shape != wt.shape or min(wt.shape[0], wt.shape[3]) == 1
    x_zp, x_scale = -17, np.float32(0.0213)
    py = np.empty(dw_shape, np.float32)
    conv._conv2d_grad_weight_f32(dpre, x, x_zp, x_scale, py, stride[0], stride[1], pads[0], pads[1], dil[0],
                                 dil[1], groups, dw_shape[0])
    c = np.full(dw_shape, np.nan, np.float32)
    lib.tt_conv2d_grad_weight_f32(conv_params(ffi, stride, pads, dil, groups), dims(ffi, dpre.shape),
                                  ptr(ffi, dpre), dims(ffi, x.shape), ptr(ffi, x), x_zp, x_scale,
                                  dims(ffi, dw_shape), ptr(ffi, c))
    same_bits(c, py)


def test_bias_grad(clib):
    ffi, lib = clib
    rng = np.random.default_rng(12)
    for shape in ((1, 7, 7, 16), (2, 5, 3, 9), (3, 10), (1, 1, 1, 5)):
        dpre = rand_f32(rng, shape)
        py = np.empty(shape[-1], np.float32)
        conv._bias_grad_f32(dpre, py)
        c = np.full(shape[-1], np.nan, np.float32)
        lib.tt_bias_grad_f32(dpre.size // shape[-1], shape[-1], ptr(ffi, dpre), ptr(ffi, c))
        same_bits(c, py)


# ---------------------------------------------------------------------------
# fully connected

@pytest.mark.parametrize("batch,k,m", [(1, 160, 10), (3, 37, 11), (2, 1, 4)])
def test_fc_grad_input(clib, batch, k, m):
    ffi, lib = clib
    rng = np.random.default_rng(20)
    dpre, w = rand_f32(rng, (batch, m)), rand_s8(rng, (m, k), -127, 127)
    w_scale = (rng.random(m) * 0.05 + 1e-4).astype(np.float32)
    py = np.empty((batch, k), np.float32)
    linear._fc_grad_input_f32(dpre, w, w_scale, py)
    c = np.full((batch, k), np.nan, np.float32)
    lib.tt_fc_grad_input_f32(batch, k, m, ptr(ffi, dpre), ptr(ffi, w), ptr(ffi, w_scale), ptr(ffi, c))
    same_bits(c, py)


@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.25, 0.125])
@pytest.mark.parametrize("batch,k,m", [(1, 160, 10), (3, 37, 11)])
def test_fc_grad_weight(clib, batch, k, m, ratio):
    ffi, lib = clib
    rng = np.random.default_rng(21)
    dpre, x = rand_f32(rng, (batch, m)), rand_s8(rng, (batch, k))
    k_n = max(1, int(np.ceil(k * ratio)))                      # linear._fc_grad_attrs
    x_zp, x_scale = 5, np.float32(0.0098)
    py = np.empty((m, k_n), np.float32)
    linear._fc_grad_weight_f32(dpre, x, x_zp, x_scale, py)
    c = np.full((m, k_n), np.nan, np.float32)
    lib.tt_fc_grad_weight_f32(batch, k, m, k_n, ptr(ffi, dpre), ptr(ffi, x), x_zp, x_scale, ptr(ffi, c))
    same_bits(c, py)


@pytest.mark.parametrize("batch,k,m", [(1, 160, 10), (3, 37, 11)])
def test_fc_f32_grad_input(clib, batch, k, m):
    ffi, lib = clib
    rng = np.random.default_rng(22)
    dy, w = rand_f32(rng, (batch, m)), rand_f32(rng, (m, k))
    py = np.empty((batch, k), np.float32)
    linear._fc_f32_grad_input(dy, w, py)
    c = np.full((batch, k), np.nan, np.float32)
    lib.tt_fc_f32_grad_input(batch, k, m, ptr(ffi, dy), ptr(ffi, w), ptr(ffi, c))
    same_bits(c, py)


# ---------------------------------------------------------------------------
# mul, pooling, table activations, data movement

@pytest.mark.parametrize("d_shape,other_shape,out_shape", [
    ((2, 3, 4, 5), (2, 1, 1, 5), (2, 3, 4, 5)),     # the gated tensor's gradient (squeeze-excite)
    ((2, 3, 4, 5), (2, 3, 4, 5), (2, 1, 1, 5)),     # the gate's gradient: summed over H, W
    ((1, 3, 4, 5), (1, 3, 4, 1), (1, 1, 1, 5)),     # both broadcast
    ((2, 1, 6, 3), (2, 1, 6, 3), (2, 1, 6, 3))])    # same shapes
def test_mul_grad(clib, d_shape, other_shape, out_shape):
    ffi, lib = clib
    rng = np.random.default_rng(30)
    d, other = rand_f32(rng, d_shape), rand_s8(rng, other_shape)
    o_zp, o_scale = -3, np.float32(0.0371)
    py = np.empty(out_shape, np.float32)
    eltwise._mul_grad_4d_f32(d, other, o_zp, o_scale, py)
    c = np.full(out_shape, np.nan, np.float32)
    lib.tt_mul_grad_f32(dims(ffi, d_shape), ptr(ffi, d), dims(ffi, other_shape), ptr(ffi, other), o_zp, o_scale,
                        dims(ffi, out_shape), ptr(ffi, c))
    same_bits(c, py)


POOL_CASES = [
    # n  h  w  c  kernel  stride  pads (t, l, b, r)  dilation
    (2, 7, 8, 3, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    (1, 6, 6, 4, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),
    (1, 5, 7, 2, (3, 2), (1, 2), (1, 0, 2, 1), (1, 1)),
    (1, 4, 4, 2, (2, 2), (1, 1), (2, 2, 2, 2), (1, 1)),      # windows entirely in the padding
    (1, 9, 8, 3, (3, 3), (1, 2), (2, 2, 2, 2), (2, 2)),      # dilated (max pool only)
    (2, 1, 15, 3, (1, 4), (1, 3), (0, 1, 0, 2), (1, 1)),     # 1-D
]


def pool_out(case):
    n, h, w, c, k, s, p, dil = case
    return (n, conv.conv_out_size(h, k[0], s[0], p[0], p[2], dil[0]),
            conv.conv_out_size(w, k[1], s[1], p[1], p[3], dil[1]), c)


@pytest.mark.parametrize("include_pad", [0, 1])
@pytest.mark.parametrize("case", [c for c in POOL_CASES if c[7] == (1, 1)])
def test_avg_pool_grad(clib, case, include_pad):
    ffi, lib = clib
    rng = np.random.default_rng(40)
    n, h, w, c_n, k, s, p, _ = case
    d = rand_f32(rng, pool_out(case))
    inv_count = np.array([0.0] + [1.0 / c for c in range(1, k[0] * k[1] + 1)], np.float32)  # pool._pool_grad_attrs
    py = np.empty((n, h, w, c_n), np.float32)
    pool._avg_pool_grad_f32(d, py, k[0], k[1], s[0], s[1], p[0], p[1], bool(include_pad), inv_count)
    c = np.full(py.shape, np.nan, np.float32)
    lib.tt_avg_pool_grad_f32(pool_params(ffi, k, s, p, include_pad=include_pad), dims(ffi, d.shape), ptr(ffi, d),
                             ptr(ffi, inv_count), dims(ffi, py.shape), ptr(ffi, c))
    same_bits(c, py)


@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool_grad(clib, case):
    ffi, lib = clib
    rng = np.random.default_rng(41)
    n, h, w, c_n, k, s, p, dil = case
    d = rand_f32(rng, pool_out(case))
    x = rand_s8(rng, (n, h, w, c_n), -3, 2)                   # many ties: the first maximum wins
    x[rng.random(x.shape) < 0.2] = -128
    x[0, :, :, 0] = -128                                        # a channel of all-minimum windows
    py = np.empty(x.shape, np.float32)
    pool._max_pool_grad_f32(d, x, py, k[0], k[1], s[0], s[1], p[0], p[1], dil[0], dil[1])
    c = np.full(x.shape, np.nan, np.float32)
    lib.tt_max_pool_grad_f32(pool_params(ffi, k, s, p, dil), dims(ffi, d.shape), ptr(ffi, d), ptr(ffi, x),
                             dims(ffi, x.shape), ptr(ffi, c))
    same_bits(c, py)


def test_max_pool_grad_first_maximum_wins(clib):
    ffi, lib = clib
    x = np.array([1, 5, 5, 5], np.int8).reshape(1, 1, 4, 1)
    d = np.array([2.5], np.float32).reshape(1, 1, 1, 1)
    c = np.full(x.shape, np.nan, np.float32)
    lib.tt_max_pool_grad_f32(pool_params(ffi, (1, 4), (1, 4), (0, 0)), dims(ffi, d.shape), ptr(ffi, d),
                             ptr(ffi, x), dims(ffi, x.shape), ptr(ffi, c))
    np.testing.assert_array_equal(c.reshape(-1), [0.0, 2.5, 0.0, 0.0])


def test_global_avg_pool_grad(clib):
    ffi, lib = clib
    rng = np.random.default_rng(42)
    for shape in ((2, 4, 5, 6), (1, 4, 4, 160), (1, 1, 9, 3)):
        d = rand_f32(rng, (shape[0], 1, 1, shape[3]))
        inv_hw = np.float32(1.0 / (shape[1] * shape[2]))
        py = np.empty(shape, np.float32)
        pool._global_avg_pool_grad_f32(d, py, inv_hw)
        c = np.full(shape, np.nan, np.float32)
        lib.tt_global_avg_pool_grad_f32(dims(ffi, shape), ptr(ffi, d), inv_hw, ptr(ffi, c))
        same_bits(c, py)


def test_lut_grad(clib):
    ffi, lib = clib
    rng = np.random.default_rng(43)
    n = 3000
    dy, x, dtable = rand_f32(rng, n), rand_s8(rng, n), rand_f32(rng, 256)
    x[:2] = [-128, 127]
    py = np.empty(n, np.float32)
    activation._lut_grad_f32(dy, x, dtable, py)
    c = np.full(n, np.nan, np.float32)
    lib.tt_lut_grad_f32(n, ptr(ffi, dy), ptr(ffi, x), ptr(ffi, dtable), ptr(ffi, c))
    same_bits(c, py)


@pytest.mark.parametrize("shape,axis,start,stop", [
    ((2, 5, 6, 7), 1, 1, 4), ((2, 5, 6, 7), 2, 0, 6), ((2, 5, 6, 7), 3, 2, 5), ((2, 5, 6, 7), 3, 6, 7),
    ((1, 3, 3, 8), 3, 0, 3), ((3, 10), 1, 4, 10)])             # 2-D [N, K]: axis 1 is NHWC axis 3
def test_slice(clib, shape, axis, start, stop):
    ffi, lib = clib
    x = rand_f32(np.random.default_rng(50), shape)
    node = SimpleNamespace(attrs=dict(axis=axis, start=start, stop=stop))
    py = get_op("slice").sim(node, None, [x])[0]
    c = np.full(py.shape, np.nan, np.float32)
    axis4 = axis + 4 - len(shape)
    lib.tt_slice_f32(dims(ffi, shape), ptr(ffi, x), axis4, start, stop, ptr(ffi, c))
    same_bits(c, py)


@pytest.mark.parametrize("perm", [p for p in permutations(range(4)) if p[0] == 0])
def test_transpose(clib, perm):
    ffi, lib = clib
    x = rand_f32(np.random.default_rng(51), (2, 3, 4, 5))
    node = SimpleNamespace(attrs=dict(perm=perm))
    py = get_op("transpose").ref(node, None, [x])[0]
    c = np.full(py.shape, np.nan, np.float32)
    lib.tt_transpose_f32(dims(ffi, x.shape), ptr(ffi, x), ffi.new("int32_t[4]", list(perm)), ptr(ffi, c))
    same_bits(c, py)


# ---------------------------------------------------------------------------
# SGD updates

def run_s8_stochastic(clib, w, g, factor, lr, seed):
    """numba and C from the same weights and PRNG state -> (w_py, w_c, state_py, state_c)."""
    ffi, lib = clib
    w_py, w_c = w.copy(), w.copy()
    s_py, s_c = new_state(seed), new_state(seed)
    update._sgd_s8_stochastic(w_py, g, factor, lr, s_py)
    w_inner, g_inner = w[0].size, g[0].size
    lib.tt_sgd_s8_stochastic(ptr(ffi, w_c), w_inner, w.shape[-1], ptr(ffi, g), g.shape[0], g_inner, g.shape[-1],
                             ptr(ffi, factor), lr, ptr(ffi, s_c))
    return w_py, w_c, s_py, s_c


def run_s8_shadow(clib, w, sh, g, factor, lr):
    ffi, lib = clib
    w_py, w_c, sh_py, sh_c = w.copy(), w.copy(), sh.copy(), sh.copy()
    update._sgd_s8_shadow(w_py, sh_py, g, factor, lr)
    lib.tt_sgd_s8_shadow(ptr(ffi, w_c), ptr(ffi, sh_c), w[0].size, w.shape[-1], ptr(ffi, g), g.shape[0], g[0].size,
                         g.shape[-1], ptr(ffi, factor), lr)
    return w_py, w_c, sh_py, sh_c


# (w shape, g shape): full conv, partial input channels, partial depthwise (first output channels),
# fully connected full and partial
UPDATE_SHAPES = [((6, 3, 3, 8), (6, 3, 3, 8)), ((6, 3, 3, 8), (6, 3, 3, 3)), ((8, 3, 3, 1), (4, 3, 3, 1)),
                 ((16, 1, 1, 48), (16, 1, 1, 12)), ((10, 37), (10, 37)), ((10, 37), (10, 19))]
# step = (g * factor) * lr: ordinary, tiny (stochastic rounding decides), saturating, clipped
UPDATE_REGIMES = {"ordinary": 3.0, "tiny": 3e-2, "saturating": 300.0, "clipped": 1e30}


def update_inputs(rng, w_shape, g_shape, regime):
    w = rand_s8(rng, w_shape, -127, 127)
    w.reshape(-1)[:: 7] = 127
    w.reshape(-1)[3:: 7] = -127
    g = (rng.standard_normal(g_shape) * UPDATE_REGIMES[regime]).astype(np.float32)
    if regime == "clipped":
        g.reshape(-1)[:: 5] = np.inf
        g.reshape(-1)[1:: 5] = -np.inf
    factor = (rng.random(g_shape[0]) * 2.0 + 0.5).astype(np.float32)
    return w, g, factor, np.float32(0.37)


@pytest.mark.parametrize("regime", sorted(UPDATE_REGIMES))
@pytest.mark.parametrize("w_shape,g_shape", UPDATE_SHAPES)
def test_sgd_s8_stochastic(clib, w_shape, g_shape, regime):
    rng = np.random.default_rng(60)
    w, g, factor, lr = update_inputs(rng, w_shape, g_shape, regime)
    w_py, w_c, s_py, s_c = run_s8_stochastic(clib, w, g, factor, lr, seed=7)
    np.testing.assert_array_equal(w_c, w_py)
    np.testing.assert_array_equal(s_c, s_py)
    assert s_py[0] != new_state(7)[0]
    changed = w_py != w
    assert changed.any() or (regime == "tiny" and g.size < 100)
    if g_shape != w_shape:                                  # only the first channels move
        untouched = np.ones(w_shape, bool)
        untouched[tuple(slice(0, s) for s in g_shape)] = False
        assert not changed[untouched].any()
    if regime in ("saturating", "clipped"):
        assert (w_py[changed] == 127).any() and (w_py[changed] == -127).any()
    if regime == "tiny":                                    # |step| < 1: a move of at most 1, rarely
        assert np.abs(w_py.astype(np.int32) - w).max() <= 1 and changed.mean() < 0.1


@pytest.mark.parametrize("regime", sorted(UPDATE_REGIMES))
@pytest.mark.parametrize("w_shape,g_shape", UPDATE_SHAPES)
def test_sgd_s8_shadow(clib, w_shape, g_shape, regime):
    rng = np.random.default_rng(61)
    _, g, factor, lr = update_inputs(rng, w_shape, g_shape, regime)
    sh = rng.integers(-127 * 256, 127 * 256 + 1, w_shape).astype(np.int16)
    sh.reshape(-1)[:: 9] = 127 * 256
    sh.reshape(-1)[4:: 9] = -127 * 256
    sh.reshape(-1)[5:: 9] = -128                            # exactly half a step below zero
    w = np.clip(np.floor((sh.astype(np.int64) + 128) / 256), -127, 127).astype(np.int8)
    w_py, w_c, sh_py, sh_c = run_s8_shadow(clib, w, sh, g, factor, lr)
    np.testing.assert_array_equal(w_c, w_py)
    np.testing.assert_array_equal(sh_c, sh_py)
    assert (sh_py != sh).any()
    if regime in ("saturating", "clipped"):
        assert (sh_py == 127 * 256).any() and (sh_py == -127 * 256).any()


@pytest.mark.parametrize("regime", sorted(UPDATE_REGIMES))
def test_sgd_s32_stochastic(clib, regime):
    ffi, lib = clib
    rng = np.random.default_rng(62)
    n = 400
    imax, imin = np.iinfo(np.int32).max, np.iinfo(np.int32).min
    b = rng.integers(-5000, 5000, n).astype(np.int32)
    b[:: 4] = imax - rng.integers(0, 3, n)[:: 4]
    b[1:: 4] = imin + rng.integers(0, 3, n)[1:: 4]
    g = (rng.standard_normal(n) * UPDATE_REGIMES[regime]).astype(np.float32)
    if regime in ("saturating", "clipped"):
        g = g * np.float32(1e4)
        g[:: 4] = -np.abs(g[:: 4])                          # push the near-maximum ones up
        g[1:: 4] = np.abs(g[1:: 4])                         # and the near-minimum ones down
    if regime == "clipped":
        g[2:: 8], g[3:: 8] = np.inf, -np.inf
    factor = (rng.random(n) * 2.0 + 0.5).astype(np.float32)
    lr = np.float32(0.37)
    b_py, b_c = b.copy(), b.copy()
    s_py, s_c = new_state(9), new_state(9)
    lim = np.int32(np.iinfo(np.int32).max)                  # no layer limit: the int32 range itself
    sat_py = update._sgd_s32_stochastic(b_py, g, factor, lr, lim, s_py)
    sat_c = lib.tt_sgd_s32_stochastic(ptr(ffi, b_c), n, ptr(ffi, g), ptr(ffi, factor), lr, lim, ptr(ffi, s_c))
    assert sat_c == sat_py
    np.testing.assert_array_equal(b_c, b_py)
    np.testing.assert_array_equal(s_c, s_py)
    assert (b_py != b).any()
    if regime in ("saturating", "clipped"):                 # the clamp is symmetric: [-limit, limit]
        assert (b_py == imax).any() and (b_py == -imax).any() and sat_py > 0
    if regime == "clipped":                                 # a clipped step moves by 2^20 (+-1 from float rounding)
        mid = (b > -10000) & (b < 10000) & np.isinf(g)
        moved = np.abs(b_py[mid].astype(np.int64) - b[mid])
        assert mid.any() and ((moved >= (1 << 20) - 1) & (moved <= (1 << 20) + 1)).all()


def test_sgd_f32(clib):
    ffi, lib = clib
    rng = np.random.default_rng(63)
    for shape in ((10, 160), (10,), (3, 2, 2, 5)):
        w, g = rand_f32(rng, shape), rand_f32(rng, shape)
        lr = np.float32(0.0123)
        w_py, w_c = w.copy(), w.copy()
        update._sgd_f32(w_py, g, lr)
        lib.tt_sgd_f32(ptr(ffi, w_c), w.size, ptr(ffi, g), lr)
        same_bits(w_c, w_py)


def test_prng_continues_across_updates(clib):
    """Several updates in a row share one state: C and numba stay in step."""
    ffi, lib = clib
    rng = np.random.default_rng(64)
    s_py, s_c = new_state(123), new_state(123)
    for w_shape, g_shape in UPDATE_SHAPES:
        w, g, factor, lr = update_inputs(rng, w_shape, g_shape, "ordinary")
        w_py, w_c = w.copy(), w.copy()
        update._sgd_s8_stochastic(w_py, g, factor, lr, s_py)
        lib.tt_sgd_s8_stochastic(ptr(ffi, w_c), w[0].size, w.shape[-1], ptr(ffi, g), g.shape[0], g[0].size,
                                 g.shape[-1], ptr(ffi, factor), lr, ptr(ffi, s_c))
        np.testing.assert_array_equal(w_c, w_py)
        np.testing.assert_array_equal(s_c, s_py)


# ---------------------------------------------------------------------------
# end to end: one training step of the shipped model

@pytest.fixture(scope="module")
def mnist_int8():
    from tinytrain.compiler.pipeline import load, quantize_graph
    from tinytrain.data import load_dataset
    g = load(ROOT / "models" / "mcu_cnn_mnist.onnx")
    x, y = load_dataset(ROOT / "models" / "data" / "mnist_calib.npz", g.meta["input_shape"])
    return quantize_graph(g, x), x, y


def c_backward_node(clib, g, node, ins):
    """Run the C kernel of one backward node on the simulator's inputs -> its output."""
    ffi, lib = clib
    a = node.attrs
    out = g.t(node.outputs[0])
    op = node.op
    if op == "mask_grad":
        dy = np.ascontiguousarray(ins[0], np.float32)
        res = np.full(dy.shape, np.nan, np.float32)
        lib.tt_mask_grad_f32(dy.size, ptr(ffi, dy), ptr(ffi, pack_mask(ins[1])), ptr(ffi, res))
        return res
    if op == "grad_add":
        res = np.full(ins[0].shape, np.nan, np.float32)
        lib.tt_add_f32(res.size, ptr(ffi, ins[0]), ptr(ffi, ins[1]), ptr(ffi, res))
        return res
    if op == "reshape":                                   # the device copies (or aliases) the bytes
        src = np.ascontiguousarray(ins[0])
        res = np.full((src.shape[0],) + tuple(a["shape"][1:]), np.nan, np.float32)
        ffi.memmove(ffi.from_buffer(res), ffi.from_buffer(src), src.nbytes)
        return res
    if op == "conv2d_grad_input":
        dpre, w = ins
        res = np.full((dpre.shape[0],) + tuple(a["x_shape"][1:]), np.nan, np.float32)
        lib.tt_conv2d_grad_input_f32(conv_params(ffi, a["stride"], a["pads"], a["dilation"], a["groups"]),
                                     dims(ffi, dpre.shape), ptr(ffi, dpre), dims(ffi, w.shape), ptr(ffi, w),
                                     ptr(ffi, a["w_scale"]), dims(ffi, res.shape), ptr(ffi, res))
        return res
    if op == "conv2d_grad_weight":
        dpre, x = ins
        res = np.full(tuple(a["dw_shape"]), np.nan, np.float32)
        dp = ptr(ffi, dpre) + a.get("co_offset", 0)      # a slice of output channels (passes/chunk_grads.py)
        lib.tt_conv2d_grad_weight_f32(conv_params(ffi, a["stride"], a["pads"], a["dilation"], a["groups"]),
                                      dims(ffi, dpre.shape), dp, dims(ffi, x.shape), ptr(ffi, x),
                                      a["x_zp"], np.float32(a["x_scale"]), dims(ffi, res.shape), ptr(ffi, res))
        return res
    if op == "bias_grad":
        dpre = np.ascontiguousarray(ins[0])
        res = np.full(dpre.shape[-1], np.nan, np.float32)
        lib.tt_bias_grad_f32(dpre.size // dpre.shape[-1], dpre.shape[-1], ptr(ffi, dpre), ptr(ffi, res))
        return res
    if op == "fully_connected_grad_input":
        dpre, w = ins
        res = np.full((dpre.shape[0], a["x_shape"][1]), np.nan, np.float32)
        lib.tt_fc_grad_input_f32(dpre.shape[0], w.shape[1], w.shape[0], ptr(ffi, dpre), ptr(ffi, w),
                                 ptr(ffi, a["w_scale"]), ptr(ffi, res))
        return res
    if op == "fully_connected_f32_grad_input":
        dy, w = ins
        res = np.full((dy.shape[0], a["x_shape"][1]), np.nan, np.float32)
        lib.tt_fc_f32_grad_input(dy.shape[0], w.shape[1], w.shape[0], ptr(ffi, dy), ptr(ffi, w), ptr(ffi, res))
        return res
    if op == "fully_connected_grad_weight":
        dpre, x = ins
        res = np.full(tuple(a["dw_shape"]), np.nan, np.float32)
        lib.tt_fc_grad_weight_f32(x.shape[0], x.shape[1], res.shape[0], res.shape[1], ptr(ffi, dpre), ptr(ffi, x),
                                  a["x_zp"], np.float32(a["x_scale"]), ptr(ffi, res))
        return res
    if op == "global_avg_pool_grad":
        res = np.full((ins[0].shape[0],) + tuple(a["x_shape"][1:]), np.nan, np.float32)
        lib.tt_global_avg_pool_grad_f32(dims(ffi, res.shape), ptr(ffi, ins[0]), np.float32(a["inv_hw"]),
                                        ptr(ffi, res))
        return res
    raise AssertionError(f"no C kernel checked for backward op {op} (n{node.id}, output {out.name})")


def c_update(clib, p, grad, factor, lr, rounding, w0, sh0, state0, row_offset=None, limit=None):
    """The C update of one parameter from the given start -> (new data, new shadow, new state).
    row_offset: the gradient covers rows row_offset.. of the parameter (passes/chunk_grads.py)."""
    ffi, lib = clib
    w_all, state = w0.copy(), state0.copy()
    sh_all = None if sh0 is None else sh0.copy()
    r0 = row_offset or 0
    rows = slice(r0, r0 + grad.shape[0]) if row_offset is not None else slice(None)
    w = w_all[rows]
    sh = None if sh_all is None else sh_all[rows]
    g = np.ascontiguousarray(grad, np.float32)
    if p.dtype == "float32":
        lib.tt_sgd_f32(ptr(ffi, w), g.size, ptr(ffi, g), lr)
    elif p.dtype == "int32":
        lib.tt_sgd_s32_stochastic(ptr(ffi, w), g.size, ptr(ffi, g), ptr(ffi, factor), lr, limit, ptr(ffi, state))
    elif rounding == "shadow":
        lib.tt_sgd_s8_shadow(ptr(ffi, w), ptr(ffi, sh), w[0].size, w.shape[-1], ptr(ffi, g), g.shape[0], g[0].size,
                             g.shape[-1], ptr(ffi, factor), lr)
    else:
        lib.tt_sgd_s8_stochastic(ptr(ffi, w), w[0].size, w.shape[-1], ptr(ffi, g), g.shape[0], g[0].size,
                                 g.shape[-1], ptr(ffi, factor), lr, ptr(ffi, state))
    return w_all, sh_all, state


@pytest.mark.parametrize("scheme,float_classifier", [("full", False), ("sparse", True)])
def test_end_to_end_mcu_cnn(clib, mnist_int8, scheme, float_classifier):
    from tinytrain.compiler.pipeline import training_graph
    from tinytrain.train.backprop import BackpropTrainer, TrainContext

    gq, x, y = mnist_int8
    tg = training_graph(gq, scheme, float_classifier=float_classifier)
    trainer = BackpropTrainer(tg, lr=0.05)
    env = trainer.gradients(x[3], int(y[3]))
    forward = set(tg.meta["training"]["forward"])
    checked = {}
    for node in tg.nodes:
        if node.id in forward or node.op in ("softmax_xent", "sgd_update"):
            continue
        ins = [env[i] if i in env else tg.t(i).data for i in node.inputs]
        res = c_backward_node(clib, tg, node, ins)
        same_bits(res, env[node.outputs[0]])
        checked[node.op] = checked.get(node.op, 0) + 1
    expect = {"mask_grad", "conv2d_grad_input", "conv2d_grad_weight", "bias_grad", "fully_connected_grad_weight",
              "global_avg_pool_grad", "grad_add", "reshape"}
    expect.add("fully_connected_f32_grad_input" if float_classifier else "fully_connected_grad_input")
    assert set(checked) == expect, checked
    assert np.any(env[tg.outputs[1]] > 0)                   # a real loss, real gradients

    # every sgd_update, in graph order, numba (the op's own apply) and C from the same weights and PRNG state
    sgd_op = get_op("sgd_update")
    kinds = set()
    for rounding in ("stochastic", "shadow"):
        ctx = TrainContext(lr=0.05, rounding=rounding, seed=11)
        for node in tg.nodes:
            if node.op != "sgd_update":
                continue
            p = tg.t(node.inputs[0])
            grad = env[node.inputs[1]]
            w0, state0 = p.data.copy(), ctx.prng.copy()
            sh0 = None
            if p.dtype == "int8":
                sh0 = ctx.shadow[p.id].copy() if p.id in ctx.shadow else w0.astype(np.int16) * np.int16(256)
            w_c, sh_c, state_c = c_update(clib, p, grad, node.attrs["factor"], ctx.lr, rounding, w0, sh0, state0,
                                          node.attrs.get("row_offset"), node.attrs.get("limit"))
            sgd_op.apply(node, tg, grad, ctx)
            if p.dtype == "float32":
                same_bits(w_c, p.data)
            else:
                np.testing.assert_array_equal(w_c, p.data)
            np.testing.assert_array_equal(state_c, ctx.prng)
            if p.dtype == "int8" and rounding == "shadow":
                np.testing.assert_array_equal(sh_c, ctx.shadow[p.id])
            kinds.add((str(p.dtype), rounding, grad.shape != p.data.shape))
    # int8 weight gradients may all be partial here (sparse channels, or row slices of chunk_grads)
    assert {("int8", "stochastic"), ("int32", "stochastic")} <= {k[:2] for k in kinds}
    if float_classifier:
        assert ("float32", "stochastic", False) in kinds and ("int8", "shadow", True) in kinds


# ---------------------------------------------------------------------------
# builds

def test_strict_warnings(tmp_path):
    """Beyond cbuild's -Wall -Wextra -Werror -pedantic: no implicit double, no narrowing, -O0 and -Os too."""
    for opt in ("-O0", "-Os", "-O3"):
        for src in SOURCES:
            cmd = ["gcc", *[f for f in CFLAGS if f not in ("-O2", "-shared", "-fPIC")], opt, *EXTRA_WARNINGS, "-c",
                   f"-I{INCLUDE}", str(src), "-o", str(tmp_path / (src.stem + ".o"))]
            res = subprocess.run(cmd, capture_output=True, text=True)
            assert res.returncode == 0 and not res.stderr, f"{' '.join(cmd)}\n{res.stderr}"


def test_no_globals_no_libm_but_floorf(tmp_path):
    """No runtime file has data (no globals); the only calls out are libm's floorf in tt_update.c and tt_zo.c and the
    memset / memcpy that gcc may emit for plain loops (required even of freestanding C), besides calls
    between the runtime's own files (tt_lowmem.c uses tt_conv2d_s8)."""
    syms = {}
    for src in SOURCES:
        obj = tmp_path / (src.stem + ".o")
        subprocess.run(["gcc", "-std=c99", "-O2", "-ffp-contract=off", f"-I{INCLUDE}", "-c", str(src), "-o",
                        str(obj)], check=True)
        syms[src.stem] = subprocess.run(["nm", str(obj)], capture_output=True, text=True,
                                        check=True).stdout.split("\n")
    own = {s.split()[-1] for lines in syms.values() for s in lines if re.match(r"^\S+ T ", s)}
    for stem, lines in syms.items():
        data = [s for s in lines if re.match(r"^\S+ [bBdDgGsSC] ", s)]      # writable data (r: constants)
        assert not data, (stem, data)
        undefined = {s.split()[-1] for s in lines if re.match(r"^\s+U ", s)}
        allowed = {"memset", "memcpy", "memmove"} | ({"floorf"} if stem in ("tt_update", "tt_zo") else set())
        assert undefined <= allowed | own, (stem, undefined)


@pytest.mark.skipif(SANITIZE, reason="this run is the sanitized one")
def test_sanitized_build_is_clean():
    """This module again, against a -fsanitize=address,undefined build (any report aborts)."""
    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not Path(libasan).is_file():
        pytest.skip("no libasan")
    env = dict(os.environ, TT_BWD_SANITIZE="1", LD_PRELOAD=libasan,
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1", UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    res = subprocess.run([sys.executable, "-m", "pytest", str(Path(__file__).resolve()), "-q", "-x", "-p",
                          "no:cacheprovider", "-k", "not strict_warnings and not no_globals"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-6000:]
    assert " passed" in res.stdout
