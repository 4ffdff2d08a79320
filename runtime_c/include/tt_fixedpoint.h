/**
 * @file tt_fixedpoint.h
 * @brief Fixed-point helpers of the int8 forward pass.
 *
 * Mirrors compiler/quant/fixedpoint.py function by function: same names
 * (with a tt_ prefix), same arguments, same operations in the same order.
 * tests/test_fixedpoint.py runs both on random and edge values and requires
 * identical results.
 *
 * Rounding mode (the only one): a real multiplier M is stored as
 * mult in [2^30, 2^31) and shift in [-31, 30], M = mult * 2^(shift-31);
 * tt_requantize(acc) = floor((acc * mult + 2^(n-1)) / 2^n), n = 31 - shift,
 * i.e. round half towards +infinity, one rounding, 64-bit product, int32
 * saturation.  The multipliers are computed on the host at compile time.
 *
 * No signed overflow: every product is widened to int64 first, and negative
 * values are never shifted (tt_asr64), which C99 leaves implementation-defined.
 */
#ifndef TT_FIXEDPOINT_H
#define TT_FIXEDPOINT_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Saturate an int64 to int32. */
static inline int32_t tt_sat_s32(int64_t x)
{
    if (x > (int64_t)INT32_MAX) {
        return INT32_MAX;
    }
    if (x < (int64_t)INT32_MIN) {
        return INT32_MIN;
    }
    return (int32_t)x;
}

/** Clamp an int32 into [lo, hi]. */
static inline int32_t tt_clamp_s32(int32_t x, int32_t lo, int32_t hi)
{
    if (x < lo) {
        return lo;
    }
    if (x > hi) {
        return hi;
    }
    return x;
}

/** Arithmetic shift right by n in [0, 63], rounding towards -infinity. */
static inline int64_t tt_asr64(int64_t x, int32_t n)
{
    if (x >= 0) {
        return x >> n;
    }
    return (int64_t)-1 - (((int64_t)-1 - x) >> n);
}

/**
 * round_half_up(acc * mult * 2^(shift-31)), saturated to int32.
 * @param acc   any int32
 * @param mult  [0, 2^31-1]
 * @param shift [-31, 30]
 */
static inline int32_t tt_requantize(int32_t acc, int32_t mult, int32_t shift)
{
    /* floor(t / 2^n) for t = prod + 2^(n-1), n = 31 - shift in [1, 62], without a branch (the
     * kernels call this once per output; a sign test mispredicts): u = t + 2^63 in uint64 is
     * t's value offset to be non-negative (|prod| < 2^62, so no wrap), 2^63 is a multiple of 2^n,
     * so floor(t / 2^n) = (u >> n) - 2^(63-n), where u >> n < 2^63 converts to int64 exactly.
     * The same value as tt_asr64(t, n). */
    const int32_t n = 31 - shift;
    const int64_t prod = (int64_t)acc * (int64_t)mult;
    const uint64_t u = (uint64_t)prod + ((uint64_t)1 << (n - 1)) + ((uint64_t)1 << 63);
    const int64_t rounded = (int64_t)(u >> n) - (int64_t)((uint64_t)1 << (63 - n));
    return tt_sat_s32(rounded);
}

/**
 * tt_requantize plus the output zero point, before the output clamp.
 * Training keeps one bit per element: was this value inside [act_min, act_max]?
 */
static inline int32_t tt_requantize_zp(int32_t acc, int32_t mult, int32_t shift, int32_t zero_point)
{
    return tt_sat_s32((int64_t)tt_requantize(acc, mult, shift) + (int64_t)zero_point);
}

/**
 * tt_requantize, plus the output zero point, clamped to [act_min, act_max]
 * (a subrange of [-128, 127] carrying a fused ReLU / ReLU6).
 */
static inline int8_t tt_requantize_s8(int32_t acc, int32_t mult, int32_t shift, int32_t zero_point,
                                      int32_t act_min, int32_t act_max)
{
    return (int8_t)tt_clamp_s32(tt_requantize_zp(acc, mult, shift, zero_point), act_min, act_max);
}

/**
 * One element of y = s_1 (x1 - z1) + s_2 (x2 - z2), before the output clamp.
 * |x - z| <= 255, so (x - z) * 2^left_shift fits in int32 for left_shift <= 20.
 */
static inline int32_t tt_add_zp(int32_t x1, int32_t z1, int32_t m1, int32_t s1, int32_t x2, int32_t z2,
                                int32_t m2, int32_t s2, int32_t left_shift, int32_t mult, int32_t shift,
                                int32_t zero_point)
{
    const int32_t a = tt_requantize((int32_t)((x1 - z1) * ((int32_t)1 << left_shift)), m1, s1);
    const int32_t b = tt_requantize((int32_t)((x2 - z2) * ((int32_t)1 << left_shift)), m2, s2);
    return tt_requantize_zp((int32_t)(a + b), mult, shift, zero_point);
}

/** tt_add_zp clamped to [act_min, act_max]. */
static inline int8_t tt_add_elem_s8(int32_t x1, int32_t z1, int32_t m1, int32_t s1, int32_t x2, int32_t z2,
                               int32_t m2, int32_t s2, int32_t left_shift, int32_t mult, int32_t shift,
                               int32_t zero_point, int32_t act_min, int32_t act_max)
{
    const int32_t v = tt_add_zp(x1, z1, m1, s1, x2, z2, m2, s2, left_shift, mult, shift, zero_point);
    return (int8_t)tt_clamp_s32(v, act_min, act_max);
}

#ifdef __cplusplus
}
#endif

#endif /* TT_FIXEDPOINT_H */
