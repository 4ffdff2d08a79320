/**
 * @file tt_zo.c
 * @brief Zeroth-order (MeZO / SPSA) perturbations and updates on int8 weights and
 *        int32 biases; mirrors compiler/ops/zo.py function by function.
 *
 * z is one Rademacher draw per trained element from the z stream (seeded with the
 * step's seed before each pass, so every pass sees the same z); stochastic rounding
 * draws from the training stream.  Trained weights stay inside [-limit, limit] with
 * limit = 127 - e, so w +- e never saturates and a perturbation restores exactly.
 */
#include <math.h>

#include "tt_kernels.h"
#include "tt_prng.h"

#define ZO_STEP_LIMIT 1048576.0f

void tt_zo_perturb_s8(int8_t *w, int32_t w_inner, int32_t w_k, int32_t rows, int32_t g_inner, int32_t g_k,
                      int32_t amount, uint32_t *zstate)
{
    for (int32_t r = 0; r < rows; ++r) {
        for (int32_t i = 0; i < g_inner; ++i) {
            const int32_t j = r * w_inner + (i / g_k) * w_k + i % g_k;
            if (tt_prng_rademacher(zstate) > 0.0f) {
                w[j] = (int8_t)((int32_t)w[j] + amount);
            } else {
                w[j] = (int8_t)((int32_t)w[j] - amount);
            }
        }
    }
}

void tt_zo_perturb_s32(int32_t *b, int32_t n, const int32_t *amount, int32_t sign, uint32_t *zstate)
{
    for (int32_t c = 0; c < n; ++c) {
        const int64_t d = (int64_t)amount[c] * (int64_t)sign;
        if (tt_prng_rademacher(zstate) > 0.0f) {
            b[c] = (int32_t)((int64_t)b[c] + d);
        } else {
            b[c] = (int32_t)((int64_t)b[c] - d);
        }
    }
}

static float zo_clip(float step)
{
    if (step > ZO_STEP_LIMIT) {
        return ZO_STEP_LIMIT;
    }
    if (step < -ZO_STEP_LIMIT) {
        return -ZO_STEP_LIMIT;
    }
    return step;
}

void tt_zo_update_s8(int8_t *w, int32_t w_inner, int32_t w_k, int32_t rows, int32_t g_inner, int32_t g_k,
                     const float *factor, float scaled_p, int32_t limit, uint32_t *zstate, uint32_t *srstate)
{
    for (int32_t r = 0; r < rows; ++r) {
        for (int32_t i = 0; i < g_inner; ++i) {
            const int32_t j = r * w_inner + (i / g_k) * w_k + i % g_k;
            const float step = zo_clip((scaled_p * factor[r]) * tt_prng_rademacher(zstate));
            const int32_t d = (int32_t)floorf(step + tt_prng_uniform(srstate));
            int32_t v = (int32_t)w[j] - d;
            if (v > limit) {
                v = limit;
            }
            if (v < -limit) {
                v = -limit;
            }
            w[j] = (int8_t)v;
        }
    }
}

void tt_zo_update_s32(int32_t *b, int32_t n, const float *factor, float scaled_p, uint32_t *zstate,
                      uint32_t *srstate)
{
    for (int32_t c = 0; c < n; ++c) {
        const float step = zo_clip((scaled_p * factor[c]) * tt_prng_rademacher(zstate));
        const int64_t d = (int64_t)floorf(step + tt_prng_uniform(srstate));
        int64_t v = (int64_t)b[c] - d;
        if (v > (int64_t)INT32_MAX) {
            v = INT32_MAX;
        }
        if (v < (int64_t)INT32_MIN) {
            v = INT32_MIN;
        }
        b[c] = (int32_t)v;
    }
}
