"""One converter per ONNX op: ONNX node -> IR nodes (see onnx_import.py for
the layout rules).  Each takes the Importer and the ONNX node."""
import numpy as np

from ..ir import QParams
from .onnx_layout import channels_last

CONVERTERS = {}


def converter(*names):
    def deco(fn):
        for n in names:
            CONVERTERS[n] = fn
        return fn
    return deco


def _same_pads(size, k, s, d, upper):
    out = -(-size // s)
    total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
    small, big = total // 2, total - total // 2
    return (small, big) if upper else (big, small)


def _spatial_pads(imp, node, spatial, kernel, strides, dil):
    """ONNX pads/auto_pad -> (top, left, bottom, right) for 1 or 2 spatial dims."""
    auto = imp.attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    r = len(kernel)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pp = [_same_pads(spatial[i], kernel[i], strides[i], dil[i], auto == "SAME_UPPER") for i in range(r)]
        begin, end = [p[0] for p in pp], [p[1] for p in pp]
    elif auto in ("NOTSET", "VALID", ""):
        pads = list(imp.attr(node, "pads", [0] * (2 * r))) if auto != "VALID" else [0] * (2 * r)
        if len(pads) != 2 * r:
            raise imp.error(f"pads {pads} do not fit {r} spatial dims")
        if any(p < 0 for p in pads):
            raise imp.error(f"pads {pads} are negative")
        begin, end = pads[:r], pads[r:]
    else:
        raise imp.error(f"auto_pad '{auto}' is not supported")
    if r == 1:
        return (0, begin[0], 0, end[0])
    return (begin[0], begin[1], end[0], end[1])


def _to_4d(imp, name):
    """Activation -> (IR tid as NHWC, rank): rank-3 [N, C, L] becomes [N, 1, L, C]."""
    shape = imp.onnx_shape(name)
    if len(shape) == 4:
        return imp.materialize(name, (0, 2, 3, 1)), 4
    if len(shape) == 3:
        tid = imp.materialize(name, (0, 2, 1))
        n, c, ln = shape
        out = imp.tensor(f"{name}:4d", (n, 1, ln, c)).id
        imp.emit("reshape", [tid], [out], shape=(n, 1, ln, c))
        return out, 3
    raise imp.error(f"'{name}' has rank {len(shape)}; expected [N, C, H, W] or [N, C, L]")


def _from_4d(imp, onnx_name, tid4, rank):
    """Register a 4-D NHWC result as the ONNX value (undoing _to_4d for 1-D)."""
    n, h, w, c = imp.graph.t(tid4).shape
    if rank == 4:
        imp.alias(onnx_name, tid4, (0, 2, 3, 1))
        return
    out = imp.new_act(onnx_name, (n, w, c), (0, 2, 1))
    imp.emit("reshape", [tid4], [out], shape=(n, w, c))


@converter("Conv")
def conv(imp, node):
    x, rank = _to_4d(imp, node.input[0])
    w = imp.weight(node.input[1], "weight")
    if w.size == 0:
        raise imp.error(f"weight '{node.input[1]}' has shape {list(w.shape)}")
    cin = imp.graph.t(x).shape[3]
    if w.ndim != rank:
        raise imp.error(f"weight '{node.input[1]}' has rank {w.ndim} for a rank-{rank} input")
    if rank == 3:
        w = w[:, :, None, :]
    group = int(imp.attr(node, "group", 1))
    if group <= 0 or cin % group or w.shape[0] % group or w.shape[1] * group != cin:
        raise imp.error(f"weight {list(w.shape)} and group {group} do not fit {cin} input channels")
    kernel = tuple(w.shape[2:]) if rank == 4 else (w.shape[3],)
    k_attr = imp.attr(node, "kernel_shape")
    if k_attr is not None and tuple(k_attr) != kernel:
        raise imp.error(f"kernel_shape {list(k_attr)} does not match the weight {list(w.shape)}")
    nsp = 2 if rank == 4 else 1
    strides = tuple(imp.attr(node, "strides", [1] * nsp))
    dil = tuple(imp.attr(node, "dilations", [1] * nsp))
    if len(strides) != nsp or len(dil) != nsp or min(strides) < 1 or min(dil) < 1:
        raise imp.error(f"strides {list(strides)} / dilations {list(dil)} are invalid")
    xs = imp.graph.t(x).shape
    spatial = (xs[1], xs[2]) if rank == 4 else (xs[2],)
    pads = _spatial_pads(imp, node, spatial, kernel, strides, dil)
    if rank == 3:
        strides, dil = (1,) + strides, (1,) + dil
    b = imp.weight(node.input[2], "bias") if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0], np.float32)
    if b.shape != (w.shape[0],):
        raise imp.error(f"bias {list(b.shape)} for {w.shape[0]} output channels")
    wt = imp.graph.add_const(node.input[1], np.ascontiguousarray(w.transpose(0, 2, 3, 1)))
    if node.input[1] in imp.const_q and imp.const_q[node.input[1]].axis == 0:
        wt.q = imp.const_q[node.input[1]]
    bt = imp.add_const(node.input[2] if len(node.input) > 2 and node.input[2] else f"{node.name}:bias", b)
    from ..ops.common import conv_out_size
    oh = conv_out_size(xs[1], w.shape[2], strides[0], pads[0], pads[2], dil[0])
    ow = conv_out_size(xs[2], w.shape[3], strides[1], pads[1], pads[3], dil[1])
    if oh <= 0 or ow <= 0:
        raise imp.error(f"kernel {kernel} with pads/strides gives an empty output for input {list(spatial)}")
    y = imp.tensor(node.output[0] if rank == 4 else f"{node.output[0]}:4d", (1, oh, ow, w.shape[0])).id
    imp.emit("conv2d", [x, wt.id, bt], [y], stride=strides, pads=pads, dilation=dil, groups=group, act=None)
    _from_4d(imp, node.output[0], y, rank)


