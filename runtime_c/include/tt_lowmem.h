/* tt_lowmem.h: memory-saving forward kernels (compiler/ops/lowmem.py): crop and
 * paste for patch-based execution of a frozen prefix (compiler/passes/patch_prefix.py)
 * and the in-place depthwise convolution (compiler/passes/inplace_depthwise.py).
 *
 * Layout NHWC, int8, batch 1 (dims->n == 1).  Neither kernel reads or writes
 * outside the rectangles named; in and out never overlap. */
#ifndef TT_LOWMEM_H
#define TT_LOWMEM_H

#include "tt_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/** out[0, y, x, c] = in[0, y0 + y, x0 + x, c] for the out_dims->h x out_dims->w rectangle at (y0, x0);
 *  requires y0 + out_dims->h <= in_dims->h, x0 + out_dims->w <= in_dims->w, equal channel counts. */
void tt_crop_s8(const tt_dims *in_dims, const int8_t *in, int32_t y0, int32_t x0, const tt_dims *out_dims,
                int8_t *out);

/** out = the int8 quantization (tt_quantize_f32_s8, element by element) of the float NHWC rectangle
 *  in[0, y0 .. y0 + out_dims->h, x0 .. x0 + out_dims->w, :]: a tile of the input, read straight
 *  from the caller's buffer. */
void tt_quantize_crop_f32_s8(const tt_dims *in_dims, const float *in, int32_t y0, int32_t x0,
                             const tt_dims *out_dims, float scale, int32_t zp, int8_t *out);

/** full[0, y0 + y, x0 + x, c] = patch[0, y, x, c]: writes only the patch's rectangle of `full`. */
void tt_paste_s8(const tt_dims *patch_dims, const int8_t *patch, int32_t y0, int32_t x0, const tt_dims *full_dims,
                 int8_t *full);

/** In place: a depthwise conv2d (groups == channels == outputs, filter [C][kh][kw][1]) whose output
 *  [1][Ho][Wo][C] overwrites its input [1][H][W][C] (Ho <= H, Wo <= W, pad_t < kernel span).  A
 *  window of the input rows one output row reads lives in scratch ((kh - 1) * dil_h + 1 rows of
 *  W * C bytes); each output row is tt_conv2d_s8 on that window, so results are tt_conv2d_s8's.
 *  No clamp mask (frozen, forward only). */
void tt_depthwise_conv2d_inplace_s8(const tt_conv_params *p, const tt_quant_params *q, const int32_t *mult,
                                    const int32_t *shift, const tt_dims *in_dims, int8_t *x_y,
                                    const tt_dims *filter_dims, const int8_t *w, const int32_t *bias,
                                    const tt_dims *out_dims, int8_t *scratch);

/** In place: the input gradient of a depthwise conv2d whose dx has dpre's shape (stride 1, "same"
 *  padding): dx[., ., c] overwrites dpre[., ., c].  Per channel the dx plane is summed in scratch
 *  (H * W floats) in tt_conv2d_grad_input_f32's order (positions oh, ow ascending), so every dx
 *  element is bit for bit that kernel's. */
void tt_depthwise_conv2d_grad_input_inplace_f32(const tt_conv_params *p, const tt_dims *dims, float *dpre_dx,
                                                const tt_dims *filter_dims, const int8_t *w, const float *w_scale,
                                                float *scratch);

#ifdef __cplusplus
}
#endif

#endif /* TT_LOWMEM_H */
