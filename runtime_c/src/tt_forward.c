/**
 * @file tt_forward.c
 * @brief The int8 forward kernels of tt_kernels.h (plus the float classifier and
 *        the host input quantization).
 *
 * Each kernel computes what the numba kernel named in its comment computes
 * (compiler/ops/...): the same integer values, the same rounding (tt_fixedpoint.h),
 * so the outputs are identical; tests/test_c_forward.py checks outputs and masks.
 * Integer sums are exact (see the bounds), so the order of the taps and channels is
 * free: the loop nests here are blocked for speed (four output channels per input
 * load, valid tap ranges, SIMD-friendly blocks; tt_arm_dsp.h on Cortex-M).  Float
 * code keeps the numba order, one operation per statement (-ffp-contract=off).
 *
 * Indexing: element (n, h, w, c) of an NHWC tensor with dims d is at
 * ((n * d.h + h) * d.w + w) * d.c + c; a clamp mask has one bit per output
 * element, in output memory order.
 */

#define TT_DSP_KERNELS /* tt_arm_dsp.h: the dot products */
#include "tt_arm_dsp.h"
#include "tt_fixedpoint.h"
#include "tt_kernels.h"

/** Offset of (n, h, w, c) in an NHWC tensor. */
static int32_t nhwc(const tt_dims *d, int32_t n, int32_t h, int32_t w, int32_t c)
{
    return ((n * d->h + h) * d->w + w) * d->c + c;
}

/** The clamp of every requantizing kernel: mask bit i, then the clamped int8. */
static int8_t clamp_keep(int32_t v, int32_t act_min, int32_t act_max, uint8_t *mask, int32_t i)
{
    tt_mask_put(mask, i, (int32_t)(act_min <= v) & (int32_t)(v <= act_max));
    return (int8_t)tt_clamp_s32(v, act_min, act_max);
}

/** Mask bits i .. i + cnt - 1 (cnt <= 24) set to bits 0 .. cnt - 1 of `bits`: one
 *  read-modify-write per byte instead of one per element. */
static void mask_put_bits(uint8_t *mask, int32_t i, uint32_t bits, int32_t cnt)
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

/* ---- conv2d -------------------------------------------------------------- */

/*
 * conv.py _conv2d_s8 (any groups) and _depthwise_conv2d_s8.  Integer sums are exact, so any
 * order of the taps gives the same accumulator: the loop nests here are chosen for speed.
 * Accumulator bound: |x - in_zp| <= 255, |w| <= 127, so with K = KH*KW*cg
 * |acc| <= K * 32385 + |bias| <= K * 32512 + |bias| < 2^31, which quantize() guarantees (it refuses
 * or rescales layers that could reach 2^31): int32 never overflows, in any order.
 *
 * Padding: instead of testing every tap, each output pixel first computes its range of valid
 * kernel rows and columns (tap_range); padded taps contribute 0 and are skipped.
 */

/** The taps k in [*k0, *k1) of a kernel of k_n taps with 0 <= start + k * dil < size. */
static void tap_range(int32_t start, int32_t dil, int32_t k_n, int32_t size, int32_t *k0, int32_t *k1)
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

/* The valid taps (rows x cols) of a depthwise conv for four adjacent channels: the inputs of a
 * tap are four adjacent bytes, xrow / xcol bytes apart between kernel rows / columns; the weights
 * of a channel are `taps` apart, wrow apart between kernel rows. */
