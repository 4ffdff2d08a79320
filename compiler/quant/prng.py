"""The pseudo-random generator of on-device training.

This module and `runtime_c/include/tt_prng.h` mirror each other function by
function (same names with a `tt_` prefix in C, same operations in the same
order); tests/test_prng_fmath.py requires identical sequences.  The draws feed
stochastic rounding (floor(v + u)) and zeroth-order perturbations, so the
simulator and the device must draw exactly the same numbers.

Generator
---------
Marsaglia's 32-bit xorshift, shifts (13, 17, 5):

    x ^= x << 13;  x ^= x >> 17;  x ^= x << 5      (all modulo 2^32)

It cycles through every nonzero uint32 (period 2^32 - 1) and never reaches 0,
so the state must be nonzero.  `prng_next` returns the new state.

Seeding
-------
`prng_seed` takes the low 32 bits of the seed through murmur3's 32-bit
finaliser `mix32` (a bijection of uint32 with mix32(0) = 0) so that nearby
seeds (0, 1, 2, ...) start far apart in the sequence.  The only seed that maps
to state 0 is 0; it gets the fixed state SEED_ZERO_STATE = 0x9E3779B9 (2^32 /
golden ratio) instead.  Consequently seed 0 and the one seed s with
mix32(s) = 0x9E3779B9 give the same stream (2^32 seeds cannot all map to
distinct nonzero states).

Draws
-----
- prng_uniform:    (next >> 8) * 2^-24, float32 in [0, 1) on the grid 2^-24;
                   exact (a 24-bit integer times a power of two).
- prng_rademacher: +1.0 if the top bit of next is set, else -1.0.
- prng_normal:     Irwin-Hall with n = 4: the sum S of four 22-bit draws
                   (next >> 10, each uniform on {0, ..., 2^22 - 1}), centred
                   by its exact mean 2^23 - 2 (an integer, |S - mean| < 2^23,
                   so the conversion to float32 is exact) and scaled by
                   sqrt(3) / 2^22 (one float32 rounding).  Mean exactly 0,
                   variance (2^44 - 1) / 2^44 ~ 1.  It is a piecewise-cubic
                   bell, not a Gaussian: support |z| <= 2 sqrt(3) ~ 3.46 (a
                   true N(0,1) exceeds that with probability 5.3e-4), excess
                   kurtosis -0.3.  Good enough for perturbation directions;
                   use it where a light-tailed, bounded noise is acceptable.

State and integers
------------------
The state lives in a 1-element np.uint32 array (mutable, numba-friendly), a
`uint32_t *` in C.  All arithmetic is on np.uint64 masked to 32 bits, with
np.uint64 constants only: numba turns uint64 op int64 into float64, numba
widens uint32 on its own, plain numpy (NUMBA_DISABLE_JIT=1) does not.  Every
intermediate stays below 2^64, so nothing overflows in either mode.
"""
import numpy as np
from numba import njit

SEED_ZERO_STATE = 0x9E3779B9

_MASK32 = np.uint64(0xFFFFFFFF)
_ZERO_STATE = np.uint64(SEED_ZERO_STATE)
_U13 = np.uint64(13)
_U17 = np.uint64(17)
_U5 = np.uint64(5)
_U16 = np.uint64(16)
_U8 = np.uint64(8)
_U10 = np.uint64(10)
_U31 = np.uint64(31)
_MIX_M1 = np.uint64(0x85EBCA6B)
_MIX_M2 = np.uint64(0xC2B2AE35)
_INV_2_24 = np.float32(2.0 ** -24)                       # exact
_NORMAL_MEAN = np.int64((1 << 23) - 2)                   # E[sum of four 22-bit draws]
_NORMAL_SCALE = np.float32(np.sqrt(3.0) / 2.0 ** 22)     # 0x1.bb67aep-22f
_ONE = np.float32(1.0)


@njit(cache=True)
def mix32(h):
    """murmur3's fmix32 on the low 32 bits of h (tt_mix32): a bijection of
    uint32, mix32(0) = 0.  Each product is < 2^64, then masked."""
    h = np.uint64(h) & _MASK32
    h = h ^ (h >> _U16)
    h = (h * _MIX_M1) & _MASK32
    h = h ^ (h >> _U13)
    h = (h * _MIX_M2) & _MASK32
    h = h ^ (h >> _U16)
    return np.uint32(h)


@njit(cache=True)
def prng_seed(state, seed):
    """state[0] = mix32(low 32 bits of seed), or SEED_ZERO_STATE if that is 0
    (only for seed 0) (tt_prng_seed).  seed: any integer in the int64 range."""
    s = np.uint64(mix32(np.uint64(np.int64(seed) & np.int64(0xFFFFFFFF))))
    if s == np.uint64(0):
        s = _ZERO_STATE
    state[0] = np.uint32(s)


@njit(cache=True)
def prng_next(state):
    """One xorshift32 (13, 17, 5) step; stores and returns the new state (tt_prng_next)."""
    x = np.uint64(state[0])
    x = x ^ ((x << _U13) & _MASK32)
    x = x ^ (x >> _U17)
    x = x ^ ((x << _U5) & _MASK32)
    state[0] = np.uint32(x)
    return np.uint32(x)


@njit(cache=True)
def prng_uniform(state):
    """float32 in [0, 1): (next >> 8) * 2^-24, exact (tt_prng_uniform)."""
    return np.float32(np.uint64(prng_next(state)) >> _U8) * _INV_2_24


@njit(cache=True)
def prng_rademacher(state):
    """+1.0f if the top bit of next is set, else -1.0f (tt_prng_rademacher)."""
    if (np.uint64(prng_next(state)) >> _U31) != np.uint64(0):
        return _ONE
    return -_ONE


@njit(cache=True)
def prng_normal(state):
    """Irwin-Hall(4) approximation of N(0, 1) in [-2 sqrt 3, 2 sqrt 3] (tt_prng_normal).

    Four draws in order, summed as integers, centred exactly, converted
    exactly, then one float32 multiply by sqrt(3) / 2^22."""
    acc = np.int64(0)
    for _ in range(4):
        acc = acc + np.int64(np.uint64(prng_next(state)) >> _U10)
    return np.float32(acc - _NORMAL_MEAN) * _NORMAL_SCALE
