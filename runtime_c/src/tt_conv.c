/**
 * @file tt_conv.c
 * @brief Convolutions (full, grouped, depthwise, pointwise): the int8 forward and the float32
 *        gradients (input, weight, bias).  Conventions: tt_internal.h.
 */
#include "tt_internal.h"

/* ---- conv2d, int8 forward -------------------------------------------------- */

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

/* ---- conv2d, float32 gradients -------------------------------------------- */

/* conv.py _conv2d_grad_input_f32: dx[n, ih, iw, c0 + ci] += (dpre[n, oh, ow, co] * s_w[co]) * w[co, kh, kw, ci],
 * scattered in the order n, oh, ow, co, kh, kw, ci.
 *
 * The order of the additions into each dx element is what must not change.  For one output
 * pixel (oh, ow) a dx element is reached by at most one tap (kh, kw), so the element receives
 * its terms in the order (oh, ow), then co ascending.  The loops below keep exactly that:
 * output pixels in order, then for each valid tap the output channels ascending, four at a time
 * into the same dx value (t = t + d0 w0; t = t + d1 w1; ...: the same sequence of roundings), the
 * input channels innermost (independent elements: vectorizable).  d = dpre * s_w is recomputed
 * per tap: the same float product each time. */
static void grad_input_depthwise(const tt_conv_params *p, const tt_dims *dpre_dims, const float *dpre,
                                 const tt_dims *filter_dims, const int8_t *w, const float *w_scale,
                                 const tt_dims *dx_dims, float *dx)
{
    /* one input channel per output channel: per (oh, ow) and tap, the channels innermost */
    const int32_t h = dx_dims->h, wd = dx_dims->w, c_n = dx_dims->c;
    const int32_t kh_n = filter_dims->h, kw_n = filter_dims->w, taps = kh_n * kw_n;
    const int32_t oh_n = dpre_dims->h, ow_n = dpre_dims->w, dc = dpre_dims->c;
#if defined(__SSE2__) || defined(__ARM_NEON)
    /* SIMD hosts: the weights as float in [tap][channel] order (the same exact values as
     * (float)w), so that the channel loop is contiguous and vectorizes; the same operations */
    float wt[4096];
    const int32_t transposed = taps * c_n <= 4096 && c_n % 16 == 0;
    if (transposed) {
        for (int32_t c = 0; c < c_n; ++c) {
            for (int32_t t = 0; t < taps; ++t) {
                wt[t * c_n + c] = (float)w[c * taps + t];
            }
        }
    }
#endif
    for (int32_t n = 0; n < dx_dims->n; ++n) {
        for (int32_t oh = 0; oh < oh_n; ++oh) {
            const int32_t h0 = oh * p->stride_h - p->pad_t;
            int32_t kh0, kh1;
            tap_range(h0, p->dil_h, kh_n, h, &kh0, &kh1);
            for (int32_t ow = 0; ow < ow_n; ++ow) {
                const int32_t w0 = ow * p->stride_w - p->pad_l;
                const float *dp = dpre + ((n * oh_n + oh) * ow_n + ow) * dc;
                int32_t kw0, kw1;
                tap_range(w0, p->dil_w, kw_n, wd, &kw0, &kw1);
                for (int32_t kh = kh0; kh < kh1; ++kh) {
                    for (int32_t kw = kw0; kw < kw1; ++kw) {
                        float *TT_RESTRICT xp = dx + ((n * h + h0 + kh * p->dil_h) * wd + w0 + kw * p->dil_w) * c_n;
                        const int8_t *TT_RESTRICT wp = w + kh * kw_n + kw;
#if defined(__SSE2__) || defined(__ARM_NEON)
                        if (transposed) {
                            const float *TT_RESTRICT wk = wt + (kh * kw_n + kw) * c_n;
                            const float *TT_RESTRICT dr = dp;
                            const float *TT_RESTRICT sr = w_scale;
                            for (int32_t c0 = 0; c0 < c_n; c0 += 16) {
                                float *TT_RESTRICT xb = xp + c0;
                                for (int32_t j = 0; j < 16; ++j) {
                                    const float d = dr[c0 + j] * sr[c0 + j];
                                    xb[j] = xb[j] + d * wk[c0 + j];
                                }
                            }
                            continue;
                        }
#endif
                        for (int32_t c = 0; c < c_n; ++c) {
                            const float d = dp[c] * w_scale[c];
                            xp[c] = xp[c] + d * (float)wp[c * taps];
                        }
                    }
                }
            }
        }
    }
}