TT_NOINLINE static void dw_taps4(const int8_t *TT_RESTRICT xs, int32_t xrow, int32_t xcol, const int8_t *TT_RESTRICT ws,
                                 int32_t wrow, int32_t taps, int32_t rows, int32_t cols, int32_t zp,
                                 int32_t *TT_RESTRICT acc)
{
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    for (int32_t r = 0; r < rows; ++r) {
        const int8_t *TT_RESTRICT x = xs + r * xrow;
        const int8_t *TT_RESTRICT wj = ws + r * wrow;
        for (int32_t j = 0; j < cols; ++j) {
#if TT_USE_DSP
            /* the four channels' inputs in one word, minus the zero point as halfword pairs;
             * SMLABB / SMLATB multiply the matching halfword by the weight */
            const uint32_t xw = tt_dsp_load4(x);
            const uint32_t nzp = ((uint32_t)(-zp) & 0xFFFFu) * 0x00010001u;
            const uint32_t xe = tt_dsp_sadd16(tt_dsp_sxtb16(xw), nzp);
            const uint32_t xo = tt_dsp_sadd16(tt_dsp_sxtb16_ror8(xw), nzp);
            a0 = tt_dsp_smlabb(xe, (uint32_t)(int32_t)wj[0], a0);
            a1 = tt_dsp_smlabb(xo, (uint32_t)(int32_t)wj[taps], a1);
            a2 = tt_dsp_smlatb(xe, (uint32_t)(int32_t)wj[2 * taps], a2);
            a3 = tt_dsp_smlatb(xo, (uint32_t)(int32_t)wj[3 * taps], a3);
#else
            a0 += ((int32_t)x[0] - zp) * (int32_t)wj[0];
            a1 += ((int32_t)x[1] - zp) * (int32_t)wj[taps];
            a2 += ((int32_t)x[2] - zp) * (int32_t)wj[2 * taps];
            a3 += ((int32_t)x[3] - zp) * (int32_t)wj[3 * taps];
#endif
            x += xcol;
            ++wj;
        }
    }
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
}

#if (defined(__SSE2__) || defined(__ARM_NEON)) && !TT_USE_DSP
/* Hosts with SIMD: depthwise with the channels as the vector: the weights transposed once per
 * call into wt[tap][c] (int16), per pixel acc[c] += (x[c] - zp) * wt[tap][c] over the valid taps,
 * 16 channels at a time.  Exact integer sums: the same results. */
#define DWS_MAX_W 4096
#define DWS_MAX_C 256
static int depthwise_simd_s8(const tt_conv_params *p, const tt_quant_params *q, const int32_t *mult,
                             const int32_t *shift, const tt_dims *in_dims, const int8_t *in,
                             const tt_dims *filter_dims, const int8_t *w, const int32_t *bias, const tt_dims *out_dims,
                             int8_t *out, uint8_t *mask)
{
    const int32_t kh_n = filter_dims->h, kw_n = filter_dims->w, c_n = out_dims->c, taps = kh_n * kw_n;
    int16_t wt[DWS_MAX_W];
    int32_t acc[DWS_MAX_C];
    if (c_n % 16 != 0 || c_n > DWS_MAX_C || taps * c_n > DWS_MAX_W) {
        return 0;
    }
    for (int32_t c = 0; c < c_n; ++c) {
        for (int32_t t = 0; t < taps; ++t) {
            wt[t * c_n + c] = (int16_t)w[c * taps + t];
        }
    }
    for (int32_t n = 0; n < out_dims->n; ++n) {
        for (int32_t oh = 0; oh < out_dims->h; ++oh) {
            const int32_t h0 = oh * p->stride_h - p->pad_t;
            int32_t kh0, kh1;
            tap_range(h0, p->dil_h, kh_n, in_dims->h, &kh0, &kh1);
            for (int32_t ow = 0; ow < out_dims->w; ++ow) {
                const int32_t w0 = ow * p->stride_w - p->pad_l;
                int32_t kw0, kw1;
                tap_range(w0, p->dil_w, kw_n, in_dims->w, &kw0, &kw1);
                for (int32_t c = 0; c < c_n; ++c) {
                    acc[c] = bias[c];
                }
                for (int32_t kh = kh0; kh < kh1; ++kh) {
                    for (int32_t kw = kw0; kw < kw1; ++kw) {
                        const int8_t *TT_RESTRICT xs = in + nhwc(in_dims, n, h0 + kh * p->dil_h, w0 + kw * p->dil_w, 0);
                        const int16_t *TT_RESTRICT wk = wt + (kh * kw_n + kw) * c_n;
                        const int16_t z = (int16_t)q->in_zp;
                        for (int32_t c0 = 0; c0 < c_n; c0 += 16) {
                            int32_t *TT_RESTRICT a = acc + c0;
                            for (int32_t j = 0; j < 16; ++j) {
                                a[j] += (int32_t)(int16_t)((int16_t)xs[c0 + j] - z) * (int32_t)wk[c0 + j];
                            }
                        }
                    }
                }
                requant_store(acc, c_n, mult, shift, q, out, mask, nhwc(out_dims, n, oh, ow, 0));
            }
        }
    }
    return 1;
}
#endif

