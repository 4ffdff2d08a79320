"""A torch replay of a quantized IR graph: the reference for tinytrain's gradients.

Semantics (straight-through estimator on the dequantized graph):

* leaves: the dequantized int8 input x = s (x_q - zp) and every constant of the
  forward nodes, dequantized (weights w = s_w[c] w_q, biases b = s_w s_x b_q),
  float64, requires_grad;
* every forward node computes its float function in torch on the values it
  receives (`pre`, before the output clamp), then the value is replaced by
  tinytrain's own dequantized int8 output while the gradient path is kept:

      y_used = y_ours + mask * (pre - pre.detach())

  mask = the node's 1-bit clamp mask when its op `uses_mask`, else 1.  So the
  gradient that reaches a node's inputs is its float function's derivative
  evaluated AT THE DEQUANTIZED INT8 INPUTS of this forward pass, gated by the
  mask;
* the loss is the softmax cross-entropy of the dequantized logits (summed over
  the batch), and autograd gives the reference gradients.

Layout NHWC as in the IR (permutes around F.conv2d), weights [Cout, KH, KW,
Cin/groups] / [M, K].  Asymmetric pads via F.pad; avg_pool divides by the
window size (count_include_pad) or by its valid taps; max_pool sends the
gradient to the FIRST maximal element of each window in (kh, kw) order
(unfold + argmax; torch.argmax returns the first maximal index).

With `check=True` (the default) the replay also asserts that each torch value,
clamped to the node's output range, is within 1.5 output steps of tinytrain's
int8 result, which catches a wrong layout in this interpreter; and that every
element whose mask is 0 sits on a clamp bound.
"""
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from tinytrain.compiler.ops import get_op

from .op_cases import TORCH_RULES

DT = torch.float64


@dataclass
class Replay:
    loss: float                                  # summed over the batch
    per_sample_loss: np.ndarray
    logits: np.ndarray                           # dequantized, [N, K]
    param_grads: dict = field(default_factory=dict)   # const tensor id -> dL/d(dequantized constant)
    act_grads: dict = field(default_factory=dict)     # activation/input id -> dL/dy (y dequantized)
    values: dict = field(default_factory=dict)        # tensor id -> dequantized forward value
    masks: dict = field(default_factory=dict)         # node id -> uint8 clamp mask


def forward_nodes(graph):
    tr = graph.meta.get("training")
    if tr is None:
        return list(graph.nodes)
    fwd = set(tr["forward"])
    return [n for n in graph.nodes if n.id in fwd]


def run_int8(graph, xq, nodes=None):
    """tinytrain's own int8 forward (each op's numba kernel) over the forward
    nodes -> ({tensor id: int8 value}, {node id: uint8 clamp mask})."""
    nodes = forward_nodes(graph) if nodes is None else nodes
    env = {graph.inputs[0]: np.ascontiguousarray(xq, np.int8)}
    masks = {}
    for n in nodes:
        ins = [env[i] if i in env else graph.t(i).data for i in n.inputs]
        outs = get_op(n.op).sim(n, graph, ins, masks)
        env[n.outputs[0]] = outs[0]
    return env, masks


def dequant(t, q):
    """float64 dequantization with the tensor's (per-tensor or per-channel) parameters."""
    q_ = np.asarray(q)
    if t.q is None:
        return q_.astype(np.float64)
    s = t.q.scale.astype(np.float64)
    z = t.q.zero_point.astype(np.float64)
    if t.q.axis is not None:
        shp = [1] * q_.ndim
        shp[t.q.axis] = -1
        s, z = s.reshape(shp), z.reshape(shp)
    return s * (q_.astype(np.float64) - z)


def _nchw(x):
    return x.permute(0, 3, 1, 2)


def _nhwc(x):
    return x.permute(0, 2, 3, 1)


def _windows(x, a, pad_value):
    """NHWC x -> [N, C, KH*KW, OH, OW] windows, taps in (kh, kw) order."""
    kh, kw = a["kernel"]
    pt, pl, pb, pr = a["pads"]
    dil = tuple(a.get("dilation", (1, 1)))
    n, h, w, c = x.shape
    xp = F.pad(_nchw(x), (pl, pr, pt, pb), value=pad_value)
    cols = F.unfold(xp, (kh, kw), dilation=dil, stride=tuple(a["stride"]))      # [N, C*K, L]
    oh = (h + pt + pb - dil[0] * (kh - 1) - 1) // a["stride"][0] + 1
    ow = (w + pl + pr - dil[1] * (kw - 1) - 1) // a["stride"][1] + 1
    return cols.reshape(n, c, kh * kw, oh, ow)


