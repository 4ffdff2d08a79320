/* Exposes the static inline helpers of tt_fixedpoint.h over arrays, so that
 * tests/test_fixedpoint.py can run the C twin on the same inputs as Python. */
#include "tt_fixedpoint.h"

void shim_requantize(const int32_t *acc, const int32_t *mult, const int32_t *shift, int32_t *out, int32_t n)
{
    for (int32_t i = 0; i < n; ++i) {
        out[i] = tt_requantize(acc[i], mult[i], shift[i]);
    }
}

void shim_requantize_s8(const int32_t *acc, const int32_t *mult, const int32_t *shift, const int32_t *zp,
                        const int32_t *lo, const int32_t *hi, int8_t *out, int32_t n)
{
    for (int32_t i = 0; i < n; ++i) {
        out[i] = tt_requantize_s8(acc[i], mult[i], shift[i], zp[i], lo[i], hi[i]);
    }
}

void shim_sat_s32(const int64_t *x, int32_t *out, int32_t n)
{
    for (int32_t i = 0; i < n; ++i) {
        out[i] = tt_sat_s32(x[i]);
    }
}

void shim_asr64(const int64_t *x, const int32_t *s, int64_t *out, int32_t n)
{
    for (int32_t i = 0; i < n; ++i) {
        out[i] = tt_asr64(x[i], s[i]);
    }
}

void shim_add_s8(const int32_t *p, int8_t *out, int32_t n)
{
    /* p holds 14 parameters per element, in tt_add_elem_s8's order */
    for (int32_t i = 0; i < n; ++i) {
        const int32_t *q = p + 14 * i;
        out[i] = tt_add_elem_s8(q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7], q[8], q[9], q[10], q[11], q[12], q[13]);
    }
}
