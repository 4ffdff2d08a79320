"""The host runtime: build the emitted C as a shared library with gcc and drive
it through cffi (tests, `tinytrain train --backend c`)."""
import subprocess
from pathlib import Path

import numpy as np

from .compiler.errors import TinytrainError
from .compiler.reference import to_ir_layout

# built for the machine it runs on: -O3 (auto-vectorized: SSE2 on baseline x86-64, NEON on aarch64),
# never a fused multiply-add nor a reassociated float sum (no -ffast-math), so bit-exact with the simulator
CFLAGS = ["-std=c99", "-O3", "-Wall", "-Wextra", "-Werror", "-pedantic", "-ffp-contract=off", "-fPIC", "-shared"]
NATIVE_CFLAGS = ["-march=native"]       # asked for (--native): this CPU's vector units (AVX2, SVE, ...)


def build(out, name, extra=()):
    from .compiler.codegen.cformat import check_name
    check_name(name)
    out = Path(out)
    srcs = [out / f"{name}.c"] + sorted((out / "runtime" / "src").glob("*.c"))
    lib = out / f"lib{name}.so"
    cmd = ["gcc", *CFLAGS, *extra, f"-I{out}", f"-I{out / 'runtime' / 'include'}", *map(str, srcs), "-lm",
           "-o", str(lib)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise TinytrainError(f"gcc failed:\n{res.stderr[-3000:]}", file=srcs[0])
    return lib


def cdef(name):
    from .compiler.layout import context_struct       # the context's fields: one list, also the header's
    return f"""
typedef struct {{
    int (*erase)(void *user, uint32_t offset, uint32_t size);
    int (*write)(void *user, uint32_t offset, const uint8_t *data, uint32_t size);
    int (*read)(void *user, uint32_t offset, uint8_t *data, uint32_t size);
    void *user;
    uint32_t slot_size;
}} tt_flash;
{context_struct(name, comments=False)}
int {name}_init({name}_ctx *ctx, void *arena, size_t arena_size, void *state, size_t state_size, float lr,
                uint32_t seed, int restore);
int {name}_reset({name}_ctx *ctx);
int {name}_state_seal({name}_ctx *ctx);
int {name}_set_lr({name}_ctx *ctx, float lr);
int {name}_stats(const {name}_ctx *ctx, int32_t *skipped, int32_t *saturated);
int {name}_train_step({name}_ctx *ctx, const float *input, int32_t label, float *loss, int32_t *predicted);
int {name}_predict({name}_ctx *ctx, const float *input, float *logits, int32_t *predicted);
int {name}_save({name}_ctx *ctx, const tt_flash *flash);
int {name}_load({name}_ctx *ctx, const tt_flash *flash);
"""


class HostModel:
    """A compiled model loaded in this process: train_step / predict like the device."""

    def __init__(self, out, name, graph, facts, lr=0.05, seed=0, extra_cflags=()):
        import cffi
        self.ffi = cffi.FFI()
        self.ffi.cdef(cdef(name))
        self.lib = self.ffi.dlopen(str(build(out, name, extra_cflags)))
        self.name, self.graph, self.facts = name, graph, facts
        self.ctx = self.ffi.new(f"{name}_ctx *")
        self.arena = self.ffi.new("uint8_t[]", facts["arena"] + 8)
        self.state = self.ffi.new("uint8_t[]", facts["state"] + 8)
        self._call("init", self.ctx, self.arena, facts["arena"], self.state, facts["state"], float(lr), seed, 0)

    def _call(self, fn, *args):
        rc = getattr(self.lib, f"{self.name}_{fn}")(*args)
        if rc != 0:
            raise TinytrainError(f"{self.name}_{fn} returned status {rc}")
        return rc

    def _input(self, x):
        x = np.asarray(x, np.float32)
        if x.ndim == len(self.graph.meta["input_shape"]) - 1:
            x = x[None]
        return np.ascontiguousarray(to_ir_layout(self.graph, x)[0], dtype=np.float32)

    def train_step(self, x, label):
        xi = self._input(x)
        loss = self.ffi.new("float *")
        pred = self.ffi.new("int32_t *")
        self._call("train_step", self.ctx, self.ffi.from_buffer("float[]", xi), int(label), loss, pred)
        return float(loss[0]), int(pred[0])

    def predict(self, x):
        xi = self._input(x)
        logits = np.zeros(self.facts["classes"], np.float32)
        pred = self.ffi.new("int32_t *")
        self._call("predict", self.ctx, self.ffi.from_buffer("float[]", xi), self.ffi.from_buffer("float[]", logits),
                   pred)
        return logits, int(pred[0])

    def stats(self):
        """-> (skipped, saturated): the C context's divergence-guard and saturation counters."""
        sk, sa = self.ffi.new("int32_t *"), self.ffi.new("int32_t *")
        self._call("stats", self.ctx, sk, sa)
        return int(sk[0]), int(sa[0])

    def state_bytes(self):
        return bytes(self.ffi.buffer(self.state, self.facts["state"]))

    def arena_array(self, offset, dtype, count):
        return np.frombuffer(self.ffi.buffer(self.arena, self.facts["arena"]), dtype=dtype, count=count,
                             offset=offset).copy()


STACK_FLAGS = ["-std=c99", "-O2", "-ffp-contract=off", "-fstack-usage"]
STACK_CACHE_KEEP = 512                  # per-file stack-usage results kept in the user's cache


def _quoted_includes(src, dirs):
    """Every header a source pulls in with #include "..." (recursively, gcc's search order:
    the including file's folder, then the -I folders), as sorted paths."""
    import re
    seen, todo = set(), [Path(src)]
    while todo:
        f = todo.pop()
        for name in re.findall(r'^\s*#\s*include\s*"([^"]+)"', f.read_text(errors="replace"), re.M):
            for d in (f.parent, *dirs):
                h = (d / name).resolve()
                if h.is_file():
                    if h not in seen:
                        seen.add(h)
                        todo.append(h)
                    break
    return sorted(seen)


def _stack_cache():
    """The per-user folder of cached -fstack-usage results (None if there is no writable one)."""
    import os
    from ._numba_cache import _base, _writable
    try:
        d = _base() / "tinytrain" / "stack"
    except RuntimeError:                      # no home directory
        return None
    return d if _writable(d) else None


def _stack_key(src, cmd, dirs):
    """A source's cache key: the bytes of it and of every header it includes, the flags and the
    compiler binary (its resolved path, size and modification time)."""
    import hashlib
    import os
    import shutil
    h = hashlib.sha256()
    gcc = shutil.which(cmd[0])
    st = os.stat(os.path.realpath(gcc)) if gcc else None
    h.update(repr((cmd, os.path.realpath(gcc) if gcc else None, st and (st.st_size, st.st_mtime_ns))).encode())
    for f in (Path(src), *_quoted_includes(src, dirs)):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _parse_su(text):
    import re
    use = {}
    for line in text.splitlines():
        m = re.match(r".*:(\w+)\t(\d+)\t", line)
        if m:
            use[m.group(1)] = int(m.group(2))
    return use


def stack_usage(srcs, dirs, jobs=None, cache=True):
    """{function: bytes of its own frame} from gcc -fstack-usage over the sources, compiled
    concurrently (`jobs` at a time, default the CPU count) or found in the per-user cache (keyed
    by the bytes of each source and its headers, the flags and the compiler).  None if gcc fails."""
    import json
    import os
    import tempfile
    folder = _stack_cache() if cache else None
    use, todo = {}, []
    for s in srcs:
        key = _stack_key(s, ["gcc", *STACK_FLAGS], dirs)
        hit = None
        if folder is not None:
            try:
                hit = json.loads((folder / f"{key}.json").read_text())
            except (OSError, ValueError):
                hit = None
        if isinstance(hit, dict):
            use.update(hit)
        else:
            todo.append((s, key))
    with tempfile.TemporaryDirectory() as tmp:
        jobs = max(1, jobs or os.cpu_count() or 2)
        running, failed = [], False
        pending = list(enumerate(todo))
        while pending or running:
            while pending and len(running) < jobs:
                i, (s, key) = pending.pop(0)
                cmd = ["gcc", *STACK_FLAGS, "-c", str(s), *(f"-I{d}" for d in dirs), "-o", f"{tmp}/{i}_{Path(s).stem}.o"]
                running.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), i, s, key))
            proc, i, s, key = running.pop(0)
            if proc.wait() != 0:
                failed = True
                continue
            mine = _parse_su(Path(f"{tmp}/{i}_{Path(s).stem}.su").read_text())
            use.update(mine)
            if folder is not None:
                try:
                    part = folder / f"{key}.{os.getpid()}.tmp"
                    part.write_text(json.dumps(mine))
                    os.replace(part, folder / f"{key}.json")
                except OSError:
                    pass
        if failed:
            return None
    if folder is not None and todo:
        try:
            old = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
            for p in old[:max(0, len(old) - STACK_CACHE_KEEP)]:
                p.unlink()
        except OSError:
            pass
    return use


