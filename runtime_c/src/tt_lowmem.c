/* tt_lowmem.c: memory-saving forward kernels (see tt_lowmem.h). */
#include "tt_lowmem.h"

#include <string.h>

#include "tt_fixedpoint.h"

void tt_crop_s8(const tt_dims *in_dims, const int8_t *in, int32_t y0, int32_t x0, const tt_dims *out_dims,
                int8_t *out)
{
    const size_t row = (size_t)out_dims->w * (size_t)out_dims->c;
    for (int32_t y = 0; y < out_dims->h; ++y) {
        memcpy(out + (size_t)y * row, in + ((size_t)(y0 + y) * (size_t)in_dims->w + (size_t)x0) * (size_t)in_dims->c,
               row);
    }
}

void tt_quantize_crop_f32_s8(const tt_dims *in_dims, const float *in, int32_t y0, int32_t x0,
                             const tt_dims *out_dims, float scale, int32_t zp, int8_t *out)
{
    const int32_t row = out_dims->w * out_dims->c;
    for (int32_t y = 0; y < out_dims->h; ++y) {
        tt_quantize_f32_s8(row, in + ((size_t)(y0 + y) * (size_t)in_dims->w + (size_t)x0) * (size_t)in_dims->c, scale,
                           zp, out + (size_t)y * (size_t)row);
    }
}

void tt_paste_s8(const tt_dims *patch_dims, const int8_t *patch, int32_t y0, int32_t x0, const tt_dims *full_dims,
                 int8_t *full)
{
    const size_t row = (size_t)patch_dims->w * (size_t)patch_dims->c;
    for (int32_t y = 0; y < patch_dims->h; ++y) {
        memcpy(full + ((size_t)(y0 + y) * (size_t)full_dims->w + (size_t)x0) * (size_t)full_dims->c,
               patch + (size_t)y * row, row);
    }
}

void tt_depthwise_conv2d_inplace_s8(const tt_conv_params *p, const tt_quant_params *q, const int32_t *mult,
                                    const int32_t *shift, const tt_dims *in_dims, int8_t *x_y,
                                    const tt_dims *filter_dims, const int8_t *w, const int32_t *bias,
                                    const tt_dims *out_dims, int8_t *scratch)
{
    /* Output row oh reads input rows [oh * stride - pad_t, + span); they are copied into a window in
     * scratch (rows kept from the previous output row move down, new rows are appended while they
     * are still intact), then tt_conv2d_s8 computes the row from the window and writes it over
     * x_y.  Output row oh overwrites bytes of input rows <= oh only, and every row a later output
     * row needs is either already in the window or beyond those. */
    const int32_t h = in_dims->h, c_n = in_dims->c;
    const size_t row = (size_t)in_dims->w * (size_t)c_n;
    const size_t out_row = (size_t)out_dims->w * (size_t)c_n;
    const int32_t span = (filter_dims->h - 1) * p->dil_h + 1;
    int32_t first = 0, count = 0; /* input rows [first, first + count) are in the window */
    for (int32_t oh = 0; oh < out_dims->h; ++oh) {
        const int32_t r0 = oh * p->stride_h - p->pad_t;
        const int32_t a = r0 < 0 ? 0 : r0;
        const int32_t b = r0 + span > h ? h : r0 + span;
        tt_conv_params pr = *p;
        tt_dims wd = *in_dims, od = *out_dims;
        if (count > 0 && a > first) { /* drop the rows no longer needed */
            const int32_t keep = first + count > a ? first + count - a : 0;
            if (keep > 0) {
                memmove(scratch, scratch + (size_t)(a - first) * row, (size_t)keep * row);
            }
            count = keep;
            first = a;
        }
        if (count == 0) {
            first = a;
        }
        while (first + count < b) { /* append the next rows, not yet overwritten */
            memcpy(scratch + (size_t)count * row, x_y + (size_t)(first + count) * row, row);
            ++count;
        }
        pr.stride_h = 1;
        pr.pad_t = a - r0;
        wd.h = b - a;
        od.h = 1;
        tt_conv2d_s8(&pr, q, mult, shift, &wd, scratch, filter_dims, w, bias, &od, x_y + (size_t)oh * out_row, NULL);
    }
}

void tt_depthwise_conv2d_grad_input_inplace_f32(const tt_conv_params *p, const tt_dims *dims, float *dpre_dx,
                                                const tt_dims *filter_dims, const int8_t *w, const float *w_scale,
                                                float *scratch)
{
    const int32_t h = dims->h, wd = dims->w, c_n = dims->c;
    const int32_t kh_n = filter_dims->h, kw_n = filter_dims->w;
    for (int32_t c = 0; c < c_n; ++c) {
        const int8_t *wc = w + c * kh_n * kw_n;
        for (int32_t i = 0; i < h * wd; ++i) {
            scratch[i] = 0.0f;
        }
        for (int32_t oh = 0; oh < h; ++oh) {
            for (int32_t ow = 0; ow < wd; ++ow) {
                const float d = dpre_dx[((size_t)oh * (size_t)wd + (size_t)ow) * (size_t)c_n + (size_t)c] * w_scale[c];
                for (int32_t kh = 0; kh < kh_n; ++kh) {
                    const int32_t ih = oh * p->stride_h - p->pad_t + kh * p->dil_h;
                    if (ih < 0 || ih >= h) {
                        continue;
                    }
                    for (int32_t kw = 0; kw < kw_n; ++kw) {
                        const int32_t iw = ow * p->stride_w - p->pad_l + kw * p->dil_w;
                        if (iw < 0 || iw >= wd) {
                            continue;
                        }
                        scratch[ih * wd + iw] = scratch[ih * wd + iw] + d * (float)wc[kh * kw_n + kw];
                    }
                }
            }
        }
        for (int32_t i = 0; i < h * wd; ++i) {
            dpre_dx[(size_t)i * (size_t)c_n + (size_t)c] = scratch[i];
        }
    }
}
