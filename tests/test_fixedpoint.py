"""The fixed-point helpers: Python (compiler/quant/fixedpoint.py, numba) and C
(runtime_c/include/tt_fixedpoint.h) give identical results, and both match an
exact big-integer model of the documented rounding mode."""
import numpy as np
import pytest
from numba import njit

from tinytrain.compiler.quant import fixedpoint as fp

from .cbuild import ROOT, build

CDEF = """
void shim_requantize(const int32_t *acc, const int32_t *mult, const int32_t *shift, int32_t *out, int32_t n);
void shim_requantize_s8(const int32_t *acc, const int32_t *mult, const int32_t *shift, const int32_t *zp,
                        const int32_t *lo, const int32_t *hi, int8_t *out, int32_t n);
void shim_sat_s32(const int64_t *x, int32_t *out, int32_t n);
void shim_asr64(const int64_t *x, const int32_t *s, int64_t *out, int32_t n);
void shim_add_s8(const int32_t *p, int8_t *out, int32_t n);
"""
I32 = np.iinfo(np.int32)


@pytest.fixture(scope="module")
def clib(tmp_path_factory):
    return build([ROOT / "tests" / "c" / "fixedpoint_shim.c"], CDEF, tmp_path_factory.mktemp("fp"))


def cptr(ffi, a, ctype):
    return ffi.cast(ctype + " *", ffi.from_buffer(a))


@njit(cache=True)
def py_requantize(acc, mult, shift, out):
    for i in range(acc.shape[0]):
        out[i] = fp.requantize(acc[i], mult[i], shift[i])


@njit(cache=True)
def py_requantize_s8(acc, mult, shift, zp, lo, hi, out):
    for i in range(acc.shape[0]):
        out[i] = fp.requantize_s8(acc[i], mult[i], shift[i], zp[i], lo[i], hi[i])


def exact_requantize(acc, mult, shift):
    """Big-integer model of the documented rounding: floor((acc*mult + 2^(n-1)) / 2^n), saturated."""
    n = 31 - int(shift)
    v = (int(acc) * int(mult) + (1 << (n - 1))) >> n      # Python >> floors, on unbounded ints
    return max(min(v, I32.max), I32.min)


def cases(rng, count=20000):
    edges_acc = np.array([I32.min, I32.min + 1, -1, 0, 1, I32.max - 1, I32.max, -(1 << 30), 1 << 30], np.int32)
    acc = np.concatenate([rng.integers(I32.min, I32.max, count, endpoint=True, dtype=np.int64).astype(np.int32),
                          rng.integers(-5000, 5000, count).astype(np.int32), np.repeat(edges_acc, 64)])
    mult = rng.integers(1 << 30, I32.max, acc.size, endpoint=True, dtype=np.int64).astype(np.int32)
    mult[:: 7] = I32.max
    mult[3:: 11] = 1 << 30
    mult[5:: 13] = 0
    shift = rng.integers(-31, 31, acc.size).astype(np.int32)
    shift[:: 5] = -31
    shift[2:: 9] = 30
    shift[4:: 17] = 0
    return acc, mult, shift


def test_requantize_python_equals_c_and_exact(clib):
    ffi, lib = clib
    acc, mult, shift = cases(np.random.default_rng(1))
    py = np.empty_like(acc)
    py_requantize(acc, mult, shift, py)
    c = np.empty_like(acc)
    lib.shim_requantize(cptr(ffi, acc, "int32_t"), cptr(ffi, mult, "int32_t"), cptr(ffi, shift, "int32_t"),
                        cptr(ffi, c, "int32_t"), acc.size)
    np.testing.assert_array_equal(py, c)
    exact = np.array([exact_requantize(a, m, s) for a, m, s in zip(acc, mult, shift)], np.int64)
    np.testing.assert_array_equal(py.astype(np.int64), exact)
    # the cases really reach saturation and both rounding directions
    assert (py == I32.max).any() and (py == I32.min).any()


def test_ties_round_towards_plus_infinity():
    half = 1 << 30                                        # mult = 2^30, shift 0: M = 0.5
    assert fp.requantize(np.int32(1), np.int32(half), np.int32(0)) == 1      # 0.5 -> 1
    assert fp.requantize(np.int32(-1), np.int32(half), np.int32(0)) == 0     # -0.5 -> 0
    assert fp.requantize(np.int32(3), np.int32(half), np.int32(0)) == 2      # 1.5 -> 2
    assert fp.requantize(np.int32(-3), np.int32(half), np.int32(0)) == -1    # -1.5 -> -1