def stack_estimate(out, name):
    """Deepest call chain of a training step in bytes, from gcc -fstack-usage on this
    host (an estimate for the board; `tinytrain build` measures the real peak)."""
    out = Path(out)
    srcs = [out / f"{name}.c"] + sorted((out / "runtime" / "src").glob("*.c"))
    use = stack_usage(srcs, [out, out / "runtime" / "include"])
    if use is None:
        return 2048
    kernels = max((v for k, v in use.items() if k.startswith("tt_")), default=0)
    top = use.get(f"{name}_train_step", 0)
    inner = max(use.get(f"{name}_forward", 0), use.get(f"{name}_backward", 0))
    return top + inner + kernels + 64


class HostTrainer:
    """Training through the compiled C (same interface as BackpropTrainer)."""

    def __init__(self, out, name, train_graph, plan, facts, lr=0.05, seed=0, rounding=None, native=False):
        """rounding: the build's (its facts record it; default that one)."""
        from .compiler.hparams import check_lr
        from .compiler.layout import state_layout
        lr = check_lr(lr)
        built = facts.get("rounding", "stochastic")
        if rounding is not None and rounding != built:
            raise TinytrainError(f"the library in {out} was built with {built} rounding, not {rounding}",
                                 field="rounding")
        rounding = built
        self.graph, self.plan = train_graph, plan
        self.model = HostModel(out, name, train_graph, facts, lr=lr, seed=seed,
                               extra_cflags=NATIVE_CFLAGS if native else ())
        self.offsets = state_layout(train_graph, rounding).offsets
        self.steps = 0

    @property
    def skipped(self):
        return self.model.stats()[0]

    @property
    def saturated(self):
        return self.model.stats()[1]

    def step(self, x, label):
        loss, pred = self.model.train_step(x, label)
        self.steps += 1
        logits = np.zeros(self.model.facts["classes"], np.float32)
        logits[pred] = 1.0                    # the loop only needs the argmax
        return loss, logits

    def evaluate(self, x, y):
        pred = np.array([self.model.predict(x[i])[1] for i in range(len(x))])
        return float(np.mean(pred == np.asarray(y)))

    def sync_to_graph(self):
        st = self.model.state_bytes()
        for tid, off in self.offsets.items():
            t = self.graph.t(tid)
            t.data[...] = np.frombuffer(st, dtype=t.data.dtype, count=t.size, offset=off).reshape(t.shape)
