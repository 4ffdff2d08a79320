/**
 * @file tt_forward.c
 * @brief The int8 forward kernels of tt_kernels.h (plus the float classifier and
 *        the host input quantization).
 *
 * Each kernel mirrors the numba kernel named in its comment (compiler/ops/...):
 * same loops, same integer operations, same rounding (tt_fixedpoint.h), so the
 * outputs are identical; tests/test_c_forward.py checks outputs and masks.
 * Integer sums are exact (see the bounds), so the order of the taps does not
 * matter; float code keeps the numba order, one operation per statement
 * (build with -ffp-contract=off).
 *
 * Indexing: element (n, h, w, c) of an NHWC tensor with dims d is at
 * ((n * d.h + h) * d.w + w) * d.c + c; a clamp mask has one bit per output
 * element, in output memory order.
 */

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
    tt_mask_put(mask, i, act_min <= v && v <= act_max);
    return (int8_t)tt_clamp_s32(v, act_min, act_max);
}

/* ---- conv2d -------------------------------------------------------------- */

/*
 * conv.py _conv2d_s8 (any groups) and _depthwise_conv2d_s8.  Depthwise
 * (groups == Cin == Cout) and unpadded 1x1 convolutions have their own loop nests below
 * (channels innermost; the same taps summed exactly, so the same results).
 * Accumulator bound: |x - in_zp| <= 255, |w| <= 127, so with K = KH*KW*cg
 * |acc| <= K * 32385 + |bias| <= K * 32512 + |bias| < 2^31, which quantize() guarantees (it refuses
 * or rescales layers that could reach 2^31): int32 never overflows.
 */
/* Depthwise (one input and one output channel per group): per output pixel, the channels run
 * innermost in blocks of DW_BLOCK with their own accumulators (contiguous loads, no per-tap loop
 * overhead per channel).  Integer sums: the same results as the generic loop nest. */
#define DW_BLOCK 64
static void depthwise_s8(const tt_conv_params *p, const tt_quant_params *q, const int32_t *mult,
                         const int32_t *shift, const tt_dims *in_dims, const int8_t *in, const tt_dims *filter_dims,
                         const int8_t *w, const int32_t *bias, const tt_dims *out_dims, int8_t *out, uint8_t *mask)
{
    const int32_t kh_n = filter_dims->h, kw_n = filter_dims->w, c_n = out_dims->c;
    int32_t acc[DW_BLOCK];
    for (int32_t n = 0; n < out_dims->n; ++n) {
        for (int32_t oh = 0; oh < out_dims->h; ++oh) {
            for (int32_t ow = 0; ow < out_dims->w; ++ow) {
                for (int32_t c0 = 0; c0 < c_n; c0 += DW_BLOCK) {
                    const int32_t cb = (c_n - c0 < DW_BLOCK) ? c_n - c0 : DW_BLOCK;
                    for (int32_t c = 0; c < cb; ++c) {
                        acc[c] = bias[c0 + c];
                    }
                    for (int32_t kh = 0; kh < kh_n; ++kh) {
                        const int32_t ih = oh * p->stride_h - p->pad_t + kh * p->dil_h;
                        if (ih < 0 || ih >= in_dims->h) {
                            continue;
                        }
                        for (int32_t kw = 0; kw < kw_n; ++kw) {
                            const int32_t iw = ow * p->stride_w - p->pad_l + kw * p->dil_w;
                            if (iw < 0 || iw >= in_dims->w) {
                                continue;
                            }
                            const int8_t *xs = in + nhwc(in_dims, n, ih, iw, c0);
                            const int8_t *ws = w + (c0 * kh_n + kh) * kw_n + kw;
                            for (int32_t c = 0; c < cb; ++c) {
                                acc[c] += ((int32_t)xs[c] - q->in_zp) * (int32_t)ws[c * kh_n * kw_n];
                            }
                        }
                    }
                    for (int32_t c = 0; c < cb; ++c) {
                        const int32_t i = nhwc(out_dims, n, oh, ow, c0 + c);
                        const int32_t v = tt_requantize_zp(acc[c], mult[c0 + c], shift[c0 + c], q->out_zp);
                        out[i] = clamp_keep(v, q->act_min, q->act_max, mask, i);
                    }
                }
            }
        }
    }
}

/* 1x1 convolution without padding: every tap is valid, so sum (x - zp) w = sum x w - zp sum w,
 * and the inner loop is a plain int8 dot product (vectorizable).  Integer sums: exact, the same
 * results as the generic loop nest.  |sum x w| <= Cin * 128 * 127 and |zp sum w| <= 128 * Cin * 127:
 * within the accumulator bound quantize() checks. */
