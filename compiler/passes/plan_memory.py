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
from dataclasses import dataclass, field

import numpy as np

from ..errors import TinytrainError
from ..layout import ALIGN             # the arena's and the state blob's alignment (one owner)
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
        while group.get(t, t) != t:
            t = group[t]
        return t
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
    placed = []
    for b in order:
        live = sorted((p for p in placed if not (p.end < b.start or b.end < p.start)), key=lambda p: p.offset)
        off = 0
        for p in live:
            if off + b.size <= p.offset:
                break
            off = max(off, p.offset + p.size)
        b.offset = off
        placed.append(b)
    return max((b.offset + b.size for b in bufs), default=0)


def plan_memory(graph, in_place=True):
    """The smaller of the two placements (with in_place, of the two with and
    without in-place buffers too: a heuristic placement can do worse with them)."""
    best = None
    for inp in ((True, False) if in_place else (False,)):
        for name, key in (("greedy-by-size", lambda b: (-b.size, b.start)),
                          ("first-fit-by-lifetime", lambda b: (b.start, -b.size))):
            bufs = lifetimes(graph, inp)
            size = _place(bufs, sorted(bufs, key=key))
            if best is None or size < best.arena_size:
                best = Plan(bufs, size, name + (", in place" if inp else ""))
    for b in best.buffers:
        for t in b.tensors:
            best.offsets[t] = b.offset
    best.peak_step = peak_step(best)
    verify_plan(graph, best)
    return best


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
    for tid, t in graph.tensors.items():
        if t.kind != "const" and any(tid in n.inputs or tid in n.outputs for n in graph.nodes) \
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


def state_bytes(graph):
    """Trainable parameters (SRAM, in the caller's state blob) and frozen ones (flash)."""
    trainable = set(graph.meta.get("training", {}).get("trainable", []))
    sram = flash = 0
    for t in graph.tensors.values():
        if t.kind == "const":
            if t.id in trainable:
                sram += _align(t.nbytes)
            else:
                flash += t.nbytes
    return sram, flash


def check_budget(graph, plan, budget, what="SRAM"):
    if budget is None:
        return
    need = plan.arena_size + state_bytes(graph)[0]
    if need > budget:
        live = sorted(live_at(plan, plan.peak_step), key=lambda b: -b.size)[:5]
        names = ", ".join(f"{graph.t(b.tensors[0]).name} {b.size / 1024:.1f} KB" for b in live)
        raise TinytrainError(f"needs {need / 1024:.1f} KB of {what} (arena {plan.arena_size / 1024:.1f} KB + "
                             f"trainable state {state_bytes(graph)[0] / 1024:.1f} KB), budget {budget / 1024:.1f} KB; "
                             f"biggest live tensors at the peak: {names}")


def defer_updates(graph):
    """Reordering switched off (for measurements): every update waits for the end of
    the backward pass, so every parameter gradient stays alive until then.  Numerics
    do not change (an update touches only its own parameter, read before it)."""
    updates = [n for n in graph.nodes if n.op == SgdUpdate.name]
    graph.nodes = [n for n in graph.nodes if n.op != SgdUpdate.name] + updates
    return graph