/* Depthwise (one input and one output channel per group): per output pixel, four channels at a
 * time keep their accumulators in registers over the valid taps (the four inputs of a tap are
 * adjacent bytes), then one channel at a time for the rest. */
static void depthwise_s8(const tt_conv_params *p, const tt_quant_params *q, const int32_t *mult,
                         const int32_t *shift, const tt_dims *in_dims, const int8_t *in, const tt_dims *filter_dims,
                         const int8_t *w, const int32_t *bias, const tt_dims *out_dims, int8_t *out, uint8_t *mask)
{
    const int32_t kh_n = filter_dims->h, kw_n = filter_dims->w, c_n = out_dims->c, taps = kh_n * kw_n;
    const int32_t zp = q->in_zp;
    const int32_t xstep = p->dil_w * in_dims->c;
#if (defined(__SSE2__) || defined(__ARM_NEON)) && !TT_USE_DSP
    if (depthwise_simd_s8(p, q, mult, shift, in_dims, in, filter_dims, w, bias, out_dims, out, mask)) {
        return;
    }
#endif
    for (int32_t n = 0; n < out_dims->n; ++n) {
        for (int32_t oh = 0; oh < out_dims->h; ++oh) {
            const int32_t h0 = oh * p->stride_h - p->pad_t;
            int32_t kh0, kh1;
            tap_range(h0, p->dil_h, kh_n, in_dims->h, &kh0, &kh1);
            for (int32_t ow = 0; ow < out_dims->w; ++ow) {
                const int32_t w0 = ow * p->stride_w - p->pad_l;
                int32_t kw0, kw1;
                tap_range(w0, p->dil_w, kw_n, in_dims->w, &kw0, &kw1);
                const int32_t o = nhwc(out_dims, n, oh, ow, 0);
                const int32_t xpix = nhwc(in_dims, n, h0, w0, 0); /* may be negative: an offset, not a pointer */
                int32_t c = 0;
                int32_t acc[16]; /* four blocks of four channels requantized per call */
                for (; c + 4 <= c_n; c += 4) {
                    int32_t *a = acc + (c & 15);
                    a[0] = bias[c];
                    a[1] = bias[c + 1];
                    a[2] = bias[c + 2];
                    a[3] = bias[c + 3];
                    if (kh1 > kh0 && kw1 > kw0) {
                        dw_taps4(in + (xpix + (kh0 * p->dil_h * in_dims->w + kw0 * p->dil_w) * in_dims->c + c),
                                 p->dil_h * in_dims->w * in_dims->c, xstep, w + c * taps + kh0 * kw_n + kw0, kw_n,
                                 taps, kh1 - kh0, kw1 - kw0, zp, a);
                    }
                    if ((c & 15) == 12 || c + 8 > c_n) {
                        const int32_t c0 = c & ~15;
                        requant_store(acc, c + 4 - c0, mult + c0, shift + c0, q, out, mask, o + c0);
                    }
                }
                for (; c < c_n; ++c) {
                    int32_t a1 = bias[c];
                    for (int32_t kh = kh0; kh < kh1; ++kh) {
                        const int8_t *xs = in + (xpix + (kh * p->dil_h * in_dims->w + kw0 * p->dil_w) * in_dims->c + c);
                        const int8_t *ws = w + c * taps + kh * kw_n + kw0;
                        for (int32_t j = 0, xo = 0; j < kw1 - kw0; ++j, xo += xstep) {
                            a1 += ((int32_t)xs[xo] - zp) * (int32_t)ws[j];
                        }
                    }
                    requant_store(&a1, 1, mult + c, shift + c, q, out, mask, o + c);
                }
            }
        }
    }
}

#if (defined(__SSE2__) || defined(__ARM_NEON)) && !TT_USE_DSP
/* Hosts with SIMD: a convolution with few inputs per output (K = KH*KW*Cin < 16, e.g. an RGB stem
 * or a pointwise expansion of 8 channels) leaves the dot products too short to vectorize, so here
 * the output channels are the vector: the weights transposed once per call into wt[k][co]
 * (int16), and per pixel acc[co] += (x[k] - zp) * wt[k][co] over the valid taps, 16 channels at a
 * time (constant trip count).  Exact integer sums: the same results. */
