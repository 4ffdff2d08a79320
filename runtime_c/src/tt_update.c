/**
 * @file tt_update.c
 * @brief The in-place SGD updates of tt_kernels.h (mirrors compiler/ops/update.py).
 *
 * step = clip((g * factor[row]) * lr) in float32, clipped to +-2^20 so that every
 * integer below fits in int32; then
 *   stochastic  w -= floor(step + u), u = tt_prng_uniform (one draw per updated
 *               element, in the gradient's memory order), saturated to [-127, 127]
 *               (biases: int64 difference saturated to int32);
 *   shadow      sh -= floor(256 step + 0.5) within +-127*256, w = floor((sh + 128) / 256);
 *   float       w -= g * lr.
 * Bit-identical with the numba kernels for finite and infinite gradients.  A NaN
 * gradient has no defined integer step: callers skip non-finite gradients (the
 * divergence guard, as tinytrain/train/backprop.py does), and clip_step maps a NaN
 * step (0 * inf) to 0, so no float-to-int conversion below ever sees a NaN or a
 * value outside +-(2^28 + 1).  Biases saturate to [-limit, limit], the per-layer
 * range that keeps the int32 accumulator free of overflow (docs/architecture.md,
 * Numerics).  Each kernel returns how many elements hit their clamp.
 */
#include <float.h>
#include <math.h>

#include "tt_fixedpoint.h"

#include "tt_kernels.h"
#include "tt_prng.h"

#if defined(FLT_EVAL_METHOD) && (FLT_EVAL_METHOD != 0)
#error "tt_update.c needs float arithmetic evaluated in float (FLT_EVAL_METHOD == 0)"
#endif
#ifdef __FAST_MATH__
#error "tt_update.c must not be compiled with -ffast-math: results would differ from the simulator"
#endif

/** update.py STEP_LIMIT: 2^20. */
#define TT_STEP_LIMIT 1048576.0f

/* update.py _clip_step (a NaN becomes 0: no step). */
static float clip_step(float step)
{
    if (step > TT_STEP_LIMIT) {
        return TT_STEP_LIMIT;
    }
    if (step < -TT_STEP_LIMIT) {
        return -TT_STEP_LIMIT;
    }
    if (step <= TT_STEP_LIMIT) {        /* false only for a NaN (no == on floats: -Wfloat-equal) */
        return step;
    }
    return 0.0f;
}

/* update.py _sgd_s8_stochastic: w[row][(i / g_k) * w_k + i % g_k] -= floor((g * factor[row]) * lr + u). */
int32_t tt_sgd_s8_stochastic(int8_t *w, int32_t w_inner, int32_t w_k, const float *g, int32_t g_rows,
                             int32_t g_inner, int32_t g_k, const float *factor, float lr, uint32_t *prng_state)
{
    int32_t sat = 0;
    for (int32_t co = 0; co < g_rows; ++co) {
        const float *grow = g + co * g_inner;
        int8_t *wrow = w + co * w_inner;
        for (int32_t i = 0; i < g_inner; ++i) {
            const float step = clip_step((grow[i] * factor[co]) * lr);
            const int32_t d = (int32_t)floorf(step + tt_prng_uniform(prng_state));
            const int32_t j = (i / g_k) * w_k + i % g_k;
            const int32_t v = (int32_t)wrow[j] - d;      /* |d| <= 2^20 + 1: no overflow */
            sat += (v > 127 || v < -127) ? 1 : 0;
            wrow[j] = (int8_t)tt_clamp_s32(v, -127, 127);
        }
    }
    return sat;
}

/* update.py _sgd_s8_shadow: sh -= floor(step * 256 + 0.5) within +-127*256; w = clamp(floor((sh + 128) / 256)). */
int32_t tt_sgd_s8_shadow(int8_t *w, int16_t *sh, int32_t w_inner, int32_t w_k, const float *g, int32_t g_rows,
                         int32_t g_inner, int32_t g_k, const float *factor, float lr)
{
    int32_t sat = 0;
    for (int32_t co = 0; co < g_rows; ++co) {
        const float *grow = g + co * g_inner;
        int8_t *wrow = w + co * w_inner;
        int16_t *srow = sh + co * w_inner;
        for (int32_t i = 0; i < g_inner; ++i) {
            const float step = clip_step((grow[i] * factor[co]) * lr);
            const int32_t d = (int32_t)floorf(step * 256.0f + 0.5f);     /* |d| <= 2^28 + 1 */
            const int32_t j = (i / g_k) * w_k + i % g_k;
            const int32_t u = (int32_t)srow[j] - d;      /* |d| <= 2^28 + 1: no overflow */
            const int32_t v = tt_clamp_s32(u, -127 * 256, 127 * 256);
            sat += (u != v) ? 1 : 0;
            srow[j] = (int16_t)v;
            wrow[j] = (int8_t)tt_clamp_s32((int32_t)tt_asr64((int64_t)v + 128, 8), -127, 127);
        }
    }
    return sat;
}

/* update.py _sgd_s32_stochastic: b[c] = clamp(b[c] - floor((g * factor[c]) * lr + u), -limit, limit). */
int32_t tt_sgd_s32_stochastic(int32_t *b, int32_t n, const float *g, const float *factor, float lr, int32_t limit,
                              uint32_t *prng_state)
{
    int32_t sat = 0;
    for (int32_t c = 0; c < n; ++c) {
        const float step = clip_step((g[c] * factor[c]) * lr);
        const int64_t d = (int64_t)floorf(step + tt_prng_uniform(prng_state));
        int64_t v = (int64_t)b[c] - d;                  /* |b| < 2^31, |d| <= 2^20 + 1 */
        if (v > (int64_t)limit) {
            v = limit;
            sat += 1;
        } else if (v < -(int64_t)limit) {
            v = -limit;
            sat += 1;
        }
        b[c] = (int32_t)v;
    }
    return sat;
}

/* update.py _sgd_f32 */
void tt_sgd_f32(float *w, int32_t n, const float *g, float lr)
{
    for (int32_t i = 0; i < n; ++i) {
        w[i] = w[i] - g[i] * lr;
    }
}

/* update.py _clamp_sym_s32: b[c] = clamp(b[c], -limit, limit) (a restored state blob's biases
   brought back inside the accumulator-safe range before a forward). */
int32_t tt_clamp_sym_s32(int32_t *b, int32_t n, int32_t limit)
{
    int32_t sat = 0;
    for (int32_t c = 0; c < n; ++c) {
        if (b[c] > limit) {
            b[c] = limit;
            sat += 1;
        } else if (b[c] < -limit) {
            b[c] = -limit;
            sat += 1;
        }
    }
    return sat;
}
