"""The memory planner as it was first written: slow, plain Python, kept as the reference
the fast planner (compiler/passes/plan_memory.py, patch_prefix.best_patching) must match
offset for offset (tests/test_plan_equivalence.py).  It shares only `lifetimes` (which
buffers exist and when they live) and patch_prefix's candidates with the fast planner."""
from tinytrain.compiler.ops import get_op
from tinytrain.compiler.passes.patch_prefix import _macs, cuts, patch_prefix
from tinytrain.compiler.passes.plan_memory import Plan, lifetimes


def place(bufs, order):
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
    best = None
    for inp in ((True, False) if in_place else (False,)):
        for name, key in (("greedy-by-size", lambda b: (-b.size, b.start)),
                          ("first-fit-by-lifetime", lambda b: (b.start, -b.size))):
            bufs = lifetimes(graph, inp)
            size = place(bufs, sorted(bufs, key=key))
            if best is None or size < best.arena_size:
                best = Plan(bufs, size, name + (", in place" if inp else ""))
    for b in best.buffers:
        for t in b.tensors:
            best.offsets[t] = b.offset
    return best


def best_patching(graph, plan_fn, budget=None, grids=(2, 3, 4), max_extra=0.25):
    """Plans every candidate, then chooses."""
    base = (graph, plan_fn(graph), None)
    if budget is not None and base[1].arena_size <= budget:
        return base
    fwd = set(graph.meta.get("training", {}).get("forward", [n.id for n in graph.nodes]))
    total = _macs(graph, [n for n in graph.nodes if n.id in fwd]) or 1
    found = []
    strided = False
    for pos, _ in cuts(graph):
        strided = strided or any(get_op(m.op).windowed and tuple(m.attrs.get("stride", (1, 1))) != (1, 1)
                                 for m in graph.nodes[:pos + 1])
        if not strided:
            continue
        for grid in grids:
            g2, info = patch_prefix(graph, pos, grid)
            if info.patched_macs - info.macs > max_extra * total:
                continue
            found.append((g2, plan_fn(g2), info))
    if not found:
        return base
    fits = [c for c in found if budget is not None and c[1].arena_size <= budget]
    if fits:
        return min(fits, key=lambda c: (c[2].patched_macs - c[2].macs, c[1].arena_size))
    best = min(found, key=lambda c: (c[1].arena_size, c[2].patched_macs))
    return best if best[1].arena_size < base[1].arena_size else base
