"""The training PRNG and float math: Python (compiler/quant/prng.py, fmath.py,
numba) and C (runtime_c/include/tt_prng.h, tt_fmath.h) give bit-identical
results, the JIT and plain Python (NUMBA_DISABLE_JIT=1) too, and the results
are accurate (ulp error of exp/log, softmax cross-entropy against float64).

`python -m tests.test_prng_fmath OUT.npz` writes the numbers of `_compute()`
(used by the JIT-off test).  TT_EXHAUSTIVE=1 enables the exhaustive ulp scan
(about 2 minutes on 2 cores) that established the bounds quoted in fmath.py."""
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from numba import njit, prange, types

from tinytrain.compiler.quant import fmath, prng

from .cbuild import INCLUDE, ROOT, build

CDEF = """
void shim_mix32(const uint32_t *x, uint32_t *out, int32_t n);
uint32_t shim_prng_draws(uint32_t seed, int32_t kind, uint32_t *out_u, float *out_f, int32_t n);
void shim_expf(const float *x, float *out, int32_t n);
void shim_logf(const float *x, float *out, int32_t n);
void shim_softmax_xent(const float *logits, const int32_t *labels, int32_t rows, int32_t k, float *grad,
                       float *loss);
"""
SEEDS = [0, 1, 2, 42, 0x80000000, 0xDEADBEEF, 0xFFFFFFFF]
KINDS = {"next": 0, "uniform": 1, "rademacher": 2, "normal": 3, "mixed": 4}
EXP_ULP_BOUND = 1.0    # exhaustive: 0.989 ulp (at x = -27.378984)
LOG_ULP_BOUND = 1.0    # exhaustive: 0.858 ulp (at x = 0.69991034)
F32 = np.finfo(np.float32)


def _build(tmp_path_factory, extra=()):
    return build([ROOT / "tests" / "c" / "fmath_shim.c"], CDEF, tmp_path_factory.mktemp("fmath"), extra=extra)


@pytest.fixture(scope="module")
def clib(tmp_path_factory):
    return _build(tmp_path_factory)


def cptr(ffi, a, ctype):
    return ffi.cast(ctype + " *", ffi.from_buffer(a))


def bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


# ---------------------------------------------------------------- Python twins of the shim

@njit(cache=True)
def py_prng_draws(seed, kind, out_u, out_f):
    state = np.zeros(1, np.uint32)
    prng.prng_seed(state, seed)
    for i in range(out_u.shape[0]):
        which = i % 4 if kind == 4 else kind
        if which == 0:
            out_u[i] = prng.prng_next(state)
        elif which == 1:
            out_f[i] = prng.prng_uniform(state)
        elif which == 2:
            out_f[i] = prng.prng_rademacher(state)
        else:
            out_f[i] = prng.prng_normal(state)
    return state[0]


@njit(cache=True)
def py_mix32(x, out):
    for i in range(x.shape[0]):
        out[i] = prng.mix32(x[i])


@njit(cache=True)
def py_expf(x, out):
    for i in range(x.shape[0]):
        out[i] = fmath.expf_tt(x[i])


@njit(cache=True)
def py_logf(x, out):
    for i in range(x.shape[0]):
        out[i] = fmath.logf_tt(x[i])


@njit(cache=True)
def py_softmax_xent(logits, labels, grad, loss):
    for r in range(logits.shape[0]):
        loss[r] = fmath.softmax_xent(logits[r], labels[r], grad[r])


def c_draws(clib, seed, kind, n):
    ffi, lib = clib
    u, f = np.zeros(n, np.uint32), np.zeros(n, np.float32)
    state = lib.shim_prng_draws(seed, kind, cptr(ffi, u, "uint32_t"), cptr(ffi, f, "float"), n)
    return u, f, state


def py_draws(seed, kind, n):
    u, f = np.zeros(n, np.uint32), np.zeros(n, np.float32)
    state = py_prng_draws(seed, kind, u, f)
    return u, f, int(state)


def c_unary(clib, name, x):
    ffi, lib = clib
    out = np.empty_like(x)
    getattr(lib, name)(cptr(ffi, x, "float"), cptr(ffi, out, "float"), x.size)
    return out


def py_unary(fn, x):
    out = np.empty_like(x)
    fn(x, out)
    return out


def c_softmax(clib, logits, labels):
    ffi, lib = clib
    grad, loss = np.empty_like(logits), np.empty(logits.shape[0], np.float32)
    lib.shim_softmax_xent(cptr(ffi, logits, "float"), cptr(ffi, labels, "int32_t"), logits.shape[0],
                          logits.shape[1], cptr(ffi, grad, "float"), cptr(ffi, loss, "float"))
    return loss, grad


