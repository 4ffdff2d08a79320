"""Fixed-point helpers of the int8 forward pass.

This module and `runtime_c/include/tt_fixedpoint.h` mirror each other function
by function (same names without the `tt_` prefix, same argument order, same
operations in the same order).  tests/test_fixedpoint.py runs both on random and
edge values and requires identical results.

The one rounding mode
---------------------
A real multiplier M > 0 is stored as an int32 `mult` in [2^30, 2^31) and an
int32 `shift` in [-31, 30] with M = mult * 2^(shift - 31).  `requantize`
computes

    round_half_up(acc * M) = floor((acc * mult + 2^(n-1)) / 2^n),  n = 31 - shift

with a 64-bit product, a single rounding, ties towards +infinity (the same as
CMSIS-NN's single-rounding mode), and saturation to int32.  n is in [1, 62],
so the product (|acc * mult| < 2^62) plus the rounding term cannot overflow
int64.  `quantize_multiplier` (host only: it runs at compile time, never on
the device) turns a float ratio of scales into (mult, shift).

Every helper works on sized numpy integers (np.int32 / np.int64) so that it
gives the same answer compiled by numba and run as plain Python
(NUMBA_DISABLE_JIT=1): numba widens to int64 on its own, plain numpy does not,
so the widening is always written out.
"""
import math

import numpy as np
from numba import njit

INT32_MIN = -2147483648
INT32_MAX = 2147483647


@njit(cache=True)
def sat_s32(x):
    """Saturate an int64 to int32 (tt_sat_s32)."""
    x = np.int64(x)
    if x > np.int64(2147483647):
        return np.int32(2147483647)
    if x < np.int64(-2147483648):
        return np.int32(-2147483648)
    return np.int32(x)


@njit(cache=True)
def clamp_s32(x, lo, hi):
    """Clamp an int32 into [lo, hi] (tt_clamp_s32)."""
    x = np.int32(x)
    if x < np.int32(lo):
        return np.int32(lo)
    if x > np.int32(hi):
        return np.int32(hi)
    return x


@njit(cache=True)
def asr64(x, n):
    """Arithmetic shift right of an int64 by n in [0, 63], rounding towards -inf
    (tt_asr64).  Written so that C never shifts a negative value, which C99
    leaves implementation-defined."""
    x = np.int64(x)
    n = np.int64(n)
    if x >= np.int64(0):
        return x >> n
    return np.int64(-1) - ((np.int64(-1) - x) >> n)


@njit(cache=True)
def requantize(acc, mult, shift):
    """round_half_up(acc * mult * 2^(shift-31)), saturated to int32 (tt_requantize).

    acc: any int32.  mult: int32 in [0, 2^31-1].  shift: int32 in [-31, 30]."""
    n = np.int64(31) - np.int64(shift)
    prod = np.int64(acc) * np.int64(mult)
    rounded = asr64(prod + (np.int64(1) << (n - np.int64(1))), n)
    return sat_s32(rounded)


@njit(cache=True)
def requantize_zp(acc, mult, shift, zero_point):
    """requantize plus the output zero point, before the output clamp (tt_requantize_zp).
    Training keeps one bit per element: was this value inside [act_min, act_max]?"""
    return sat_s32(np.int64(requantize(acc, mult, shift)) + np.int64(zero_point))


@njit(cache=True)
def requantize_s8(acc, mult, shift, zero_point, act_min, act_max):
    """requantize, add the output zero point, clamp to [act_min, act_max]
    (a subrange of [-128, 127] that carries a fused ReLU/ReLU6) (tt_requantize_s8)."""
    return np.int8(clamp_s32(requantize_zp(acc, mult, shift, zero_point), act_min, act_max))


@njit(cache=True)
def add_zp(x1, z1, m1, s1, x2, z2, m2, s2, left_shift, mult, shift, zero_point):
    """One element of the int8 addition y = s_1 (x1 - z1) + s_2 (x2 - z2), before
    the output clamp (tt_add_zp).

    Both inputs are moved to a common fixed-point scale with `left_shift`
    fraction bits (|x - z| <= 255, so 255 * 2^20 < 2^28 fits), rescaled by
    their own multipliers, summed (|sum| < 2^29) and requantized once more."""
    a = requantize(np.int32((np.int32(x1) - np.int32(z1)) * (np.int32(1) << np.int32(left_shift))), m1, s1)
    b = requantize(np.int32((np.int32(x2) - np.int32(z2)) * (np.int32(1) << np.int32(left_shift))), m2, s2)
    return requantize_zp(np.int32(a + b), mult, shift, zero_point)


@njit(cache=True)
def add_elem_s8(x1, z1, m1, s1, x2, z2, m2, s2, left_shift, mult, shift, zero_point, act_min, act_max):
    """add_zp clamped to [act_min, act_max] (tt_add_elem_s8)."""
    v = add_zp(x1, z1, m1, s1, x2, z2, m2, s2, left_shift, mult, shift, zero_point)
    return np.int8(clamp_s32(v, act_min, act_max))


def quantize_multiplier(real):
    """Host only.  A real multiplier -> (mult, shift) with real ~= mult * 2^(shift-31).

    0 (or anything below 2^-32) gives (0, 0), i.e. the result 0.  A multiplier
    of 2^30 or more cannot be represented and raises ValueError."""
    real = float(real)
    if not math.isfinite(real) or real < 0:
        raise ValueError(f"multiplier {real} is not a finite non-negative number")
    if real < 2.0 ** -32:
        return 0, 0
    q, e = math.frexp(real)          # real = q * 2^e, q in [0.5, 1)
    mult = int(round(q * (1 << 31)))
    if mult == (1 << 31):
        mult //= 2
        e += 1
    if e < -31:                      # too small for the shift range: flush to zero
        return 0, 0
    if e > 30:
        raise ValueError(f"multiplier {real} is too large (>= 2^30)")
    return mult, e


def quantize_multipliers(reals):
    """Vectorised quantize_multiplier -> (int32 array, int32 array)."""
    pairs = [quantize_multiplier(r) for r in np.asarray(reals, dtype=np.float64).reshape(-1)]
    return (np.array([p[0] for p in pairs], dtype=np.int32), np.array([p[1] for p in pairs], dtype=np.int32))