def _channel_vector(imp, node, c_name, x_name):
    """A constant broadcast against x that varies only along x's channel axis
    -> a [C] vector, or None."""
    c = np.asarray(imp.const(c_name), np.float32)
    shape = imp.onnx_shape(x_name)
    r = len(shape)
    if c.ndim > r:
        return None
    cc = c.reshape((1,) * (r - c.ndim) + c.shape)
    ch = 1 if r >= 3 else r - 1
    for k in range(r):
        if k != ch and cc.shape[k] != 1:
            return None
    if cc.shape[ch] not in (1, shape[ch]):
        return None
    return np.broadcast_to(cc.reshape(-1), (shape[ch],)).astype(np.float32).copy()


def _affine(imp, node, x_name, scale, shift):
    shape = imp.onnx_shape(x_name)
    order = channels_last(len(shape))
    x = imp.materialize(x_name, order)
    if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(shift))):
        raise imp.error("per-channel constants contain NaN or Inf")
    s, b = imp.add_const(f"{node.output[0]}:scale", scale), imp.add_const(f"{node.output[0]}:shift", shift)
    y = imp.new_act(node.output[0], imp.graph.t(x).shape, order)
    imp.emit("affine", [x, s, b], [y])


@converter("BatchNormalization")
def batchnorm(imp, node):
    gamma, beta, mean, var = (imp.weight(n, "BatchNormalization parameter") for n in node.input[1:5])
    eps = float(imp.attr(node, "epsilon", 1e-5))
    c = imp.onnx_shape(node.input[0])[1]
    if any(p.shape != (c,) for p in (gamma, beta, mean, var)):
        raise imp.error(f"BatchNormalization parameters do not match {c} channels")
    if np.any(var + eps <= 0):
        raise imp.error("BatchNormalization variance + epsilon is not positive")
    scale = (gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps))
    shift = beta.astype(np.float64) - mean.astype(np.float64) * scale
    _affine(imp, node, node.input[0], scale.astype(np.float32), shift.astype(np.float32))


