"""Slow, obviously correct integer references for the int8 ops.

Written independently of the numba kernels: exact big-integer arithmetic for
the documented rounding (floor((acc * mult + 2^(n-1)) / 2^n), n = 31 - shift,
saturated), numpy int64 / Python ints everywhere, whole-tensor numpy code
instead of loops."""
import numpy as np

from .op_cases import NAIVE_RULES

I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1


def rq(acc, mult, shift):
    acc = np.asarray(acc, dtype=np.int64).astype(object)
    mult = np.asarray(mult, dtype=np.int64).astype(object)
    n = 31 - np.asarray(shift, dtype=np.int64).astype(object)
    one = np.ones_like(n)
    v = (acc * mult + np.left_shift(one, n - 1)) >> n
    return np.clip(v.astype(np.int64) if np.ndim(v) else np.int64(v), I32_MIN, I32_MAX)


def rq8(acc, mult, shift, zp, lo, hi):
    return np.clip(np.clip(rq(acc, mult, shift) + zp, I32_MIN, I32_MAX), lo, hi).astype(np.int8)


def _pad(x, pads, value):
    pt, pl, pb, pr = pads
    return np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=value)


def _taps(xp, kh, kw, stride, dil, oh, ow):
    for i in range(kh):
        for j in range(kw):
            yield i, j, xp[:, i * dil[0]:i * dil[0] + stride[0] * (oh - 1) + 1:stride[0],
                           j * dil[1]:j * dil[1] + stride[1] * (ow - 1) + 1:stride[1], :]


def conv2d(g, n, x):
    a = n.attrs
    w = g.t(n.inputs[1]).data.astype(np.int64)
    b = g.t(n.inputs[2]).data.astype(np.int64)
    y = g.t(n.outputs[0]).shape
    co, kh, kw, cg = w.shape
    groups = a["groups"]
    xp = _pad(x.astype(np.int64) - a["in_zp"], a["pads"], 0)
    acc = np.zeros((x.shape[0], y[1], y[2], co), np.int64) + b
    cog = co // groups
    for i, j, tap in _taps(xp, kh, kw, a["stride"], a["dilation"], y[1], y[2]):
        for gi in range(groups):
            acc[..., gi * cog:(gi + 1) * cog] += tap[..., gi * cg:(gi + 1) * cg] @ w[gi * cog:(gi + 1) * cog, i, j, :].T
    return rq8(acc, a["mult"], a["shift"], a["out_zp"], a["act_min"], a["act_max"])


def fully_connected(g, n, x):
    a = n.attrs
    w = g.t(n.inputs[1]).data.astype(np.int64)
    acc = (x.astype(np.int64) - a["in_zp"]) @ w.T + g.t(n.inputs[2]).data.astype(np.int64)
    return rq8(acc, a["mult"], a["shift"], a["out_zp"], a["act_min"], a["act_max"])


def add(g, n, x1, x2):
    a = n.attrs
    u = rq((x1.astype(np.int64) - a["z1"]) * (1 << a["left_shift"]), a["m1"], a["s1"])
    v = rq((x2.astype(np.int64) - a["z2"]) * (1 << a["left_shift"]), a["m2"], a["s2"])
    return rq8(u + v, a["mult"], a["shift"], a["out_zp"], a["act_min"], a["act_max"])


def mul(g, n, x1, x2):
    a = n.attrs
    acc = (x1.astype(np.int64) - a["z1"]) * (x2.astype(np.int64) - a["z2"])
    return rq8(acc, a["mult"], a["shift"], a["out_zp"], a["act_min"], a["act_max"])


def avg_pool(g, n, x):
    a = n.attrs
    y = g.t(n.outputs[0]).shape
    xp = _pad(x.astype(np.int64) - a["in_zp"], a["pads"], 0)
    valid = _pad(np.ones((1,) + x.shape[1:3] + (1,), np.int64), a["pads"], 0)
    acc = np.zeros((x.shape[0],) + y[1:], np.int64)
    cnt = np.zeros((1, y[1], y[2], 1), np.int64)
    for (_, _, tap), (_, _, v) in zip(_taps(xp, *a["kernel"], a["stride"], (1, 1), y[1], y[2]),
                                      _taps(valid, *a["kernel"], a["stride"], (1, 1), y[1], y[2])):
        acc += tap
        cnt += v
    if a["count_include_pad"]:
        cnt[:] = a["kernel"][0] * a["kernel"][1]
    cnt = np.broadcast_to(cnt, acc.shape)
    return rq8(acc, np.asarray(a["mult"])[cnt], np.asarray(a["shift"])[cnt], a["out_zp"], a["act_min"], a["act_max"])


def max_pool(g, n, x):
    a = n.attrs
    y = g.t(n.outputs[0]).shape
    xp = _pad(x.astype(np.int64), a["pads"], -1000)
    m = np.full((x.shape[0],) + y[1:], -1000, np.int64)
    for _, _, tap in _taps(xp, *a["kernel"], a["stride"], a.get("dilation", (1, 1)), y[1], y[2]):
        m = np.maximum(m, tap)
    return np.clip(m, a["act_min"], a["act_max"]).astype(np.int8)


def global_avg_pool(g, n, x):
    a = n.attrs
    acc = (x.astype(np.int64) - a["in_zp"]).sum(axis=(1, 2), keepdims=True)
    return rq8(acc, a["mult"], a["shift"], a["out_zp"], a["act_min"], a["act_max"])


def lut(g, n, x):
    return n.attrs["table"][x.astype(np.int64) + 128]


def clamp(g, n, x):
    return np.clip(x, n.attrs["act_min"], n.attrs["act_max"]).astype(np.int8)


def reshape(g, n, x):
    return x.reshape((x.shape[0],) + tuple(n.attrs["shape"][1:]))


def transpose(g, n, x):
    return np.transpose(x, n.attrs["perm"])


def concat(g, n, *xs):
    a = n.attrs
    parts = [rq8(x.astype(np.int64) - a["in_zp"][k], a["mult"][k], a["shift"][k], a["out_zp"], -128, 127)
             for k, x in enumerate(xs)]
    return np.concatenate(parts, axis=a["axis"])


NAIVE = {"conv2d": conv2d, "fully_connected": fully_connected, "add": add, "mul": mul, "avg_pool": avg_pool,
         "max_pool": max_pool, "global_avg_pool": global_avg_pool, "sigmoid": lut, "hard_sigmoid": lut,
         "hard_swish": lut, "clamp": clamp, "reshape": reshape, "transpose": transpose, "concat": concat}


def run(g, xq):
    env = {g.inputs[0]: xq}
    for n in g.nodes:
        # a table op (ops/activation.py _Lut) needs no entry: its reference is the table lookup
        fn = NAIVE.get(n.op) or NAIVE_RULES.get(n.op) or (lut if "table" in n.attrs else None)
        out = fn(g, n, *[env[i] for i in n.inputs if g.t(i).kind != "const"])
        env[n.outputs[0]] = out
    return env
