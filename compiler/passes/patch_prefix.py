"""patch_prefix: run the frozen, high-resolution start of the network patch by
patch (MCUNetV2's patch-based inference), inside a training graph.

With a sparse update the first stages are frozen and only run forward, yet
their activations set the peak (MobileNetV2-w0.35 at 128x128: a 64x64x48
int8 tensor, 192 KB).  If a forward prefix ends in a single tensor T that is
all the rest of the graph reads (a *cut*), T can be computed in a grid of
g x g spatial tiles: for each tile, every prefix tensor is computed only over
the region that tile needs (the receptive field, walked back through strides,
kernels and pads), then the tile is pasted into T.  Tiles overlap by their
halos, so some work is done twice (reported as extra MACs); the prefix's
memory falls to one tile's working set plus T: each tile quantizes its own
crop of the caller's float input, so the whole int8 input never exists.

Every output element is computed from exactly the same integers as in the
unpatched graph (a conv on a cropped input, with the padding kept only where
the crop touches the tensor's border), so the result is bit for bit the same:
tests/test_lowmem.py checks it in the simulator and in C.

Supported prefix ops: those that declare `windowed` (conv2d of any groups,
avg_pool, max_pool: their `window` gives the receptive field) or `pointwise`
(clamp, the table activations, add) with inputs of the output's shape
(compiler/ops/base.py).
A prefix may contain no node that keeps a clamp mask or whose outputs the
backward reads (it is frozen and forward-only by construction).
"""
from dataclasses import dataclass

from ..ir import Node
from ..ops import get_op
from ..ops.lowmem import Crop, Paste


@dataclass
class PatchInfo:
    split: int              # the tensor id of T (the cut)
    grid: int
    prefix_nodes: int
    macs: int               # prefix MACs unpatched
    patched_macs: int       # with the halos recomputed


def _windowed(node):
    return get_op(node.op).windowed


def _window(node, graph):
    return get_op(node.op).window(node, graph)


def _need(node, graph, k, box):
    """The region of input k that output region box = (y0, y1, x0, x1) reads, clipped."""
    x = graph.t(node.inputs[k]).shape
    y0, y1, x0, x1 = box
    if not _windowed(node):
        return box
    (kh, kw), (sh, sw), (pt, pl, _, _), (dh, dw) = _window(node, graph)
    return (max(0, y0 * sh - pt), min(x[1], (y1 - 1) * sh - pt + (kh - 1) * dh + 1),
            max(0, x0 * sw - pl), min(x[2], (x1 - 1) * sw - pl + (kw - 1) * dw + 1))


def _union(a, b):
    if a is None:
        return b
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def cuts(graph):
    """Forward prefixes that can be patched: [(index of the last prefix node in graph.nodes, T)]."""
    tr = graph.meta.get("training", {})
    forward = set(tr.get("forward", [n.id for n in graph.nodes]))
    x = graph.inputs[0]
    readers = {}
    for pos, n in enumerate(graph.nodes):
        for i in n.inputs:
            readers.setdefault(i, []).append(pos)
    out = []
    produced = {x}
    for pos, n in enumerate(graph.nodes):
        if n.id not in forward or n.attrs.get("keep_mask") or len(n.outputs) != 1:
            break
        op = get_op(n.op)
        if not (op.windowed or op.pointwise):
            break
        y = graph.t(n.outputs[0])
        if op.pointwise and any(graph.t(i).shape != y.shape for i in n.inputs):
            break
        if len(y.shape) != 4 or y.dtype != "int8":
            break
        produced.add(y.id)
        # a cut: every tensor made so far, except y, is read only inside the prefix
        escaping = [t for t in produced if t != y.id and (max(readers.get(t, [0])) > pos or t in graph.outputs)]
        if not escaping and y.id not in graph.outputs:
            out.append((pos, y.id))
    return out


def _macs(graph, nodes):
    total = 0
    for n in nodes:
        m = getattr(get_op(n.op), "macs", None)
        try:
            total += int(m(n, graph)) if m else 0
        except NotImplementedError:
            pass
    return total