@converter("Add", "Sub", "Mul", "Div")
def binary(imp, node):
    a, b = node.input[0], node.input[1]
    op = node.op_type
    if not imp.is_const(a) and not imp.is_const(b):
        if op in ("Sub", "Div"):
            raise imp.error(f"{op} of two activations is not supported")
        sa, sb = imp.onnx_shape(a), imp.onnx_shape(b)
        if len(sa) != len(sb):
            raise imp.error(f"{op} of rank {len(sa)} and rank {len(sb)} activations is not supported")
        try:
            out_shape = tuple(np.broadcast_shapes(sa, sb))
        except ValueError:
            raise imp.error(f"{op} shapes {list(sa)} and {list(sb)} do not broadcast") from None
        order = imp.act(a)[1] if len(sa) != 4 else (0, 2, 3, 1)
        ta, tb = imp.materialize(a, order), imp.materialize(b, order)
        y = imp.new_act(node.output[0], tuple(out_shape[k] for k in order), order)
        imp.emit(op.lower(), [ta, tb], [y], act=None)
        return
    x, c = (a, b) if imp.is_const(b) else (b, a)
    imp.weight(c, "constant")          # names the constant if it holds NaN or Inf
    vec = _channel_vector(imp, node, c, x)
    if vec is None:
        raise imp.error(f"{op} by constant '{c}' of shape {list(np.shape(imp.const(c)))}: only scalars and "
                        "per-channel constants are supported")
    one, zero = np.ones_like(vec), np.zeros_like(vec)
    if op == "Add":
        scale, shift = one, vec
    elif op == "Sub":
        scale, shift = (one, -vec) if x == a else (-one, vec)
    elif op == "Mul":
        scale, shift = vec, zero
    else:
        if x != a:
            raise imp.error("division of a constant by an activation is not supported")
        if np.any(vec == 0):
            raise imp.error("division by zero")
        scale, shift = (1.0 / vec).astype(np.float32), zero
    _affine(imp, node, x, scale, shift)


@converter("Relu", "Clip")
def relu_clip(imp, node):
    x = node.input[0]
    if node.op_type == "Relu":
        lo, hi = 0.0, None
    else:
        lo = imp.attr(node, "min")
        hi = imp.attr(node, "max")
        if len(node.input) > 1 and node.input[1]:
            lo = float(imp.const(node.input[1], "Clip min"))
        if len(node.input) > 2 and node.input[2]:
            hi = float(imp.const(node.input[2], "Clip max"))
        lo = None if lo is None or lo <= -3.4e38 else float(lo)
        hi = None if hi is None or hi >= 3.4e38 else float(hi)
    tid, order = imp.act(x)
    y = imp.new_act(node.output[0], imp.graph.t(tid).shape, order)
    imp.emit("clamp", [tid], [y], act=(lo, hi))


def _unary(op, **attrs):
    def conv_fn(imp, node):
        tid, order = imp.act(node.input[0])
        y = imp.new_act(node.output[0], imp.graph.t(tid).shape, order)
        extra = {k: (v(imp, node) if callable(v) else v) for k, v in attrs.items()}
        imp.emit(op, [tid], [y], **extra)
    return conv_fn


CONVERTERS["Sigmoid"] = _unary("sigmoid")
CONVERTERS["HardSwish"] = _unary("hard_swish")
CONVERTERS["HardSigmoid"] = _unary("hard_sigmoid", alpha=lambda imp, n: float(imp.attr(n, "alpha", 0.2)),
                                   beta=lambda imp, n: float(imp.attr(n, "beta", 0.5)))
CONVERTERS["LeakyRelu"] = _unary("leaky_relu", alpha=lambda imp, n: float(imp.attr(n, "alpha", 0.01)))


@converter("Identity", "Dropout")
def identity(imp, node):
    tid, order = imp.act(node.input[0])
    imp.alias(node.output[0], tid, order)


@converter("Cast", "CastLike")
def cast(imp, node):
    """A cast to float32 of an activation (always float32 here) is a no-op; CastLike of a
    constant to an activation's type is that constant in float32; any other cast is refused."""
    import onnx
    if node.op_type == "CastLike":
        like = node.input[1]
        to = imp.const(like).dtype if imp.is_const(like) else np.dtype(np.float32)
    else:
        to = imp.attr(node, "to")
        try:
            to = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(to)))
        except Exception:
            raise imp.error(f"Cast to type {to} is not supported") from None
    if imp.is_const(node.input[0]):       # CastLike(constant, activation)
        if to != np.float32:
            raise imp.error(f"CastLike of constant '{node.input[0]}' to {to}: only float32 is supported")
        imp.consts[node.output[0]] = np.asarray(imp.const(node.input[0])).astype(np.float32)
        return
    tid, order = imp.act(node.input[0])
    if to != np.float32:
        raise imp.error(f"{node.op_type} of activation '{node.input[0]}' (float32) to {to} changes its type: "
                        "only casts to float32 are supported")
    imp.alias(node.output[0], tid, order)


# ops that may follow the final softmax without changing which class wins
_AFTER_SOFTMAX = {"Identity", "Dropout", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast", "CastLike",
                  "QuantizeLinear", "DequantizeLinear"}


