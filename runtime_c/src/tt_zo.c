/**
 * @file tt_zo.c
 * @brief Zeroth-order (MeZO / SPSA) perturbations and updates on int8 weights and
 *        int32 biases; mirrors compiler/ops/zo.py function by function.
 *
 * z is one Rademacher draw per trained element from the z stream (seeded with the
 * step's seed before each pass, so every pass sees the same z); stochastic rounding
 * draws from the training stream.  Trained weights stay inside [-limit, limit] with
 * limit = 127 - e, so w +- e never saturates and a perturbation restores exactly;
 * trained biases likewise inside [-(L - a), L - a] (L: the layer's accumulator-safe
 * bias limit, a: its perturbation).  A perturbation still saturates (to +-127, +-L),
 * so a state blob outside those ranges cannot overflow anything.  A NaN step becomes
 * 0 before any float-to-int conversion.  Each kernel returns how many elements hit
 * their clamp.
 */
#include <math.h>

#include "tt_kernels.h"
#include "tt_prng.h"

#define ZO_STEP_LIMIT 1048576.0f

int32_t tt_zo_perturb_s8(int8_t *w, int32_t w_inner, int32_t w_k, int32_t rows, int32_t g_inner, int32_t g_k,
                         int32_t amount, uint32_t *zstate)
{
    int32_t sat = 0;
    for (int32_t r = 0; r < rows; ++r) {
        for (int32_t i = 0; i < g_inner; ++i) {
            const int32_t j = r * w_inner + (i / g_k) * w_k + i % g_k;
            int32_t v;
            if (tt_prng_rademacher(zstate) > 0.0f) {
                v = (int32_t)w[j] + amount;
            } else {
                v = (int32_t)w[j] - amount;
            }
            if (v > 127) {
                v = 127;
                sat += 1;
            } else if (v < -127) {
                v = -127;
                sat += 1;
            }
            w[j] = (int8_t)v;
        }
    }
    return sat;
}

int32_t tt_zo_perturb_s32(int32_t *b, int32_t n, const int32_t *amount, int32_t sign, int32_t limit,
                          uint32_t *zstate)
{
    int32_t sat = 0;
    for (int32_t c = 0; c < n; ++c) {
        const int64_t d = (int64_t)amount[c] * (int64_t)sign;
        int64_t v;
        if (tt_prng_rademacher(zstate) > 0.0f) {
            v = (int64_t)b[c] + d;
        } else {
            v = (int64_t)b[c] - d;
        }
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

static float zo_clip(float step)
{
    if (!(step == step)) {
        return 0.0f;
    }
    if (step > ZO_STEP_LIMIT) {
        return ZO_STEP_LIMIT;
    }
    if (step < -ZO_STEP_LIMIT) {
        return -ZO_STEP_LIMIT;
    }
    return step;
}

int32_t tt_zo_update_s8(int8_t *w, int32_t w_inner, int32_t w_k, int32_t rows, int32_t g_inner, int32_t g_k,
                        const float *factor, float scaled_p, int32_t limit, uint32_t *zstate, uint32_t *srstate)
{
    int32_t sat = 0;
    for (int32_t r = 0; r < rows; ++r) {
        for (int32_t i = 0; i < g_inner; ++i) {
            const int32_t j = r * w_inner + (i / g_k) * w_k + i % g_k;
            const float step = zo_clip((scaled_p * factor[r]) * tt_prng_rademacher(zstate));
            const int32_t d = (int32_t)floorf(step + tt_prng_uniform(srstate));
            int32_t v = (int32_t)w[j] - d;
            if (v > limit) {
                v = limit;
                sat += 1;
            } else if (v < -limit) {
                v = -limit;
                sat += 1;
            }
            w[j] = (int8_t)v;
        }
    }
    return sat;
}

int32_t tt_zo_update_s32(int32_t *b, int32_t n, const float *factor, float scaled_p, int32_t limit, uint32_t *zstate,
                         uint32_t *srstate)
{
    int32_t sat = 0;
    for (int32_t c = 0; c < n; ++c) {
        const float step = zo_clip((scaled_p * factor[c]) * tt_prng_rademacher(zstate));
        const int64_t d = (int64_t)floorf(step + tt_prng_uniform(srstate));
        int64_t v = (int64_t)b[c] - d;
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
