/* Exposes the static inline functions of tt_prng.h and tt_fmath.h over arrays,
 * so that tests/test_prng_fmath.py can run the C twins on the same inputs as
 * Python. */
#include "tt_fmath.h"
#include "tt_prng.h"

void shim_mix32(const uint32_t *x, uint32_t *out, int32_t n)
{
    for (int32_t i = 0; i < n; ++i) {
        out[i] = tt_mix32(x[i]);
    }
}

/* Seeds a generator and draws n values of one kind:
 * 0 next (in out_u), 1 uniform, 2 rademacher, 3 normal (in out_f),
 * 4 the four kinds in turn (next in out_u[i], the others in out_f[i]).
 * Returns the final state. */
uint32_t shim_prng_draws(uint32_t seed, int32_t kind, uint32_t *out_u, float *out_f, int32_t n)
{
    uint32_t state;
    tt_prng_seed(&state, seed);
    for (int32_t i = 0; i < n; ++i) {
        const int32_t which = kind == 4 ? i % 4 : kind;
        if (which == 0) {
            out_u[i] = tt_prng_next(&state);
        } else if (which == 1) {
            out_f[i] = tt_prng_uniform(&state);
        } else if (which == 2) {
            out_f[i] = tt_prng_rademacher(&state);
        } else {
            out_f[i] = tt_prng_normal(&state);
        }
    }
    return state;
}

void shim_expf(const float *x, float *out, int32_t n)
{
    for (int32_t i = 0; i < n; ++i) {
        out[i] = tt_expf_tt(x[i]);
    }
}

void shim_logf(const float *x, float *out, int32_t n)
{
    for (int32_t i = 0; i < n; ++i) {
        out[i] = tt_logf_tt(x[i]);
    }
}

/* rows of logits[rows * k], labels[rows]; grad like logits, loss[rows] */
void shim_softmax_xent(const float *logits, const int32_t *labels, int32_t rows, int32_t k, float *grad,
                       float *loss)
{
    for (int32_t r = 0; r < rows; ++r) {
        loss[r] = tt_softmax_xent(logits + r * k, k, labels[r], grad + r * k);
    }
}
