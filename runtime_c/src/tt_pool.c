/**
 * @file tt_pool.c
 * @brief Pooling (average, max, global average): the int8 forward and the float32 gradients.
 *        Conventions: tt_internal.h.
 */
#include "tt_internal.h"

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

/* pool.py _avg_pool_grad_f32: each output's gradient times inv_count[count], scattered to its window
 * in the order n, oh, ow, c, kh, kw.  Like the numba kernel, avg pooling has no dilation. */
void tt_avg_pool_grad_f32(const tt_pool_params *p, const tt_dims *d_dims, const float *d, const float *inv_count,
                          const tt_dims *dx_dims, float *dx)
{
    const int32_t n_b = dx_dims->n, h = dx_dims->h, wd = dx_dims->w, c_n = dx_dims->c;
    const int32_t kh_n = p->kernel_h, kw_n = p->kernel_w;
    const int32_t oh_n = d_dims->h, ow_n = d_dims->w, dc = d_dims->c;
    zero_f32(dx, dims_size(dx_dims));
    for (int32_t n = 0; n < n_b; ++n) {
        for (int32_t oh = 0; oh < oh_n; ++oh) {
            for (int32_t ow = 0; ow < ow_n; ++ow) {
                for (int32_t c = 0; c < c_n; ++c) {
                    int32_t count = 0;
                    float g;
                    for (int32_t kh = 0; kh < kh_n; ++kh) {
                        const int32_t ih = oh * p->stride_h - p->pad_t + kh;
                        for (int32_t kw = 0; kw < kw_n; ++kw) {
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
                    for (int32_t kh = 0; kh < kh_n; ++kh) {
                        const int32_t ih = oh * p->stride_h - p->pad_t + kh;
                        if (ih < 0 || ih >= h) {
                            continue;
                        }
                        for (int32_t kw = 0; kw < kw_n; ++kw) {
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
    zero_f32(dx, dims_size(dx_dims));
    for (int32_t n = 0; n < n_b; ++n) {
        for (int32_t oh = 0; oh < oh_n; ++oh) {
            for (int32_t ow = 0; ow < ow_n; ++ow) {
                for (int32_t c = 0; c < c_n; ++c) {
                    int32_t best = -1000;
                    int32_t bi = -1, bj = -1;
                    for (int32_t kh = 0; kh < kh_n; ++kh) {
                        const int32_t ih = oh * p->stride_h - p->pad_t + kh * p->dil_h;
                        if (ih < 0 || ih >= h) {
                            continue;
                        }
                        for (int32_t kw = 0; kw < kw_n; ++kw) {
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
    int32_t k = 0;
    for (int32_t n = 0; n < dx_dims->n; ++n) {
        for (int32_t i = 0; i < dx_dims->h; ++i) {
            for (int32_t j = 0; j < dx_dims->w; ++j) {
                for (int32_t c = 0; c < dx_dims->c; ++c) {
                    dx[k] = d[n * dx_dims->c + c] * inv_hw;
                    ++k;
                }
            }
        }
    }
}