def patch_prefix(graph, pos, grid):
    """Rewrite graph.nodes[:pos + 1] (a cut, see `cuts`) into grid x grid tiles. -> (graph, PatchInfo)"""
    g = graph.copy()
    prefix = g.nodes[:pos + 1]
    rest = g.nodes[pos + 1:]
    T = prefix[-1].outputs[0]
    tshape = g.t(T).shape
    H, W = tshape[1], tshape[2]
    ys = [H * i // grid for i in range(grid + 1)]
    xs = [W * i // grid for i in range(grid + 1)]
    new_nodes = []
    prev_full = None
    x_in = g.inputs[0]

    def node(op, ins, outs, attrs, name):
        n = Node(g._next_node, op, tuple(ins), tuple(outs), attrs, name)
        g._next_node += 1
        new_nodes.append(n)
        return n

    def crop(src, src_box, want, tag):
        if want == src_box:
            return src
        t = g.t(src)
        shape = (t.shape[0], want[1] - want[0], want[3] - want[2], t.shape[3])
        c = g.add_tensor(f"{t.name}@{tag}", shape, t.dtype, q=t.q)
        c.role = "tile"
        node(Crop.name, [src], [c.id], {"origin": (want[0] - src_box[0], want[2] - src_box[2]), "shape": shape},
             "patch")
        return c.id

    tiles = [(i, j) for i in range(grid) for j in range(grid) if ys[i] < ys[i + 1] and xs[j] < xs[j + 1]]
    for ti, (i, j) in enumerate(tiles):
        tag = f"p{ti}"
        need = {T: (ys[i], ys[i + 1], xs[j], xs[j + 1])}
        for n in reversed(prefix):
            box = need.get(n.outputs[0])
            if box is None:
                continue
            for k, inp in enumerate(n.inputs):
                if g.t(inp).kind != "const":
                    need[inp] = _union(need.get(inp), _need(n, g, k, box))
        full_x = g.t(x_in).shape
        local = {x_in: (x_in, (0, full_x[1], 0, full_x[2]))}
        for n in prefix:
            box = need.get(n.outputs[0])
            if box is None:
                continue
            ins = []
            for k, inp in enumerate(n.inputs):
                if g.t(inp).kind == "const":
                    ins.append(inp)
                    continue
                src, src_box = local[inp]
                ins.append(crop(src, src_box, _need(n, g, k, box), tag))
            y = g.t(n.outputs[0])
            shape = (y.shape[0], box[1] - box[0], box[3] - box[2], y.shape[3])
            yt = g.add_tensor(f"{y.name}@{tag}", shape, y.dtype, q=y.q)
            yt.role = "tile"                 # a prefix layer's output over one tile (memreport counts these)
            attrs = dict(n.attrs)
            if _windowed(n):
                (kh, kw), (sh, sw), (pt, pl, _, _), (dh, dw) = _window(n, g)
                ib = _need(n, g, 0, box)
                pt2, pl2 = pt - box[0] * sh + ib[0], pl - box[2] * sw + ib[2]
                pb2 = (shape[1] - 1) * sh + (kh - 1) * dh + 1 - (ib[1] - ib[0]) - pt2
                pr2 = (shape[2] - 1) * sw + (kw - 1) * dw + 1 - (ib[3] - ib[2]) - pl2
                assert min(pt2, pl2, pb2, pr2) >= 0, (n.name, pt2, pl2, pb2, pr2)
                attrs["pads"] = (pt2, pl2, pb2, pr2)
            node(n.op, ins, [yt.id], attrs, n.name)
            local[n.outputs[0]] = (yt.id, box)
        src, box = local[T]
        full = T if ti == len(tiles) - 1 else g.add_tensor(f"{g.t(T).name}@{tag}", tshape, "int8", q=g.t(T).q).id
        node(Paste.name, [src] + ([prev_full] if prev_full is not None else []), [full],
             {"origin": (box[0], box[2]), "shape": tshape}, "patch")
        prev_full = full
    old_ids = {n.id for n in prefix}
    info = PatchInfo(T, grid, len(prefix), _macs(graph, prefix), _macs(g, new_nodes))
    g.nodes = new_nodes + rest
    tr = g.meta.get("training")
    if tr is not None:
        tr["forward"] = [n.id for n in new_nodes] + [i for i in tr["forward"] if i not in old_ids]
    # every tile quantizes its own crop of the input: the C reads the caller's float input tile by
    # tile and the whole int8 input never needs a place in the arena
    g.meta["input_external"] = all(n.op == Crop.name for n in g.nodes if x_in in n.inputs)
    g.meta["patch"] = {"split": g.t(T).name, "grid": grid, "prefix_nodes": info.prefix_nodes,
                       "macs": info.macs, "patched_macs": info.patched_macs}
    g.remove_unused()
    return g, info


def best_patching(graph, plan_fn, budget=None, grids=(2, 3, 4), max_extra=0.25, bound_fn=None, min_peak=False):
    """Choose a patching of the graph's frozen prefix (or none).

    Candidates: every cut after the first strided layer x grids, whose recomputed
    MACs stay within max_extra of the forward's MACs.  With a byte budget for the
    arena: the candidate with the fewest extra MACs that fits (none at all if the
    unpatched plan fits); without one, or if nothing fits: the smallest arena.
    bound_fn(g), if given, is a lower bound of plan_fn(g).arena_size: a candidate it
    shows cannot win is not planned (the choice is the same as planning them all).
    -> (graph, plan, PatchInfo or None); with min_peak=True, a fourth item: the smallest-arena
    (graph, plan, PatchInfo or None) of the same search (the choice itself when no budget is given)."""
    base = (graph, plan_fn(graph), None)
    if budget is not None and base[1].arena_size <= budget and not min_peak:
        return base
    fwd = set(graph.meta.get("training", {}).get("forward", [n.id for n in graph.nodes]))
    total = _macs(graph, [n for n in graph.nodes if n.id in fwd]) or 1
    found = []
    strided = False
    for pos, _ in cuts(graph):
        strided = strided or any(_windowed(m) and tuple(m.attrs.get("stride", (1, 1))) != (1, 1)
                                 for m in graph.nodes[:pos + 1])
        if not strided:
            continue
        for grid in grids:
            g2, info = patch_prefix(graph, pos, grid)
            extra = info.patched_macs - info.macs
            if extra > max_extra * total:
                continue
            found.append((g2, info))
    if not found:
        return base + ((base,) if min_peak else ())
    plans, bounds = {}, {}

    def plan(i):
        if i not in plans:
            plans[i] = plan_fn(found[i][0])
        return plans[i]

    def bound(i):
        if i in plans:
            return plans[i].arena_size
        if i not in bounds:
            bounds[i] = bound_fn(found[i][0]) if bound_fn is not None else 0
        return bounds[i]

    def extra(i):
        return found[i][1].patched_macs - found[i][1].macs

    def smallest():
        # the smallest arena (ties: the fewer patched MACs, then the earlier candidate), if smaller than
        # unpatched; candidates in the order of their bounds: once one exceeds the best arena, none after can win
        key = lambda i: (plan(i).arena_size, found[i][1].patched_macs, i)
        best = None
        for i in sorted(range(len(found)), key=lambda i: (bound(i), i)):
            if bound(i) >= base[1].arena_size or (best is not None and bound(i) > plan(best).arena_size):
                break
            if best is None or key(i) < key(best):
                best = i
        if best is None or plan(best).arena_size >= base[1].arena_size:
            return base
        return (found[best][0], plan(best), found[best][1])
    chosen = None
    if budget is not None and base[1].arena_size <= budget:
        chosen = base
    elif budget is not None:
        # the fewest extra MACs that fit (ties: the smaller arena, then the earlier candidate)
        win = None
        for i in sorted(range(len(found)), key=extra):
            if win is not None and extra(i) > extra(win):
                break
            if bound(i) > budget:
                continue
            if plan(i).arena_size <= budget and (win is None or plan(i).arena_size < plan(win).arena_size):
                win = i
        if win is not None:
            chosen = (found[win][0], plan(win), found[win][1])
    low = smallest() if chosen is None or min_peak else None
    chosen = chosen or low
    return chosen + ((low,) if min_peak else ())
