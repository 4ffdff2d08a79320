/**
 * @file tt_backward.c
 * @brief The float32 backward kernels of tt_kernels.h.
 *
 * Each function gives every output element the same float32 operations in the
 * same order as the numba kernel named in its comment, one rounding per
 * operation (build with -ffp-contract=off, never -ffast-math), so the results
 * are identical bit for bit.  Loops over independent elements may run in another
 * order than numba's (for speed: channels innermost, several terms per pass);
 * each kernel's comment says why its per-element order is unchanged.  `a += b * c` in numba is written
 * `a = a + b * c` here: a separate multiply and add.  Integer operands are
 * converted to float exactly (|x - zp| <= 255, |w| <= 127).
 *
 * Portable C99: no allocation, no globals, no libm; int32_t indices (every
 * tensor has fewer than 2^31 elements).
 */
#include "tt_kernels.h"
#include "tt_arm_dsp.h" /* TT_RESTRICT */

#include <float.h>
#include <string.h>

#if defined(FLT_EVAL_METHOD) && (FLT_EVAL_METHOD != 0)
#error "tt_backward.c needs float arithmetic evaluated in float (FLT_EVAL_METHOD == 0)"
#endif
#ifdef __FAST_MATH__
#error "tt_backward.c must not be compiled with -ffast-math: results would differ from the simulator"
#endif

static int32_t dims_size(const tt_dims *d)
{
    return d->n * d->h * d->w * d->c;
}

static void zero_f32(float *x, int32_t n)
{
    int32_t i;
    for (i = 0; i < n; ++i) {
        x[i] = 0.0f;
    }
}

/* train.py _mask_grad_f32 */
void tt_mask_grad_f32(int32_t n, const float *dy, const uint8_t *mask, float *out)
{
    /* a mask byte at a time (eight elements; out may be dy itself: element i is read before it is written) */
    int32_t i = 0, j;
    for (; i + 8 <= n; i += 8) {
        const uint32_t m = mask[i >> 3];
        uint32_t v[8];
        memcpy(v, dy + i, sizeof v); /* the bits of dy, kept (bit set) or cleared to +0.0f */
        for (j = 0; j < 8; ++j) {
            v[j] &= 0u - ((m >> j) & 1u);
        }
        memcpy(out + i, v, sizeof v);
    }
    for (; i < n; ++i) {
        out[i] = tt_mask_get(mask, i) != 0 ? dy[i] : 0.0f;
    }
}

/* train.py _add_f32 */
void tt_add_f32(int32_t n, const float *a, const float *b, float *out)
{
    int32_t i;
    for (i = 0; i < n; ++i) {
        out[i] = a[i] + b[i];
    }
}

/* train.py _sum_to_4d_f32: out[a, b, c_, cc] += d[n, h, w, c] in d's memory order,
 * an output index is 0 on an axis where dims_out has 1. */
void tt_sum_to_f32(const tt_dims *dims, const float *d, const tt_dims *dims_out, float *out)
{
    const int32_t on = dims_out->n > 1, oh = dims_out->h > 1, ow = dims_out->w > 1, oc = dims_out->c > 1;
    int32_t n, h, w, c;
    int32_t i = 0;
    zero_f32(out, dims_size(dims_out));
    for (n = 0; n < dims->n; ++n) {
        const int32_t a = on ? n : 0;
        for (h = 0; h < dims->h; ++h) {
            const int32_t b = oh ? h : 0;
            for (w = 0; w < dims->w; ++w) {
                const int32_t c_ = ow ? w : 0;
                float *row = out + ((a * dims_out->h + b) * dims_out->w + c_) * dims_out->c;
                for (c = 0; c < dims->c; ++c) {
                    const int32_t j = oc ? c : 0;
                    row[j] = row[j] + d[i];
                    ++i;
                }
            }
        }
    }
}

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

