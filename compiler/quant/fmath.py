"""Bit-reproducible float32 exp, log and softmax cross-entropy.

This module and `runtime_c/include/tt_fmath.h` mirror each other function by
function (same names with a `tt_` prefix in C, same operations in the same
order); tests/test_prng_fmath.py requires bit-identical results.  libm's expf
and logf differ between glibc, newlib and numba, so training (the simulator
and the generated C on the host and on Cortex-M) uses these instead.

Rules that make the results reproducible
----------------------------------------
- float32 only: every constant is an np.float32 (written as the C99 hex
  literal of the C header), every intermediate is float32.  numba and numpy
  turn float32 op Python-float into float64, so no bare Python float appears
  in an expression.  IEEE float32 +, -, *, / and int <-> float conversions of
  exactly representable values are then the same everywhere.
- No fastmath, no FMA: each multiply and each add is its own rounded
  operation, in the order written (the C is built with -ffp-contract=off).
- Bit manipulation goes through f32_bits / f32_from_bits (scalar views here,
  memcpy in C).  Small integers are np.int32 / np.uint32 as in C.

expf_tt (max error 0.99 ulp, measured exhaustively over [EXP_MIN, EXP_MAX])
----------------------------------------------------------------------
    x = k ln2 + r,  k = round_to_nearest_even(x log2(e)),  |r| <= ln2/2 (+tiny)
    e^r ~ p = (q(r) r^2 + r) + 1,  q = C2 + r (C3 + r (C4 + r (C5 + r C6)))
    e^x = p * 2^k
k is rounded with the shifter trick (t + 1.5*2^23) - 1.5*2^23.  r is computed
Cody-Waite style, (x - k LN2_HI) - k LN2_LO: LN2_HI has 15 significant bits,
so k LN2_HI is exact for |k| < 512 and the subtraction is exact (Sterbenz).
C2..C6 minimise the relative error of p over |r| <= ln2/2 (3e-9, far below
float32 rounding).  2^k is built from its bits, (k + 127) << 23, for k in
[-126, 127]; k = 128 is done as (p * 2) * 2^127.  Both products are exact for
normal results.  Range:
    x > EXP_MAX = 88.72283 (0x42b17217, the largest float32 with
        e^x <= FLT_MAX), and +inf             ->  +inf
    x < EXP_MIN = -87.33654 (0xc2aeac4f, the smallest float32 with
        e^x >= FLT_MIN), and -inf             ->  +0  (subnormal results are
                                                  flushed: never produced)
    NaN                                       ->  the same NaN
    expf_tt(0) == expf_tt(-0) == 1 exactly.

logf_tt (max error 0.86 ulp, measured exhaustively over all positive floats)
----------------------------------------------------------------------
    x = 2^k m,  m in [sqrt(2)/2, sqrt(2)),  f = m - 1 (exact, Sterbenz)
    s = f / (2 + f),  z = s^2,  log(1 + f) = 2 atanh(s) = 2s + s R(z),
    R = z (LG1 + z (LG2 + z (LG3 + z LG4))),  LGi = 2 / (2i + 1)  (Taylor;
    |s| <= 0.1716, the first omitted term 2 s^11 / 11 < 7e-10 is negligible)
and 2s is rewritten as f - hfsq + s hfsq with hfsq = f^2 / 2 (fdlibm's
trick: the large term f is exact, only small terms carry rounding):
    log x = ((((s (hfsq + R)) + k LN2_LO) - hfsq) + f) + k LN2_HI
m and k come from the bits; a subnormal x is first multiplied by 2^25
(exact) and k starts at -25.  k LN2_HI is exact (|k| <= 149).  Range:
    +0, -0 -> -inf;  x < 0 -> NaN (0x7fc00000);  NaN -> the same NaN;
    +inf -> +inf;  logf_tt(1) == 0 exactly.

softmax_xent(logits, label, grad) -> loss
-----------------------------------------
    m = max_k z_k (first maximum, k = 0..K-1)
    e_k = expf_tt(z_k - m),  S = e_0 + e_1 + ... + e_{K-1} (in that order)
    grad_k = e_k / S,  grad_label -= 1
    loss = logf_tt(S) - (z_label - m)
e_argmax = expf_tt(0) = 1, so 1 <= S <= K and the loss is >= 0 and finite.
Logits must be a float32 array of finite values with max - min <= FLT_MAX
(else z_label - m overflows and the loss is +inf); terms with z_k - m <
EXP_MIN contribute exactly 0.
"""
import numpy as np
from numba import njit


def _f(hex_literal):
    """A float32 constant from the C99 hex literal used in tt_fmath.h."""
    return np.float32(float.fromhex(hex_literal))


_ZERO = np.float32(0.0)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_TWO = np.float32(2.0)
_INF = np.float32(np.inf)
_NAN_BITS = np.uint32(0x7FC00000)

