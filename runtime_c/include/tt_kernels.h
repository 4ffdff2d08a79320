/**
 * @file tt_kernels.h
 * @brief tinytrain's portable C99 kernels: the int8 forward, the float32
 *        backward, the in-place SGD updates.
 *
 * Every kernel computes what a numba kernel of the simulator computes (compiler/ops, one .py
 * per op family, named in each comment): integer results are identical (integer sums are
 * exact, so their order is free and the C loop nests are chosen for speed), float results
 * are identical bit for bit: every float element sees the same operations in the same order
 * (loops over independent elements may be reordered, a sum never is; build with
 * -ffp-contract=off, never -ffast-math).  tt_arm_dsp.h holds the Cortex-M DSP forms of the
 * int8 dot products (-DTT_NO_DSP turns them off; same results).
 *
 * Conventions
 * - Layout NHWC for activations; conv weights [Cout][KH][KW][Cin/groups];
 *   linear weights [M][K]; all row-major, contiguous.
 * - Caller-owned buffers only: no allocation, no globals, no I/O.
 * - int8 tensors are asymmetric (zero point) per tensor, weights symmetric per
 *   output channel; requantization uses tt_fixedpoint.h (one rounding mode).
 * - Clamp masks are packed bits, element i in bit (i & 7) of byte i >> 3:
 *   1 where the value before the output clamp was inside [act_min, act_max].
 *   A NULL mask pointer means "not kept" (inference).
 * - Value ranges: int8 codes [-128, 127], weights [-127, 127], act_min <=
 *   act_max within [-128, 127], mult [0, 2^31), shift [-31, 30].
 */
#ifndef TT_KERNELS_H
#define TT_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TT_RUNTIME_VERSION 1

/** A 4-D NHWC shape (1-D data uses h = 1; vectors n = h = w = 1). */
typedef struct {
    int32_t n, h, w, c;
} tt_dims;

/** Convolution geometry. pad_t/pad_l: padding before; the output size is given by out dims. */
typedef struct {
    int32_t stride_h, stride_w, pad_t, pad_l, dil_h, dil_w, groups;
} tt_conv_params;

/** Per-tensor quantization of a requantizing kernel. */
typedef struct {
    int32_t in_zp, out_zp, act_min, act_max;
} tt_quant_params;

/** Pooling geometry. */
typedef struct {
    int32_t kernel_h, kernel_w, stride_h, stride_w, pad_t, pad_l, dil_h, dil_w, count_include_pad;
} tt_pool_params;

static inline void tt_mask_put(uint8_t *mask, int32_t i, int32_t on)
{
    if (mask != NULL) { /* on is 0 or 1: no branch on the data */
        const uint32_t b = (uint32_t)(i & 7);
        mask[i >> 3] = (uint8_t)(((uint32_t)mask[i >> 3] & ~(1u << b)) | ((uint32_t)(on != 0) << b));
    }
}

static inline int32_t tt_mask_get(const uint8_t *mask, int32_t i)
{
    return (mask[i >> 3] >> (i & 7)) & 1;
}

/** Bytes of a packed mask for n elements. */
static inline size_t tt_mask_bytes(int32_t n)
{
    return (size_t)((n + 7) / 8);
}

/* ---- int8 forward ------------------------------------------------------ */

/** conv.py _conv2d_s8 (any groups) and _depthwise_conv2d_s8 (groups == channels == Cout). */
void tt_conv2d_s8(const tt_conv_params *p, const tt_quant_params *q, const int32_t *mult, const int32_t *shift,
                  const tt_dims *in_dims, const int8_t *in, const tt_dims *filter_dims, const int8_t *w,
                  const int32_t *bias, const tt_dims *out_dims, int8_t *out, uint8_t *mask);
