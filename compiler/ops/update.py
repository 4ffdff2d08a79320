"""SGD updates, applied in place as soon as a parameter's gradient exists.

Quantization-aware scaling (QAS): the int8 weight w_q = w / s_w has the
gradient s_w G_w; QAS multiplies it by s_w^-2, so the integer step is
lr * G_w / s_w, i.e. the float weight moves by lr * G_w, as in float training.
For the int32 bias (scale s_w s_x) the step is lr * G_b / (s_w s_x).  Without
QAS the steps are lr * G_w * s_w and lr * G_b * s_w s_x.  The per-channel
factor (1/s or s) is computed at compile time.

Steps smaller than one quantization step must not vanish:
  stochastic  w -= floor(step + u), u uniform in [0, 1) from the shared PRNG
              (one draw per updated element, in memory order): unbiased, no memory
  shadow      int16 shadow weights with 8 fraction bits: sh -= round(256 step),
              w = round(sh / 256): deterministic, 2 bytes more per trained weight
Weights saturate at [-127, 127]; biases at +-limit, the per-layer range that
keeps the int32 accumulator free of overflow (quant/qparams.py bias_limit,
docs/architecture.md Numerics).  A NaN step (0 * inf) is taken as 0, so no
float-to-int conversion ever sees a NaN.  Every int8/int32 kernel returns how many
elements hit their clamp (the context's `saturated` counter).
"""
import numpy as np
from numba import njit

from ..quant.fixedpoint import asr64
from ..quant.prng import prng_uniform
from .base import Op, register

STEP_LIMIT = np.float32(1 << 20)


@njit(cache=True)
def _clip_step(step):
    if not step == step:                                # NaN: no step
        return np.float32(0.0)
    if step > STEP_LIMIT:
        return STEP_LIMIT
    if step < -STEP_LIMIT:
        return -STEP_LIMIT
    return step


