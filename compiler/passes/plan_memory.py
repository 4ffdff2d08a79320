"""plan_memory: a static arena for every tensor of a (training) graph.

Buffers:
  * activations, clamp masks (packed bits), gradients, the input, the label
    and the loss live in one arena; each gets an offset from its lifetime
    (first write .. last read, in schedule order)
  * reshapes alias their input (no copy); a paste (patch-based prefix) writes
    into the tensor its earlier tiles built; an in-place depthwise conv's
    output takes its input's bytes; with in_place, an elementwise
    backward op (mask_grad, grad_add, lut_grad) writes over an input that
    dies at that step
  * frozen weights stay in flash (const); trainable parameters (and their
    int16 shadows) live in the caller's state blob, not in the arena

Two placements are tried, greedy by size (TFLM) and first fit in order of
first use; the smaller wins.  `verify_plan` independently checks that no two
buffers that are live at the same step overlap, and it always runs.
"""
import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import TinytrainError
from ..layout import ALIGN             # the arena's and the state blob's alignment (one owner)
from ..layout import sram_total, state_bytes   # noqa: F401  (state_bytes: the blob's owner, re-exported)
from ..ops import get_op
from ..ops.update import SgdUpdate
# which ops share bytes is declared on the ops (compiler/ops/base.py): view_of (a view of an
# input, no copy), overwrites_input (always writes over its dying input 0), in_place (elementwise,
# reads element i before writing element i: the output may take the bytes of a same-sized,
# same-typed input that dies at this step)


def nbytes(t):
    if t.role == "mask":                  # a 1-bit clamp mask (passes/autodiff.py), packed bits
        return (t.size + 7) // 8
    return t.size * np.dtype(t.dtype).itemsize


@dataclass
class Buffer:
    tensors: list
    size: int
    start: int
    end: int
    offset: int = -1


@dataclass
class Plan:
    buffers: list
    arena_size: int
    algorithm: str
    offsets: dict = field(default_factory=dict)      # tensor id -> arena offset
    peak_step: int = 0


def _align(n):
    return (n + ALIGN - 1) // ALIGN * ALIGN


def lifetimes(graph, in_place=True):
    """-> list of Buffers (tensors that share storage grouped), schedule = node order."""
    first, last = {}, {}
    # "input_external": the input is read tile by tile from the caller's buffer (a patched prefix)
    external = {graph.inputs[0]} if graph.meta.get("input_external") else set()
    for tid in graph.inputs:
        if tid not in external:
            first[tid] = 0
    for step, n in enumerate(graph.nodes):
        for i in n.inputs:
            if graph.t(i).kind != "const" and i not in external:
                last[i] = step
        for o in n.outputs:
            first.setdefault(o, step)
            last.setdefault(o, step)
    end = len(graph.nodes)
    for o in graph.outputs:
        last[o] = end
    for tid in graph.inputs:
        if tid not in external:
            last.setdefault(tid, 0)
    group = {}                                  # tensor -> representative
    def root(t):
        r = t
        while group.get(r, r) != r:
            r = group[r]
        while t != r:                           # path compression: the same roots, found sooner
            group[t], t = r, group[t]
        return r
    for step, n in enumerate(graph.nodes):
        op = get_op(n.op)
        view = op.view_of(n)
        if view is not None:                             # reshape; a tile pasted into the tensor built so far
            group[n.outputs[0]] = root(n.inputs[view])
        elif op.overwrites_input:
            # writes its output over its (dying) input
            group[n.outputs[0]] = root(n.inputs[0])
        elif in_place and op.in_place:
            y = graph.t(n.outputs[0])
            for i in n.inputs:
                t = graph.t(i)
                if t.kind != "const" and t.dtype == y.dtype and t.shape == y.shape and last.get(i) == step \
                        and i not in graph.outputs and i not in graph.inputs:
                    group[n.outputs[0]] = root(i)
                    break
    members = {}
    for tid in first:
        members.setdefault(root(tid), []).append(tid)
    bufs = []
    for r, ts in members.items():
        bufs.append(Buffer(sorted(ts), max(_align(nbytes(graph.t(t))) for t in ts),
                           min(first[t] for t in ts), max(last[t] for t in ts)))
    return bufs


def _place(bufs, order):
    """First fit: each buffer, in `order`, at the lowest offset where its bytes meet no
    placed buffer whose lifetime meets its own (the lowest such offset is 0 or the end of
    one of those buffers: all of them are tried at once)."""
    n = len(order)
    start, end = np.empty(n, np.int64), np.empty(n, np.int64)
    lo, hi = np.empty(n, np.int64), np.empty(n, np.int64)
    for k, b in enumerate(order):
        live = np.flatnonzero(~((end[:k] < b.start) | (b.end < start[:k])))
        plo, phi = lo[live], hi[live]
        cand = np.concatenate((np.zeros(1, np.int64), phi))[:, None]
        free = ((cand + b.size <= plo) | (cand >= phi)).all(axis=1)
        b.offset = int(cand[free, 0].min())
        start[k], end[k], lo[k], hi[k] = b.start, b.end, b.offset, b.offset + b.size
    return max((b.offset + b.size for b in bufs), default=0)