def _softmax_ends_model(imp, node):
    """True when the softmax's output reaches a graph output through a chain of
    _AFTER_SOFTMAX ops alone (each the only reader of the one before).  Those
    ops then act on the logits (the IR's output), except a QDQ pair, which
    quantizes probabilities: its QuantizeLinear is recorded to pass through."""
    outs = {o.name for o in imp.model.graph.output}
    name, q_nodes = node.output[0], []
    while True:
        users = [n for n in imp.model.graph.node if name in n.input]
        if name in outs:
            if users:
                return False
            imp.softmax_q.update(q_nodes)
            return True
        if len(users) != 1 or users[0].op_type not in _AFTER_SOFTMAX or users[0].input[0] != name:
            return False
        if users[0].op_type == "QuantizeLinear":
            q_nodes.append(users[0].output[0])
        name = users[0].output[0]


@converter("Softmax", "LogSoftmax")
def softmax(imp, node):
    if not _softmax_ends_model(imp, node):
        raise imp.error(f"{node.op_type} is supported only as the model's final output (or followed only by "
                        "Identity, Reshape/Flatten/Squeeze/Unsqueeze, Cast to float, or a QDQ pair, up to the output)")
    shape = imp.onnx_shape(node.input[0])
    axis = int(imp.attr(node, "axis", -1 if imp.opset >= 13 else 1)) % len(shape)
    if len(shape) != 2 or axis != 1:
        raise imp.error(f"{node.op_type} over axis {axis} of {list(shape)}: expected [N, classes], axis 1")
    tid, order = imp.act(node.input[0])
    imp.alias(node.output[0], tid, order)
    imp.graph.meta["output_activation"] = node.op_type.lower()


@converter("GlobalAveragePool")
def global_avg_pool(imp, node):
    x, rank = _to_4d(imp, node.input[0])
    n, h, w, c = imp.graph.t(x).shape
    y = imp.tensor(f"{node.output[0]}:4d" if rank == 3 else node.output[0], (n, 1, 1, c)).id
    imp.emit("global_avg_pool", [x], [y], act=None)
    if rank == 4:
        imp.alias(node.output[0], y, (0, 2, 3, 1))
    else:   # ONNX [N, C, 1]
        out = imp.new_act(node.output[0], (n, 1, c), (0, 2, 1))
        imp.emit("reshape", [y], [out], shape=(n, 1, c))


def _mean_axes(imp, node, r):
    axes = imp.attr(node, "axes")
    if len(node.input) > 1 and node.input[1]:
        axes = imp.const(node.input[1], "axes").tolist()
    if axes is not None and any(not -r <= int(a) < r for a in axes):
        raise imp.error(f"ReduceMean axes {list(axes)} are out of range for rank {r}")
    return sorted({int(a) % r for a in (axes if axes is not None else range(r))})


def _kept(shape, axes, keep):
    return [1 if k in axes else d for k, d in enumerate(shape)] if keep else \
        [d for k, d in enumerate(shape) if k not in axes]


def _mean_chain_next(imp, node, shape, axes, keep):
    """The ReduceMean that finishes a single-spatial-axis mean of an NCHW map
    (`x.mean(3).mean(2)`, either order, keepdims 0 or 1), when it is this
    node's only consumer; else None."""
    if len(shape) != 4 or len(axes) != 1 or axes[0] not in (2, 3):
        return None
    if node.output[0] in {o.name for o in imp.model.graph.output}:
        return None
    users = [n for n in imp.model.graph.node if node.output[0] in n.input]
    if len(users) != 1 or users[0].op_type != "ReduceMean" or users[0].input[0] != node.output[0]:
        return None
    return users[0]         # its axes (maybe a Constant not read yet) are checked when it is reached