EXP_MAX = _f("0x1.62e42ep+6")         # 88.72283
EXP_MIN = _f("-0x1.5d589ep+6")        # -87.33654
_LOG2E = _f("0x1.715476p+0")          # 1/ln2
_SHIFTER = _f("0x1.8p+23")            # 1.5 * 2^23: (t + S) - S rounds t to an integer
_LN2_HI = _f("0x1.62e4p-1")           # 0.693145751953125, 15 significant bits
_LN2_LO = _f("0x1.7f7d1cp-20")        # ln2 - LN2_HI
_C2 = _f("0x1.fffffcp-2")
_C3 = _f("0x1.555492p-3")
_C4 = _f("0x1.5558f2p-5")
_C5 = _f("0x1.1239d4p-7")
_C6 = _f("0x1.6a244cp-10")

_FLT_MIN = _f("0x1p-126")
_TWO_P25 = _f("0x1p+25")
_LG1 = _f("0x1.555556p-1")            # 2/3
_LG2 = _f("0x1.99999ap-2")            # 2/5
_LG3 = _f("0x1.24924ap-2")            # 2/7
_LG4 = _f("0x1.c71c72p-3")            # 2/9


@njit(cache=True)
def f32_bits(x):
    """The IEEE-754 bits of a float32 as a uint32 (tt_f32_bits)."""
    return np.float32(x).view(np.uint32)


@njit(cache=True)
def f32_from_bits(b):
    """The float32 whose IEEE-754 bits are the uint32 b (tt_f32_from_bits)."""
    return np.uint32(b).view(np.float32)


@njit(cache=True)
def expf_tt(x):
    """e^x in float32, max error < 1 ulp, bit-identical to tt_expf_tt (see module doc)."""
    x = np.float32(x)
    if x != x:
        return x
    if x > EXP_MAX:
        return _INF
    if x < EXP_MIN:
        return _ZERO
    t = x * _LOG2E
    kf = (t + _SHIFTER) - _SHIFTER
    r = (x - kf * _LN2_HI) - kf * _LN2_LO
    r2 = r * r
    q = _C2 + r * (_C3 + r * (_C4 + r * (_C5 + r * _C6)))
    p = (q * r2 + r) + _ONE
    k = np.int32(kf)
    if k > np.int32(127):
        p = p * _TWO
        k = np.int32(k - np.int32(1))
    scale = f32_from_bits(np.uint32(np.uint32(k + np.int32(127)) << np.uint32(23)))
    return p * scale


@njit(cache=True)
def logf_tt(x):
    """Natural log in float32, max error < 1 ulp, bit-identical to tt_logf_tt (see module doc)."""
    x = np.float32(x)
    if x != x:
        return x
    if x < _ZERO:
        return f32_from_bits(_NAN_BITS)
    if x == _ZERO:
        return -_INF
    if x == _INF:
        return x
    k = np.int32(0)
    if x < _FLT_MIN:                                 # subnormal: scale into the normal range
        x = x * _TWO_P25
        k = np.int32(-25)
    ix = f32_bits(x)
    k = np.int32(k + np.int32(ix >> np.uint32(23)) - np.int32(127))
    mbits = np.uint32(ix & np.uint32(0x007FFFFF))
    if mbits >= np.uint32(0x003504F3):               # mantissa >= sqrt(2): use m / 2, k + 1
        m = f32_from_bits(np.uint32(mbits | np.uint32(0x3F000000)))
        k = np.int32(k + np.int32(1))
    else:
        m = f32_from_bits(np.uint32(mbits | np.uint32(0x3F800000)))
    f = m - _ONE
    s = f / (_TWO + f)
    z = s * s
    big_r = z * (_LG1 + z * (_LG2 + z * (_LG3 + z * _LG4)))
    hfsq = (_HALF * f) * f
    dk = np.float32(k)
    y = s * (hfsq + big_r)
    y = y + dk * _LN2_LO
    y = y - hfsq
    y = y + f
    return y + dk * _LN2_HI


@njit(cache=True)
def softmax_xent(logits, label, grad):
    """Cross-entropy of softmax(logits) against `label`; writes
    softmax(logits) - onehot(label) into grad and returns the loss
    (tt_softmax_xent).  logits, grad: float32[K], K >= 1; 0 <= label < K."""
    n = logits.shape[0]
    m = logits[0]
    for i in range(1, n):
        if logits[i] > m:
            m = logits[i]
    total = _ZERO
    for i in range(n):
        e = expf_tt(logits[i] - m)
        grad[i] = e
        total = total + e
    for i in range(n):
        grad[i] = grad[i] / total
    grad[label] = grad[label] - _ONE
    return logf_tt(total) - (logits[label] - m)