/** linear.py _fully_connected_s8; in [batch][k], w [m][k], out [batch][m]. */
void tt_fully_connected_s8(const tt_quant_params *q, const int32_t *mult, const int32_t *shift, int32_t batch,
                           int32_t k, int32_t m, const int8_t *in, const int8_t *w, const int32_t *bias, int8_t *out,
                           uint8_t *mask);
/** linear.py _fully_connected_f32: float classifier on a dequantized int8 input. */
void tt_fully_connected_f32(int32_t batch, int32_t k, int32_t m, const int8_t *in, int32_t in_zp, float in_scale,
                            const float *w, const float *bias, float *out);
/** eltwise.py _add_s8, out in memory order; x1/x2 broadcast NHWC (a dim of 1 repeats; shapes of
 *  lower rank are padded with leading 1s, as numpy broadcasts). */
void tt_add_s8(const tt_dims *out_dims, const tt_dims *dims1, const int8_t *x1, int32_t z1, int32_t m1, int32_t s1,
               const tt_dims *dims2, const int8_t *x2, int32_t z2, int32_t m2, int32_t s2, int32_t left_shift,
               int32_t mult, int32_t shift, int32_t zp, int32_t act_min, int32_t act_max, int8_t *out,
               uint8_t *mask);
/** eltwise.py _mul_s8, out in memory order; x1/x2 broadcast NHWC (e.g. [n,h,w,c] * [n,1,1,c]). */
void tt_mul_s8(const tt_dims *out_dims, const tt_dims *dims1, const int8_t *x1, int32_t z1, const tt_dims *dims2,
               const int8_t *x2, int32_t z2, int32_t mult, int32_t shift, int32_t zp, int32_t act_min,
               int32_t act_max, int8_t *out, uint8_t *mask);
/** pool.py _avg_pool_s8; mult/shift indexed by the tap count (kernel_h*kernel_w + 1 entries).
 *  Dilation is not used (ONNX AveragePool dilations are refused at import). */
void tt_avg_pool_s8(const tt_pool_params *p, const tt_quant_params *q, const int32_t *mult, const int32_t *shift,
                    const tt_dims *in_dims, const int8_t *in, const tt_dims *out_dims, int8_t *out, uint8_t *mask);
/** pool.py _max_pool_s8 (q: act_min/act_max only). */
void tt_max_pool_s8(const tt_pool_params *p, const tt_quant_params *q, const tt_dims *in_dims, const int8_t *in,
                    const tt_dims *out_dims, int8_t *out, uint8_t *mask);
/** pool.py _global_avg_pool_s8: [n,h,w,c] -> [n,1,1,c]. */
void tt_global_avg_pool_s8(const tt_quant_params *q, int32_t mult, int32_t shift, const tt_dims *in_dims,
                           const int8_t *in, int8_t *out, uint8_t *mask);
/** activation.py _lut_s8: out[i] = table[in[i] + 128]. */
void tt_lut_s8(int32_t n, const int8_t *in, const int8_t *table, int8_t *out);
/** activation.py _clamp_s8. */
void tt_clamp_s8(int32_t n, const int8_t *in, int32_t lo, int32_t hi, int8_t *out, uint8_t *mask);
/** shape.py _requant_copy_s8 (one concat input). */
void tt_requant_copy_s8(int32_t n, const int8_t *in, int32_t in_zp, int32_t mult, int32_t shift, int32_t out_zp,
                        int8_t *out);
/** shape.py Concat (int8): out = the inputs side by side along one axis, each requantized to the
 *  output's scale as _requant_copy_s8 does.  Seen as rows: `outer` rows (the product of the dims
 *  before the axis); input k gives len[k] contiguous elements (its extent on the axis times the
 *  product of the dims after it) to every output row, whose length is the sum of len[]. */
void tt_concat_s8(int32_t outer, int32_t n_inputs, const int8_t *const *inputs, const int32_t *len,
                  const int32_t *in_zp, const int32_t *mult, const int32_t *shift, int32_t out_zp, int8_t *out);
