/**
 * @file tt_prng.h
 * @brief The pseudo-random generator of on-device training.
 *
 * Mirrors compiler/quant/prng.py function by function: same names (with a
 * tt_ prefix), same arguments, same operations in the same order.
 * tests/test_prng_fmath.py requires identical sequences from both.  The draws
 * feed stochastic rounding (floor(v + u)) and zeroth-order perturbations.
 *
 * Generator: Marsaglia's xorshift32 with shifts (13, 17, 5); the state is a
 * nonzero uint32_t (period 2^32 - 1, 0 is never reached); tt_prng_next
 * returns the new state.
 *
 * Seeding: state = tt_mix32(seed) (murmur3's fmix32, a bijection of uint32
 * with tt_mix32(0) = 0), so nearby seeds start far apart; seed 0 gets
 * TT_PRNG_SEED_ZERO_STATE (0x9E3779B9) instead of the forbidden state 0.
 *
 * Draws:
 *  - tt_prng_uniform:    (next >> 8) * 2^-24, in [0, 1), exact.
 *  - tt_prng_rademacher: +1.0f if the top bit of next is set, else -1.0f.
 *  - tt_prng_normal:     Irwin-Hall(4): four 22-bit draws (next >> 10) summed
 *    as integers, minus their exact mean 2^23 - 2, converted exactly to float,
 *    times sqrt(3) / 2^22.  Mean 0, variance ~1, support |z| <= 2 sqrt(3)
 *    ~ 3.46 (a true N(0,1) exceeds it with probability 5.3e-4), excess
 *    kurtosis -0.3.
 *
 * Only unsigned 32-bit arithmetic (wraps modulo 2^32 by definition) and one
 * float multiply per draw; no libm.
 */
#ifndef TT_PRNG_H
#define TT_PRNG_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** The state given to seed 0 (2^32 / golden ratio). */
#define TT_PRNG_SEED_ZERO_STATE 0x9E3779B9u

/** murmur3's fmix32: a bijection of uint32, tt_mix32(0) = 0. */
static inline uint32_t tt_mix32(uint32_t h)
{
    h = h ^ (h >> 16);
    h = (uint32_t)(h * 0x85EBCA6Bu);
    h = h ^ (h >> 13);
    h = (uint32_t)(h * 0xC2B2AE35u);
    h = h ^ (h >> 16);
    return h;
}

/** *state = tt_mix32(seed), or TT_PRNG_SEED_ZERO_STATE if that is 0 (seed 0 only). */
static inline void tt_prng_seed(uint32_t *state, uint32_t seed)
{
    uint32_t s = tt_mix32(seed);
    if (s == 0u) {
        s = TT_PRNG_SEED_ZERO_STATE;
    }
    *state = s;
}

/** One xorshift32 (13, 17, 5) step; stores and returns the new state. */
static inline uint32_t tt_prng_next(uint32_t *state)
{
    uint32_t x = *state;
    x = x ^ (uint32_t)(x << 13);
    x = x ^ (x >> 17);
    x = x ^ (uint32_t)(x << 5);
    *state = x;
    return x;
}

/** float in [0, 1): (next >> 8) * 2^-24, exact. */
static inline float tt_prng_uniform(uint32_t *state)
{
    return (float)(tt_prng_next(state) >> 8) * 0x1p-24f;
}

/** +1.0f if the top bit of next is set, else -1.0f. */
static inline float tt_prng_rademacher(uint32_t *state)
{
    if ((tt_prng_next(state) >> 31) != 0u) {
        return 1.0f;
    }
    return -1.0f;
}

/** Irwin-Hall(4) approximation of N(0, 1), in [-2 sqrt 3, 2 sqrt 3]. */
static inline float tt_prng_normal(uint32_t *state)
{
    int32_t acc = 0;
    int32_t i;
    for (i = 0; i < 4; ++i) {
        acc = acc + (int32_t)(tt_prng_next(state) >> 10);   /* < 2^22 each, sum < 2^24 */
    }
    return (float)(acc - (int32_t)8388606) * 0x1.bb67aep-22f;   /* mean 2^23 - 2; sqrt(3) / 2^22 */
}

#ifdef __cplusplus
}
#endif

#endif /* TT_PRNG_H */