def test_requantize_s8_python_equals_c(clib):
    ffi, lib = clib
    rng = np.random.default_rng(2)
    acc, mult, shift = cases(rng, 5000)
    n = acc.size
    zp = rng.integers(-128, 128, n).astype(np.int32)
    lo = rng.integers(-128, 0, n).astype(np.int32)
    hi = rng.integers(0, 128, n).astype(np.int32)
    lo[::3], hi[::3] = -128, 127
    py = np.empty(n, np.int8)
    py_requantize_s8(acc, mult, shift, zp, lo, hi, py)
    c = np.empty(n, np.int8)
    lib.shim_requantize_s8(*(cptr(ffi, a, "int32_t") for a in (acc, mult, shift, zp, lo, hi)),
                           cptr(ffi, c, "int8_t"), n)
    np.testing.assert_array_equal(py, c)
    assert (py == lo.astype(np.int8)).any() and (py == hi.astype(np.int8)).any()


def test_sat_and_asr_python_equals_c(clib):
    ffi, lib = clib
    rng = np.random.default_rng(3)
    i64 = np.iinfo(np.int64)
    x = np.concatenate([rng.integers(i64.min, i64.max, 5000, dtype=np.int64, endpoint=True),
                        np.array([i64.min, i64.min + 1, -1, 0, 1, i64.max, I32.max + 1, I32.min - 1], np.int64)])
    s = rng.integers(0, 64, x.size).astype(np.int32)
    c_sat = np.empty(x.size, np.int32)
    lib.shim_sat_s32(cptr(ffi, x, "int64_t"), cptr(ffi, c_sat, "int32_t"), x.size)
    c_asr = np.empty_like(x)
    lib.shim_asr64(cptr(ffi, x, "int64_t"), cptr(ffi, s, "int32_t"), cptr(ffi, c_asr, "int64_t"), x.size)
    py_sat = np.array([fp.sat_s32(v) for v in x], np.int32)
    py_asr = np.array([fp.asr64(v, k) for v, k in zip(x, s)], np.int64)
    np.testing.assert_array_equal(py_sat, c_sat)
    np.testing.assert_array_equal(py_asr, c_asr)
    np.testing.assert_array_equal(py_asr, np.array([int(v) >> int(k) for v, k in zip(x, s)], np.int64))


def test_add_python_equals_c(clib):
    ffi, lib = clib
    rng = np.random.default_rng(4)
    n = 20000
    p = np.zeros((n, 14), np.int32)
    p[:, 0] = rng.integers(-128, 128, n)
    p[:, 1] = rng.integers(-128, 128, n)
    p[:, 4] = rng.integers(-128, 128, n)
    p[:, 5] = rng.integers(-128, 128, n)
    for k in range(n):
        s1, s2, sy = np.exp(rng.uniform(-6, 1, 3))
        tm = 2 * max(s1, s2)
        p[k, 2], p[k, 3] = fp.quantize_multiplier(s1 / tm)
        p[k, 6], p[k, 7] = fp.quantize_multiplier(s2 / tm)
        p[k, 9], p[k, 10] = fp.quantize_multiplier(tm / ((1 << 20) * sy))
    p[:, 8] = 20
    p[:, 11] = rng.integers(-128, 128, n)
    p[:, 12], p[:, 13] = -128, 127
    c = np.empty(n, np.int8)
    lib.shim_add_s8(cptr(ffi, np.ascontiguousarray(p), "int32_t"), cptr(ffi, c, "int8_t"), n)
    py = np.array([fp.add_elem_s8(*row) for row in p], np.int8)
    np.testing.assert_array_equal(py, c)


@pytest.mark.parametrize("real", [1e-12, 2.0 ** -32, 3e-10, 1e-5, 0.0039, 0.5, 0.75, 0.9999999, 1.0, 1.5,
                                  123.456, 2.0 ** 29])
def test_quantize_multiplier(real):
    m, s = fp.quantize_multiplier(real)
    if m == 0:
        assert real < 2.0 ** -31 and s == 0
        return
    assert (1 << 30) <= m < (1 << 31) and -31 <= s <= 30
    assert abs(m * 2.0 ** (s - 31) - real) <= real * 2.0 ** -30


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), 2.0 ** 30])
def test_quantize_multiplier_refuses(bad):
    with pytest.raises(ValueError):
        fp.quantize_multiplier(bad)