@converter("ReduceMean")
def reduce_mean(imp, node):
    if node.output[0] in imp.mean_chain:    # the second half of x.mean(3).mean(2)
        first, src = imp.mean_chain.pop(node.output[0])
        shape = imp.onnx_shape(src)
        a1, k1 = _mean_axes(imp, first, 4), int(imp.attr(first, "keepdims", 1))
        mid = _kept(shape, a1, k1)
        other = 5 - a1[0]                   # the remaining spatial axis, in NCHW numbering
        a2 = _mean_axes(imp, node, len(mid))
        if a2 != [other if k1 or other < a1[0] else other - 1]:
            raise imp.error(f"ReduceMean over axes {a1} of {list(shape)}: only the spatial axes are supported "
                            f"(all of them, or one then the other; the next ReduceMean reduces {a2})", node=first)
        oshape = _kept(mid, a2, int(imp.attr(node, "keepdims", 1)))
        _global_mean(imp, node, src, oshape)
        return
    shape = imp.onnx_shape(node.input[0])
    r = len(shape)
    axes = _mean_axes(imp, node, r)
    keep = int(imp.attr(node, "keepdims", 1))
    nxt = _mean_chain_next(imp, node, shape, axes, keep)
    if nxt is not None:
        imp.mean_chain[nxt.output[0]] = (node, node.input[0])
        return
    if axes != list(range(2, r)) or r not in (3, 4):
        raise imp.error(f"ReduceMean over axes {axes} of {list(shape)}: only the spatial axes are supported "
                        "(all of them, or one then the other)")
    _global_mean(imp, node, node.input[0], _kept(shape, axes, keep))


def _global_mean(imp, node, src, oshape):
    """Mean over every spatial axis of `src` -> ONNX value node.output[0] of shape oshape."""
    x, rank = _to_4d(imp, src)
    n, h, w, c = imp.graph.t(x).shape
    y = imp.tensor(f"{node.output[0]}:pool", (n, 1, 1, c)).id
    imp.emit("global_avg_pool", [x], [y], act=None)
    if len(oshape) == 4:
        imp.alias(node.output[0], y, (0, 2, 3, 1))
        return
    oshape, order = ((n, 1, c), (0, 2, 1)) if len(oshape) == 3 else ((n, c), (0, 1))
    out = imp.new_act(node.output[0], oshape, order)
    imp.emit("reshape", [y], [out], shape=oshape)


@converter("AveragePool", "MaxPool")
def pool(imp, node):
    if len(node.output) > 1 and node.output[1]:
        raise imp.error("MaxPool indices output is not supported")
    x, rank = _to_4d(imp, node.input[0])
    kernel = tuple(imp.attr(node, "kernel_shape", []))
    nsp = 2 if rank == 4 else 1
    if len(kernel) != nsp or min(kernel) < 1:
        raise imp.error(f"kernel_shape {list(kernel)} is invalid")
    strides = tuple(imp.attr(node, "strides", [1] * nsp))
    dil = tuple(imp.attr(node, "dilations", [1] * nsp))
    xs = imp.graph.t(x).shape
    spatial = (xs[1], xs[2]) if rank == 4 else (xs[2],)
    pads = _spatial_pads(imp, node, spatial, kernel, strides, dil)
    if rank == 3:
        kernel, strides, dil = (1,) + kernel, (1,) + strides, (1,) + dil
    if int(imp.attr(node, "ceil_mode", 0)):
        # ceil_mode: the last window may run past the end (but starts inside the input or the
        # begin padding).  Both pools skip taps outside the input (max ignores them, the average
        # counts valid taps with count_include_pad=0), so it is extra end padding, exactly.
        pads = list(pads)
        for i, size in enumerate(xs[1:3]):
            p0, p1 = pads[i], pads[i + 2]
            num = size + p0 + p1 - dil[i] * (kernel[i] - 1) - 1
            if num < 0 or num % strides[i] == 0:
                continue
            out = -(-num // strides[i]) + 1
            if (out - 1) * strides[i] >= size + p0:
                out -= 1
            extra = (out - 1) * strides[i] + dil[i] * (kernel[i] - 1) + 1 - (size + p0 + p1)
            if extra > 0 and node.op_type == "AveragePool" and int(imp.attr(node, "count_include_pad", 0)):
                raise imp.error("AveragePool with ceil_mode=1 and count_include_pad=1 that changes the output "
                                "size is not supported")
            pads[i + 2] += max(extra, 0)
        pads = tuple(pads)
    attrs = dict(kernel=kernel, stride=strides, pads=pads, act=None)
    if node.op_type == "MaxPool":
        attrs["dilation"] = dil
        op = "max_pool"
    else:
        if dil != (1, 1):
            raise imp.error("AveragePool dilations are not supported")
        attrs["count_include_pad"] = int(imp.attr(node, "count_include_pad", 0))
        op = "avg_pool"
    from ..ops.common import conv_out_size
    oh = conv_out_size(xs[1], kernel[0], strides[0], pads[0], pads[2], dil[0])
    ow = conv_out_size(xs[2], kernel[1], strides[1], pads[1], pads[3], dil[1])
    if oh <= 0 or ow <= 0:
        raise imp.error("the pooling window gives an empty output")
    y = imp.tensor(node.output[0] if rank == 4 else f"{node.output[0]}:4d", (xs[0], oh, ow, xs[3])).id
    imp.emit(op, [x], [y], **attrs)
    _from_4d(imp, node.output[0], y, rank)


def _reshape_to(imp, node, new_shape):
    src = node.input[0]
    shape = imp.onnx_shape(src)
    new_shape = tuple(int(d) for d in new_shape)
    if int(np.prod(new_shape)) != int(np.prod(shape)) or any(d <= 0 for d in new_shape):
        raise imp.error(f"cannot reshape {list(shape)} to {list(new_shape)}")
    if new_shape[0] != shape[0]:
        raise imp.error(f"reshape {list(shape)} -> {list(new_shape)} mixes the batch axis")
    tid = imp.materialize(src, tuple(range(len(shape))), reshape_follows=True)
    y = imp.new_act(node.output[0], new_shape, tuple(range(len(new_shape))))
    imp.emit("reshape", [tid], [y], shape=new_shape)


@converter("Reshape")
def reshape(imp, node):
    shape = imp.onnx_shape(node.input[0])
    target = np.asarray(imp.const(node.input[1], "shape"))
    if target.ndim != 1 or not np.issubdtype(target.dtype, np.integer):
        raise imp.error(f"shape must be a 1-D integer tensor, got {target.dtype} {list(target.shape)}")
    target = [int(d) for d in target]
    allowzero = int(imp.attr(node, "allowzero", 0))
    out = [shape[i] if (d == 0 and not allowzero and i < len(shape)) else d for i, d in enumerate(target)]
    if out.count(-1) > 1:
        raise imp.error(f"shape {target} has more than one -1")
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        if known <= 0 or int(np.prod(shape)) % known:
            raise imp.error(f"cannot reshape {list(shape)} to {target}")
        out[out.index(-1)] = int(np.prod(shape)) // known
    _reshape_to(imp, node, out)


@converter("Flatten")
def flatten(imp, node):
    shape = imp.onnx_shape(node.input[0])
    axis = int(imp.attr(node, "axis", 1))
    if not -len(shape) <= axis <= len(shape):
        raise imp.error(f"axis {axis} is out of range for rank {len(shape)}")
    if axis < 0:
        axis += len(shape)
    _reshape_to(imp, node, (int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))))


