/**
 * @file tt_eltwise.c
 * @brief Element-wise kernels: add and mul with NHWC broadcasting, tables (lut), clamps, the
 *        host input quantization, and their float32 gradients (mask, add, sum_to, mul, lut).
 *        Conventions: tt_internal.h.
 */
#include "tt_internal.h"

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

/* ---- tables and clamps ----------------------------------------------------- */

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
        if (!(v < 0.0f) && !(v >= 0.0f)) { /* a NaN (no == on floats: -Wfloat-equal) */
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

/* ---- float32 gradients ------------------------------------------------------ */

/* train.py _mask_grad_f32 */
void tt_mask_grad_f32(int32_t n, const float *dy, const uint8_t *mask, float *out)
{
    /* a mask byte at a time (eight elements; out may be dy itself: element i is read before it is written) */
    int32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const uint32_t m = mask[i >> 3];
        uint32_t v[8];
        memcpy(v, dy + i, sizeof v); /* the bits of dy, kept (bit set) or cleared to +0.0f */
        for (int32_t j = 0; j < 8; ++j) {
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
    for (int32_t i = 0; i < n; ++i) {
        out[i] = a[i] + b[i];
    }
}

/* train.py _sum_to_4d_f32: out[a, b, c_, cc] += d[n, h, w, c] in d's memory order,
 * an output index is 0 on an axis where dims_out has 1. */
void tt_sum_to_f32(const tt_dims *dims, const float *d, const tt_dims *dims_out, float *out)
{
    const int32_t on = dims_out->n > 1, oh = dims_out->h > 1, ow = dims_out->w > 1, oc = dims_out->c > 1;
    int32_t i = 0;
    zero_f32(out, dims_size(dims_out));
    for (int32_t n = 0; n < dims->n; ++n) {
        const int32_t a = on ? n : 0;
        for (int32_t h = 0; h < dims->h; ++h) {
            const int32_t b = oh ? h : 0;
            for (int32_t w = 0; w < dims->w; ++w) {
                const int32_t c_ = ow ? w : 0;
                float *row = out + ((a * dims_out->h + b) * dims_out->w + c_) * dims_out->c;
                for (int32_t c = 0; c < dims->c; ++c) {
                    const int32_t j = oc ? c : 0;
                    row[j] = row[j] + d[i];
                    ++i;
                }
            }
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
    int32_t i = 0;
    zero_f32(out, dims_size(dims_out));
    for (int32_t n = 0; n < dims->n; ++n) {
        for (int32_t h = 0; h < dims->h; ++h) {
            for (int32_t w = 0; w < dims->w; ++w) {
                const int8_t *orow = other + (((xn ? n : 0) * other_dims->h + (xh ? h : 0)) * other_dims->w +
                                              (xw ? w : 0)) * other_dims->c;
                float *row = out + (((on ? n : 0) * dims_out->h + (oh ? h : 0)) * dims_out->w + (ow ? w : 0)) *
                                       dims_out->c;
                for (int32_t c = 0; c < dims->c; ++c) {
                    const float v = (float)((int32_t)orow[xc ? c : 0] - o_zp) * o_scale;
                    const int32_t j = oc ? c : 0;
                    row[j] = row[j] + d[i] * v;
                    ++i;
                }
            }
        }
    }
}

/* activation.py _lut_grad_f32 */
void tt_lut_grad_f32(int32_t n, const float *dy, const int8_t *x, const float *dtable, float *dx)
{
    for (int32_t i = 0; i < n; ++i) {
        dx[i] = dy[i] * dtable[(int32_t)x[i] + 128];
    }
}