/** shape.py Transpose (int8, np.transpose(x, perm)): out axis i is input axis perm[i]; out in
 *  memory order.  The values keep their quantization (a pure data move). */
void tt_transpose_s8(const tt_dims *dims, const int8_t *in, const int32_t *perm, int8_t *out);
/** Host input quantization (simulator.quantize_input): clamp(floor(x / s + 0.5) + zp). */
void tt_quantize_f32_s8(int32_t n, const float *x, float scale, int32_t zp, int8_t *out);

/* ---- float32 backward ---------------------------------------------------- */

/** train.py _mask_grad_f32: out[i] = mask bit i ? dy[i] : 0. */
void tt_mask_grad_f32(int32_t n, const float *dy, const uint8_t *mask, float *out);
/** train.py _add_f32. */
void tt_add_f32(int32_t n, const float *a, const float *b, float *out);
/** train.py _sum_to_4d_f32: out (dims_out, 1 on summed axes) = sum of d (dims). */
void tt_sum_to_f32(const tt_dims *dims, const float *d, const tt_dims *dims_out, float *out);
/** conv.py _conv2d_grad_input_f32. */
void tt_conv2d_grad_input_f32(const tt_conv_params *p, const tt_dims *dpre_dims, const float *dpre,
                              const tt_dims *filter_dims, const int8_t *w, const float *w_scale,
                              const tt_dims *dx_dims, float *dx);
/** conv.py _conv2d_grad_weight_f32: dwt [co_n][KH][KW][ci_n], the first co_n / ci_n channels. */
void tt_conv2d_grad_weight_f32(const tt_conv_params *p, const tt_dims *dpre_dims, const float *dpre,
                               const tt_dims *in_dims, const int8_t *x, int32_t x_zp, float x_scale,
                               const tt_dims *dw_dims, float *dwt);
/** conv.py _bias_grad_f32: db[c] = sum over positions (memory order) of dpre[.., c]. */
void tt_bias_grad_f32(int32_t positions, int32_t channels, const float *dpre, float *db);
/** linear.py _fc_grad_input_f32. */
void tt_fc_grad_input_f32(int32_t batch, int32_t k, int32_t m, const float *dpre, const int8_t *w,
                          const float *w_scale, float *dx);
/** linear.py _fc_grad_weight_f32: dwt [m][k_n], the first k_n inputs. */
void tt_fc_grad_weight_f32(int32_t batch, int32_t k, int32_t m, int32_t k_n, const float *dpre, const int8_t *x,
                           int32_t x_zp, float x_scale, float *dwt);
/** linear.py _fc_f32_grad_input. */
void tt_fc_f32_grad_input(int32_t batch, int32_t k, int32_t m, const float *dy, const float *w, float *dx);
/** eltwise.py _mul_grad_4d_f32: out (dims_out) = sum_to(d * s_o (other - o_zp)). */
void tt_mul_grad_f32(const tt_dims *dims, const float *d, const tt_dims *other_dims, const int8_t *other,
                     int32_t o_zp, float o_scale, const tt_dims *dims_out, float *out);
/** pool.py _avg_pool_grad_f32; inv_count[count] = 1/count. */
void tt_avg_pool_grad_f32(const tt_pool_params *p, const tt_dims *d_dims, const float *d, const float *inv_count,
                          const tt_dims *dx_dims, float *dx);
/** pool.py _max_pool_grad_f32. */
void tt_max_pool_grad_f32(const tt_pool_params *p, const tt_dims *d_dims, const float *d, const int8_t *x,
                          const tt_dims *dx_dims, float *dx);
