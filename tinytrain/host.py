"""The host runtime: build the emitted C as a shared library with gcc and drive
it through cffi (tests, `tinytrain train --backend c`)."""
import subprocess
from pathlib import Path

import numpy as np

from .compiler.errors import TinytrainError
from .compiler.reference import to_ir_layout

CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-ffp-contract=off", "-fPIC", "-shared"]


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


def stack_estimate(out, name):
    """Deepest call chain of a training step in bytes, from gcc -fstack-usage on this
    host (an estimate for the board; `tinytrain build` measures the real peak)."""
    import re
    import tempfile
    out = Path(out)
    srcs = [out / f"{name}.c"] + sorted((out / "runtime" / "src").glob("*.c"))
    with tempfile.TemporaryDirectory() as tmp:
        for s in srcs:
            res = subprocess.run(["gcc", "-std=c99", "-O2", "-ffp-contract=off", "-fstack-usage", "-c", str(s),
                                  f"-I{out}", f"-I{out / 'runtime' / 'include'}", "-o", f"{tmp}/{s.stem}.o"],
                                 capture_output=True, text=True)
            if res.returncode != 0:
                return 2048
        use = {}
        for su in Path(tmp).glob("*.su"):
            for line in su.read_text().splitlines():
                m = re.match(r".*:(\w+)\t(\d+)\t", line)
                if m:
                    use[m.group(1)] = int(m.group(2))
    kernels = max((v for k, v in use.items() if k.startswith("tt_")), default=0)
    top = use.get(f"{name}_train_step", 0)
    inner = max(use.get(f"{name}_forward", 0), use.get(f"{name}_backward", 0))
    return top + inner + kernels + 64


class HostTrainer:
    """Training through the compiled C (same interface as BackpropTrainer)."""

    def __init__(self, out, name, train_graph, plan, facts, lr=0.05, seed=0, rounding=None):
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
        self.model = HostModel(out, name, train_graph, facts, lr=lr, seed=seed)
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
