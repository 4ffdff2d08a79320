/**
 * @file tt_arm_dsp.h
 * @brief Cortex-M DSP-extension (SXTB16 + SMLAD) forms of the int8 dot products of
 *        tt_internal.h (tt_conv.c, tt_fc.c), and the portability macros those kernels use.
 *
 * Compiled in when the compiler targets a core with the DSP extension
 * (__ARM_FEATURE_DSP: -mcpu=cortex-m4, cortex-m7, cortex-m33, cortex-m55, ...) unless
 * TT_NO_DSP is defined (-DTT_NO_DSP forces the portable C loops, e.g. to compare).
 *
 * The results are integers and are exact: the DSP form computes the same sums as the
 * portable loops, so a build with and without TT_NO_DSP gives identical outputs
 * (tests/test_dsp.py trains the same model both ways on the emulated M4 and M7).
 *
 * How: four int8 values in one 32-bit word w = [b0 b1 b2 b3] are sign-extended to two
 * pairs of int16 with SXTB16 (b0, b2) and SXTB16 ROR #8 (b1, b3); the input pairs get
 * the zero point subtracted with SADD16 (|x - zp| <= 255 fits int16); SMLAD adds both
 * products of a pair to a 32-bit accumulator.  Its addition is modulo 2^32 (an overflow
 * only sets the Q flag) and the accumulator bound of tt_conv.c (K * 32512 + |bias| <
 * 2^31) holds for every partial sum, so the final sum is the exact one in any order.
 */
#ifndef TT_ARM_DSP_H
#define TT_ARM_DSP_H

#include <stdint.h>
#include <string.h>

/** restrict in C99, nothing in C++ or older C. */
#if defined(__STDC_VERSION__) && (__STDC_VERSION__ >= 199901L)
#define TT_RESTRICT restrict
#else
#define TT_RESTRICT
#endif

/** Keep a helper out of line (register pressure in the big loop nests; gcc/clang only).  Such
 *  helpers live in headers (tt_internal.h): a file that does not call one gets no warning. */
#if defined(__GNUC__)
#define TT_NOINLINE __attribute__((noinline, unused))
#else
#define TT_NOINLINE
#endif

/** 1 where the SXTB16/SMLAD kernels are compiled in. */
#if defined(__ARM_FEATURE_DSP) && (__ARM_FEATURE_DSP == 1) && !defined(TT_NO_DSP) && defined(__GNUC__)
#define TT_USE_DSP 1
#else
#define TT_USE_DSP 0
#endif

#if TT_USE_DSP && defined(TT_DSP_KERNELS) /* the kernels: only in the files of tt_internal.h */

