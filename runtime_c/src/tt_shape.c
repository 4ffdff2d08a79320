/**
 * @file tt_shape.c
 * @brief Data movement: concat (with its requantizing copy), transpose, slice.
 *        Conventions: tt_internal.h.
 */
#include "tt_internal.h"

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

/* shape.py Slice: [start, stop) of one axis (any of 0..3; the graph uses 1..3). */
void tt_slice_f32(const tt_dims *dims, const float *in, int32_t axis, int32_t start, int32_t stop, float *out)
{
    const int32_t d[4] = {dims->n, dims->h, dims->w, dims->c};
    int32_t outer = 1, inner = 1;
    int32_t k = 0;
    int32_t len;
    for (int32_t a = 0; a < axis; ++a) {
        outer *= d[a];
    }
    for (int32_t a = axis + 1; a < 4; ++a) {
        inner *= d[a];
    }
    len = (stop - start) * inner;
    for (int32_t o = 0; o < outer; ++o) {
        const float *src = in + (o * d[axis] + start) * inner;
        for (int32_t i = 0; i < len; ++i) {
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
    int32_t k = 0;
    for (int32_t i0 = 0; i0 < od0; ++i0) {
        for (int32_t i1 = 0; i1 < od1; ++i1) {
            for (int32_t i2 = 0; i2 < od2; ++i2) {
                const float *src = in + i0 * s0 + i1 * s1 + i2 * s2;
                for (int32_t i3 = 0; i3 < od3; ++i3) {
                    out[k] = src[i3 * s3];
                    ++k;
                }
            }
        }
    }
}
