"""Reading an ONNX file safely: every user mistake becomes a TinytrainError.

Checks, in order: the file exists and parses (truncated or corrupt protobuf),
the opset, external data (missing, outside the model's folder, too short),
initializers whose declared shape does not match their data (no huge
allocation from a lying header), names that nothing produces (dangling
inputs), cycles, and non-finite weights.
"""
import heapq
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import TinytrainError

OPSET_MIN, OPSET_MAX = 11, 21
OPSET_UPGRADE_MIN, OPSET_UPGRADE_TO = 7, 13     # older opsets go through onnx's version converter
MAX_ELEMENTS = 1 << 26          # no single tensor above 64 M elements (256 MB of float32)
MAX_FILE_BYTES = 2 << 30


def _itemsize(data_type):
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except Exception:
        return None


def _file_size(p):
    """Size of a regular file, or None (missing, a folder, a FIFO, or a path
    the OS refuses: too long, NUL byte, no permission)."""
    try:
        return p.stat().st_size if p.is_file() else None
    except (OSError, ValueError):
        return None


def node_label(n):
    """How errors name a node: its name, else its first output (as the importer does)."""
    return n.name or next((o for o in n.output if o), "")


def read_model(path):
    path = Path(path)
    size = _file_size(path)
    if size is None:
        raise TinytrainError("no such file", file=path)
    if size > MAX_FILE_BYTES:
        raise TinytrainError(f"file is {size} bytes, more than tinytrain reads", file=path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise TinytrainError(f"not a readable ONNX model (truncated or corrupt?): {type(e).__name__}: {e}",
                             file=path) from None
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise TinytrainError("the model has no graph nodes (empty, truncated or not an ONNX model)", file=path)
    if len(model.graph.output) == 0:
        raise TinytrainError("the model has no graph outputs", file=path)
    for what, values in (("output", model.graph.output), ("input", model.graph.input)):
        seen = set()
        for v in values:
            if v.name in seen:
                raise TinytrainError(f"graph {what} '{v.name}' is listed twice", file=path, field=v.name)
            seen.add(v.name)
    opset = None
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            opset = imp.version
    if opset is None:
        raise TinytrainError("the model declares no ai.onnx opset", file=path)
    if OPSET_UPGRADE_MIN <= opset < OPSET_MIN:
        model, opset = _upgrade(model, opset, path)
    if not OPSET_MIN <= opset <= OPSET_MAX:
        raise TinytrainError(f"opset {opset} is not supported (tinytrain reads opsets {OPSET_MIN} to {OPSET_MAX}, "
                             f"and {OPSET_UPGRADE_MIN} to {OPSET_MIN - 1} through onnx's version converter; "
                             "re-export with opset_version in that range)", file=path, field="opset_import")
    return model, opset


def _upgrade(model, opset, path):
    """An opset 7-10 model -> opset OPSET_UPGRADE_TO through onnx's version
    converter (with a notice on stderr); one line if the converter fails."""
    import sys
    from onnx import version_converter
    try:
        up = version_converter.convert_version(model, OPSET_UPGRADE_TO)
    except Exception as e:
        msg = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        raise TinytrainError(f"opset {opset} is not supported and onnx's version converter cannot upgrade it "
                             f"to {OPSET_UPGRADE_TO} ({msg}); re-export with opset_version {OPSET_MIN} to {OPSET_MAX}",
                             file=path, field="opset_import") from None
    print(f"tinytrain: notice: {path}: opset {opset} model upgraded to {OPSET_UPGRADE_TO} by onnx's version converter",
          file=sys.stderr)
    return up, OPSET_UPGRADE_TO


def _external_bytes(t, base, path):
    info = {e.key: e.value for e in t.external_data}
    loc = info.get("location")
    if not loc:
        raise TinytrainError(f"initializer '{t.name}' is external but names no location", file=path)
    try:
        base = base.resolve()
        target = (base / loc).resolve()
    except (OSError, ValueError, RuntimeError) as e:   # NUL byte, name too long, symlink loop
        raise TinytrainError(f"external data location '{loc}' of initializer '{t.name}' is not a usable path: {e}",
                             file=path) from None
    if os.path.isabs(loc) or not target.is_relative_to(base):
        raise TinytrainError(f"external data '{loc}' of initializer '{t.name}' points outside the model's folder",
                             file=path)
    size = _file_size(target)
    if size is None:
        raise TinytrainError(f"external data file '{loc}' of initializer '{t.name}' is missing", file=path)
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else size - offset
    except ValueError:
        raise TinytrainError(f"external data of '{t.name}' has a bad offset/length", file=path) from None
    if offset < 0 or length < 0 or offset + length > size:
        raise TinytrainError(f"external data '{loc}' is shorter than initializer '{t.name}' needs "
                             f"(offset {offset} + length {length} > {size} bytes)", file=path)
    try:
        with open(target, "rb") as f:
            f.seek(offset)
            raw = f.read(length)
    except OSError as e:
        raise TinytrainError(f"external data '{loc}' of initializer '{t.name}' cannot be read: {e}",
                             file=path) from None
    if len(raw) != length:      # the file shrank under us
        raise TinytrainError(f"external data '{loc}' is shorter than initializer '{t.name}' needs", file=path)
    return raw


def _count(dims):
    """Elements of a shape, exactly, but it stops multiplying once past
    MAX_ELEMENTS (a float product overflows; a Python-int one can grow huge)."""
    if 0 in dims:
        return 0
    n = 1
    for d in dims:
        n *= d
        if n > MAX_ELEMENTS:
            break
    return n


def tensor_to_array(t, path, base=None, what="initializer"):
    """A TensorProto -> numpy array, refusing lies about its size."""
    dims = [int(d) for d in t.dims]
    if any(d < 0 for d in dims):
        raise TinytrainError(f"{what} '{t.name}' has negative dims {dims}", file=path)
    n = _count(dims)
    if n > MAX_ELEMENTS:
        shown = dims if len(dims) <= 8 else dims[:8] + ["..."]
        raise TinytrainError(f"{what} '{t.name}' declares shape {shown}, more than {MAX_ELEMENTS} elements: "
                             "too large for a device model", file=path)
    itemsize = _itemsize(t.data_type)
    if itemsize is None or t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        raise TinytrainError(f"{what} '{t.name}' has unsupported data type {t.data_type}", file=path)
    if t.data_location == onnx.TensorProto.EXTERNAL:
        raw = _external_bytes(t, base if base is not None else Path(path).parent, path)
        t = onnx.TensorProto.FromString(t.SerializeToString())
        t.ClearField("external_data")
        t.data_location = onnx.TensorProto.DEFAULT
        t.raw_data = raw
    if t.HasField("raw_data"):
        if len(t.raw_data) != n * itemsize:
            raise TinytrainError(f"{what} '{t.name}' declares shape {dims} ({n * itemsize} bytes) "
                                 f"but holds {len(t.raw_data)} bytes", file=path)
    else:
        held = max(len(t.float_data), len(t.int32_data), len(t.int64_data), len(t.double_data),
                   len(t.uint64_data))
        if held != n:
            raise TinytrainError(f"{what} '{t.name}' declares shape {dims} ({n} values) but holds {held}",
                                 file=path)
    try:
        return np.array(numpy_helper.to_array(t))
    except Exception as e:
        raise TinytrainError(f"{what} '{t.name}' cannot be read: {e}", file=path) from None


def topo_sort(model, path, known):
    """Nodes in an order where every input is known before use.

    `known` holds the names of graph inputs and initializers.  Names nobody
    produces are dangling inputs; nodes left over once nothing more can run
    form a cycle."""
    nodes = list(model.graph.node)
    producers = {}              # value name -> index of the node producing it
    for k, n in enumerate(nodes):
        for o in n.output:
            if o:
                if o in producers or o in known:
                    raise TinytrainError(f"output '{o}' is produced twice", file=path, node=node_label(n),
                                         op=n.op_type)
                producers[o] = k
    for n in nodes:
        for i in n.input:
            if i and i not in known and i not in producers:
                raise TinytrainError(f"input '{i}' is not produced by any node, initializer or graph input "
                                     "(dangling input)", file=path, node=node_label(n), op=n.op_type)
    # Kahn's algorithm, always taking the ready node that comes first in the
    # file (so a sorted file keeps its order); linear-ish even when the file
    # lists a long chain backwards.
    consumers = [[] for _ in nodes]
    waiting = [0] * len(nodes)          # inputs not yet available, per node
    for k, n in enumerate(nodes):
        for i in set(n.input):
            if i and i not in known:
                consumers[producers[i]].append(k)
                waiting[k] += 1
    ready = [k for k, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    avail, done, order = set(known), [False] * len(nodes), []
    while ready:
        k = heapq.heappop(ready)
        done[k] = True
        order.append(nodes[k])
        avail.update(o for o in nodes[k].output if o)
        for c in consumers[k]:
            waiting[c] -= 1
            if waiting[c] == 0:
                heapq.heappush(ready, c)
    if len(order) != len(nodes):
        # Walk back from a stuck node through inputs that never became
        # available: each is made by another stuck node (dangling names were
        # refused above), so the walk must come back to a node it has seen.
        k, seen = done.index(False), {}
        while k not in seen:
            seen[k] = len(seen)
            k = producers[next(i for i in nodes[k].input if i and i not in avail)]
        cycle = list(seen)[seen[k]:][::-1]      # in data-flow order
        names = " -> ".join(node_label(nodes[j]) for j in cycle + cycle[:1])
        raise TinytrainError(f"the graph has a cycle: {names}", file=path, node=node_label(nodes[cycle[0]]),
                             op=nodes[cycle[0]].op_type)
    for o in model.graph.output:
        if o.name not in avail:
            raise TinytrainError(f"graph output '{o.name}' is never produced", file=path)
    return order