def float_op(node, graph, xs):
    """The op's float function in torch (NHWC), before the output clamp.
    xs: input values in order (activations or dequantized constants)."""
    a = node.attrs
    op = node.op
    if op == "conv2d":
        x, w, b = xs
        pt, pl, pb, pr = a["pads"]
        xp = F.pad(_nchw(x), (pl, pr, pt, pb))
        y = F.conv2d(xp, w.permute(0, 3, 1, 2), b, stride=tuple(a["stride"]), dilation=tuple(a["dilation"]),
                     groups=a["groups"])
        return _nhwc(y)
    if op == "fully_connected":
        x, w, b = xs
        return x @ w.T + b
    if op == "add":
        return xs[0] + xs[1]
    if op == "mul":
        return xs[0] * xs[1]
    if op == "avg_pool":
        if tuple(a.get("dilation", (1, 1))) != (1, 1):
            raise NotImplementedError("avg_pool with dilation (the int8 kernel has none)")
        win = _windows(xs[0], a, 0.0)                                # zero padding
        s = win.sum(dim=2)
        kh, kw = a["kernel"]
        if a["count_include_pad"]:
            cnt = torch.full_like(s, float(kh * kw))
        else:
            ones = torch.ones((1,) + tuple(xs[0].shape[1:3]) + (1,), dtype=DT)
            cnt = _windows(ones, a, 0.0).sum(dim=2)                  # valid taps per window
        return _nhwc(s / cnt)
    if op == "max_pool":
        win = _windows(xs[0], a, float("-inf"))
        idx = win.detach().argmax(dim=2, keepdim=True)              # first maximum in (kh, kw) order
        return _nhwc(win.gather(2, idx).squeeze(2))
    if op == "global_avg_pool":
        return xs[0].mean(dim=(1, 2), keepdim=True)
    if op == "clamp":
        return xs[0]
    if op == "sigmoid":
        return torch.sigmoid(xs[0])
    if op == "hard_sigmoid":
        return torch.clamp(a["alpha"] * xs[0] + a["beta"], 0.0, 1.0)
    if op == "hard_swish":
        return F.hardswish(xs[0])
    if op == "reshape":
        return xs[0].reshape((xs[0].shape[0],) + tuple(a["shape"][1:]))
    if op == "transpose":
        return xs[0].permute(*a["perm"])
    if op == "concat":
        return torch.cat(xs, dim=a["axis"])
    if op in TORCH_RULES:                    # declared beside the op's case (tests/op_cases.py)
        return TORCH_RULES[op](F, xs, a)
    raise NotImplementedError(f"torch replay of op {op}")


def _check_value(node, graph, pre, y_ours, mask, yq):
    t = graph.t(node.outputs[0])
    s = float(t.q.scale)
    z = int(t.q.zero_point)
    lo, hi = node.attrs.get("act_min", -128), node.attrs.get("act_max", 127)
    ref = np.clip(pre, s * (lo - z), s * (hi - z))
    err = np.max(np.abs(ref - y_ours)) if ref.size else 0.0
    assert err <= 1.5 * s + 1e-9, (f"torch replay of n{node.id} {node.op} '{node.name}' is {err / s:.2f} "
                                   f"output steps away from the int8 result (interpreter layout bug?)")
    if mask is not None:
        off = mask == 0
        assert np.all((yq[off] == lo) | (yq[off] == hi)), f"n{node.id} {node.op}: masked-out value inside the range"


def replay(graph, xq, label, env=None, masks=None, check=True):
    """Replay the forward of `graph` (an int8 IR or a training graph) in torch.

    xq: the int8 input in the IR layout, [N, ...]; label: int or [N] ints.
    env/masks: tinytrain's int8 forward values and clamp masks; computed with
    the op kernels (run_int8) when not given.  -> Replay (gradients summed over
    the batch)."""
    nodes = forward_nodes(graph)
    if env is None or masks is None:
        env, masks = run_int8(graph, xq, nodes)
    xq = np.asarray(xq)
    label = torch.as_tensor(np.atleast_1d(np.asarray(label)).astype(np.int64))
    inp = graph.inputs[0]
    vals = {}
    leaves = {}
    x0 = torch.tensor(dequant(graph.t(inp), xq), dtype=DT, requires_grad=True)
    vals[inp] = x0
    for n in nodes:
        for i in n.inputs:
            t = graph.t(i)
            if i not in vals and t.kind == "const":
                leaves[i] = torch.tensor(dequant(t, t.data), dtype=DT, requires_grad=True)
                vals[i] = leaves[i]
    for n in nodes:
        op = get_op(n.op)
        pre = float_op(n, graph, [vals[i] for i in n.inputs])
        y = n.outputs[0]
        yq = env[y]
        y_ours = dequant(graph.t(y), yq)
        assert tuple(pre.shape) == y_ours.shape, (n.op, tuple(pre.shape), y_ours.shape)
        m = None
        # autodiff's rule: every clamp gates its gradient, except the logits' own saturation
        if op.uses_mask and not (y == graph.outputs[0] and n.attrs.get("act") is None):
            m = np.asarray(masks[n.id]).reshape(y_ours.shape)
        if check:
            _check_value(n, graph, pre.detach().numpy(), y_ours, m, np.asarray(yq))
        gate = 1.0 if m is None else torch.tensor(m.astype(np.float64), dtype=DT)
        y_used = torch.tensor(y_ours, dtype=DT) + gate * (pre - pre.detach())
        y_used.retain_grad()
        vals[y] = y_used
    logits = vals[graph.outputs[0]]
    z = logits.reshape(logits.shape[0], -1)
    losses = F.cross_entropy(z, label, reduction="none")
    loss = losses.sum()
    loss.backward()
    r = Replay(float(loss.detach()), losses.detach().numpy(), z.detach().numpy(), masks=masks)
    for i, t in leaves.items():
        r.param_grads[i] = t.grad.numpy() if t.grad is not None else np.zeros(tuple(t.shape))
    for i, t in vals.items():
        if i in leaves:
            continue
        r.values[i] = t.detach().numpy()
        r.act_grads[i] = t.grad.numpy() if t.grad is not None else np.zeros(tuple(t.shape))
    return r