/* 1x1, one group: an output pixel reaches one input pixel, and an input pixel is reached by at
 * most one output pixel, so the only order that matters per dx element is the output channels'
 * (ascending).  Here the output channels run outside, four at a time, with their int8 weights
 * converted to float once per block of 16 input channels (not once per pixel), the pixels
 * inside: t = t + d0 w0; t = t + d1 w1; ... in co order, as above. */
static void grad_input_pointwise(const tt_conv_params *p, const tt_dims *dpre_dims, const float *dpre,
                                 const tt_dims *filter_dims, const int8_t *w, const float *w_scale,
                                 const tt_dims *dx_dims, float *dx)
{
    const int32_t h = dx_dims->h, wd = dx_dims->w, cg = dx_dims->c;
    const int32_t co_n = filter_dims->n;
    const int32_t oh_n = dpre_dims->h, ow_n = dpre_dims->w, dc = dpre_dims->c;
    float wf[4][16];
    for (int32_t co = 0; co < co_n; co += 4) {
        const int32_t cnt = co_n - co < 4 ? co_n - co : 4;
        for (int32_t c0 = 0; c0 < cg; c0 += 16) {
            const int32_t len = cg - c0 < 16 ? cg - c0 : 16;
            for (int32_t j = 0; j < cnt; ++j) {
                for (int32_t i = 0; i < len; ++i) {
                    wf[j][i] = (float)w[(co + j) * cg + c0 + i];
                }
            }
            for (int32_t n = 0; n < dx_dims->n; ++n) {
                for (int32_t oh = 0; oh < oh_n; ++oh) {
                    const int32_t ih = oh * p->stride_h - p->pad_t;
                    if (ih < 0 || ih >= h) {
                        continue;
                    }
                    for (int32_t ow = 0; ow < ow_n; ++ow) {
                        const int32_t iw = ow * p->stride_w - p->pad_l;
                        const float *dp = dpre + ((n * oh_n + oh) * ow_n + ow) * dc + co;
                        float *TT_RESTRICT xp = dx + ((n * h + ih) * wd + iw) * cg + c0;
                        if (iw < 0 || iw >= wd) {
                            continue;
                        }
                        if (cnt == 4 && len == 16) { /* constant trip count: vectorized at -O2 */
                            const float d0 = dp[0] * w_scale[co];
                            const float d1 = dp[1] * w_scale[co + 1];
                            const float d2 = dp[2] * w_scale[co + 2];
                            const float d3 = dp[3] * w_scale[co + 3];
                            for (int32_t i = 0; i < 16; ++i) {
                                float t = xp[i];
                                t = t + d0 * wf[0][i];
                                t = t + d1 * wf[1][i];
                                t = t + d2 * wf[2][i];
                                t = t + d3 * wf[3][i];
                                xp[i] = t;
                            }
                        } else if (cnt == 4) {
                            const float d0 = dp[0] * w_scale[co];
                            const float d1 = dp[1] * w_scale[co + 1];
                            const float d2 = dp[2] * w_scale[co + 2];
                            const float d3 = dp[3] * w_scale[co + 3];
                            for (int32_t i = 0; i < len; ++i) {
                                float t = xp[i];
                                t = t + d0 * wf[0][i];
                                t = t + d1 * wf[1][i];
                                t = t + d2 * wf[2][i];
                                t = t + d3 * wf[3][i];
                                xp[i] = t;
                            }
                        } else {
                            for (int32_t j = 0; j < cnt; ++j) {
                                const float d = dp[j] * w_scale[co + j];
                                for (int32_t i = 0; i < len; ++i) {
                                    xp[i] = xp[i] + d * wf[j][i];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

void tt_conv2d_grad_input_f32(const tt_conv_params *p, const tt_dims *dpre_dims, const float *dpre,
                              const tt_dims *filter_dims, const int8_t *w, const float *w_scale,
                              const tt_dims *dx_dims, float *dx)
{
    const int32_t n_b = dx_dims->n, h = dx_dims->h, wd = dx_dims->w, c_in = dx_dims->c;
    const int32_t co_n = filter_dims->n, kh_n = filter_dims->h, kw_n = filter_dims->w, cg = filter_dims->c;
    const int32_t oh_n = dpre_dims->h, ow_n = dpre_dims->w, dc = dpre_dims->c;
    const int32_t cog = co_n / p->groups;
    const int32_t w_stride = kh_n * kw_n * cg;
    int32_t co, ci;
    zero_f32(dx, dims_size(dx_dims));
    if (cg == 1 && cog == 1) {
        grad_input_depthwise(p, dpre_dims, dpre, filter_dims, w, w_scale, dx_dims, dx);
        return;
    }
    if (kh_n == 1 && kw_n == 1 && p->groups == 1) {
        grad_input_pointwise(p, dpre_dims, dpre, filter_dims, w, w_scale, dx_dims, dx);
        return;
    }
    for (int32_t n = 0; n < n_b; ++n) {
        for (int32_t oh = 0; oh < oh_n; ++oh) {
            const int32_t h0 = oh * p->stride_h - p->pad_t;
            int32_t kh0, kh1;
            tap_range(h0, p->dil_h, kh_n, h, &kh0, &kh1);
            for (int32_t ow = 0; ow < ow_n; ++ow) {
                const int32_t w0 = ow * p->stride_w - p->pad_l;
                const float *dp = dpre + ((n * oh_n + oh) * ow_n + ow) * dc;
                int32_t kw0, kw1;
                tap_range(w0, p->dil_w, kw_n, wd, &kw0, &kw1);
                for (int32_t kh = kh0; kh < kh1; ++kh) {
                    for (int32_t kw = kw0; kw < kw1; ++kw) {
                        float *xrow = dx + ((n * h + h0 + kh * p->dil_h) * wd + w0 + kw * p->dil_w) * c_in;
                        for (int32_t g = 0; g < p->groups; ++g) {
                            float *TT_RESTRICT xp = xrow + g * cg;
                            const int32_t co_end = (g + 1) * cog;
                            co = g * cog;
                            for (; co + 4 <= co_end; co += 4) {
                                const float d0 = dp[co] * w_scale[co];
                                const float d1 = dp[co + 1] * w_scale[co + 1];
                                const float d2 = dp[co + 2] * w_scale[co + 2];
                                const float d3 = dp[co + 3] * w_scale[co + 3];
                                const int8_t *TT_RESTRICT w0p = w + co * w_stride + (kh * kw_n + kw) * cg;
                                const int8_t *TT_RESTRICT w1p = w0p + w_stride;
                                const int8_t *TT_RESTRICT w2p = w0p + 2 * w_stride;
                                const int8_t *TT_RESTRICT w3p = w0p + 3 * w_stride;
                                ci = 0;
                                for (; ci + 16 <= cg; ci += 16) { /* constant trip count: vectorized at -O2 */
                                    float *TT_RESTRICT xb = xp + ci;
                                    for (int32_t j = 0; j < 16; ++j) {
                                        float t = xb[j];
                                        t = t + d0 * (float)w0p[ci + j];
                                        t = t + d1 * (float)w1p[ci + j];
                                        t = t + d2 * (float)w2p[ci + j];
                                        t = t + d3 * (float)w3p[ci + j];
                                        xb[j] = t;
                                    }
                                }
                                for (; ci < cg; ++ci) {
                                    float t = xp[ci];
                                    t = t + d0 * (float)w0p[ci];
                                    t = t + d1 * (float)w1p[ci];
                                    t = t + d2 * (float)w2p[ci];
                                    t = t + d3 * (float)w3p[ci];
                                    xp[ci] = t;
                                }
                            }
                            for (; co < co_end; ++co) {
                                const float d = dp[co] * w_scale[co];
                                const int8_t *TT_RESTRICT wp = w + co * w_stride + (kh * kw_n + kw) * cg;
                                for (ci = 0; ci < cg; ++ci) {
                                    xp[ci] = xp[ci] + d * (float)wp[ci];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/* conv.py _conv2d_grad_weight_f32: dwt[co, kh, kw, ci] = (sum_{n, oh, ow} dpre * (x - x_zp)) * s_x
 * for the first dw_dims->n output and dw_dims->c input channels.
 *
 * Each dwt element is 0, then += dpre * (x - zp) over the valid (n, oh, ow) in that order, then
 * * x_scale: exactly the numba kernel's sequence per element.  The loops run the positions outside
 * and the input channels inside (independent accumulators: vectorizable, no sum reassociated);
 * four positions (consecutive valid ow) are added into each accumulator per pass, one after the
 * other (t = t + a; t = t + b; ...: the same roundings in the same order). */
static void grad_weight_depthwise(const tt_conv_params *p, const tt_dims *dpre_dims, const float *dpre,
                                  const tt_dims *in_dims, const int8_t *x, int32_t x_zp, float x_scale,
                                  const tt_dims *dw_dims, float *dwt)
{
    /* one input channel per output channel: per tap, the positions outside, the channels inside
     * (dwt[co][kh][kw] is strided by the taps; each element still sums its positions in order) */
    const int32_t h = in_dims->h, wd = in_dims->w, c_x = in_dims->c;
    const int32_t co_n = dw_dims->n, kh_n = dw_dims->h, kw_n = dw_dims->w, taps = kh_n * kw_n;
    const int32_t oh_n = dpre_dims->h, ow_n = dpre_dims->w, dc = dpre_dims->c;
    for (int32_t kh = 0; kh < kh_n; ++kh) {
        int32_t oh0, oh1;
        out_range(kh * p->dil_h - p->pad_t, p->stride_h, oh_n, h, &oh0, &oh1);
        for (int32_t kw = 0; kw < kw_n; ++kw) {
            float *TT_RESTRICT acc = dwt + kh * kw_n + kw;
            int32_t ow0, ow1;
            out_range(kw * p->dil_w - p->pad_l, p->stride_w, ow_n, wd, &ow0, &ow1);
            for (int32_t co = 0; co < co_n; ++co) {
                acc[co * taps] = 0.0f;
            }
            for (int32_t n = 0; n < in_dims->n; ++n) {
                for (int32_t oh = oh0; oh < oh1; ++oh) {
                    const int32_t ih = oh * p->stride_h - p->pad_t + kh * p->dil_h;
                    for (int32_t ow = ow0; ow < ow1; ++ow) {
                        const int32_t iw = ow * p->stride_w - p->pad_l + kw * p->dil_w;
                        const float *TT_RESTRICT d = dpre + ((n * oh_n + oh) * ow_n + ow) * dc;
                        const int8_t *TT_RESTRICT xs = x + ((n * h + ih) * wd + iw) * c_x;
                        for (int32_t co = 0; co < co_n; ++co) {
                            acc[co * taps] = acc[co * taps] + d[co] * (float)((int32_t)xs[co] - x_zp);
                        }
                    }
                }
            }
            for (int32_t co = 0; co < co_n; ++co) {
                acc[co * taps] = acc[co * taps] * x_scale;
            }
        }
    }
}

void tt_conv2d_grad_weight_f32(const tt_conv_params *p, const tt_dims *dpre_dims, const float *dpre,
                               const tt_dims *in_dims, const int8_t *x, int32_t x_zp, float x_scale,
                               const tt_dims *dw_dims, float *dwt)
{
    const int32_t n_b = in_dims->n, h = in_dims->h, wd = in_dims->w, c_x = in_dims->c;
    const int32_t co_n = dw_dims->n, kh_n = dw_dims->h, kw_n = dw_dims->w, ci_n = dw_dims->c;
    const int32_t oh_n = dpre_dims->h, ow_n = dpre_dims->w, dc = dpre_dims->c;
    const int32_t cog = dc / p->groups;
    const int32_t cg = c_x / p->groups;
    int32_t ci, ow;
    if (cg == 1 && cog == 1 && ci_n == 1) {
        grad_weight_depthwise(p, dpre_dims, dpre, in_dims, x, x_zp, x_scale, dw_dims, dwt);
        return;
    }
    for (int32_t co = 0; co < co_n; ++co) {
        const int32_t c0 = (co / cog) * cg;
        for (int32_t kh = 0; kh < kh_n; ++kh) {
            int32_t oh0, oh1;
            out_range(kh * p->dil_h - p->pad_t, p->stride_h, oh_n, h, &oh0, &oh1);
            for (int32_t kw = 0; kw < kw_n; ++kw) {
                float *TT_RESTRICT acc = dwt + ((co * kh_n + kh) * kw_n + kw) * ci_n;
                int32_t ow0, ow1;
                out_range(kw * p->dil_w - p->pad_l, p->stride_w, ow_n, wd, &ow0, &ow1);
                for (ci = 0; ci < ci_n; ++ci) {
                    acc[ci] = 0.0f;
                }
                for (int32_t n = 0; n < n_b; ++n) {
                    for (int32_t oh = oh0; oh < oh1; ++oh) {
                        const int32_t ih = oh * p->stride_h - p->pad_t + kh * p->dil_h;
                        const float *drow = dpre + (n * oh_n + oh) * ow_n * dc + co;
                        const int8_t *xrow = x + (n * h + ih) * wd * c_x + c0;
                        const int32_t xstep = p->stride_w * c_x;
                        ow = ow0;
                        for (; ow + 4 <= ow1; ow += 4) {
                            const float d0 = drow[ow * dc];
                            const float d1 = drow[(ow + 1) * dc];
                            const float d2 = drow[(ow + 2) * dc];
                            const float d3 = drow[(ow + 3) * dc];
                            const int8_t *TT_RESTRICT x0 = xrow + (ow * p->stride_w - p->pad_l + kw * p->dil_w) * c_x;
                            const int8_t *TT_RESTRICT x1 = x0 + xstep;
                            const int8_t *TT_RESTRICT x2 = x0 + 2 * xstep;
                            const int8_t *TT_RESTRICT x3 = x0 + 3 * xstep;
                            ci = 0;
                            for (; ci + 16 <= ci_n; ci += 16) { /* constant trip count: vectorized at -O2 */
                                for (int32_t j = ci; j < ci + 16; ++j) {
                                    float t = acc[j];
                                    t = t + d0 * (float)((int32_t)x0[j] - x_zp);
                                    t = t + d1 * (float)((int32_t)x1[j] - x_zp);
                                    t = t + d2 * (float)((int32_t)x2[j] - x_zp);
                                    t = t + d3 * (float)((int32_t)x3[j] - x_zp);
                                    acc[j] = t;
                                }
                            }
                            for (; ci < ci_n; ++ci) {
                                float t = acc[ci];
                                t = t + d0 * (float)((int32_t)x0[ci] - x_zp);
                                t = t + d1 * (float)((int32_t)x1[ci] - x_zp);
                                t = t + d2 * (float)((int32_t)x2[ci] - x_zp);
                                t = t + d3 * (float)((int32_t)x3[ci] - x_zp);
                                acc[ci] = t;
                            }
                        }
                        for (; ow < ow1; ++ow) {
                            const float d = drow[ow * dc];
                            const int8_t *TT_RESTRICT xs = xrow + (ow * p->stride_w - p->pad_l + kw * p->dil_w) * c_x;
                            for (ci = 0; ci < ci_n; ++ci) {
                                acc[ci] = acc[ci] + d * (float)((int32_t)xs[ci] - x_zp);
                            }
                        }
                    }
                }
                for (ci = 0; ci < ci_n; ++ci) {
                    acc[ci] = acc[ci] * x_scale;
                }
            }
        }
    }
}

/* conv.py _bias_grad_f32 */
void tt_bias_grad_f32(int32_t positions, int32_t channels, const float *dpre, float *db)
{
    for (int32_t c = 0; c < channels; ++c) {
        float acc = 0.0f;
        for (int32_t i = 0; i < positions; ++i) {
            acc = acc + dpre[i * channels + c];
        }
        db[c] = acc;
    }
}
