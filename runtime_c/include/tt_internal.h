/**
 * @file tt_internal.h
 * @brief Helpers shared by the kernel files of runtime_c/src (tt_conv.c, tt_fc.c, tt_pool.c,
 *        tt_eltwise.c, tt_shape.c): NHWC indexing, clamps and masks, the requantizing store,
 *        tap ranges, the int8 dot products.  Internal: not part of the runtime's API.
 *
 * Each kernel computes what the numba kernel named in its comment computes
 * (compiler/ops/...).  The int8 forward gives the same integer values, the same rounding
 * (tt_fixedpoint.h), so the outputs are identical (tests/test_c_forward.py checks outputs and
 * masks).  Integer sums are exact (see the bounds), so the order of the taps and channels is
 * free: the loop nests are blocked for speed (four output channels per input load, valid tap
 * ranges, SIMD-friendly blocks; tt_arm_dsp.h on Cortex-M).
 *
 * Float code gives every output element the same float32 operations in the same order as the
 * numba kernel, one rounding per operation (build with -ffp-contract=off, never -ffast-math),
 * so the results are identical bit for bit (tests/test_c_backward.py).  Loops over independent
 * elements may run in another order than numba's (for speed: channels innermost, several terms
 * per pass); each kernel's comment says why its per-element order is unchanged.  `a += b * c`
 * in numba is written `a = a + b * c` here: a separate multiply and add.  Integer operands are
 * converted to float exactly (|x - zp| <= 255, |w| <= 127).
 *
 * Portable C99: no allocation, no globals, no libm; int32_t indices (every tensor has fewer
 * than 2^31 elements).
 *
 * Indexing: element (n, h, w, c) of an NHWC tensor with dims d is at
 * ((n * d.h + h) * d.w + w) * d.c + c; a clamp mask has one bit per output
 * element, in output memory order.
 */
#ifndef TT_INTERNAL_H
#define TT_INTERNAL_H

#define TT_DSP_KERNELS /* tt_arm_dsp.h: the dot products */
#include "tt_arm_dsp.h"
#include "tt_fixedpoint.h"
#include "tt_kernels.h"

#include <float.h>
#include <string.h>

#if defined(FLT_EVAL_METHOD) && (FLT_EVAL_METHOD != 0)
#error "runtime_c needs float arithmetic evaluated in float (FLT_EVAL_METHOD == 0)"
#endif
#ifdef __FAST_MATH__
#error "runtime_c must not be compiled with -ffast-math: results would differ from the simulator"
#endif

/* ---- shapes and indexing -------------------------------------------------- */

/** Offset of (n, h, w, c) in an NHWC tensor. */
static inline int32_t nhwc(const tt_dims *d, int32_t n, int32_t h, int32_t w, int32_t c)
{
    return ((n * d->h + h) * d->w + w) * d->c + c;
}

static inline int32_t dims_size(const tt_dims *d)
{
    return d->n * d->h * d->w * d->c;
}

static inline void zero_f32(float *x, int32_t n)
{
    int32_t i;
    for (i = 0; i < n; ++i) {
        x[i] = 0.0f;
    }
}

/* ---- clamps, masks, the requantizing store -------------------------------- */

/** The clamp of every requantizing kernel: mask bit i, then the clamped int8. */
static inline int8_t clamp_keep(int32_t v, int32_t act_min, int32_t act_max, uint8_t *mask, int32_t i)
{
    tt_mask_put(mask, i, (int32_t)(act_min <= v) & (int32_t)(v <= act_max));
    return (int8_t)tt_clamp_s32(v, act_min, act_max);
}

/** Mask bits i .. i + cnt - 1 (cnt <= 24) set to bits 0 .. cnt - 1 of `bits`: one
 *  read-modify-write per byte instead of one per element. */
static inline void mask_put_bits(uint8_t *mask, int32_t i, uint32_t bits, int32_t cnt)
{
    const uint32_t sh = (uint32_t)(i & 7);
    uint32_t m = ((1u << cnt) - 1u) << sh;
    uint32_t b = bits << sh;
    uint8_t *p = mask + (i >> 3);
    while (m != 0u) {
        *p = (uint8_t)(((uint32_t)*p & ~m) | b);
        m >>= 8;
        b >>= 8;
        ++p;
    }
}

/** tt_requantize(acc, mult, shift) clamped to [-1024, 1024] (the int64 product and the one
 *  rounding of tt_fixedpoint.h).  Followed by + zero point and the clamp to [act_min, act_max]
 *  within [-128, 127] it gives the same value and mask bit as tt_requantize_zp: outside
 *  [-1024, 1024] both land beyond the clamp range on the same side (|zero point| <= 128), so
 *  the int32 saturations of tt_requantize_zp never matter. */
