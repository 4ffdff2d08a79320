"""Zeroth-order (MeZO) float training through onnxruntime inference sessions.

The phone/host side of MeZO: the model stays an ordinary ONNX inference graph run
by an `onnxruntime.InferenceSession`; training costs two forward passes per step
and no more memory than inference.

How the weights train in place
------------------------------
The chosen float initializers (all of them by default, or those matching name
patterns) are taken out of the graph and made graph inputs.  Their values live in
float32 numpy arrays that are bound once with IOBinding through
`OrtValue.ortvalue_from_numpy`, which on CPU wraps the numpy buffer without a copy:
onnxruntime reads the very memory that the perturbation kernel writes, so a step
never rebinds, copies or holds a second copy of any weight.

One step (SPSA with the seed trick, the MeZO paper's Algorithm 1)
-----------------------------------------------------------------
    for each of `queries` estimates:
        seed = prng_next(master)                   # the step's seed, a uint32
        w += eps z;      loss+ = L(batch)          # z regenerated from seed,
        w += -2 eps z;   loss- = L(batch)          #   one tensor at a time,
        w += eps z                                 #   never stored
        g = float32((loss+ - loss-) / (2 eps))
    for each estimate (seed, g), in order:
        w += c z,  c = -(float32(lr) * g) / float32(queries)

z is one PRNG stream over the trainable tensors in their listed order, started by
`prng_seed(state, seed)`: Rademacher (`prng_rademacher`, +-1, default) or the
bounded Irwin-Hall normal (`prng_normal`) of `tinytrain.compiler.quant.prng`, the
generator shared bit for bit with the C runtime (`tt_prng.h`); the int8 trainer
(`tinytrain/train/mezo.py`) draws its step seeds and z the same way.  Each pass
is `w[i] = w[i] + s * z_i` in float32 (`s * z` rounded, then the sum rounded; no
fused multiply-add: numba without fastmath, C with -ffp-contract=off).

Float restore is not exact (w + e z - 2 e z + e z != w in float32), so the
checkpoint is the base model (path + sha256) plus the list of (seed, g): `replay`
re-executes the same four in-place passes per estimate in the same order without
the forward passes and gives the trained weights bit for bit.

The command line (`tinytrain mezo ...`) is in tinytrain/mezo_ort_cli.py.
"""
import fnmatch
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
from numba import njit
from onnx import numpy_helper

from .compiler.errors import TinytrainError
from .compiler.options import sha256
from .compiler.quant.prng import prng_next, prng_normal, prng_rademacher, prng_seed

CHECKPOINT_FORMAT = "tinytrain-mezo-ort/1"
Z_KINDS = ("rademacher", "normal")


# --------------------------------------------------------------------------- z
@njit(cache=True)
def _axpz(w, state, scale, gaussian):
    """w[i] = w[i] + scale * z_i in float32, z_i the next draw of state (w: 1-D float32)."""
    for i in range(w.shape[0]):
        z = prng_normal(state) if gaussian else prng_rademacher(state)
        w[i] = w[i] + scale * z


def perturb(tensors, seed, scale, z="rademacher"):
    """In place: every tensor += scale * z, z one stream from prng_seed(seed) over the tensors in order."""
    state = np.zeros(1, np.uint32)
    prng_seed(state, np.uint32(seed))
    s = np.float32(scale)
    for t in tensors:
        if t.dtype != np.float32 or not t.flags.c_contiguous or not t.flags.writeable:
            raise ValueError("perturb works in place on writeable C-contiguous float32 arrays")
        _axpz(t.reshape(-1), state, s, z == "normal")


def draw_z(seed, n, z="rademacher"):
    """The first n values of z for `seed` (what perturb adds with scale 1), for checks."""
    out = np.zeros(n, np.float32)
    perturb([out], seed, 1.0, z)
    return out


def estimate_pass(tensors, seed, eps, z):
    """The three in-place passes around the two losses: a generator that yields
    before loss+ and before loss-, and leaves the tensors restored (up to float rounding)."""
    e = np.float32(eps)
    perturb(tensors, seed, e, z)
    yield "+"
    perturb(tensors, seed, np.float32(-2) * e, z)
    yield "-"
    perturb(tensors, seed, e, z)


def update_scale(lr, g, queries):
    return -(np.float32(lr) * np.float32(g)) / np.float32(queries)