#define SK_MAX_W 1024
#define SK_MAX_CO 64
static int small_k_s8(const tt_conv_params *p, const tt_quant_params *q, const int32_t *mult, const int32_t *shift,
                      const tt_dims *in_dims, const int8_t *in, const tt_dims *filter_dims, const int8_t *w,
                      const int32_t *bias, const tt_dims *out_dims, int8_t *out, uint8_t *mask)
{
    const int32_t kh_n = filter_dims->h, kw_n = filter_dims->w, cg = filter_dims->c, co_n = filter_dims->n;
    const int32_t k_n = kh_n * kw_n * cg;
    int16_t wt[SK_MAX_W];
    int32_t acc[SK_MAX_CO];
    if (p->groups != 1 || cg >= 16 || co_n % 16 != 0 || co_n > SK_MAX_CO || k_n * co_n > SK_MAX_W) {
        return 0;
    }
    for (int32_t co = 0; co < co_n; ++co) {
        for (int32_t k = 0; k < k_n; ++k) {
            wt[k * co_n + co] = (int16_t)w[co * k_n + k];
        }
    }
    for (int32_t n = 0; n < out_dims->n; ++n) {
        for (int32_t oh = 0; oh < out_dims->h; ++oh) {
            const int32_t h0 = oh * p->stride_h - p->pad_t;
            int32_t kh0, kh1;
            tap_range(h0, p->dil_h, kh_n, in_dims->h, &kh0, &kh1);
            for (int32_t ow = 0; ow < out_dims->w; ++ow) {
                const int32_t w0 = ow * p->stride_w - p->pad_l;
                int32_t kw0, kw1;
                tap_range(w0, p->dil_w, kw_n, in_dims->w, &kw0, &kw1);
                for (int32_t co = 0; co < co_n; ++co) {
                    acc[co] = bias[co];
                }
                for (int32_t kh = kh0; kh < kh1; ++kh) {
                    for (int32_t kw = kw0; kw < kw1; ++kw) {
                        const int8_t *xs = in + nhwc(in_dims, n, h0 + kh * p->dil_h, w0 + kw * p->dil_w, 0);
                        for (int32_t ci = 0; ci < cg; ++ci) {
                            const int16_t xv = (int16_t)((int16_t)xs[ci] - (int16_t)q->in_zp);
                            const int16_t *TT_RESTRICT wk = wt + ((kh * kw_n + kw) * cg + ci) * co_n;
                            for (int32_t c0 = 0; c0 < co_n; c0 += 16) {
                                int32_t *TT_RESTRICT a = acc + c0;
                                for (int32_t j = 0; j < 16; ++j) {
                                    a[j] += (int32_t)xv * (int32_t)wk[c0 + j];
                                }
                            }
                        }
                    }
                }
                requant_store(acc, co_n, mult, shift, q, out, mask, nhwc(out_dims, n, oh, ow, 0));
            }
        }
    }
    return 1;
}
#endif

/* Any other convolution (pointwise, full, grouped): per output pixel and group, TT_COB output
 * channels at a time share every input load (dot4_s8 over the cg contiguous input channels of each
 * valid tap), then one channel at a time for the rest. */
