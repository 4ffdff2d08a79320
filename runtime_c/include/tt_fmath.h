/**
 * @file tt_fmath.h
 * @brief Bit-reproducible float exp, log and softmax cross-entropy.
 *
 * Mirrors compiler/quant/fmath.py function by function: same names (with a
 * tt_ prefix), same arguments, same operations in the same order; the module
 * docstring there derives the algorithms.  tests/test_prng_fmath.py requires
 * bit-identical results.  libm's expf/logf differ between glibc, newlib and
 * numba, so training uses these; no libm is needed.
 *
 * Requirements: IEEE-754 binary32 float evaluated in float
 * (FLT_EVAL_METHOD == 0), round to nearest, no -ffast-math, and no FMA
 * contraction: build with -ffp-contract=off (gcc's default outside ISO mode
 * is "fast", which would fuse a*b+c on Cortex-M4F/M7 and x86 with FMA).
 *
 * tt_expf_tt: max error 0.99 ulp over [TT_FMATH_EXP_MIN, TT_FMATH_EXP_MAX]
 * (exhaustive).  x > 88.72283 -> +inf; x < -87.33654 -> +0 (results are
 * never subnormal); NaN -> the same NaN; e^0 == 1 exactly.
 *
 * tt_logf_tt: max error 0.86 ulp over all positive floats including
 * subnormals (exhaustive).  +-0 -> -inf; x < 0 -> NaN (0x7fc00000);
 * NaN -> the same NaN; +inf -> +inf; log(1) == 0 exactly.
 *
 * tt_softmax_xent: loss = log(sum_k exp(z_k - m)) - (z_label - m), m = max z,
 * sum in order k = 0..K-1; grad = softmax - onehot(label).
 */
#ifndef TT_FMATH_H
#define TT_FMATH_H

#include <float.h>
#include <stdint.h>
#include <string.h>

#if defined(FLT_EVAL_METHOD) && (FLT_EVAL_METHOD != 0)
#error "tt_fmath.h needs float arithmetic evaluated in float (FLT_EVAL_METHOD == 0), e.g. SSE, not x87"
#endif
#ifdef __FAST_MATH__
#error "tt_fmath.h must not be compiled with -ffast-math: results would differ from the simulator"
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Constants: the same hex literals as compiler/quant/fmath.py (checked by the tests). */
#define TT_FMATH_EXP_MAX 0x1.62e42ep+6f   /* 88.72283: largest x with e^x <= FLT_MAX */
#define TT_FMATH_EXP_MIN (-0x1.5d589ep+6f) /* -87.33654: smallest x with e^x >= FLT_MIN */
#define TT_FMATH_LOG2E 0x1.715476p+0f     /* 1 / ln 2 */
#define TT_FMATH_SHIFTER 0x1.8p+23f       /* 1.5 * 2^23: (t + S) - S rounds t to an integer */
#define TT_FMATH_LN2_HI 0x1.62e4p-1f      /* 15 significant bits: k * LN2_HI exact for |k| < 512 */
#define TT_FMATH_LN2_LO 0x1.7f7d1cp-20f   /* ln 2 - LN2_HI */
#define TT_FMATH_C2 0x1.fffffcp-2f        /* e^r ~ 1 + r + r^2 (C2 + r (C3 + ...)) */
#define TT_FMATH_C3 0x1.555492p-3f
#define TT_FMATH_C4 0x1.5558f2p-5f
#define TT_FMATH_C5 0x1.1239d4p-7f
#define TT_FMATH_C6 0x1.6a244cp-10f
#define TT_FMATH_FLT_MIN 0x1p-126f
#define TT_FMATH_TWO_P25 0x1p+25f
#define TT_FMATH_LG1 0x1.555556p-1f       /* 2/3 */
#define TT_FMATH_LG2 0x1.99999ap-2f       /* 2/5 */
#define TT_FMATH_LG3 0x1.24924ap-2f       /* 2/7 */
#define TT_FMATH_LG4 0x1.c71c72p-3f       /* 2/9 */

/** The IEEE-754 bits of a float. */
static inline uint32_t tt_f32_bits(float x)
{
    uint32_t b;
    memcpy(&b, &x, sizeof b);
    return b;
}

/** The float whose IEEE-754 bits are b. */
static inline float tt_f32_from_bits(uint32_t b)
{
    float x;
    memcpy(&x, &b, sizeof x);
    return x;
}