def plan_memory(graph, in_place=True):
    """The smaller of the two placements (with in_place, of the two with and
    without in-place buffers too: a heuristic placement can do worse with them)."""
    best = None
    for inp in ((True, False) if in_place else (False,)):
        groups = lifetimes(graph, inp)
        for name, key in (("greedy-by-size", lambda b: (-b.size, b.start)),
                          ("first-fit-by-lifetime", lambda b: (b.start, -b.size))):
            bufs = [Buffer(b.tensors, b.size, b.start, b.end) for b in groups]
            size = _place(bufs, sorted(bufs, key=key))
            if best is None or size < best.arena_size:
                best = Plan(bufs, size, name + (", in place" if inp else ""))
    for b in best.buffers:
        for t in b.tensors:
            best.offsets[t] = b.offset
    best.peak_step = peak_step(best)
    verify_plan(graph, best)
    return best


def lower_bound(graph, in_place=True):
    """Bytes no plan of this graph can go below: the most bytes live at one step (of the
    buffers with and without in-place sharing when in_place, as plan_memory tries both)."""
    need = []
    for inp in ((True, False) if in_place else (False,)):
        bufs = lifetimes(graph, inp)
        if not bufs:
            return 0
        delta = np.zeros(max(b.end for b in bufs) + 2, np.int64)
        np.add.at(delta, [b.start for b in bufs], [b.size for b in bufs])
        np.add.at(delta, [b.end + 1 for b in bufs], [-b.size for b in bufs])
        need.append(int(np.cumsum(delta).max()))
    return min(need)


def peak_step(plan):
    steps = max((b.end for b in plan.buffers), default=0) + 1
    use = [0] * steps
    for b in plan.buffers:
        for s in range(b.start, b.end + 1):
            use[s] += b.size
    return int(np.argmax(use)) if use else 0


def live_at(plan, step):
    return [b for b in plan.buffers if b.start <= step <= b.end]


def verify_plan(graph, plan):
    """Independent check: every tensor placed, aligned, inside the arena, and no two
    buffers whose lifetimes meet share a byte."""
    used = {i for n in graph.nodes for i in (*n.inputs, *n.outputs)}
    for tid, t in graph.tensors.items():
        if t.kind != "const" and tid in used \
                and tid not in plan.offsets and not (graph.meta.get("input_external") and tid == graph.inputs[0]):
            raise AssertionError(f"tensor t{tid} has no place in the arena")
    bufs = sorted(plan.buffers, key=lambda b: b.offset)
    for b in bufs:
        if b.offset < 0 or b.offset % ALIGN or b.offset + b.size > plan.arena_size:
            raise AssertionError(f"buffer {b.tensors} at {b.offset} (+{b.size}) is outside the arena")
    for i, a in enumerate(bufs):
        for b in bufs[i + 1:]:
            if b.offset >= a.offset + a.size:
                break
            if not (a.end < b.start or b.end < a.start):
                raise AssertionError(f"buffers {a.tensors} and {b.tensors} overlap in memory and in time")
    return True


def check_budget(graph, plan, budget, what="SRAM", rounding="stochastic", stack=0):
    """Refuse a plan whose SRAM total (compiler/layout.py sram_total) is above `budget` bytes."""
    if budget is None:
        return
    parts = sram_total(plan, graph, rounding, stack)
    if parts["total"] > budget:
        live = sorted(live_at(plan, plan.peak_step), key=lambda b: -b.size)[:5]
        names = ", ".join(f"{graph.t(b.tensors[0]).name} {b.size / 1024:.1f} KB" for b in live)
        raise TinytrainError(f"needs {parts['total'] / 1024:.1f} KB of {what} (arena {plan.arena_size / 1024:.1f} KB + "
                             f"state {parts['state'] / 1024:.1f} KB + context {parts['context']} B"
                             + (f" + stack {parts['stack'] / 1024:.1f} KB" if stack else "")
                             + f"), budget {budget / 1024:.1f} KB; biggest live tensors at the peak: {names}")


def defer_updates(graph):
    """Reordering switched off (for measurements): every update waits for the end of
    the backward pass, so every parameter gradient stays alive until then.  Numerics
    do not change (an update touches only its own parameter, read before it)."""
    updates = [n for n in graph.nodes if n.op == SgdUpdate.name]
    graph.nodes = [n for n in graph.nodes if n.op != SgdUpdate.name] + updates
    return graph