void tt_conv2d_s8(const tt_conv_params *p, const tt_quant_params *q, const int32_t *mult, const int32_t *shift,
                  const tt_dims *in_dims, const int8_t *in, const tt_dims *filter_dims, const int8_t *w,
                  const int32_t *bias, const tt_dims *out_dims, int8_t *out, uint8_t *mask)
{
    const int32_t kh_n = filter_dims->h, kw_n = filter_dims->w, cg = filter_dims->c;
    const int32_t cog = filter_dims->n / p->groups;
    const int32_t w_stride = kh_n * kw_n * cg; /* one output channel's weights */
    const int32_t zp = q->in_zp;
    const int32_t merge = p->dil_w == 1 && cg == in_dims->c;
    if (cg == 1 && cog == 1) {
        depthwise_s8(p, q, mult, shift, in_dims, in, filter_dims, w, bias, out_dims, out, mask);
        return;
    }
#if (defined(__SSE2__) || defined(__ARM_NEON)) && !TT_USE_DSP
    if (small_k_s8(p, q, mult, shift, in_dims, in, filter_dims, w, bias, out_dims, out, mask)) {
        return;
    }
#endif
    for (int32_t n = 0; n < out_dims->n; ++n) {
        for (int32_t oh = 0; oh < out_dims->h; ++oh) {
            const int32_t h0 = oh * p->stride_h - p->pad_t;
            int32_t kh0, kh1;
            tap_range(h0, p->dil_h, kh_n, in_dims->h, &kh0, &kh1);
            for (int32_t ow = 0; ow < out_dims->w; ++ow) {
                const int32_t w0 = ow * p->stride_w - p->pad_l;
                int32_t kw0, kw1;
                tap_range(w0, p->dil_w, kw_n, in_dims->w, &kw0, &kw1);
                const int32_t o = nhwc(out_dims, n, oh, ow, 0);
                for (int32_t g = 0; g < p->groups; ++g) {
                    const int32_t c0 = g * cg;
                    const int32_t co_end = (g + 1) * cog;
                    int32_t co = g * cog, done = co, nb = 0;
                    int32_t acc[16]; /* up to 16 outputs requantized per call */
                    for (; co < co_end; co += (co + TT_COB <= co_end) ? TT_COB : 1) {
                        const int32_t four = co + TT_COB <= co_end;
                        int32_t *a = acc + nb;
                        a[0] = bias[co];
                        if (four) {
                            a[1] = bias[co + 1];
                            a[2] = bias[co + 2];
                            a[3] = bias[co + 3];
                        }
                        for (int32_t kh = kh0; kh < kh1; ++kh) {
                            const int8_t *xr = in + nhwc(in_dims, n, h0 + kh * p->dil_h, 0, c0);
                            const int8_t *wr = w + (co * kh_n + kh) * kw_n * cg;
                            /* contiguous taps (dilation 1, all channels): one dot product per kernel row */
                            const int32_t step = merge ? kw1 - kw0 : 1;
                            const int32_t len = step * cg;
                            for (int32_t kw = kw0; kw < kw1; kw += step) {
                                const int8_t *xs = xr + (w0 + kw * p->dil_w) * in_dims->c;
                                if (four) {
                                    dot4_s8(xs, zp, wr + kw * cg, w_stride, len, a);
                                } else {
                                    a[0] = dot1_s8(xs, zp, wr + kw * cg, len, a[0]);
                                }
                            }
                        }
                        nb += four ? TT_COB : 1;
                        if (nb > 16 - TT_COB || co + (four ? TT_COB : 1) >= co_end) {
                            requant_store(acc, nb, mult + done, shift + done, q, out, mask, o + done);
                            done += nb;
                            nb = 0;
                        }
                    }
                }
            }
        }
    }
}

/* ---- fully connected ----------------------------------------------------- */

/** linear.py _fully_connected_s8.  Accumulator bound as conv2d with K = k (exact sums, any order):
 *  TT_COB outputs at a time share the input loads. */
void tt_fully_connected_s8(const tt_quant_params *q, const int32_t *mult, const int32_t *shift, int32_t batch,
                           int32_t k, int32_t m, const int8_t *in, const int8_t *w, const int32_t *bias, int8_t *out,
                           uint8_t *mask)
{
    for (int32_t n = 0; n < batch; ++n) {
        const int8_t *x = in + n * k;
        int32_t j = 0;
        for (; j + TT_COB <= m; j += TT_COB) {
            int32_t acc[TT_COB];
            for (int32_t t = 0; t < TT_COB; ++t) {
                acc[t] = bias[j + t];
            }
            dot4_s8(x, q->in_zp, w + j * k, k, k, acc);
            requant_store(acc, TT_COB, mult + j, shift + j, q, out, mask, n * m + j);
        }
        for (; j < m; ++j) {
            const int32_t acc = dot1_s8(x, q->in_zp, w + j * k, k, bias[j]);
            const int32_t v = tt_requantize_zp(acc, mult[j], shift[j], q->out_zp);
            out[n * m + j] = clamp_keep(v, q->act_min, q->act_max, mask, n * m + j);
        }
    }
}

