/**
 * @file tt_fc.c
 * @brief Fully connected layers: the int8 forward, the float classifier, their float32
 *        gradients.  Conventions: tt_internal.h.
 */
#include "tt_internal.h"

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

/* linear.py _fc_grad_input_f32: dx[n, kk] = sum_m (dpre[n, m] * s_w[m]) * w[m, kk], m ascending. */
void tt_fc_grad_input_f32(int32_t batch, int32_t k, int32_t m, const float *dpre, const int8_t *w,
                          const float *w_scale, float *dx)
{
    for (int32_t n = 0; n < batch; ++n) {
        for (int32_t kk = 0; kk < k; ++kk) {
            float acc = 0.0f;
            for (int32_t j = 0; j < m; ++j) {
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
    for (int32_t j = 0; j < m; ++j) {
        for (int32_t kk = 0; kk < k_n; ++kk) {
            float acc = 0.0f;
            for (int32_t n = 0; n < batch; ++n) {
                acc = acc + dpre[n * m + j] * (float)((int32_t)x[n * k + kk] - x_zp);
            }
            dwt[j * k_n + kk] = acc * x_scale;
        }
    }
}

/* linear.py _fc_f32_grad_input: dx[n, kk] = sum_m dy[n, m] * w[m, kk], m ascending. */
void tt_fc_f32_grad_input(int32_t batch, int32_t k, int32_t m, const float *dy, const float *w, float *dx)
{
    for (int32_t n = 0; n < batch; ++n) {
        for (int32_t kk = 0; kk < k; ++kk) {
            float acc = 0.0f;
            for (int32_t j = 0; j < m; ++j) {
                acc = acc + dy[n * m + j] * w[j * k + kk];
            }
            dx[n * k + kk] = acc;
        }
    }
}