def py_softmax(logits, labels):
    grad, loss = np.empty_like(logits), np.empty(logits.shape[0], np.float32)
    py_softmax_xent(logits, labels, grad, loss)
    return loss, grad


# ---------------------------------------------------------------- inputs

def _nudged(x, steps=(-2, -1, 0, 1, 2)):
    """x and its float32 neighbours `steps` ulps away (via the bit patterns of positive and negative x)."""
    b = bits(x).astype(np.int64)
    return np.concatenate([(b + s) & 0xFFFFFFFF for s in steps]).astype(np.uint32).view(np.float32)


def edge_values():
    specials = np.array([0x00000000, 0x80000000, 0x00000001, 0x80000001, 0x00000002, 0x007FFFFF, 0x807FFFFF,
                         0x00400000, 0x00800000, 0x80800000, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000, 0xFF800000,
                         0x7FC00000, 0xFFC00000, 0x7FC12345, 0x7FBFFFFF, 0x7F800001, 0x3F800000, 0xBF800000,
                         0x3FB504F3, 0x3FB504F4, 0x3F3504F3],
                        np.uint32).view(np.float32)
    ln2k = np.float32(np.arange(-151, 152) * math.log(2))                  # k ln2 and the rounding
    half = np.float32((np.arange(-151, 152) + 0.5) * math.log(2))          # boundaries of k
    limits = np.array([fmath.EXP_MAX, fmath.EXP_MIN, 88.7, -87.3, 88.72284, -87.33655, 1e-3, -1e-3, 1e-7,
                       -1e-7, 1e-20, 1e30, -1e30, 100, -100, 1e4, -1e4], np.float32)
    pow2 = np.float32(2.0) ** np.arange(-149, 128).astype(np.float32)
    return np.concatenate([specials, _nudged(ln2k), _nudged(half), _nudged(limits, range(-3, 4)),
                           _nudged(pow2, (-1, 0, 1))])


def exp_inputs(rng):
    return np.concatenate([
        rng.integers(0, 1 << 32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32),  # every exponent
        rng.uniform(-90, 90, 500_000).astype(np.float32),
        rng.uniform(-1, 1, 150_000).astype(np.float32),
        (rng.uniform(-1, 1, 100_000) * 10.0 ** rng.uniform(-40, 0, 100_000)).astype(np.float32),
        edge_values()])