/** linear.py _fully_connected_f32: out[n][j] = sum_i (s_x (x - x_zp)) * w[j][i] + b[j], i ascending. */
void tt_fully_connected_f32(int32_t batch, int32_t k, int32_t m, const int8_t *in, int32_t in_zp, float in_scale,
                            const float *w, const float *bias, float *out)
{
    for (int32_t n = 0; n < batch; ++n) {
        const int8_t *x = in + n * k;
        for (int32_t j = 0; j < m; ++j) {
            const float *wj = w + j * k;
            float acc = 0.0f;
            for (int32_t i = 0; i < k; ++i) {
                const float xf = (float)((int32_t)x[i] - in_zp) * in_scale;
                const float prod = xf * wj[i];
                acc = acc + prod;
            }
            out[n * m + j] = acc + bias[j];
        }
    }
}

/* ---- add, mul (NHWC broadcasting) -------------------------------------- */

/** Offset in a broadcast input of output element (n, h, w, c): an axis of size 1 repeats. */
static int32_t bcast(const tt_dims *d, int32_t n, int32_t h, int32_t w, int32_t c)
{
    return nhwc(d, d->n == 1 ? 0 : n, d->h == 1 ? 0 : h, d->w == 1 ? 0 : w, d->c == 1 ? 0 : c);
}

/** eltwise.py _add_s8 on numpy-broadcast inputs.  No accumulator: tt_add_zp's own bound (left_shift <= 20). */
void tt_add_s8(const tt_dims *out_dims, const tt_dims *dims1, const int8_t *x1, int32_t z1, int32_t m1, int32_t s1,
               const tt_dims *dims2, const int8_t *x2, int32_t z2, int32_t m2, int32_t s2, int32_t left_shift,
               int32_t mult, int32_t shift, int32_t zp, int32_t act_min, int32_t act_max, int8_t *out,
               uint8_t *mask)
{
    int32_t i = 0;
    for (int32_t n = 0; n < out_dims->n; ++n) {
        for (int32_t h = 0; h < out_dims->h; ++h) {
            for (int32_t w = 0; w < out_dims->w; ++w) {
                for (int32_t c = 0; c < out_dims->c; ++c, ++i) {
                    const int32_t a = x1[bcast(dims1, n, h, w, c)];
                    const int32_t b = x2[bcast(dims2, n, h, w, c)];
                    const int32_t v = tt_add_zp(a, z1, m1, s1, b, z2, m2, s2, left_shift, mult, shift, zp);
                    out[i] = clamp_keep(v, act_min, act_max, mask, i);
                }
            }
        }
    }
}

/** eltwise.py _mul_s8 on numpy-broadcast inputs.  |acc| <= 255 * 255. */
void tt_mul_s8(const tt_dims *out_dims, const tt_dims *dims1, const int8_t *x1, int32_t z1, const tt_dims *dims2,
               const int8_t *x2, int32_t z2, int32_t mult, int32_t shift, int32_t zp, int32_t act_min,
               int32_t act_max, int8_t *out, uint8_t *mask)
{
    int32_t i = 0;
    for (int32_t n = 0; n < out_dims->n; ++n) {
        for (int32_t h = 0; h < out_dims->h; ++h) {
            for (int32_t w = 0; w < out_dims->w; ++w) {
                for (int32_t c = 0; c < out_dims->c; ++c, ++i) {
                    const int32_t a = (int32_t)x1[bcast(dims1, n, h, w, c)] - z1;
                    const int32_t b = (int32_t)x2[bcast(dims2, n, h, w, c)] - z2;
                    const int32_t v = tt_requantize_zp(a * b, mult, shift, zp);
                    out[i] = clamp_keep(v, act_min, act_max, mask, i);
                }
            }
        }
    }
}

/* ---- pooling ------------------------------------------------------------- */

/*
 * pool.py _avg_pool_s8.  Like the numba kernel it has no dilation (the frontend
 * rejects AveragePool dilations): p->dil_h / p->dil_w are not read.
 * count = valid taps, or KH*KW with count_include_pad; mult/shift[count].
 * |acc| <= 255 * KH * KW.
 */