@converter("Squeeze", "Unsqueeze")
def squeeze(imp, node):
    shape = list(imp.onnx_shape(node.input[0]))
    axes = imp.attr(node, "axes")
    if len(node.input) > 1 and node.input[1]:
        axes = imp.const(node.input[1], "axes").tolist()
    if node.op_type == "Squeeze":
        axes = [a % len(shape) for a in axes] if axes is not None else [i for i, d in enumerate(shape) if d == 1]
        if any(shape[a] != 1 for a in axes):
            raise imp.error(f"Squeeze axes {axes} of {shape} are not all 1")
        out = [d for i, d in enumerate(shape) if i not in axes]
    else:
        if axes is None:
            raise imp.error("Unsqueeze needs axes")
        r = len(shape) + len(axes)
        axes = sorted(a % r for a in axes)
        out = list(shape)
        for a in axes:
            out.insert(a, 1)
    _reshape_to(imp, node, out)


@converter("Transpose")
def transpose(imp, node):
    tid, order = imp.act(node.input[0])
    r = len(order)
    perm = list(imp.attr(node, "perm", list(range(r))[::-1]))
    if sorted(perm) != list(range(r)):
        raise imp.error(f"perm {perm} is not a permutation of {r} axes")
    if perm[0] != 0 and imp.onnx_shape(node.input[0])[perm[0]] != 1:
        raise imp.error(f"Transpose perm {perm} moves the batch axis")
    inv = [perm.index(a) for a in range(r)]
    new_order = tuple(inv[a] for a in order)
    if new_order[0] != 0:     # only size-1 axes swapped with the batch: make the copy explicit
        shape = imp.onnx_shape(node.input[0])
        _reshape_to(imp, node, tuple(shape[p] for p in perm))
        return
    imp.alias(node.output[0], tid, new_order)