def log_inputs(rng):
    return np.concatenate([
        rng.integers(0, 1 << 32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
        rng.integers(1, 0x7F800000, 400_000).astype(np.uint32).view(np.float32),  # all positive floats
        rng.uniform(0, 10, 150_000).astype(np.float32),
        rng.uniform(1 - 1e-3, 1 + 1e-3, 150_000).astype(np.float32),
        rng.integers(1, 0x00800000, 50_000).astype(np.uint32).view(np.float32),   # subnormals
        edge_values()])


def ulp_error(y, ref):
    """|y - ref| in units of the float32 ulp at ref (ref float64, nonzero and finite)."""
    _, e = np.frexp(ref)
    return np.abs(y.astype(np.float64) - ref) / np.ldexp(1.0, np.maximum(e - 24, -149))


def softmax_cases(rng):
    """(logits[rows, K], labels) batches: random K, scales from 1e-3 to 1e4-wide spreads, saturating values."""
    out = []
    for k in [1, 2, 3, 7, 10, 100, 257, 1000]:
        rows = 40 if k < 500 else 10
        scale = 10.0 ** rng.uniform(-3, 4, (rows, 1))
        z = rng.normal(0, 1, (rows, k)) * scale
        z[::5] += rng.choice([-1e4, 0, 1e4], (len(z[::5]), k))                 # 1e4 differences
        z[1::7, :] = 3.0
        if k > 1:
            z[2::9, 0] = 1e30                                                  # one term dominates
            z[3::9, :] = rng.choice([-1e38, 1e38], (len(z[3::9]), k))          # z - max = -2e38
        labels = rng.integers(0, k, rows).astype(np.int32)
        out.append((np.ascontiguousarray(z, dtype=np.float32), labels))
    return out


def _compute():
    """The numbers compared between the JIT and NUMBA_DISABLE_JIT=1 (small sizes: plain Python is slow)."""
    rng = np.random.default_rng(7)
    res = {}
    for seed in SEEDS:
        for name, kind in KINDS.items():
            u, f, state = py_draws(seed, kind, 1000)
            res[f"{name}_{seed}_u"], res[f"{name}_{seed}_f"] = u, f
            res[f"{name}_{seed}_state"] = np.array([state], np.uint32)
    x = np.concatenate([edge_values(), rng.uniform(-90, 90, 3000).astype(np.float32)])
    res["exp"] = py_unary(py_expf, x)
    res["log"] = py_unary(py_logf, x)
    res["mix32"] = py_unary(py_mix32, rng.integers(0, 1 << 32, 1000, dtype=np.uint64).astype(np.uint32))
    for i, (z, labels) in enumerate(softmax_cases(rng)[:6]):
        res[f"loss{i}"], res[f"grad{i}"] = py_softmax(z[:5], labels[:5])
    res["types"] = np.array([type(fmath.expf_tt(np.float32(1))).__name__, type(fmath.logf_tt(np.float32(3))).__name__,
                             type(prng.prng_normal(np.ones(1, np.uint32))).__name__])
    return res


# ---------------------------------------------------------------- PRNG

@pytest.mark.parametrize("seed", SEEDS)
def test_prng_python_equals_c(clib, seed):
    n = 100_000
    for kind in KINDS.values():
        pu, pf, ps = py_draws(seed, kind, n)
        cu, cf, cs = c_draws(clib, seed, kind, n)
        np.testing.assert_array_equal(pu, cu)
        np.testing.assert_array_equal(bits(pf), bits(cf))
        assert ps == cs != 0


def test_prng_seeding_and_known_values(clib):
    st = np.zeros(1, np.uint32)
    prng.prng_seed(st, 0)
    assert st[0] == prng.SEED_ZERO_STATE
    st[0] = 1                                             # Marsaglia's xorshift32 from x = 1
    assert [int(prng.prng_next(st)) for _ in range(3)] == [270369, 67634689, 2647435461]
    for seed, same in [(-1, 0xFFFFFFFF), ((1 << 32) + 5, 5), (np.uint32(9), 9)]:
        a, b = np.zeros(1, np.uint32), np.zeros(1, np.uint32)
        prng.prng_seed(a, seed)
        prng.prng_seed(b, same)
        assert a[0] == b[0]
    ffi, lib = clib
    x = np.random.default_rng(0).permutation(np.arange(200_000, dtype=np.uint32) * np.uint32(21473))  # has 0
    pm, cm = py_unary(py_mix32, x), np.empty_like(x)
    lib.shim_mix32(cptr(ffi, x, "uint32_t"), cptr(ffi, cm, "uint32_t"), x.size)
    np.testing.assert_array_equal(pm, cm)
    assert np.all(pm[x == 0] == 0) and np.unique(pm).size == x.size  # bijective on this sample
    first = np.array([py_draws(s, 1, 1)[1][0] for s in range(256)])     # nearby seeds start far apart:
    assert np.unique(first).size == 256 and np.histogram(first, 4, (0, 1))[0].min() >= 32


def test_prng_statistics():
    n = 1_000_000
    _, u, _ = py_draws(12345, 1, n)
    assert u.min() >= 0 and u.max() < 1 and np.all(u * np.float32(2 ** 24) == np.floor(u * np.float32(2 ** 24)))
    ud = u.astype(np.float64)
    assert abs(ud.mean() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(ud.var() - 1 / 12) < 5 * math.sqrt(1 / 180 / n)
    assert abs(np.corrcoef(ud[:-1], ud[1:])[0, 1]) < 5 / math.sqrt(n)
    assert abs(np.histogram(ud, 16, (0, 1))[0] / (n / 16) - 1).max() < 0.02

    _, r, _ = py_draws(777, 2, n)
    assert set(np.unique(r)) == {-1.0, 1.0} and abs(r.astype(np.float64).mean()) < 5 / math.sqrt(n)

    _, z, _ = py_draws(2024, 3, n)
    zd = z.astype(np.float64)
    assert abs(zd.mean()) < 5 / math.sqrt(n) and abs(zd.var() - 1) < 5 * math.sqrt(1.7 / n)
    assert np.abs(zd).max() <= 2 * math.sqrt(3)
    assert abs(((zd - zd.mean()) ** 4).mean() / zd.var() ** 2 - 3 + 0.3) < 0.03   # Irwin-Hall(4) kurtosis


# ---------------------------------------------------------------- exp / log

def test_expf_python_equals_c_and_accuracy(clib):
    x = exp_inputs(np.random.default_rng(1))
    py, c = py_unary(py_expf, x), c_unary(clib, "shim_expf", x)
    np.testing.assert_array_equal(bits(py), bits(c))
    nan = np.isnan(x)
    np.testing.assert_array_equal(bits(py[nan]), bits(x[nan]))                 # NaN passes through
    assert np.all(py[x > fmath.EXP_MAX] == np.inf) and np.all(bits(py[x < fmath.EXP_MIN]) == 0)
    inr = (x >= fmath.EXP_MIN) & (x <= fmath.EXP_MAX)
    assert np.all(py[inr] >= F32.tiny) and np.all(np.isfinite(py[inr]))         # normal, never subnormal
    assert np.all(py[x == 0] == 1)
    err = ulp_error(py[inr], np.exp(x[inr].astype(np.float64)))
    assert err.max() <= EXP_ULP_BOUND, (err.max(), x[inr][err.argmax()])


def test_logf_python_equals_c_and_accuracy(clib):
    x = log_inputs(np.random.default_rng(2))
    py, c = py_unary(py_logf, x), c_unary(clib, "shim_logf", x)
    np.testing.assert_array_equal(bits(py), bits(c))
    nan = np.isnan(x)
    np.testing.assert_array_equal(bits(py[nan]), bits(x[nan]))
    assert np.all(bits(py[~nan & (x < 0)]) == 0x7FC00000)
    assert np.all(py[x == 0] == -np.inf) and np.all(py[x == np.inf] == np.inf) and np.all(py[x == 1] == 0)
    pos = (x > 0) & (x < np.inf) & (x != 1)
    err = ulp_error(py[pos], np.log(x[pos].astype(np.float64)))
    assert err.max() <= LOG_ULP_BOUND, (err.max(), x[pos][err.argmax()])


@pytest.mark.parametrize("flags", [("-O0",), ("-O3", "-march=native")])
def test_optimisation_level_does_not_change_bits(clib, tmp_path_factory, flags):
    other = _build(tmp_path_factory, flags)
    rng = np.random.default_rng(3)
    x = exp_inputs(rng)[::4].copy()
    for name in ("shim_expf", "shim_logf"):
        np.testing.assert_array_equal(bits(c_unary(clib, name, x)), bits(c_unary(other, name, x)))
    for z, labels in softmax_cases(rng)[::3]:
        for a, b in zip(c_softmax(clib, z, labels), c_softmax(other, z, labels)):
            np.testing.assert_array_equal(bits(a), bits(b))


def test_header_constants_match_python():
    text = (INCLUDE / "tt_fmath.h").read_text()
    consts = re.findall(r"#define TT_FMATH_(\w+) \(?(-?0x[0-9a-fA-F.]+p[+-]\d+)f\)?", text)
    assert len(consts) == 17
    for name, lit in consts:
        py = getattr(fmath, name, None)
        py = getattr(fmath, "_" + name) if py is None else py
        assert isinstance(py, np.float32) and float(py) == float.fromhex(lit), name
    assert f"0x{prng.SEED_ZERO_STATE:X}u" in (INCLUDE / "tt_prng.h").read_text()
    assert float(prng._NORMAL_SCALE).hex().replace("0000000p", "p") == "0x1.bb67aep-22"


def test_no_float64_in_the_compiled_code():
    """Every value numba infers is float32 or an integer: no silent promotion to float64."""
    f32v, u32v = types.float32[::1], types.uint32[::1]
    for fn, sig in [(fmath.expf_tt, (types.float32,)), (fmath.logf_tt, (types.float32,)),
                    (fmath.softmax_xent, (f32v, types.int64, f32v)), (fmath.f32_bits, (types.float32,)),
                    (fmath.f32_from_bits, (types.uint32,)), (prng.mix32, (types.int64,)),
                    (prng.prng_seed, (u32v, types.int64)), (prng.prng_next, (u32v,)), (prng.prng_uniform, (u32v,)),
                    (prng.prng_rademacher, (u32v,)), (prng.prng_normal, (u32v,))]:
        d = njit(fn.py_func)
        d.compile(sig)
        cres = d.overloads[d.signatures[0]]
        found = {str(t) for t in cres.type_annotation.typemap.values()} | {str(cres.signature.return_type)}
        assert not any("float64" in t for t in found), (fn.__name__, found)


# ---------------------------------------------------------------- softmax cross-entropy

def test_softmax_xent_python_equals_c_and_float64(clib):
    eps = float(F32.eps)
    for z, labels in softmax_cases(np.random.default_rng(4)):
        py_loss, py_grad = py_softmax(z, labels)
        c_loss, c_grad = c_softmax(clib, z, labels)
        np.testing.assert_array_equal(bits(py_loss), bits(c_loss))
        np.testing.assert_array_equal(bits(py_grad), bits(c_grad))
        k = z.shape[1]
        zd = z.astype(np.float64)
        d = zd - zd.max(axis=1, keepdims=True)
        p = np.exp(d) / np.exp(d).sum(axis=1, keepdims=True)
        rows = np.arange(len(z))
        loss64 = np.log(np.exp(d).sum(axis=1)) - d[rows, labels]
        grad64 = p.copy()
        grad64[rows, labels] -= 1
        # float32: z - max rounds (relative eps/2), the sum of K terms (K eps), exp/log (1 ulp each)
        tol = eps * (np.abs(d[rows, labels]) + 2 * np.abs(loss64) + k + 2)
        assert np.all(np.abs(py_loss - loss64) <= tol), k
        assert np.all(py_loss >= 0) and np.all(np.isfinite(py_loss))
        np.testing.assert_allclose(py_grad, grad64, rtol=0, atol=eps * (k + 4))
        assert np.all(np.abs(py_grad.astype(np.float64).sum(axis=1)) <= eps * (k + 4))
        if k == 1:
            assert np.all(py_loss == 0) and np.all(py_grad == 0)


def test_softmax_xent_gradient_matches_finite_differences():
    rng = np.random.default_rng(5)
    for k in (2, 5, 10, 40):
        z = rng.normal(0, 2, k).astype(np.float32)
        label = int(rng.integers(k))
        grad = np.empty(k, np.float32)
        fmath.softmax_xent(z, label, grad)
        h = np.float32(1e-2)
        scratch = np.empty(k, np.float32)
        for i in range(k):
            zp, zm = z.copy(), z.copy()
            zp[i] += h
            zm[i] -= h
            fd = (np.float64(fmath.softmax_xent(zp, label, scratch)) -
                  np.float64(fmath.softmax_xent(zm, label, scratch))) / (np.float64(zp[i]) - np.float64(zm[i]))
            assert abs(fd - grad[i]) < 1e-3, (k, i, fd, grad[i])


# ---------------------------------------------------------------- JIT off

def test_jit_and_plain_python_agree(tmp_path):
    out = tmp_path / "nojit.npz"
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "tests.test_prng_fmath", str(out)],
                   check=True, env=env, timeout=600, cwd=ROOT)
    jit = _compute()
    assert list(jit["types"]) == ["float", "float", "float"]               # numba boxes float32 as float
    with np.load(out) as nojit:
        assert sorted(nojit.files) == sorted(jit)
        assert list(nojit["types"]) == ["float32", "float32", "float32"]   # plain Python keeps np.float32
        for key, a in jit.items():
            if key != "types":
                b = nojit[key]
                assert a.dtype == b.dtype, key
                np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8), err_msg=key)


