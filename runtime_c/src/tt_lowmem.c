/* tt_lowmem.c: memory-saving forward kernels (see tt_lowmem.h). */
#include "tt_lowmem.h"

#include <string.h>

#include "tt_fixedpoint.h"

void tt_crop_s8(const tt_dims *in_dims, const int8_t *in, int32_t y0, int32_t x0, const tt_dims *out_dims,
                int8_t *out)
{
    const size_t row = (size_t)out_dims->w * (size_t)out_dims->c;
    int32_t y;
    for (y = 0; y < out_dims->h; ++y) {
        memcpy(out + (size_t)y * row, in + ((size_t)(y0 + y) * (size_t)in_dims->w + (size_t)x0) * (size_t)in_dims->c,
               row);
    }
}

void tt_quantize_crop_f32_s8(const tt_dims *in_dims, const float *in, int32_t y0, int32_t x0,
                             const tt_dims *out_dims, float scale, int32_t zp, int8_t *out)
{
    const int32_t row = out_dims->w * out_dims->c;
    int32_t y;
    for (y = 0; y < out_dims->h; ++y) {
        tt_quantize_f32_s8(row, in + ((size_t)(y0 + y) * (size_t)in_dims->w + (size_t)x0) * (size_t)in_dims->c, scale,
                           zp, out + (size_t)y * (size_t)row);
    }
}

void tt_paste_s8(const tt_dims *patch_dims, const int8_t *patch, int32_t y0, int32_t x0, const tt_dims *full_dims,
                 int8_t *full)
{
    const size_t row = (size_t)patch_dims->w * (size_t)patch_dims->c;
    int32_t y;
    for (y = 0; y < patch_dims->h; ++y) {
        memcpy(full + ((size_t)(y0 + y) * (size_t)full_dims->w + (size_t)x0) * (size_t)full_dims->c,
               patch + (size_t)y * row, row);
    }
}

void tt_depthwise_conv2d_inplace_s8(const tt_conv_params *p, const tt_quant_params *q, const int32_t *mult,
                                    const int32_t *shift, const tt_dims *in_dims, int8_t *x_y,
                                    const tt_dims *filter_dims, const int8_t *w, const int32_t *bias,
                                    const tt_dims *out_dims, int8_t *scratch)
{
    const int32_t h = in_dims->h, wd = in_dims->w, c_n = in_dims->c;
    const int32_t kh_n = filter_dims->h, kw_n = filter_dims->w;
    const int32_t oh_n = out_dims->h, ow_n = out_dims->w;
    int32_t c, oh, ow, kh, kw;
    for (c = 0; c < c_n; ++c) {
        const int8_t *wc = w + c * kh_n * kw_n;
        for (oh = 0; oh < oh_n; ++oh) {
            for (ow = 0; ow < ow_n; ++ow) {
                int32_t acc = bias[c];
                for (kh = 0; kh < kh_n; ++kh) {
                    const int32_t ih = oh * p->stride_h - p->pad_t + kh * p->dil_h;
                    if (ih < 0 || ih >= h) {
                        continue;
                    }
                    for (kw = 0; kw < kw_n; ++kw) {
                        const int32_t iw = ow * p->stride_w - p->pad_l + kw * p->dil_w;
                        if (iw < 0 || iw >= wd) {
                            continue;
                        }
                        acc += ((int32_t)x_y[((size_t)ih * (size_t)wd + (size_t)iw) * (size_t)c_n + (size_t)c]
                                - q->in_zp) * (int32_t)wc[kh * kw_n + kw];
                    }
                }
                scratch[oh * ow_n + ow] = tt_requantize_s8(acc, mult[c], shift[c], q->out_zp, q->act_min, q->act_max);
            }
        }
        for (oh = 0; oh < oh_n * ow_n; ++oh) {
            x_y[(size_t)oh * (size_t)c_n + (size_t)c] = scratch[oh];
        }
    }
}

void tt_depthwise_conv2d_grad_input_inplace_f32(const tt_conv_params *p, const tt_dims *dims, float *dpre_dx,
                                                const tt_dims *filter_dims, const int8_t *w, const float *w_scale,
                                                float *scratch)
{
    const int32_t h = dims->h, wd = dims->w, c_n = dims->c;
    const int32_t kh_n = filter_dims->h, kw_n = filter_dims->w;
    int32_t c, oh, ow, kh, kw, i;
    for (c = 0; c < c_n; ++c) {
        const int8_t *wc = w + c * kh_n * kw_n;
        for (i = 0; i < h * wd; ++i) {
            scratch[i] = 0.0f;
        }
        for (oh = 0; oh < h; ++oh) {
            for (ow = 0; ow < wd; ++ow) {
                const float d = dpre_dx[((size_t)oh * (size_t)wd + (size_t)ow) * (size_t)c_n + (size_t)c] * w_scale[c];
                for (kh = 0; kh < kh_n; ++kh) {
                    const int32_t ih = oh * p->stride_h - p->pad_t + kh * p->dil_h;
                    if (ih < 0 || ih >= h) {
                        continue;
                    }
                    for (kw = 0; kw < kw_n; ++kw) {
                        const int32_t iw = ow * p->stride_w - p->pad_l + kw * p->dil_w;
                        if (iw < 0 || iw >= wd) {
                            continue;
                        }
                        scratch[ih * wd + iw] = scratch[ih * wd + iw] + d * (float)wc[kh * kw_n + kw];
                    }
                }
            }
        }
        for (i = 0; i < h * wd; ++i) {
            dpre_dx[(size_t)i * (size_t)c_n + (size_t)c] = scratch[i];
        }
    }
}
