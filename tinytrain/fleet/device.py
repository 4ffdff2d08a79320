"""A fleet device on this host: the compiled C training library (tinytrain.host's cffi build),
restored from the state blob the server sends, trained on its own samples, read back.

`prepare` compiles the model once into a build folder (the C, its shared library, the
manifest, the data partitions in the IR input layout); devices only load from there."""
import json
from pathlib import Path

import numpy as np

from ..compiler.errors import TinytrainError
from .state import W_LIMIT, Manifest

_LIBS = {}


def prepare(build, model, calib, train, test, update="classifier", clients=8, alpha=0.5, seed=0, lr=0.05,
            max_train=None, max_test=None, trainer="backprop", eps=1):
    """Compile `model` (an .onnx path) for the fleet into `build`. -> Manifest"""
    from ..api import load, quantize
    from ..compiler.layout import state_layout
    from ..compiler.pipeline import compile_graph, compile_mezo
    from ..compiler.reference import to_ir_layout
    from ..data import load_calibration, load_dataset
    from ..host import build as gcc_build
    from .partition import dirichlet_partition
    build = Path(build)
    build.mkdir(parents=True, exist_ok=True)
    g = load(model)
    shape, where = g.meta["input_shape"], dict(model_layout=g.meta.get("input_layout"))
    g = quantize(g, load_calibration(calib, shape, **where)[0])
    x, y = load_dataset(train, shape, need_labels=True, max_samples=max_train, **where)
    tx, ty = load_dataset(test, shape, need_labels=True, max_samples=max_test, **where)
    if trainer == "mezo":
        tg, _, facts = compile_mezo(g, build / "c", name="fleet", update=update, eps=eps)
        tensors = []
        for it in tg.meta["zo"]["items"]:
            t = tg.t(it["tid"])
            tensors.append({"tid": it["tid"], "name": t.name, "dtype": str(t.data.dtype), "size": int(t.size),
                            "limit": int(it["limit"])})
    else:
        tg, _, facts = compile_graph(g, build / "c", name="fleet", update=update)
        limits = {n.inputs[0]: int(n.attrs.get("limit", W_LIMIT)) for n in tg.nodes if n.op == "sgd_update"}
        tensors = []
        for tid in tg.meta["training"]["trainable"]:
            t = tg.t(tid)
            if t.data.dtype not in (np.int8, np.int32):
                raise TinytrainError(f"tensor '{t.name}' trains in {t.data.dtype}: the fleet aggregates int8 "
                                     f"weights and int32 biases only")
            tensors.append({"tid": tid, "name": t.name, "dtype": str(t.data.dtype), "size": int(t.size),
                            "limit": limits[tid]})
    offsets = state_layout(tg).offsets
    for t in tensors:
        t["offset"] = int(offsets[t["tid"]])
    gcc_build(build / "c", "fleet")
    parts = dirichlet_partition(y, clients, alpha, seed=seed)
    np.savez(build / "data.npz", x=to_ir_layout(g, x).astype(np.float32), y=y.astype(np.int64),
             tx=to_ir_layout(g, tx).astype(np.float32), ty=ty.astype(np.int64),
             xo=x.astype(np.float32), txo=tx.astype(np.float32))
    np.savez(build / "partitions.npz", **{f"p{i}": p for i, p in enumerate(parts)})
    m = Manifest({"signature": int(facts["signature"]), "state": int(facts["state"]), "arena": int(facts["arena"]),
                  "classes": int(facts["classes"]), "input": int(facts["input"]), "tensors": tensors,
                  "trainer": trainer, "update": str(update), "lr": float(lr), "eps": int(eps), "clients": int(clients),
                  "alpha": float(alpha), "seed": int(seed)})
    m.save(build / "manifest.json")
    if trainer == "mezo":
        from ..api import save
        save(g, build / "int8.tt.npz")          # the ZO devices run the simulator on this graph
    return m


def _lib(build):
    build = str(Path(build).resolve())
    if build not in _LIBS:
        import cffi
        from ..host import cdef
        ffi = cffi.FFI()
        ffi.cdef(cdef("fleet"))
        _LIBS[build] = (ffi, ffi.dlopen(str(Path(build) / "c" / "libfleet.so")))
    return _LIBS[build]


class Device:
    """One client's compiled library instance (its own arena, state and context)."""

    def __init__(self, build, lr=None, seed=1):
        self.build = Path(build)
        self.manifest = Manifest.load(self.build / "manifest.json")
        m = self.manifest.d
        self.ffi, self.lib = _lib(build)
        self.ctx = self.ffi.new("fleet_ctx *")
        self.arena = self.ffi.new("uint8_t[]", m["arena"] + 8)
        self.state = self.ffi.new("uint8_t[]", m["state"] + 8)
        self.lr = float(m["lr"] if lr is None else lr)
        self.seed = int(seed)
        self._call("init", self.ctx, self.arena, m["arena"], self.state, m["state"], self.lr, self.seed, 0)

    def _call(self, fn, *args):
        rc = getattr(self.lib, f"fleet_{fn}")(*args)
        if rc != 0:
            raise TinytrainError(f"fleet_{fn} returned status {rc}")

    def initial_blob(self):
        self._call("state_seal", self.ctx)
        return self.blob()

    def blob(self):
        return bytes(self.ffi.buffer(self.state, self.manifest.state_size))

    def restore(self, blob, seed=None):
        """Load a state blob through the library's own check (_init(..., restore=1): magic, signature,
        size, CRC); a blob of another model is refused with TinytrainError."""
        if len(blob) != self.manifest.state_size:
            raise TinytrainError(f"state of {len(blob)} bytes refused: this model's is {self.manifest.state_size}")
        self.ffi.memmove(self.state, blob, len(blob))
        m = self.manifest.d
        rc = self.lib.fleet_init(self.ctx, self.arena, m["arena"], self.state, m["state"], self.lr,
                                 self.seed if seed is None else int(seed), 1)
        if rc != 0:
            raise TinytrainError(f"state refused by the device (fleet_init restore status {rc}): not a sealed "
                                 f"state of this model")

    def train(self, x, y, steps, rng):
        """`steps` train steps on samples drawn (without replacement per pass) from x, y."""
        order = np.concatenate([rng.permutation(len(x)) for _ in range(-(-steps // len(x)))])[:steps]
        loss = self.ffi.new("float *")
        pred = self.ffi.new("int32_t *")
        total = 0.0
        for i in order:
            xi = np.ascontiguousarray(x[i], np.float32)
            self._call("train_step", self.ctx, self.ffi.from_buffer("float[]", xi), int(y[i]), loss, pred)
            total += float(loss[0])
        self._call("state_seal", self.ctx)
        return total / max(steps, 1)

    def evaluate(self, x, y):
        logits = self.ffi.new("float[]", self.manifest.d["classes"])
        pred = self.ffi.new("int32_t *")
        hits = 0
        for i in range(len(x)):
            xi = np.ascontiguousarray(x[i], np.float32)
            self._call("predict", self.ctx, self.ffi.from_buffer("float[]", xi), logits, pred)
            hits += int(pred[0]) == int(y[i])
        return hits / max(len(x), 1)


def load_data(build):
    d = np.load(Path(build) / "data.npz")
    p = np.load(Path(build) / "partitions.npz")
    return d, [p[f"p{i}"] for i in range(len(p.files))]


def manifest_json(build):
    return json.loads((Path(build) / "manifest.json").read_text())