@njit(cache=True)
def _sgd_s8_stochastic(w, g, factor, lr, state):
    """w[co, ..., :k] -= floor((g * factor[co]) * lr + u)."""
    co_n = g.shape[0]
    inner = g.shape[1] * g.shape[2] * g.shape[3] if g.ndim == 4 else g.shape[1]
    g2 = g.reshape(co_n, inner)
    w2 = w.reshape(w.shape[0], -1)
    k_n = g.shape[-1]
    w_k = w.shape[-1]
    sat = 0
    for co in range(co_n):
        for i in range(inner):
            step = _clip_step((g2[co, i] * factor[co]) * lr)
            d = np.int32(np.floor(step + prng_uniform(state)))
            j = (i // k_n) * w_k + (i % k_n)
            v = np.int32(w2[co, j]) - d
            if v > 127 or v < -127:
                sat += 1
            w2[co, j] = np.int8(max(-127, min(127, v)))
    return sat


@njit(cache=True)
def _sgd_s8_shadow(w, sh, g, factor, lr):
    """sh -= round(256 step); w = round(sh / 256) (sh has 8 fraction bits)."""
    co_n = g.shape[0]
    inner = g.shape[1] * g.shape[2] * g.shape[3] if g.ndim == 4 else g.shape[1]
    g2 = g.reshape(co_n, inner)
    w2 = w.reshape(w.shape[0], -1)
    s2 = sh.reshape(sh.shape[0], -1)
    k_n = g.shape[-1]
    w_k = w.shape[-1]
    sat = 0
    for co in range(co_n):
        for i in range(inner):
            step = _clip_step((g2[co, i] * factor[co]) * lr)
            d = np.int32(np.floor(step * np.float32(256.0) + np.float32(0.5)))
            j = (i // k_n) * w_k + (i % k_n)
            u = np.int32(s2[co, j]) - d
            v = max(-127 * 256, min(127 * 256, u))
            if u != v:
                sat += 1
            s2[co, j] = np.int16(v)
            w2[co, j] = np.int8(max(-127, min(127, np.int32(asr64(np.int64(v) + np.int64(128), 8)))))
    return sat


@njit(cache=True)
def _sgd_s32_stochastic(b, g, factor, lr, limit, state):
    """b[c] = clamp(b[c] - floor((g * factor[c]) * lr + u), -limit, limit)."""
    lim = np.int64(limit)
    sat = 0
    for c in range(g.shape[0]):
        step = _clip_step((g[c] * factor[c]) * lr)
        d = np.int64(np.floor(step + prng_uniform(state)))
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
def _clamp_sym_s32(b, limit):
    """b = clamp(b, -limit, limit) in place -> how many were outside (a restored state blob's
    biases brought back inside the accumulator-safe range before a forward)."""
    sat = 0
    for c in range(b.shape[0]):
        if b[c] > limit:
            b[c] = limit
            sat += 1
        elif b[c] < -limit:
            b[c] = -limit
            sat += 1
    return sat


@njit(cache=True)
def _sgd_f32(w, g, lr):
    wf, gf = w.reshape(-1), g.reshape(-1)
    for i in range(gf.shape[0]):
        wf[i] = wf[i] - gf[i] * lr


def _emit_sgd(self, node, g, e):
    """Skip the update when its gradient holds a NaN/Inf (counted), else step in place."""
    p, d = g.t(node.inputs[0]), g.t(node.inputs[1])
    gp = e.ptr(d.id)
    r0 = node.attrs.get("row_offset") or 0             # rows r0.. of the parameter (passes/chunk_grads.py)
    pp = e.ptr(p.id) if not r0 else f"({e.ptr(p.id)} + {r0 * (p.size // p.shape[0])})"
    e.line(f"if (!{e.name}_finite({gp}, {d.size})) {{ {e.name}_count(&ctx->skipped, 1); }} else {{")
    if p.dtype == "float32":
        e.line(f"    tt_sgd_f32({pp}, {d.size}, {gp}, ctx->lr);")
    elif p.dtype == "int32":
        e.bias_limits[p.id] = int(node.attrs["limit"])
        e.line(f"    {e.name}_count(&ctx->saturated, tt_sgd_s32_stochastic({pp}, {d.size}, {gp}, "
               f"{e.array('qas', node.attrs['factor'], 'float')}, ctx->lr, {int(node.attrs['limit'])}, &ctx->prng));")
    elif e.rounding == "shadow":
        w_inner = p.size // p.shape[0]
        g_inner = d.size // d.shape[0]
        sh = f"((int16_t *)(ctx->state + {e.shadow_off[p.id]}) + {r0 * w_inner})"
        e.line(f"    {e.name}_count(&ctx->saturated, tt_sgd_s8_shadow({pp}, {sh}, {w_inner}, {p.shape[-1]}, {gp}, "
               f"{d.shape[0]}, {g_inner}, {d.shape[-1]}, {e.array('qas', node.attrs['factor'], 'float')}, ctx->lr));")
    else:
        w_inner = p.size // p.shape[0]
        g_inner = d.size // d.shape[0]
        e.line(f"    {e.name}_count(&ctx->saturated, tt_sgd_s8_stochastic({pp}, {w_inner}, {p.shape[-1]}, {gp}, "
               f"{d.shape[0]}, {g_inner}, {d.shape[-1]}, {e.array('qas', node.attrs['factor'], 'float')}, ctx->lr, "
               "&ctx->prng));")
    e.line("}")


@register
class SgdUpdate(Op):
    """In place: parameter (input 0, a constant that lives in SRAM) -= its gradient (input 1)."""
    name = "sgd_update"
    emit_c = _emit_sgd
    side_effect = True

    def infer(self, node, graph):
        return []

    def apply(self, node, graph, grad, ctx):
        """Momentum (v = mu v + g, in float32) and gradient accumulation over
        ctx.accumulate samples (the mean is applied on the last one) happen here,
        in front of the in-place step."""
        p = graph.t(node.inputs[0])
        data = p.data
        r0 = node.attrs.get("row_offset")
        if r0 is not None:                              # rows r0.. of the parameter (passes/chunk_grads.py)
            data = p.data[r0:r0 + grad.shape[0]]
        lr = np.float32(ctx.lr)
        if ctx.accumulate > 1:
            acc = ctx.accum.get(node.id)
            if acc is None:
                acc = ctx.accum[node.id] = np.zeros_like(grad)
            acc += grad
            if ctx.phase != ctx.accumulate - 1:
                return
            grad = acc * np.float32(1.0 / ctx.accumulate)
            acc[:] = np.float32(0.0)
        if ctx.momentum:
            v = ctx.velocity.get(node.id)
            if v is None:
                v = ctx.velocity[node.id] = np.zeros_like(grad)
            v *= np.float32(ctx.momentum)
            v += grad
            grad = v
        if p.dtype == "float32":
            _sgd_f32(data, grad, lr)
        elif p.dtype == "int32":
            ctx.saturated += _sgd_s32_stochastic(data, grad, node.attrs["factor"], lr, np.int32(node.attrs["limit"]),
                                                 ctx.prng)
        elif ctx.rounding == "shadow":
            sh = ctx.shadow.get(p.id)
            if sh is None:
                sh = ctx.shadow[p.id] = (p.data.astype(np.int16) * np.int16(256)).astype(np.int16)
            if r0 is not None:
                sh = sh[r0:r0 + grad.shape[0]]
            ctx.saturated += _sgd_s8_shadow(data, sh, grad, node.attrs["factor"], lr)
        else:
            ctx.saturated += _sgd_s8_stochastic(data, grad, node.attrs["factor"], lr, ctx.prng)




# The public name of the kernel: the simulator's trainers (tinytrain/train/) clamp restored biases with it.
clamp_sym_s32 = _clamp_sym_s32