/** Four int8 at p (any alignment: Cortex-M3/M4/M7/M33 load words unaligned) as a word. */
static inline uint32_t tt_dsp_load4(const int8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/** Bytes 0 and 2 of v sign-extended into the two halfwords. */
static inline uint32_t tt_dsp_sxtb16(uint32_t v)
{
    uint32_t r;
    __asm__("sxtb16 %0, %1" : "=r"(r) : "r"(v));
    return r;
}

/** Bytes 1 and 3 of v sign-extended into the two halfwords (SXTB16 with ROR #8). */
static inline uint32_t tt_dsp_sxtb16_ror8(uint32_t v)
{
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return r;
}

/** Halfword-wise a + b (no saturation; the operands here never overflow int16). */
static inline uint32_t tt_dsp_sadd16(uint32_t a, uint32_t b)
{
    uint32_t r;
    __asm__("sadd16 %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

/** acc + a.lo * b.lo + a.hi * b.hi (signed halfwords). */
static inline int32_t tt_dsp_smlad(uint32_t a, uint32_t b, int32_t acc)
{
    int32_t r;
    __asm__("smlad %0, %1, %2, %3" : "=r"(r) : "r"(a), "r"(b), "r"(acc));
    return r;
}

/** acc + a.lo * b.lo (signed halfwords). */
static inline int32_t tt_dsp_smlabb(uint32_t a, uint32_t b, int32_t acc)
{
    int32_t r;
    __asm__("smlabb %0, %1, %2, %3" : "=r"(r) : "r"(a), "r"(b), "r"(acc));
    return r;
}

/** acc + a.hi * b.lo (signed halfwords). */
static inline int32_t tt_dsp_smlatb(uint32_t a, uint32_t b, int32_t acc)
{
    int32_t r;
    __asm__("smlatb %0, %1, %2, %3" : "=r"(r) : "r"(a), "r"(b), "r"(acc));
    return r;
}

/** acc[j] += sum_i (x[i] - zp) * w[j * w_stride + i], j = 0..3 (tt_internal.h dot4_s8). */
TT_NOINLINE static void tt_dsp_dot4_s8(const int8_t *TT_RESTRICT x, int32_t zp, const int8_t *TT_RESTRICT w,
                                  int32_t w_stride, int32_t n, int32_t *TT_RESTRICT acc)
{
    const uint32_t nzp = ((uint32_t)(-zp) & 0xFFFFu) * 0x00010001u; /* -zp in both halfwords */
    const int32_t s2 = 2 * w_stride;
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    int32_t i = 0;
    /* one moving weight pointer, the other rows at +stride, +2 stride, +3 stride: fewer live
     * registers than four pointers (no spills in the loop) */
    for (; i + 4 <= n; i += 4) {
        const int8_t *wi = w + i;
        const uint32_t xw = tt_dsp_load4(x + i);
        const uint32_t xe = tt_dsp_sadd16(tt_dsp_sxtb16(xw), nzp);      /* x0 - zp, x2 - zp */
        const uint32_t xo = tt_dsp_sadd16(tt_dsp_sxtb16_ror8(xw), nzp); /* x1 - zp, x3 - zp */
        uint32_t ww = tt_dsp_load4(wi);
        a0 = tt_dsp_smlad(xe, tt_dsp_sxtb16(ww), a0);
        a0 = tt_dsp_smlad(xo, tt_dsp_sxtb16_ror8(ww), a0);
        ww = tt_dsp_load4(wi + w_stride);
        a1 = tt_dsp_smlad(xe, tt_dsp_sxtb16(ww), a1);
        a1 = tt_dsp_smlad(xo, tt_dsp_sxtb16_ror8(ww), a1);
        ww = tt_dsp_load4(wi + s2);
        a2 = tt_dsp_smlad(xe, tt_dsp_sxtb16(ww), a2);
        a2 = tt_dsp_smlad(xo, tt_dsp_sxtb16_ror8(ww), a2);
        ww = tt_dsp_load4(wi + s2 + w_stride);
        a3 = tt_dsp_smlad(xe, tt_dsp_sxtb16(ww), a3);
        a3 = tt_dsp_smlad(xo, tt_dsp_sxtb16_ror8(ww), a3);
    }
    const int8_t *w0 = w;
    const int8_t *w1 = w + w_stride;
    const int8_t *w2 = w + s2;
    const int8_t *w3 = w + s2 + w_stride;
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

/** acc + sum_i (x[i] - zp) * w[i] (tt_internal.h dot1_s8). */
TT_NOINLINE static int32_t tt_dsp_dot1_s8(const int8_t *TT_RESTRICT x, int32_t zp, const int8_t *TT_RESTRICT w,
                                     int32_t n, int32_t acc)
{
    const uint32_t nzp = ((uint32_t)(-zp) & 0xFFFFu) * 0x00010001u;
    int32_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const uint32_t xw = tt_dsp_load4(x + i);
        const uint32_t ww = tt_dsp_load4(w + i);
        acc = tt_dsp_smlad(tt_dsp_sadd16(tt_dsp_sxtb16(xw), nzp), tt_dsp_sxtb16(ww), acc);
        acc = tt_dsp_smlad(tt_dsp_sadd16(tt_dsp_sxtb16_ror8(xw), nzp), tt_dsp_sxtb16_ror8(ww), acc);
    }
    for (; i < n; ++i) {
        acc += ((int32_t)x[i] - zp) * (int32_t)w[i];
    }
    return acc;
}

#endif /* TT_USE_DSP && TT_DSP_KERNELS */

#endif /* TT_ARM_DSP_H */