@converter("Concat")
def concat(imp, node):
    names = [n for n in node.input if n]
    shapes = [imp.onnx_shape(n) for n in names]
    r = len(shapes[0])
    axis = int(imp.attr(node, "axis", 1))
    if not -r <= axis < r:
        raise imp.error(f"axis {axis} is out of range for rank {r}")
    axis %= r
    if axis == 0:
        raise imp.error("Concat over the batch axis is not supported")
    for s in shapes:
        if len(s) != r or any(s[k] != shapes[0][k] for k in range(r) if k != axis):
            raise imp.error(f"Concat shapes {[list(x) for x in shapes]} do not match on axis {axis}")
    order = imp.act(names[0])[1]
    tids = [imp.materialize(n, order) for n in names]
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    y = imp.new_act(node.output[0], tuple(out[a] for a in order), order)
    imp.emit("concat", tids, [y], axis=order.index(axis))


@converter("Slice")
def slice_(imp, node):
    """Slice of an activation: a no-op when it keeps every element (GhostNet's
    `cat(...)[:, :oup]` with oup the whole width), a Concat of the pieces when
    it picks whole inputs of the Concat that made it; anything else is refused."""
    shape = imp.onnx_shape(node.input[0])
    r = len(shape)
    if imp.opset < 10:
        starts, ends, axes, steps = imp.attr(node, "starts"), imp.attr(node, "ends"), imp.attr(node, "axes"), None
    else:
        def opt(k, what):
            return [int(v) for v in np.asarray(imp.const(node.input[k], what)).reshape(-1)] \
                if len(node.input) > k and node.input[k] else None
        starts, ends, axes, steps = opt(1, "starts"), opt(2, "ends"), opt(3, "axes"), opt(4, "steps")
    axes = list(range(len(starts))) if axes is None else list(axes)
    steps = [1] * len(starts) if steps is None else list(steps)
    if not len(starts) == len(ends) == len(axes) == len(steps) or any(not -r <= a < r for a in axes) \
            or 0 in steps:
        raise imp.error(f"Slice starts/ends/axes/steps {list(starts)}/{list(ends)}/{axes}/{steps} do not fit "
                        f"rank {r}")
    picked = {}
    for st, en, a, sp in zip(starts, ends, axes, steps):
        picked[a % r] = range(*slice(int(st), int(en), int(sp)).indices(shape[a % r]))
    partial = {a: rg for a, rg in picked.items() if rg != range(shape[a])}
    if not partial:
        tid, order = imp.act(node.input[0])
        imp.alias(node.output[0], tid, order)
        return
    why = f"Slice of activation '{node.input[0]}' {list(shape)} to " \
          f"{[(a, rg.start, rg.stop, rg.step) for a, rg in partial.items()]} (axis, start, end, step)"
    prod = next((n for n in imp.model.graph.node if node.input[0] in n.output), None)
    if len(partial) == 1 and prod is not None and prod.op_type == "Concat":
        (a, rg), = partial.items()
        cat_axis = int(imp.attr(prod, "axis", 1)) % r
        names = [n for n in prod.input if n]
        if rg.step == 1 and cat_axis == a and all(n in imp.values for n in names):
            bounds, lo = {}, 0
            for n in names:
                bounds[lo] = n
                lo += imp.onnx_shape(n)[a]
            bounds[lo] = None
            if rg.start in bounds and rg.stop in bounds:
                keep = [n for b, n in sorted(bounds.items()) if n is not None and rg.start <= b < rg.stop]
                if len(keep) == 1:
                    tid, order = imp.act(keep[0])
                    imp.alias(node.output[0], tid, order)
                    return
                order = imp.act(keep[0])[1]
                tids = [imp.materialize(n, order) for n in keep]
                out = list(shape)
                out[a] = len(rg)
                y = imp.new_act(node.output[0], tuple(out[k] for k in order), order)
                imp.emit("concat", tids, [y], axis=order.index(a))
                return
    raise imp.error(f"{why} is not supported: only slices that keep every element or pick whole inputs of "
                    "the Concat that made the tensor")