static inline int32_t requant_small(int32_t acc, int32_t mult, int32_t shift)
{
    const int32_t n = 31 - shift;
    const int64_t prod = (int64_t)acc * (int64_t)mult;
    const uint64_t u = (uint64_t)prod + ((uint64_t)1 << 63); /* prod + 2^63: no wrap, |prod| < 2^62 */
    if (n >= 32) {
        /* The usual case (multiplier < 1), in 32-bit steps (cheap on 32-bit cores): with
         * hi = floor(prod / 2^32) and k = n - 32, floor((prod + 2^(n-1)) / 2^n) is
         * hi + (bit 31 of prod) for k = 0, else floor((hi + 2^(k-1)) / 2^k) (2^(n-1) is a
         * multiple of 2^32, so the inner floor changes nothing).  |hi| < 2^30. */
        const int32_t k = n - 32;
        const int32_t hi = (int32_t)((int64_t)(uint32_t)(u >> 32) - ((int64_t)1 << 31));
        int32_t r32;
        if (k == 0) {
            r32 = hi + (int32_t)(((uint32_t)u) >> 31);
        } else {
            const uint32_t v = (uint32_t)(hi + (int32_t)(1u << (k - 1))) + 0x80000000u; /* + 2^31: >= 0 */
            r32 = (int32_t)(v >> k) - (int32_t)(1u << (31 - k));
        }
        return r32 < -1024 ? -1024 : (r32 > 1024 ? 1024 : r32);
    } else {
        /* as tt_requantize: floor(t / 2^n), t = prod + 2^(n-1), through t + 2^63 (2^63 is a multiple of 2^n) */
        const uint64_t t = u + ((uint64_t)1 << (n - 1));
        const int64_t r = (int64_t)(t >> n) - (int64_t)((uint64_t)1 << (63 - n));
        return r < -1024 ? -1024 : (r > 1024 ? 1024 : (int32_t)r);
    }
}

/** Requantize acc[0 .. cnt) with per-channel mult/shift into out[i ..], clamp, keep the mask bits
 *  (clamp_keep for cnt elements; mask writes grouped).  The usual multiplier (< 1: shift < 0, so
 *  n = 31 - shift >= 32) takes a 32-bit path: with hi = floor(acc * mult / 2^32) and k = n - 32,
 *  floor((acc * mult + 2^(n-1)) / 2^n) is hi + (bit 31 of the product) for k = 0, else
 *  floor((hi + 2^(k-1)) / 2^k) (2^(n-1) is a multiple of 2^32, so the inner floor changes
 *  nothing); |hi| < 2^30, so no saturation can matter there.  Other shifts: requant_small. */
TT_NOINLINE static void requant_store(int32_t *acc, int32_t cnt, const int32_t *mult, const int32_t *shift,
                                      const tt_quant_params *q, int8_t *out, uint8_t *mask, int32_t i)
{
    /* two short loops (few live values: no register spills on a 32-bit core): acc[] is
     * overwritten with the requantized values plus the zero point, then clamped and stored */
    const int32_t zp = q->out_zp;
    for (int32_t j = 0; j < cnt; ++j) {
        const int32_t sh = shift[j];
        int32_t v;
        if (sh < 0) {
            const int32_t k = -1 - sh; /* n - 32 */
            const uint64_t u = (uint64_t)((int64_t)acc[j] * (int64_t)mult[j]) + ((uint64_t)1 << 63);
            const int32_t h = (int32_t)((int64_t)(uint32_t)(u >> 32) - ((int64_t)1 << 31));
            if (k == 0) {
                v = h + (int32_t)(((uint32_t)u) >> 31);
            } else {
                const uint32_t t = (uint32_t)(h + (int32_t)(1u << (k - 1))) + 0x80000000u; /* + 2^31: >= 0 */
                v = (int32_t)(t >> k) - (int32_t)(1u << (31 - k));
            }
        } else {
            v = requant_small(acc[j], mult[j], sh);
        }
        acc[j] = v + zp;
    }
    {
        const int32_t lo = q->act_min, hi = q->act_max;
        const uint32_t span = (uint32_t)(hi - lo);
        for (int32_t j0 = 0; j0 < cnt; j0 += 16) {
            const int32_t c = (cnt - j0 < 16) ? cnt - j0 : 16;
            uint32_t bits = 0u;
            for (int32_t j = 0; j < c; ++j) {
                const int32_t v = acc[j0 + j];
                bits |= (uint32_t)((uint32_t)(v - lo) <= span) << j;
                out[i + j0 + j] = (int8_t)(v < lo ? lo : (v > hi ? hi : v));
            }
            if (mask != NULL) {
                mask_put_bits(mask, i + j0, bits, c);
            }
        }
    }
}

