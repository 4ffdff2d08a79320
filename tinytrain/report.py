"""Reports: what a model is made of (inspect), and how far int8 is from float
(accuracy against onnxruntime, per-layer dequantized error)."""
import numpy as np
import onnx

from .compiler.frontend.onnx_import import FOLDABLE
from .compiler.frontend.onnx_ops import CONVERTERS
from .compiler.ops import get_op
from .compiler.reference import run_float
from .sim.simulator import Simulator


def onnx_op_support(path):
    """[(op_type, count, supported)] for every op type in the file."""
    m = onnx.load(str(path), load_external_data=False)
    counts = {}
    for n in m.graph.node:
        key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        counts[key] = counts.get(key, 0) + 1
    known = set(CONVERTERS) | FOLDABLE | {"Constant", "Shape"}
    return [(op, c, op in known) for op, c in sorted(counts.items())]


def conv_geometry(graph, node):
    """A convolution's (or pool's) kernel, stride, groups and whether it is depthwise (one
    filter per input channel): {"kernel": [kh, kw], "stride": [..], "groups": g,
    "depthwise": bool}; {} for other ops.  Weights are stored OHWI (O, kh, kw, I/groups)."""
    if "stride" not in node.attrs:
        return {}
    out = {"stride": list(node.attrs["stride"])}
    if "kernel" in node.attrs:
        out["kernel"] = list(node.attrs["kernel"])
    elif len(node.inputs) > 1 and graph.t(node.inputs[1]).kind == "const":
        out["kernel"] = list(graph.t(node.inputs[1]).shape[1:-1])
    if "groups" in node.attrs:
        groups = int(node.attrs["groups"])
        cin = graph.t(node.inputs[0]).shape[-1]
        out["groups"] = groups
        out["depthwise"] = groups > 1 and groups == cin
    return out


def layer_table(graph):
    rows = []
    for n in graph.nodes:
        op = get_op(n.op)
        y = graph.t(n.outputs[0])
        rows.append({"node": n.name, "op": n.op, "output": list(y.shape), "params": op.params(n, graph),
                     "macs": op.macs(n, graph), "act": n.attrs.get("act"), **conv_geometry(graph, n)})
    return rows


def format_table(headers, rows):
    cols = [[str(h)] + [str(r[i]) for r in rows] for i, h in enumerate(headers)]
    widths = [max(len(c) for c in col) for col in cols]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def run_onnxruntime(path, x):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    dim0 = sess.get_inputs()[0].shape[0]
    if isinstance(dim0, int):
        return np.concatenate([sess.run(None, {name: x[i:i + dim0]})[0] for i in range(0, len(x), dim0)])
    return np.concatenate([sess.run(None, {name: x[i:i + 256]})[0] for i in range(0, len(x), 256)])


def accuracy(onnx_path, gq, x, y):
    f = run_onnxruntime(onnx_path, x).reshape(len(x), -1)
    q = Simulator(gq).run(x).reshape(len(x), -1)
    pf, pq = f.argmax(1), q.argmax(1)
    return {"samples": int(len(x)), "float_top1": float(np.mean(pf == y)), "int8_top1": float(np.mean(pq == y)),
            "top1_agreement": float(np.mean(pf == pq))}


def layer_errors(gf, gq, x):
    """Per layer: the int8 output dequantized vs the float graph's output."""
    _, envf = run_float(gf, x, keep=True)
    sim = Simulator(gq)
    _, envq = sim.run_int8(sim.quantize_input(x), keep=True)
    rows = []
    for n in gq.nodes:
        o = n.outputs[0]
        f = envf[o].astype(np.float64)
        q = gq.t(o).q.dequantize(envq[o]).astype(np.float64)
        err = q - f
        sig = float(np.sqrt(np.mean(f * f)))
        noise = float(np.sqrt(np.mean(err * err)))
        rows.append({"node": n.name, "op": n.op, "scale": float(gq.t(o).q.scale),
                     "zero_point": int(gq.t(o).q.zero_point), "rms_error": noise,
                     "max_abs_error": float(np.max(np.abs(err))),
                     "sqnr_db": float(10 * np.log10(sig * sig / max(noise * noise, 1e-30))) if sig > 0 else None})
    return rows
