"""Saving and loading an IR graph as one .npz file (`*.tt.npz`).

The structure (tensors, nodes, attributes, meta) is JSON in the entry
`__graph__`; constant data and array attributes are npz entries.  Loading
re-runs the IR check, and a file from another format version is refused."""
import json
import zipfile
from pathlib import Path

import numpy as np

from .errors import TinytrainError
from .ir import Graph, Node, QParams, Tensor
from .verify import verify

FORMAT = "tinytrain-ir/1"


def _enc(v, arrays, key):
    if isinstance(v, np.ndarray):
        arrays[key] = v
        return {"__array__": key}
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, (list, tuple)):
        return {"__tuple__": [_enc(x, arrays, f"{key}.{i}") for i, x in enumerate(v)]} if isinstance(v, tuple) \
            else [_enc(x, arrays, f"{key}.{i}") for i, x in enumerate(v)]
    if isinstance(v, dict):
        return {k: _enc(x, arrays, f"{key}.{k}") for k, x in v.items()}
    return v


def _dec(v, arrays):
    if isinstance(v, dict):
        if "__array__" in v:
            return arrays[v["__array__"]]
        if "__tuple__" in v:
            return tuple(_dec(x, arrays) for x in v["__tuple__"])
        return {k: _dec(x, arrays) for k, x in v.items()}
    if isinstance(v, list):
        return [_dec(x, arrays) for x in v]
    return v


def _q_enc(q, arrays, key):
    if q is None:
        return None
    arrays[key + ".scale"] = q.scale
    arrays[key + ".zp"] = q.zero_point
    return {"axis": q.axis}


def save(graph, path):
    arrays = {}
    tensors = []
    for t in graph.tensors.values():
        d = {"id": t.id, "name": t.name, "shape": list(t.shape), "dtype": t.dtype, "kind": t.kind,
             "q": _q_enc(t.q, arrays, f"t{t.id}.q")}
        if t.role:
            d["role"] = t.role
        if t.data is not None:
            arrays[f"t{t.id}.data"] = t.data
        tensors.append(d)
    nodes = [{"id": n.id, "op": n.op, "inputs": list(n.inputs), "outputs": list(n.outputs), "name": n.name,
              "attrs": _enc(n.attrs, arrays, f"n{n.id}")} for n in graph.nodes]
    doc = {"format": FORMAT, "name": graph.name, "tensors": tensors, "nodes": nodes, "inputs": graph.inputs,
           "outputs": graph.outputs, "meta": _enc(graph.meta, arrays, "meta"),
           "next": [graph._next_tensor, graph._next_node]}
    arrays["__graph__"] = np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)
    path = Path(path)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def _legacy_role(d):
    """Files saved before tensors had a role: the role the tensor's name implied then."""
    if d["dtype"] == "uint8" and d["name"].endswith(":mask"):
        return "mask"
    if d["kind"] == "act" and "@p" in d["name"]:
        return "tile"
    return ""


def load(path):
    path = Path(path)
    if not path.is_file():
        raise TinytrainError("no such file", file=path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        doc = json.loads(arrays.pop("__graph__").tobytes().decode())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise TinytrainError(f"not a tinytrain model file: {e}", file=path) from None
    if doc.get("format") != FORMAT:
        raise TinytrainError(f"format {doc.get('format')!r}, this tinytrain reads {FORMAT}", file=path)
    g = Graph(doc["name"])
    for d in doc["tensors"]:
        q = None
        if d["q"] is not None:
            q = QParams(arrays[f"t{d['id']}.q.scale"], arrays[f"t{d['id']}.q.zp"], d["q"]["axis"])
        g.tensors[d["id"]] = Tensor(d["id"], d["name"], tuple(d["shape"]), d["dtype"], d["kind"],
                                    arrays.get(f"t{d['id']}.data"), q, d.get("role", _legacy_role(d)))
    g.nodes = [Node(d["id"], d["op"], tuple(d["inputs"]), tuple(d["outputs"]), _dec(d["attrs"], arrays), d["name"])
               for d in doc["nodes"]]
    g.inputs, g.outputs = list(doc["inputs"]), list(doc["outputs"])
    g.meta = _dec(doc["meta"], arrays)
    g._next_tensor, g._next_node = doc["next"]
    try:
        return verify(g, "load")
    except AssertionError as e:
        raise TinytrainError(f"corrupt model file: {e}", file=path) from None