# ---------------------------------------------------------------- exhaustive (opt-in)

@njit(parallel=True, cache=True)
def _scan(lo, hi, log, chunks):
    """Max ulp error of expf_tt (log=False) / logf_tt over the bit patterns [lo, hi)."""
    per = (hi - lo + chunks - 1) // chunks
    best = np.zeros(chunks)
    for c in prange(chunks):
        for b in range(lo + c * per, min(lo + (c + 1) * per, hi)):
            x = np.uint32(b).view(np.float32)
            y = fmath.logf_tt(x) if log else fmath.expf_tt(x)
            ref = math.log(np.float64(x)) if log else math.exp(np.float64(x))
            if ref != 0.0:
                e = math.frexp(ref)[1]
                best[c] = max(best[c], abs(np.float64(y) - ref) / 2.0 ** max(e - 24, -149))
    return best.max()


@pytest.mark.skipif(os.environ.get("TT_EXHAUSTIVE") != "1", reason="set TT_EXHAUSTIVE=1 (about 2 minutes)")
def test_exhaustive_ulp_bounds():
    emax, emin = int(fmath.EXP_MAX.view(np.uint32)), int(fmath.EXP_MIN.view(np.uint32))
    assert max(_scan(0, emax + 1, False, 256), _scan(0x80000000, emin + 1, False, 256)) <= EXP_ULP_BOUND
    assert _scan(1, 0x7F800000, True, 256) <= LOG_ULP_BOUND


if __name__ == "__main__":
    np.savez(sys.argv[1], **_compute())