void tt_avg_pool_s8(const tt_pool_params *p, const tt_quant_params *q, const int32_t *mult, const int32_t *shift,
                    const tt_dims *in_dims, const int8_t *in, const tt_dims *out_dims, int8_t *out, uint8_t *mask)
{
    for (int32_t n = 0; n < out_dims->n; ++n) {
        for (int32_t oh = 0; oh < out_dims->h; ++oh) {
            for (int32_t ow = 0; ow < out_dims->w; ++ow) {
                for (int32_t c = 0; c < out_dims->c; ++c) {
                    int32_t acc = 0;
                    int32_t count = 0;
                    for (int32_t kh = 0; kh < p->kernel_h; ++kh) {
                        const int32_t ih = oh * p->stride_h - p->pad_t + kh;
                        if (ih < 0 || ih >= in_dims->h) {
                            continue;
                        }
                        for (int32_t kw = 0; kw < p->kernel_w; ++kw) {
                            const int32_t iw = ow * p->stride_w - p->pad_l + kw;
                            if (iw < 0 || iw >= in_dims->w) {
                                continue;
                            }
                            acc += (int32_t)in[nhwc(in_dims, n, ih, iw, c)] - q->in_zp;
                            count += 1;
                        }
                    }
                    if (p->count_include_pad) {
                        count = p->kernel_h * p->kernel_w;
                    }
                    const int32_t i = nhwc(out_dims, n, oh, ow, c);
                    const int32_t v = tt_requantize_zp(acc, mult[count], shift[count], q->out_zp);
                    out[i] = clamp_keep(v, q->act_min, q->act_max, mask, i);
                }
            }
        }
    }
}

/** pool.py _max_pool_s8: max of the valid taps (-128 if none), then the clamp. */
void tt_max_pool_s8(const tt_pool_params *p, const tt_quant_params *q, const tt_dims *in_dims, const int8_t *in,
                    const tt_dims *out_dims, int8_t *out, uint8_t *mask)
{
    for (int32_t n = 0; n < out_dims->n; ++n) {
        for (int32_t oh = 0; oh < out_dims->h; ++oh) {
            for (int32_t ow = 0; ow < out_dims->w; ++ow) {
                for (int32_t c = 0; c < out_dims->c; ++c) {
                    int32_t m = -128;
                    for (int32_t kh = 0; kh < p->kernel_h; ++kh) {
                        const int32_t ih = oh * p->stride_h - p->pad_t + kh * p->dil_h;
                        if (ih < 0 || ih >= in_dims->h) {
                            continue;
                        }
                        for (int32_t kw = 0; kw < p->kernel_w; ++kw) {
                            const int32_t iw = ow * p->stride_w - p->pad_l + kw * p->dil_w;
                            if (iw < 0 || iw >= in_dims->w) {
                                continue;
                            }
                            const int32_t v = in[nhwc(in_dims, n, ih, iw, c)];
                            if (v > m) {
                                m = v;
                            }
                        }
                    }
                    const int32_t i = nhwc(out_dims, n, oh, ow, c);
                    out[i] = clamp_keep(m, q->act_min, q->act_max, mask, i);
                }
            }
        }
    }
}

/** pool.py _global_avg_pool_s8: [n,h,w,c] -> [n,1,1,c].  |acc| <= 255 * H * W. */
void tt_global_avg_pool_s8(const tt_quant_params *q, int32_t mult, int32_t shift, const tt_dims *in_dims,
                           const int8_t *in, int8_t *out, uint8_t *mask)
{
    for (int32_t n = 0; n < in_dims->n; ++n) {
        for (int32_t c = 0; c < in_dims->c; ++c) {
            int32_t acc = 0;
            for (int32_t ih = 0; ih < in_dims->h; ++ih) {
                for (int32_t iw = 0; iw < in_dims->w; ++iw) {
                    acc += (int32_t)in[nhwc(in_dims, n, ih, iw, c)] - q->in_zp;
                }
            }
            const int32_t i = n * in_dims->c + c;
            const int32_t v = tt_requantize_zp(acc, mult, shift, q->out_zp);
            out[i] = clamp_keep(v, q->act_min, q->act_max, mask, i);
        }
    }
}

/* ---- element-wise -------------------------------------------------------- */