/** pool.py _global_avg_pool_grad_f32. */
void tt_global_avg_pool_grad_f32(const tt_dims *dx_dims, const float *d, float inv_hw, float *dx);
/** activation.py _lut_grad_f32. */
void tt_lut_grad_f32(int32_t n, const float *dy, const int8_t *x, const float *dtable, float *dx);
/** Slice [start, stop) of one axis of an NHWC tensor (a concat's gradient). axis in 1..3. */
void tt_slice_f32(const tt_dims *dims, const float *in, int32_t axis, int32_t start, int32_t stop, float *out);
/** NHWC transpose of a float tensor by perm (perm[0] == 0). */
void tt_transpose_f32(const tt_dims *dims, const float *in, const int32_t *perm, float *out);

/* ---- updates (in place) --------------------------------------------------
 * The caller skips an update whose gradient holds a NaN or an infinity (the
 * divergence guard); a NaN step (0 * inf) is taken as 0 besides, so no
 * float-to-int conversion sees a NaN.  Every int8/int32 kernel returns the number
 * of elements that hit their clamp (the saturation counter of the context). */

/**
 * update.py _sgd_s8_stochastic.  The gradient g covers g_rows output channels x g_inner
 * elements (g_inner = KH*KW*g_k: the first g_k of the w_k input channels of each tap);
 * w has w_inner = KH*KW*w_k elements per output channel.  Element i of a gradient row
 * updates w[row][(i / g_k) * w_k + i % g_k].  One PRNG draw per element, rows then i.
 */
int32_t tt_sgd_s8_stochastic(int8_t *w, int32_t w_inner, int32_t w_k, const float *g, int32_t g_rows,
                             int32_t g_inner, int32_t g_k, const float *factor, float lr, uint32_t *prng_state);
/** update.py _sgd_s8_shadow: as above with int16 shadow weights sh (same layout as w). */
int32_t tt_sgd_s8_shadow(int8_t *w, int16_t *sh, int32_t w_inner, int32_t w_k, const float *g, int32_t g_rows,
                         int32_t g_inner, int32_t g_k, const float *factor, float lr);
/** update.py _sgd_s32_stochastic: biases saturate to [-limit, limit] (the layer's accumulator-safe range). */
int32_t tt_sgd_s32_stochastic(int32_t *b, int32_t n, const float *g, const float *factor, float lr, int32_t limit,
                              uint32_t *prng_state);
/** update.py _clamp_sym_s32: b = clamp(b, -limit, limit); -> how many were outside. */
int32_t tt_clamp_sym_s32(int32_t *b, int32_t n, int32_t limit);
/** update.py _sgd_f32. */
void tt_sgd_f32(float *w, int32_t n, const float *g, float lr);

/* ---- zeroth-order training (tt_zo.c; compiler/ops/zo.py) ----------------- */

/** w[row][(i / g_k) * w_k + i % g_k] += amount * z for the trained part (z: one Rademacher draw each),
 *  saturated to [-127, 127]. */
int32_t tt_zo_perturb_s8(int8_t *w, int32_t w_inner, int32_t w_k, int32_t rows, int32_t g_inner, int32_t g_k,
                         int32_t amount, uint32_t *zstate);
/** b[c] += sign * amount[c] * z, saturated to [-limit, limit]. */
int32_t tt_zo_perturb_s32(int32_t *b, int32_t n, const int32_t *amount, int32_t sign, int32_t limit,
                          uint32_t *zstate);
/** w -= floor((scaled_p * factor[row]) * z + u), kept inside [-limit, limit]. */
int32_t tt_zo_update_s8(int8_t *w, int32_t w_inner, int32_t w_k, int32_t rows, int32_t g_inner, int32_t g_k,
                        const float *factor, float scaled_p, int32_t limit, uint32_t *zstate, uint32_t *srstate);
/** b -= floor((scaled_p * factor[c]) * z + u), kept inside [-limit, limit]. */
int32_t tt_zo_update_s32(int32_t *b, int32_t n, const float *factor, float scaled_p, int32_t limit, uint32_t *zstate,
                         uint32_t *srstate);

#ifdef __cplusplus
}
#endif

#endif /* TT_KERNELS_H */