/**
 * e^x: x = k ln2 + r (k = round(x log2 e) by the shifter trick, r by
 * Cody-Waite), e^r ~ (q(r) r^2 + r) + 1 with q in Horner form, times 2^k
 * built from its bits (k = 128 as (p * 2) * 2^127).
 */
static inline float tt_expf_tt(float x)
{
    float t, kf, r, r2, q, p, scale;
    int32_t k;
    if (x != x) {
        return x;
    }
    if (x > TT_FMATH_EXP_MAX) {
        return tt_f32_from_bits(0x7F800000u);
    }
    if (x < TT_FMATH_EXP_MIN) {
        return 0.0f;
    }
    t = x * TT_FMATH_LOG2E;
    kf = (t + TT_FMATH_SHIFTER) - TT_FMATH_SHIFTER;
    r = (x - kf * TT_FMATH_LN2_HI) - kf * TT_FMATH_LN2_LO;
    r2 = r * r;
    q = TT_FMATH_C2 + r * (TT_FMATH_C3 + r * (TT_FMATH_C4 + r * (TT_FMATH_C5 + r * TT_FMATH_C6)));
    p = (q * r2 + r) + 1.0f;
    k = (int32_t)kf;
    if (k > 127) {
        p = p * 2.0f;
        k = k - 1;
    }
    scale = tt_f32_from_bits((uint32_t)(k + 127) << 23);
    return p * scale;
}

/**
 * log(x): x = 2^k m, m in [sqrt(2)/2, sqrt(2)), f = m - 1, s = f / (2 + f);
 * log(1 + f) = f - hfsq + s (hfsq + R(s^2)), hfsq = f^2 / 2, R the atanh
 * series 2/3, 2/5, 2/7, 2/9 in Horner form; plus k ln2 split hi/lo.
 */
static inline float tt_logf_tt(float x)
{
    float m, f, s, z, big_r, hfsq, dk, y;
    uint32_t ix, mbits;
    int32_t k;
    if (x != x) {
        return x;
    }
    if (x < 0.0f) {
        return tt_f32_from_bits(0x7FC00000u);
    }
    if (x == 0.0f) {
        return tt_f32_from_bits(0xFF800000u);
    }
    if (x == tt_f32_from_bits(0x7F800000u)) {
        return x;
    }
    k = 0;
    if (x < TT_FMATH_FLT_MIN) { /* subnormal: scale into the normal range */
        x = x * TT_FMATH_TWO_P25;
        k = -25;
    }
    ix = tt_f32_bits(x);
    k = k + (int32_t)(ix >> 23) - 127;
    mbits = ix & 0x007FFFFFu;
    if (mbits >= 0x003504F3u) { /* mantissa >= sqrt(2): use m / 2, k + 1 */
        m = tt_f32_from_bits(mbits | 0x3F000000u);
        k = k + 1;
    } else {
        m = tt_f32_from_bits(mbits | 0x3F800000u);
    }
    f = m - 1.0f;
    s = f / (2.0f + f);
    z = s * s;
    big_r = z * (TT_FMATH_LG1 + z * (TT_FMATH_LG2 + z * (TT_FMATH_LG3 + z * TT_FMATH_LG4)));
    hfsq = (0.5f * f) * f;
    dk = (float)k;
    y = s * (hfsq + big_r);
    y = y + dk * TT_FMATH_LN2_LO;
    y = y - hfsq;
    y = y + f;
    return y + dk * TT_FMATH_LN2_HI;
}

/**
 * Softmax cross-entropy of k >= 1 finite logits against label in [0, k).
 * Writes softmax(logits) - onehot(label) into grad (which must not alias
 * logits) and returns the loss (>= 0).
 */
static inline float tt_softmax_xent(const float *logits, int32_t k, int32_t label, float *grad)
{
    float m = logits[0];
    float total = 0.0f;
    int32_t i;
    for (i = 1; i < k; ++i) {
        if (logits[i] > m) {
            m = logits[i];
        }
    }
    for (i = 0; i < k; ++i) {
        const float e = tt_expf_tt(logits[i] - m);
        grad[i] = e;
        total = total + e;
    }
    for (i = 0; i < k; ++i) {
        grad[i] = grad[i] / total;
    }
    grad[label] = grad[label] - 1.0f;
    return tt_logf_tt(total) - (logits[label] - m);
}

#ifdef __cplusplus
}
#endif

#endif /* TT_FMATH_H */