/** The outputs o in [*o0, *o1) of o_n with 0 <= o * stride + off < size (off = k * dil - pad). */
static void out_range(int32_t off, int32_t stride, int32_t o_n, int32_t size, int32_t *o0, int32_t *o1)
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
    int32_t n, oh, ow, kh, kw, c;
#if defined(__SSE2__) || defined(__ARM_NEON)
    /* SIMD hosts: the weights as float in [tap][channel] order (the same exact values as
     * (float)w), so that the channel loop is contiguous and vectorizes; the same operations */
    float wt[4096];
    const int32_t transposed = taps * c_n <= 4096 && c_n % 16 == 0;
    if (transposed) {
        for (c = 0; c < c_n; ++c) {
            int32_t t;
            for (t = 0; t < taps; ++t) {
                wt[t * c_n + c] = (float)w[c * taps + t];
            }
        }
    }
#endif
    for (n = 0; n < dx_dims->n; ++n) {
        for (oh = 0; oh < oh_n; ++oh) {
            const int32_t h0 = oh * p->stride_h - p->pad_t;
            int32_t kh0, kh1;
            tap_range(h0, p->dil_h, kh_n, h, &kh0, &kh1);
            for (ow = 0; ow < ow_n; ++ow) {
                const int32_t w0 = ow * p->stride_w - p->pad_l;
                const float *dp = dpre + ((n * oh_n + oh) * ow_n + ow) * dc;
                int32_t kw0, kw1;
                tap_range(w0, p->dil_w, kw_n, wd, &kw0, &kw1);
                for (kh = kh0; kh < kh1; ++kh) {
                    for (kw = kw0; kw < kw1; ++kw) {
                        float *TT_RESTRICT xp = dx + ((n * h + h0 + kh * p->dil_h) * wd + w0 + kw * p->dil_w) * c_n;
                        const int8_t *TT_RESTRICT wp = w + kh * kw_n + kw;
#if defined(__SSE2__) || defined(__ARM_NEON)
                        if (transposed) {
                            const float *TT_RESTRICT wk = wt + (kh * kw_n + kw) * c_n;
                            const float *TT_RESTRICT dr = dp;
                            const float *TT_RESTRICT sr = w_scale;
                            int32_t c0, j;
                            for (c0 = 0; c0 < c_n; c0 += 16) {
                                float *TT_RESTRICT xb = xp + c0;
                                for (j = 0; j < 16; ++j) {
                                    const float d = dr[c0 + j] * sr[c0 + j];
                                    xb[j] = xb[j] + d * wk[c0 + j];
                                }
                            }
                            continue;
                        }
#endif
                        for (c = 0; c < c_n; ++c) {
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
    int32_t co, c0, j, i, n, oh, ow;
    for (co = 0; co < co_n; co += 4) {
        const int32_t cnt = co_n - co < 4 ? co_n - co : 4;
        for (c0 = 0; c0 < cg; c0 += 16) {
            const int32_t len = cg - c0 < 16 ? cg - c0 : 16;
            for (j = 0; j < cnt; ++j) {
                for (i = 0; i < len; ++i) {
                    wf[j][i] = (float)w[(co + j) * cg + c0 + i];
                }
            }
            for (n = 0; n < dx_dims->n; ++n) {
                for (oh = 0; oh < oh_n; ++oh) {
                    const int32_t ih = oh * p->stride_h - p->pad_t;
                    if (ih < 0 || ih >= h) {
                        continue;
                    }
                    for (ow = 0; ow < ow_n; ++ow) {
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
                            for (i = 0; i < 16; ++i) {
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
                            for (i = 0; i < len; ++i) {
                                float t = xp[i];
                                t = t + d0 * wf[0][i];
                                t = t + d1 * wf[1][i];
                                t = t + d2 * wf[2][i];
                                t = t + d3 * wf[3][i];
                                xp[i] = t;
                            }
                        } else {
                            for (j = 0; j < cnt; ++j) {
                                const float d = dp[j] * w_scale[co + j];
                                for (i = 0; i < len; ++i) {
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
    int32_t n, oh, ow, co, kh, kw, ci, g;
    zero_f32(dx, dims_size(dx_dims));
    if (cg == 1 && cog == 1) {
        grad_input_depthwise(p, dpre_dims, dpre, filter_dims, w, w_scale, dx_dims, dx);
        return;
    }
    if (kh_n == 1 && kw_n == 1 && p->groups == 1) {
        grad_input_pointwise(p, dpre_dims, dpre, filter_dims, w, w_scale, dx_dims, dx);
        return;
    }
    for (n = 0; n < n_b; ++n) {
        for (oh = 0; oh < oh_n; ++oh) {
            const int32_t h0 = oh * p->stride_h - p->pad_t;
            int32_t kh0, kh1;
            tap_range(h0, p->dil_h, kh_n, h, &kh0, &kh1);
            for (ow = 0; ow < ow_n; ++ow) {
                const int32_t w0 = ow * p->stride_w - p->pad_l;
                const float *dp = dpre + ((n * oh_n + oh) * ow_n + ow) * dc;
                int32_t kw0, kw1;
                tap_range(w0, p->dil_w, kw_n, wd, &kw0, &kw1);
                for (kh = kh0; kh < kh1; ++kh) {
                    for (kw = kw0; kw < kw1; ++kw) {
                        float *xrow = dx + ((n * h + h0 + kh * p->dil_h) * wd + w0 + kw * p->dil_w) * c_in;
                        for (g = 0; g < p->groups; ++g) {
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
                                    int32_t j;
                                    for (j = 0; j < 16; ++j) {
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
    int32_t kh, kw, n, oh, ow, co;
    for (kh = 0; kh < kh_n; ++kh) {
        int32_t oh0, oh1;
        out_range(kh * p->dil_h - p->pad_t, p->stride_h, oh_n, h, &oh0, &oh1);
        for (kw = 0; kw < kw_n; ++kw) {
            float *TT_RESTRICT acc = dwt + kh * kw_n + kw;
            int32_t ow0, ow1;
            out_range(kw * p->dil_w - p->pad_l, p->stride_w, ow_n, wd, &ow0, &ow1);
            for (co = 0; co < co_n; ++co) {
                acc[co * taps] = 0.0f;
            }
            for (n = 0; n < in_dims->n; ++n) {
                for (oh = oh0; oh < oh1; ++oh) {
                    const int32_t ih = oh * p->stride_h - p->pad_t + kh * p->dil_h;
                    for (ow = ow0; ow < ow1; ++ow) {
                        const int32_t iw = ow * p->stride_w - p->pad_l + kw * p->dil_w;
                        const float *TT_RESTRICT d = dpre + ((n * oh_n + oh) * ow_n + ow) * dc;
                        const int8_t *TT_RESTRICT xs = x + ((n * h + ih) * wd + iw) * c_x;
                        for (co = 0; co < co_n; ++co) {
                            acc[co * taps] = acc[co * taps] + d[co] * (float)((int32_t)xs[co] - x_zp);
                        }
                    }
                }
            }
            for (co = 0; co < co_n; ++co) {
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
    int32_t co, kh, kw, ci, n, oh, ow;
    if (cg == 1 && cog == 1 && ci_n == 1) {
        grad_weight_depthwise(p, dpre_dims, dpre, in_dims, x, x_zp, x_scale, dw_dims, dwt);
        return;
    }
    for (co = 0; co < co_n; ++co) {
        const int32_t c0 = (co / cog) * cg;
        for (kh = 0; kh < kh_n; ++kh) {
            int32_t oh0, oh1;
            out_range(kh * p->dil_h - p->pad_t, p->stride_h, oh_n, h, &oh0, &oh1);
            for (kw = 0; kw < kw_n; ++kw) {
                float *TT_RESTRICT acc = dwt + ((co * kh_n + kh) * kw_n + kw) * ci_n;
                int32_t ow0, ow1;
                out_range(kw * p->dil_w - p->pad_l, p->stride_w, ow_n, wd, &ow0, &ow1);
                for (ci = 0; ci < ci_n; ++ci) {
                    acc[ci] = 0.0f;
                }
                for (n = 0; n < n_b; ++n) {
                    for (oh = oh0; oh < oh1; ++oh) {
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
                                int32_t j;
                                for (j = ci; j < ci + 16; ++j) {
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
    int32_t c, i;
    for (c = 0; c < channels; ++c) {
        float acc = 0.0f;
        for (i = 0; i < positions; ++i) {
            acc = acc + dpre[i * channels + c];
        }
        db[c] = acc;
    }
}

/* linear.py _fc_grad_input_f32: dx[n, kk] = sum_m (dpre[n, m] * s_w[m]) * w[m, kk], m ascending. */
void tt_fc_grad_input_f32(int32_t batch, int32_t k, int32_t m, const float *dpre, const int8_t *w,
                          const float *w_scale, float *dx)
{
    int32_t n, kk, j;
    for (n = 0; n < batch; ++n) {
        for (kk = 0; kk < k; ++kk) {
            float acc = 0.0f;
            for (j = 0; j < m; ++j) {
                acc = acc + (dpre[n * m + j] * w_scale[j]) * (float)w[j * k + kk];
            }
            dx[n * k + kk] = acc;
        }
    }
}

/* linear.py _fc_grad_weight_f32: dwt[j, kk] = (sum_n dpre[n, j] * (x[n, kk] - x_zp)) * s_x, kk < k_n. */
void tt_fc_grad_weight_f32(int32_t batch, int32_t k, int32_t m, int32_t k_n, const float *dpre, const int8_t *x,
                           int32_t x_zp, float x_scale, float *dwt)
{
    int32_t j, kk, n;
    for (j = 0; j < m; ++j) {
        for (kk = 0; kk < k_n; ++kk) {
            float acc = 0.0f;
            for (n = 0; n < batch; ++n) {
                acc = acc + dpre[n * m + j] * (float)((int32_t)x[n * k + kk] - x_zp);
            }
            dwt[j * k_n + kk] = acc * x_scale;
        }
    }
}

/* linear.py _fc_f32_grad_input: dx[n, kk] = sum_m dy[n, m] * w[m, kk], m ascending. */
void tt_fc_f32_grad_input(int32_t batch, int32_t k, int32_t m, const float *dy, const float *w, float *dx)
{
    int32_t n, kk, j;
    for (n = 0; n < batch; ++n) {
        for (kk = 0; kk < k; ++kk) {
            float acc = 0.0f;
            for (j = 0; j < m; ++j) {
                acc = acc + dy[n * m + j] * w[j * k + kk];
            }
            dx[n * k + kk] = acc;
        }
    }
}

/* eltwise.py _mul_grad_4d_f32: out[.] += d[n, h, w, c] * ((other[.] - o_zp) * s_o), d in memory order;
 * other and out are indexed with 0 on their axes of size 1. */
void tt_mul_grad_f32(const tt_dims *dims, const float *d, const tt_dims *other_dims, const int8_t *other,
                     int32_t o_zp, float o_scale, const tt_dims *dims_out, float *out)
{
    const int32_t xn = other_dims->n > 1, xh = other_dims->h > 1, xw = other_dims->w > 1, xc = other_dims->c > 1;
    const int32_t on = dims_out->n > 1, oh = dims_out->h > 1, ow = dims_out->w > 1, oc = dims_out->c > 1;
    int32_t n, h, w, c;
    int32_t i = 0;
    zero_f32(out, dims_size(dims_out));
    for (n = 0; n < dims->n; ++n) {
        for (h = 0; h < dims->h; ++h) {
            for (w = 0; w < dims->w; ++w) {
                const int8_t *orow = other + (((xn ? n : 0) * other_dims->h + (xh ? h : 0)) * other_dims->w +
                                              (xw ? w : 0)) * other_dims->c;
                float *row = out + (((on ? n : 0) * dims_out->h + (oh ? h : 0)) * dims_out->w + (ow ? w : 0)) *
                                       dims_out->c;
                for (c = 0; c < dims->c; ++c) {
                    const float v = (float)((int32_t)orow[xc ? c : 0] - o_zp) * o_scale;
                    const int32_t j = oc ? c : 0;
                    row[j] = row[j] + d[i] * v;
                    ++i;
                }
            }
        }
    }
}

/* pool.py _avg_pool_grad_f32: each output's gradient times inv_count[count], scattered to its window
 * in the order n, oh, ow, c, kh, kw.  Like the numba kernel, avg pooling has no dilation. */
void tt_avg_pool_grad_f32(const tt_pool_params *p, const tt_dims *d_dims, const float *d, const float *inv_count,
                          const tt_dims *dx_dims, float *dx)
{
    const int32_t n_b = dx_dims->n, h = dx_dims->h, wd = dx_dims->w, c_n = dx_dims->c;
    const int32_t kh_n = p->kernel_h, kw_n = p->kernel_w;
    const int32_t oh_n = d_dims->h, ow_n = d_dims->w, dc = d_dims->c;
    int32_t n, oh, ow, c, kh, kw;
    zero_f32(dx, dims_size(dx_dims));
    for (n = 0; n < n_b; ++n) {
        for (oh = 0; oh < oh_n; ++oh) {
            for (ow = 0; ow < ow_n; ++ow) {
                for (c = 0; c < c_n; ++c) {
                    int32_t count = 0;
                    float g;
                    for (kh = 0; kh < kh_n; ++kh) {
                        const int32_t ih = oh * p->stride_h - p->pad_t + kh;
                        for (kw = 0; kw < kw_n; ++kw) {
                            const int32_t iw = ow * p->stride_w - p->pad_l + kw;
                            if (ih >= 0 && ih < h && iw >= 0 && iw < wd) {
                                count += 1;
                            }
                        }
                    }
                    if (p->count_include_pad != 0) {
                        count = kh_n * kw_n;
                    }
                    g = d[((n * oh_n + oh) * ow_n + ow) * dc + c] * inv_count[count];
                    for (kh = 0; kh < kh_n; ++kh) {
                        const int32_t ih = oh * p->stride_h - p->pad_t + kh;
                        if (ih < 0 || ih >= h) {
                            continue;
                        }
                        for (kw = 0; kw < kw_n; ++kw) {
                            const int32_t iw = ow * p->stride_w - p->pad_l + kw;
                            float *xp;
                            if (iw < 0 || iw >= wd) {
                                continue;
                            }
                            xp = dx + ((n * h + ih) * wd + iw) * c_n + c;
                            *xp = *xp + g;
                        }
                    }
                }
            }
        }
    }
}

/* pool.py _max_pool_grad_f32: each output's gradient goes to the first position (kh, then kw
 * ascending) holding the window's maximum; a window entirely in the padding passes nothing. */
void tt_max_pool_grad_f32(const tt_pool_params *p, const tt_dims *d_dims, const float *d, const int8_t *x,
                          const tt_dims *dx_dims, float *dx)
{
    const int32_t n_b = dx_dims->n, h = dx_dims->h, wd = dx_dims->w, c_n = dx_dims->c;
    const int32_t kh_n = p->kernel_h, kw_n = p->kernel_w;
    const int32_t oh_n = d_dims->h, ow_n = d_dims->w, dc = d_dims->c;
    int32_t n, oh, ow, c, kh, kw;
    zero_f32(dx, dims_size(dx_dims));
    for (n = 0; n < n_b; ++n) {
        for (oh = 0; oh < oh_n; ++oh) {
            for (ow = 0; ow < ow_n; ++ow) {
                for (c = 0; c < c_n; ++c) {
                    int32_t best = -1000;
                    int32_t bi = -1, bj = -1;
                    for (kh = 0; kh < kh_n; ++kh) {
                        const int32_t ih = oh * p->stride_h - p->pad_t + kh * p->dil_h;
                        if (ih < 0 || ih >= h) {
                            continue;
                        }
                        for (kw = 0; kw < kw_n; ++kw) {
                            const int32_t iw = ow * p->stride_w - p->pad_l + kw * p->dil_w;
                            int32_t v;
                            if (iw < 0 || iw >= wd) {
                                continue;
                            }
                            v = (int32_t)x[((n * h + ih) * wd + iw) * c_n + c];
                            if (v > best) {
                                best = v;
                                bi = ih;
                                bj = iw;
                            }
                        }
                    }
                    if (bi >= 0) {
                        float *xp = dx + ((n * h + bi) * wd + bj) * c_n + c;
                        *xp = *xp + d[((n * oh_n + oh) * ow_n + ow) * dc + c];
                    }
                }
            }
        }
    }
}

/* pool.py _global_avg_pool_grad_f32 */
void tt_global_avg_pool_grad_f32(const tt_dims *dx_dims, const float *d, float inv_hw, float *dx)
{
    int32_t n, i, j, c;
    int32_t k = 0;
    for (n = 0; n < dx_dims->n; ++n) {
        for (i = 0; i < dx_dims->h; ++i) {
            for (j = 0; j < dx_dims->w; ++j) {
                for (c = 0; c < dx_dims->c; ++c) {
                    dx[k] = d[n * dx_dims->c + c] * inv_hw;
                    ++k;
                }
            }
        }
    }
}

/* activation.py _lut_grad_f32 */
void tt_lut_grad_f32(int32_t n, const float *dy, const int8_t *x, const float *dtable, float *dx)
{
    int32_t i;
    for (i = 0; i < n; ++i) {
        dx[i] = dy[i] * dtable[(int32_t)x[i] + 128];
    }
}

/* shape.py Slice: [start, stop) of one axis (any of 0..3; the graph uses 1..3). */
void tt_slice_f32(const tt_dims *dims, const float *in, int32_t axis, int32_t start, int32_t stop, float *out)
{
    const int32_t d[4] = {dims->n, dims->h, dims->w, dims->c};
    int32_t outer = 1, inner = 1;
    int32_t a, o, i;
    int32_t k = 0;
    int32_t len;
    for (a = 0; a < axis; ++a) {
        outer *= d[a];
    }
    for (a = axis + 1; a < 4; ++a) {
        inner *= d[a];
    }
    len = (stop - start) * inner;
    for (o = 0; o < outer; ++o) {
        const float *src = in + (o * d[axis] + start) * inner;
        for (i = 0; i < len; ++i) {
            out[k] = src[i];
            ++k;
        }
    }
}

/* shape.py Transpose (np.transpose(x, perm)): out axis i is input axis perm[i]; out in memory order. */
void tt_transpose_f32(const tt_dims *dims, const float *in, const int32_t *perm, float *out)
{
    const int32_t d[4] = {dims->n, dims->h, dims->w, dims->c};
    const int32_t st[4] = {dims->h * dims->w * dims->c, dims->w * dims->c, dims->c, 1};
    const int32_t od0 = d[perm[0]], od1 = d[perm[1]], od2 = d[perm[2]], od3 = d[perm[3]];
    const int32_t s0 = st[perm[0]], s1 = st[perm[1]], s2 = st[perm[2]], s3 = st[perm[3]];
    int32_t i0, i1, i2, i3;
    int32_t k = 0;
    for (i0 = 0; i0 < od0; ++i0) {
        for (i1 = 0; i1 < od1; ++i1) {
            for (i2 = 0; i2 < od2; ++i2) {
                const float *src = in + i0 * s0 + i1 * s1 + i2 * s2;
                for (i3 = 0; i3 < od3; ++i3) {
                    out[k] = src[i3 * s3];
                    ++k;
                }
            }
        }
    }
}