/* ---- tap ranges (padding: the valid taps of a window, the valid outputs of a tap) ---- */

/** The taps k in [*k0, *k1) of a kernel of k_n taps with 0 <= start + k * dil < size. */
static inline void tap_range(int32_t start, int32_t dil, int32_t k_n, int32_t size, int32_t *k0, int32_t *k1)
{
    int32_t a = 0, b = k_n;
    while (a < b && start + a * dil < 0) {
        ++a;
    }
    while (b > a && start + (b - 1) * dil >= size) {
        --b;
    }
    *k0 = a;
    *k1 = b;
}

/** The outputs o in [*o0, *o1) of o_n with 0 <= o * stride + off < size (off = k * dil - pad). */
static inline void out_range(int32_t off, int32_t stride, int32_t o_n, int32_t size, int32_t *o0, int32_t *o1)
{
    int32_t a = 0, b = o_n;
    while (a < b && a * stride + off < 0) {
        ++a;
    }
    while (b > a && (b - 1) * stride + off >= size) {
        --b;
    }
    *o0 = a;
    *o1 = b;
}

/* ---- int8 dot products ---------------------------------------------------- */

/* Dot products of one input vector x (length n, minus the zero point) with TT_COB weight rows
 * (w + j * w_stride), added to acc[0..TT_COB).  tt_arm_dsp.h supplies the Cortex-M DSP form
 * (SXTB16/SMLAD) of the same integer sums. */
#define TT_COB 4 /* output channels per register block */

#if !TT_USE_DSP
/* Written as int16 x int16 products summed into int32 (|x - zp| <= 255 fits int16): the form
 * compilers map to multiply-add instructions (SSE2 pmaddwd, NEON smlal), in blocks of a
 * constant 16 so that gcc -O2 vectorizes them. */
TT_NOINLINE static void dot4_s8(const int8_t *TT_RESTRICT x, int32_t zp, const int8_t *TT_RESTRICT w, int32_t w_stride,
                    int32_t n, int32_t *TT_RESTRICT acc)
{
    const int8_t *TT_RESTRICT w0 = w;
    const int8_t *TT_RESTRICT w1 = w + w_stride;
    const int8_t *TT_RESTRICT w2 = w + 2 * w_stride;
    const int8_t *TT_RESTRICT w3 = w + 3 * w_stride;
    const int16_t z = (int16_t)zp;
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    int32_t i = 0;
    for (; i + 16 <= n; i += 16) {
        for (int32_t j = 0; j < 16; ++j) {
            const int16_t xv = (int16_t)((int16_t)x[i + j] - z);
            a0 += (int32_t)xv * (int32_t)(int16_t)w0[i + j];
            a1 += (int32_t)xv * (int32_t)(int16_t)w1[i + j];
            a2 += (int32_t)xv * (int32_t)(int16_t)w2[i + j];
            a3 += (int32_t)xv * (int32_t)(int16_t)w3[i + j];
        }
    }
    for (; i < n; ++i) {
        const int32_t xv = (int32_t)x[i] - zp;
        a0 += xv * (int32_t)w0[i];
        a1 += xv * (int32_t)w1[i];
        a2 += xv * (int32_t)w2[i];
        a3 += xv * (int32_t)w3[i];
    }
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
}

TT_NOINLINE static int32_t dot1_s8(const int8_t *TT_RESTRICT x, int32_t zp, const int8_t *TT_RESTRICT w, int32_t n, int32_t acc)
{
    const int16_t z = (int16_t)zp;
    int32_t i = 0;
    for (; i + 16 <= n; i += 16) {
        for (int32_t j = 0; j < 16; ++j) {
            const int16_t xv = (int16_t)((int16_t)x[i + j] - z);
            acc += (int32_t)xv * (int32_t)(int16_t)w[i + j];
        }
    }
    for (; i < n; ++i) {
        acc += ((int32_t)x[i] - zp) * (int32_t)w[i];
    }
    return acc;
}
#else
#define dot4_s8 tt_dsp_dot4_s8
#define dot1_s8 tt_dsp_dot1_s8
#endif

#endif /* TT_INTERNAL_H */