def weights_digest(tensors):
    h = hashlib.sha256()
    for t in tensors:
        h.update(np.ascontiguousarray(t, np.float32).tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------- the model
def load_onnx(path):
    path = Path(path)
    if not path.is_file():
        raise TinytrainError("no such file", file=path)
    try:
        return onnx.load(str(path))
    except Exception as e:
        raise TinytrainError(f"cannot read the ONNX model: {type(e).__name__}: {e}", file=path) from None


def select_trainable(model, patterns=None, file=None):
    """Names of the initializers that train, in graph order.

    patterns: None (every float32 initializer) or a list of fnmatch globs on
    initializer names (a comma-separated string is split).  Each pattern must
    match something, and everything it matches must be float32."""
    inits = list(model.graph.initializer)
    if patterns is None or patterns in ("", "all"):
        names = [i.name for i in inits if i.data_type == onnx.TensorProto.FLOAT]
        if not names:
            raise TinytrainError("the model has no float32 initializer to train", file=file, field="trainable")
        return names
    if isinstance(patterns, str):
        patterns = [p.strip() for p in patterns.split(",") if p.strip()]
    chosen = set()
    for p in patterns:
        hits = [i for i in inits if fnmatch.fnmatchcase(i.name, p)]
        if not hits:
            some = ", ".join(i.name for i in inits[:5])
            raise TinytrainError(f"pattern '{p}' matches no initializer (the model has {len(inits)}, e.g. {some})",
                                 file=file, field="trainable")
        for i in hits:
            if i.data_type != onnx.TensorProto.FLOAT:
                dt = onnx.helper.tensor_dtype_to_np_dtype(i.data_type)
                raise TinytrainError(f"pattern '{p}' selects initializer '{i.name}' of type {dt}: only float32 "
                                     f"tensors can train", file=file, field="trainable")
            chosen.add(i.name)
    return [i.name for i in inits if i.name in chosen]


def split_trainable(model, names):
    """Remove the named initializers from `model` (in place), add them as graph
    inputs, and return their values as C-contiguous float32 arrays (same order)."""
    by_name = {i.name: i for i in model.graph.initializer}
    arrays = [np.ascontiguousarray(numpy_helper.to_array(by_name[n]), dtype=np.float32).copy() for n in names]
    drop = set(names)
    for k in reversed(range(len(model.graph.initializer))):      # in place: rebuilding the list copies it
        if model.graph.initializer[k].name in drop:
            del model.graph.initializer[k]
    have = {i.name for i in model.graph.input}
    for n, a in zip(names, arrays):
        if n not in have:
            model.graph.input.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, list(a.shape)))
    return arrays


class MezoSession:
    """An onnxruntime InferenceSession whose trainable weights are bound numpy buffers.

    `weights` (list of float32 arrays, order of `names`) is the memory the session
    reads: changing them in place changes the next forward pass, without rebinding."""

    def __init__(self, model_path, trainable=None, threads=1):
        import onnxruntime as ort
        self.model_path = Path(model_path)
        model = load_onnx(model_path)
        self.names = select_trainable(model, trainable, file=model_path)
        self.weights = split_trainable(model, self.names)
        init_names = {i.name for i in model.graph.initializer}
        data_inputs = [i for i in model.graph.input if i.name not in init_names and i.name not in self.names]
        self.inputs = {i.name: (i.type.tensor_type.elem_type,          # plain Python: no reference into the proto
                                [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim])
                       for i in data_inputs}
        self.output = str(model.graph.output[0].name)
        del data_inputs
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        # through a temporary file: a session made from bytes keeps them (InferenceSession._model_bytes)
        with tempfile.TemporaryDirectory(prefix="tinytrain-mezo-") as tmp:
            onnx.save(model, str(Path(tmp) / "model.onnx"))
            del model
            try:
                self.session = ort.InferenceSession(str(Path(tmp) / "model.onnx"), so,
                                                    providers=["CPUExecutionProvider"])
            except Exception as e:
                raise TinytrainError(f"onnxruntime cannot load the model: {e}".splitlines()[0],
                                     file=model_path) from None
        self.binding = self.session.io_binding()
        self._values = [ort.OrtValue.ortvalue_from_numpy(w) for w in self.weights]
        for n, w, v in zip(self.names, self.weights, self._values):
            if v.data_ptr() != w.ctypes.data:        # would silently train a copy
                raise RuntimeError(f"onnxruntime copied '{n}' instead of sharing its buffer")
            self.binding.bind_ortvalue_input(n, v)

    @property
    def n_params(self):
        return int(sum(w.size for w in self.weights))

    def logits(self, feeds):
        """feeds: {data input name: numpy array of the input's dtype} -> first output (numpy)."""
        for name, arr in feeds.items():
            self.binding.bind_cpu_input(name, np.ascontiguousarray(arr))
        self.binding.bind_output(self.output, "cpu")          # allocated by onnxruntime for this batch size
        self.session.run_with_iobinding(self.binding)
        return self.binding.copy_outputs_to_cpu()[0]

    def loss(self, feeds, y):
        """Mean cross-entropy of the logits (float64) and the logits."""
        z = self.logits(feeds).astype(np.float64)
        z = z - z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        return float(np.mean(lse - z[np.arange(len(y)), y])), z