def _fc(imp, node, a_name, w_mk, bias):
    shape = imp.onnx_shape(a_name)
    if len(shape) != 2:
        raise imp.error(f"{node.op_type} on a rank-{len(shape)} input {list(shape)}: only [N, K] is supported")
    if w_mk.size == 0:
        raise imp.error(f"weight of shape {list(w_mk.shape)}")
    if w_mk.shape[1] != shape[1]:
        raise imp.error(f"weight {list(w_mk.shape)} does not fit input {list(shape)}")
    x = imp.materialize(a_name, (0, 1))
    wt = imp.graph.add_const(f"{node.output[0]}:weight", np.ascontiguousarray(w_mk, dtype=np.float32))
    bt = imp.add_const(f"{node.output[0]}:bias", bias)
    y = imp.new_act(node.output[0], (shape[0], w_mk.shape[0]), (0, 1))
    imp.emit("fully_connected", [x, wt.id, bt], [y], act=None)
    return wt


@converter("Gemm")
def gemm(imp, node):
    if int(imp.attr(node, "transA", 0)):
        raise imp.error("Gemm with transA=1 is not supported")
    w = imp.weight(node.input[1], "weight")
    if w.ndim != 2:
        raise imp.error(f"Gemm weight has rank {w.ndim}")
    trans_b = int(imp.attr(node, "transB", 0))
    w = w if trans_b else w.T
    alpha, beta = float(imp.attr(node, "alpha", 1.0)), float(imp.attr(node, "beta", 1.0))
    b = np.zeros(w.shape[0], np.float32)
    if len(node.input) > 2 and node.input[2]:
        c = imp.weight(node.input[2], "bias")
        try:
            b = np.broadcast_to(c.reshape(-1) if c.size == w.shape[0] or c.size == 1 else c, (w.shape[0],)) * beta
        except ValueError:
            raise imp.error(f"Gemm bias {list(c.shape)} for {w.shape[0]} outputs") from None
    wt = _fc(imp, node, node.input[0], (w * alpha).astype(np.float32), b.astype(np.float32))
    q = imp.const_q.get(node.input[1])
    if q is not None and alpha == 1.0 and q.axis == (0 if trans_b else 1):
        wt.q = QParams(q.scale, q.zero_point, 0)


@converter("MatMul")
def matmul(imp, node):
    if imp.is_const(node.input[0]):
        raise imp.error("MatMul with a constant first input is not supported")
    w = imp.weight(node.input[1], "weight")
    if w.ndim != 2:
        raise imp.error("MatMul with a computed or non-2-D second input is not supported")
    wt = _fc(imp, node, node.input[0], np.ascontiguousarray(w.T), np.zeros(w.shape[1], np.float32))
    q = imp.const_q.get(node.input[1])
    if q is not None and q.axis == 1:
        wt.q = QParams(q.scale, q.zero_point, 0)


@converter("QuantizeLinear")
def quantize_linear(imp, node):
    """A QDQ pair on an activation: a float clamp to the int8 range, carrying the model's scale."""
    tid, order = imp.act(node.input[0])
    if node.output[0] in imp.softmax_q:     # the QDQ pair after the final softmax goes with it
        imp.alias(node.output[0], tid, order)
        return
    scale = np.asarray(imp.const(node.input[1], "y_scale"), np.float32)
    zp = np.asarray(imp.const(node.input[2], "y_zero_point")) if len(node.input) > 2 and node.input[2] \
        else np.zeros((), np.uint8)
    if scale.size != 1:
        raise imp.error("per-channel quantization of an activation is not supported")
    if zp.dtype == np.uint8:
        zp = zp.astype(np.int32) - 128        # same real values, int8 codes
    elif zp.dtype != np.int8:
        raise imp.error(f"activation zero point of type {zp.dtype}: only int8/uint8")
    q = QParams(scale.reshape(()), np.int32(zp.reshape(())), None)
    if tid in imp.graph.inputs:          # the input's own quantization
        imp.graph.t(tid).q = q
        imp.alias(node.output[0], tid, order)
        return
    # Q -> DQ saturates to the int8 range: keep that as a float clamp (it fuses into the producer,
    # as ORT's quantizer folds ReLU/ReLU6 into the range); the int8 graph then uses exactly this scale
    lo = float(q.scale) * (-128 - int(q.zero_point))
    hi = float(q.scale) * (127 - int(q.zero_point))
    y = imp.new_act(node.output[0], imp.graph.t(tid).shape, order)
    imp.graph.t(y).q = q
    imp.emit("clamp", [tid], [y], act=(lo, hi))


@converter("DequantizeLinear")
def dequantize_linear(imp, node):
    tid, order = imp.act(node.input[0])
    imp.alias(node.output[0], tid, order)