static void pointwise_s8(const tt_conv_params *p, const tt_quant_params *q, const int32_t *mult,
                         const int32_t *shift, const tt_dims *in_dims, const int8_t *in, const tt_dims *filter_dims,
                         const int8_t *w, const int32_t *bias, const tt_dims *out_dims, int8_t *out, uint8_t *mask)
{
    const int32_t c_in = filter_dims->c;
    for (int32_t co = 0; co < out_dims->c; ++co) {
        const int8_t *ws = w + co * c_in;
        int32_t wsum = 0;
        for (int32_t ci = 0; ci < c_in; ++ci) {
            wsum += ws[ci];
        }
        const int32_t base = bias[co] - q->in_zp * wsum;
        for (int32_t n = 0; n < out_dims->n; ++n) {
            for (int32_t oh = 0; oh < out_dims->h; ++oh) {
                for (int32_t ow = 0; ow < out_dims->w; ++ow) {
                    const int8_t *xs = in + nhwc(in_dims, n, oh * p->stride_h, ow * p->stride_w, 0);
                    int32_t acc = base;
                    for (int32_t ci = 0; ci < c_in; ++ci) {
                        acc += (int32_t)xs[ci] * (int32_t)ws[ci];
                    }
                    const int32_t i = nhwc(out_dims, n, oh, ow, co);
                    const int32_t v = tt_requantize_zp(acc, mult[co], shift[co], q->out_zp);
                    out[i] = clamp_keep(v, q->act_min, q->act_max, mask, i);
                }
            }
        }
    }
}

void tt_conv2d_s8(const tt_conv_params *p, const tt_quant_params *q, const int32_t *mult, const int32_t *shift,
                  const tt_dims *in_dims, const int8_t *in, const tt_dims *filter_dims, const int8_t *w,
                  const int32_t *bias, const tt_dims *out_dims, int8_t *out, uint8_t *mask)
{
    const int32_t kh_n = filter_dims->h, kw_n = filter_dims->w, cg = filter_dims->c;
    const int32_t cog = filter_dims->n / p->groups;
    if (cg == 1 && cog == 1) {
        depthwise_s8(p, q, mult, shift, in_dims, in, filter_dims, w, bias, out_dims, out, mask);
        return;
    }
    if (kh_n == 1 && kw_n == 1 && p->groups == 1 && p->pad_t == 0 && p->pad_l == 0 &&
        (out_dims->h - 1) * p->stride_h < in_dims->h && (out_dims->w - 1) * p->stride_w < in_dims->w) {
        pointwise_s8(p, q, mult, shift, in_dims, in, filter_dims, w, bias, out_dims, out, mask);
        return;
    }
    for (int32_t n = 0; n < out_dims->n; ++n) {
        for (int32_t oh = 0; oh < out_dims->h; ++oh) {
            for (int32_t ow = 0; ow < out_dims->w; ++ow) {
                for (int32_t co = 0; co < out_dims->c; ++co) {
                    const int32_t c0 = (co / cog) * cg;
                    int32_t acc = bias[co];
                    for (int32_t kh = 0; kh < kh_n; ++kh) {
                        const int32_t ih = oh * p->stride_h - p->pad_t + kh * p->dil_h;
                        if (ih < 0 || ih >= in_dims->h) {
                            continue;
                        }
                        for (int32_t kw = 0; kw < kw_n; ++kw) {
                            const int32_t iw = ow * p->stride_w - p->pad_l + kw * p->dil_w;
                            if (iw < 0 || iw >= in_dims->w) {
                                continue;
                            }
                            const int8_t *xs = in + nhwc(in_dims, n, ih, iw, c0);
                            const int8_t *ws = w + nhwc(filter_dims, co, kh, kw, 0);
                            for (int32_t ci = 0; ci < cg; ++ci) {
                                acc += ((int32_t)xs[ci] - q->in_zp) * (int32_t)ws[ci];
                            }
                        }
                    }
                    const int32_t i = nhwc(out_dims, n, oh, ow, co);
                    const int32_t v = tt_requantize_zp(acc, mult[co], shift[co], q->out_zp);
                    out[i] = clamp_keep(v, q->act_min, q->act_max, mask, i);
                }
            }
        }
    }
}

/* ---- fully connected ----------------------------------------------------- */

/** linear.py _fully_connected_s8.  Accumulator bound as conv2d with K = k. */
void tt_fully_connected_s8(const tt_quant_params *q, const int32_t *mult, const int32_t *shift, int32_t batch,
                           int32_t k, int32_t m, const int8_t *in, const int8_t *w, const int32_t *bias, int8_t *out,
                           uint8_t *mask)
{
    for (int32_t n = 0; n < batch; ++n) {
        const int8_t *x = in + n * k;
        for (int32_t j = 0; j < m; ++j) {
            const int8_t *wj = w + j * k;
            int32_t acc = bias[j];
            for (int32_t i = 0; i < k; ++i) {
                acc += ((int32_t)x[i] - q->in_zp) * (int32_t)wj[i];
            }
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