class MezoTrainer:
    """SPSA steps on a MezoSession; records (seed, g) per estimate for replay."""

    def __init__(self, session, lr=1e-5, eps=1e-3, queries=1, z="rademacher", seed=0):
        check_hyper(lr, eps, queries, z)
        self.s = session
        self.lr, self.eps, self.queries, self.z, self.seed = float(lr), float(eps), int(queries), z, int(seed)
        self.master = np.zeros(1, np.uint32)
        prng_seed(self.master, np.uint32(seed & 0xFFFFFFFF))
        self.steps = []                          # per step: [[seed, g], ...] (queries of them)

    def step(self, feeds, y):
        """One MeZO step on one batch -> (mean of loss+ and loss-, [(seed, g), ...])."""
        w, est, losses = self.s.weights, [], []
        for _ in range(self.queries):
            seed = int(prng_next(self.master))
            lp = lm = None
            for phase in estimate_pass(w, seed, self.eps, self.z):
                if phase == "+":
                    lp = self.s.loss(feeds, y)[0]
                else:
                    lm = self.s.loss(feeds, y)[0]
            if not (np.isfinite(lp) and np.isfinite(lm)):
                raise TinytrainError(f"the loss became {lp if not np.isfinite(lp) else lm}: lower --lr or --eps")
            g = np.float32((lp - lm) / (2.0 * float(np.float32(self.eps))))
            est.append((seed, float(g)))
            losses += [lp, lm]
        for seed, g in est:
            perturb(w, seed, update_scale(self.lr, g, self.queries), self.z)
        self.steps.append([[s, g] for s, g in est])
        return float(np.mean(losses)), est

    def checkpoint(self):
        return {"format": CHECKPOINT_FORMAT, "base_model": str(self.s.model_path.resolve()),
                "base_sha256": sha256(self.s.model_path), "trainable": list(self.s.names),
                "z": self.z, "eps": self.eps, "lr": self.lr, "queries": self.queries, "seed": self.seed,
                "steps": self.steps, "weights_sha256": weights_digest(self.s.weights)}


def check_hyper(lr, eps, queries, z):
    if not (np.isfinite(lr) and lr > 0):
        raise TinytrainError(f"learning rate {lr} must be a positive number", field="lr")
    if not (np.isfinite(eps) and eps > 0 and np.float32(eps) > 0):
        raise TinytrainError(f"eps {eps} must be a positive float32 number", field="eps")
    if int(queries) != queries or queries < 1:
        raise TinytrainError(f"queries {queries} must be an integer >= 1", field="queries")
    if z not in Z_KINDS:
        raise TinytrainError(f"z '{z}' is not one of {', '.join(Z_KINDS)}", field="z")


# ---------------------------------------------------------- checkpoint, replay
def save_checkpoint(ckpt, path):
    Path(path).write_text(json.dumps(ckpt, indent=None, separators=(",", ":")))   # floats round-trip exactly


def load_checkpoint(path):
    path = Path(path)
    if not path.is_file():
        raise TinytrainError("no such file", file=path)
    try:
        ckpt = json.loads(path.read_text())
    except Exception as e:
        raise TinytrainError(f"not a JSON checkpoint: {e}", file=path) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TinytrainError(f"not a {CHECKPOINT_FORMAT} checkpoint", file=path, field="format")
    for k in ("trainable", "z", "eps", "lr", "queries", "steps"):
        if k not in ckpt:
            raise TinytrainError("missing entry", file=path, field=k)
    check_hyper(ckpt["lr"], ckpt["eps"], ckpt["queries"], ckpt["z"])
    return ckpt


def replay(ckpt, base_model, check_sha=True):
    """Re-run the checkpoint's in-place passes on the base model's weights, no forward
    pass -> (names, trained float32 arrays), bit for bit those of training."""
    if check_sha and ckpt.get("base_sha256") and sha256(base_model) != ckpt["base_sha256"]:
        raise TinytrainError("the base model is not the one the checkpoint was trained from (sha256 differs)",
                             file=base_model)
    model = load_onnx(base_model)
    have = {i.name: i for i in model.graph.initializer}
    missing = [n for n in ckpt["trainable"] if n not in have]
    if missing:
        raise TinytrainError(f"initializer '{missing[0]}' of the checkpoint is not in the model", file=base_model)
    names = list(ckpt["trainable"])
    w = [np.ascontiguousarray(numpy_helper.to_array(have[n]), dtype=np.float32).copy() for n in names]
    del model
    replay_steps(w, ckpt)
    return names, w


def replay_steps(w, ckpt):
    for est in ckpt["steps"]:
        for seed, _g in est:
            for _ in estimate_pass(w, int(seed), ckpt["eps"], ckpt["z"]):
                pass
        for seed, g in est:
            perturb(w, int(seed), update_scale(ckpt["lr"], g, ckpt["queries"]), ckpt["z"])


def write_model(base_model, names, arrays, out_path):
    """The base ONNX model with the named initializers replaced by `arrays`."""
    model = load_onnx(base_model)
    by_name = {i.name: i for i in model.graph.initializer}
    for n, a in zip(names, arrays):
        by_name[n].CopyFrom(numpy_helper.from_array(np.asarray(a, np.float32).reshape(tuple(by_name[n].dims)), n))
    onnx.save(model, str(out_path))
    return Path(out_path)
