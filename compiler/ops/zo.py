"""Zeroth-order (MeZO / SPSA) kernels on int8 weights and int32 biases.

One step: draw a step seed s from the training PRNG; z = Rademacher draws from a
second PRNG seeded with s, one per trained element in a fixed order (tensor by
tensor, rows then elements, the sparse scheme's first channels only).  Perturb
by +e z, loss+; by -2 e z, loss-; by +e z (restore); p = (loss+ - loss-) / 2;
regenerate z and update each element by floor(lr p factor z + u) (stochastic
rounding, u from the training PRNG).

Exact restore: trained int8 weights are kept inside [-(127 - e), 127 - e], so
w +- e never saturates and the three perturbations cancel exactly.  Biases are
perturbed by e_b[c] = round(e / s_x) steps (the same real size as e weight steps)
and kept inside +-(L - e_b) (L: the accumulator-safe bias limit, quant/qparams.py
bias_limit).  Perturbations still saturate (to +-127, +-L), so that a state blob
outside those ranges cannot overflow anything.  Every kernel returns how many
elements hit their clamp.

Update factors (the real perturbation of an element is e s_w[c] z, so the SPSA
gradient estimate is p z / (e s_w[c]); SGD on the real weight is then, in integer
steps): weights 1 / (e s_w[c]^2), biases 1 / (e s_w[c]^2 s_x).
"""
import numpy as np
from numba import njit

from ..quant.prng import prng_rademacher, prng_uniform
from .update import _clip_step


@njit(cache=True)
def _zo_perturb_s8(w, w_inner, w_k, rows, g_inner, g_k, amount, zstate):
    """w[row][(i / g_k) * w_k + i % g_k] += amount * z for the trained part, z in order."""
    wf = w.reshape(-1)
    sat = 0
    for r in range(rows):
        for i in range(g_inner):
            j = r * w_inner + (i // g_k) * w_k + (i % g_k)
            if prng_rademacher(zstate) > np.float32(0.0):
                v = np.int32(wf[j]) + np.int32(amount)
            else:
                v = np.int32(wf[j]) - np.int32(amount)
            if v > 127:
                v = 127
                sat += 1
            elif v < -127:
                v = -127
                sat += 1
            wf[j] = np.int8(v)
    return sat


@njit(cache=True)
def _zo_perturb_s32(b, amount, sign, limit, zstate):
    """b[c] += sign * amount[c] * z, saturated to [-limit, limit]."""
    lim = np.int64(limit)
    sat = 0
    for c in range(b.shape[0]):
        d = np.int64(amount[c]) * np.int64(sign)
        if prng_rademacher(zstate) > np.float32(0.0):
            v = np.int64(b[c]) + d
        else:
            v = np.int64(b[c]) - d
        if v > lim:
            v = lim
            sat += 1
        elif v < -lim:
            v = -lim
            sat += 1
        b[c] = np.int32(v)
    return sat


@njit(cache=True)
def _zo_update_s8(w, w_inner, w_k, rows, g_inner, g_k, factor, scaled_p, limit, zstate, srstate):
    """w -= floor((scaled_p * factor[row]) * z + u), kept inside [-limit, limit]."""
    wf = w.reshape(-1)
    sat = 0
    for r in range(rows):
        for i in range(g_inner):
            j = r * w_inner + (i // g_k) * w_k + (i % g_k)
            step = _clip_step((scaled_p * factor[r]) * prng_rademacher(zstate))
            d = np.int32(np.floor(step + prng_uniform(srstate)))
            v = np.int32(wf[j]) - d
            if v > limit:
                v = limit
                sat += 1
            elif v < -limit:
                v = -limit
                sat += 1
            wf[j] = np.int8(v)
    return sat


@njit(cache=True)
def _zo_update_s32(b, factor, scaled_p, limit, zstate, srstate):
    """b -= floor((scaled_p * factor[c]) * z + u), kept inside [-limit, limit]."""
    lim = np.int64(limit)
    sat = 0
    for c in range(b.shape[0]):
        step = _clip_step((scaled_p * factor[c]) * prng_rademacher(zstate))
        d = np.int64(np.floor(step + prng_uniform(srstate)))
        v = np.int64(b[c]) - d
        if v > lim:
            v = lim
            sat += 1
        elif v < -lim:
            v = -lim
            sat += 1
        b[c] = np.int32(v)
    return sat


# The public names of the kernels: the simulator's MeZO trainer (tinytrain/train/mezo.py) runs them.
zo_perturb_s8, zo_perturb_s32 = _zo_perturb_s8, _zo_perturb_s32
zo_update_s8, zo_update_s32 = _zo_update_s8, _zo_update_s32