/** activation.py _lut_s8. */
void tt_lut_s8(int32_t n, const int8_t *in, const int8_t *table, int8_t *out)
{
    for (int32_t i = 0; i < n; ++i) {
        out[i] = table[(int32_t)in[i] + 128];
    }
}

/** activation.py _clamp_s8. */
void tt_clamp_s8(int32_t n, const int8_t *in, int32_t lo, int32_t hi, int8_t *out, uint8_t *mask)
{
    for (int32_t i = 0; i < n; ++i) {
        out[i] = clamp_keep(in[i], lo, hi, mask, i);
    }
}

/** shape.py _requant_copy_s8: one concat input moved to the output's quantization. */
void tt_requant_copy_s8(int32_t n, const int8_t *in, int32_t in_zp, int32_t mult, int32_t shift, int32_t out_zp,
                        int8_t *out)
{
    for (int32_t i = 0; i < n; ++i) {
        const int32_t v = tt_requantize_zp((int32_t)in[i] - in_zp, mult, shift, out_zp);
        out[i] = (int8_t)tt_clamp_s32(v, -128, 127);
    }
}

/** shape.py Concat: every output row is the inputs' rows one after the other, each through
 *  _requant_copy_s8's requantization. */
void tt_concat_s8(int32_t outer, int32_t n_inputs, const int8_t *const *inputs, const int32_t *len,
                  const int32_t *in_zp, const int32_t *mult, const int32_t *shift, int32_t out_zp, int8_t *out)
{
    int32_t row = 0;
    for (int32_t k = 0; k < n_inputs; ++k) {
        row += len[k];
    }
    for (int32_t o = 0; o < outer; ++o) {
        int8_t *dst = out + o * row;
        for (int32_t k = 0; k < n_inputs; ++k) {
            tt_requant_copy_s8(len[k], inputs[k] + o * len[k], in_zp[k], mult[k], shift[k], out_zp, dst);
            dst += len[k];
        }
    }
}

/** shape.py Transpose on int8 (tt_transpose_f32's loop nest on bytes). */
void tt_transpose_s8(const tt_dims *dims, const int8_t *in, const int32_t *perm, int8_t *out)
{
    const int32_t d[4] = {dims->n, dims->h, dims->w, dims->c};
    const int32_t st[4] = {dims->h * dims->w * dims->c, dims->w * dims->c, dims->c, 1};
    const int32_t od0 = d[perm[0]], od1 = d[perm[1]], od2 = d[perm[2]], od3 = d[perm[3]];
    const int32_t s0 = st[perm[0]], s1 = st[perm[1]], s2 = st[perm[2]], s3 = st[perm[3]];
    int32_t k = 0;
    for (int32_t i0 = 0; i0 < od0; ++i0) {
        for (int32_t i1 = 0; i1 < od1; ++i1) {
            for (int32_t i2 = 0; i2 < od2; ++i2) {
                const int8_t *src = in + i0 * s0 + i1 * s1 + i2 * s2;
                for (int32_t i3 = 0; i3 < od3; ++i3) {
                    out[k] = src[i3 * s3];
                    ++k;
                }
            }
        }
    }
}

/* ---- host input quantization ---------------------------------------------- */

/** floor of a float without libm: |t| >= 2^23 (and +-inf) is already an integer. */
static float floor_f32(float t)
{
    if (!(t > -8388608.0f && t < 8388608.0f)) {
        return t;
    }
    const float i = (float)(int32_t)t; /* truncation towards 0, exact here */
    return i > t ? i - 1.0f : i;
}

/**
 * simulator.quantize_input: clamp(floor(x / s + 0.5) + zp, -128, 127), each step in
 * float32 as numpy does.  NaN (undefined for numpy's cast) gives zp clamped.
 */
void tt_quantize_f32_s8(int32_t n, const float *x, float scale, int32_t zp, int8_t *out)
{
    for (int32_t i = 0; i < n; ++i) {
        const float t = x[i] / scale;
        const float r = floor_f32(t + 0.5f);
        float v = r + (float)zp;
        if (v != v) {
            v = (float)zp;
        }
        if (v < -128.0f) {
            v = -128.0f;
        }
        if (v > 127.0f) {
            v = 127.0f;
        }
        out[i] = (int8_t)(int32_t)v;
    }
}
