"""Reports for `tinytrain compile`: the memory plan (text, JSON, PNG) and the
per-layer table users know from ST's tools (params, MACs, flash, RAM, trained
or frozen, gradient bytes)."""
import json
import math
from pathlib import Path

from .compiler.ops import get_op
from .compiler.passes.plan_memory import live_at, nbytes, state_bytes
from .report import format_table


MAX_SIZE = 1 << 40          # a budget above 1 TiB is a typo


def parse_size(text):
    """'256k', '1m', '262144', '1.5k' -> bytes (k = 1024, m = 1024 * 1024).  The result must
    be a whole, positive number of bytes up to 1 TiB; anything else is a ValueError
    naming the text (inf, nan, 0.5, -1, 10q)."""
    t = str(text).strip().lower()
    mult = 1
    if t.endswith("k"):
        mult, t = 1024, t[:-1]
    elif t.endswith("m"):
        mult, t = 1024 * 1024, t[:-1]
    try:
        v = float(t)
    except ValueError:
        raise ValueError(f"'{text}' is not a size like 256k, 1m or 262144") from None
    if not math.isfinite(v):
        raise ValueError(f"'{text}' is not a finite size (give bytes, e.g. 256k)")
    if v <= 0:
        raise ValueError(f"'{text}' is not a positive size")
    b = v * mult
    if b > MAX_SIZE:
        raise ValueError(f"'{text}' is more than 1 TiB")
    if b != int(b):
        raise ValueError(f"'{text}' is not a whole number of bytes ({b:g})")
    return int(b)


def layer_rows(tg):
    fwd = set(tg.meta["training"]["forward"])
    trainable = set(tg.meta["training"]["trainable"])
    grad_bytes = {}
    for n in tg.nodes:
        if n.op == "sgd_update":
            grad_bytes[n.attrs["param_of"]] = grad_bytes.get(n.attrs["param_of"], 0) + tg.t(n.inputs[1]).nbytes
    rows = []
    tiled = {}                                   # a layer run patch by patch: one row, MACs summed
    for n in tg.nodes:
        if n.id not in fwd or n.op in ("crop", "paste"):
            continue
        op = get_op(n.op)
        if tg.t(n.outputs[0]).role == "tile":
            row = tiled.get(n.name)
            if row is not None:
                row["macs"] += op.macs(n, tg)
                row["tiles"] += 1
                row["activation_bytes"] = max(row["activation_bytes"], nbytes(tg.t(n.outputs[0])))
                continue
        consts = [tg.t(i) for i in n.inputs if tg.t(i).kind == "const"]
        flash = sum(t.nbytes for t in consts if t.id not in trainable)
        ram = sum(t.nbytes for t in consts if t.id in trainable)
        state = "trained" if any(t.id in trainable for t in consts) else ("frozen" if consts else "-")
        rows.append({"layer": n.name, "op": n.op, "output": list(tg.t(n.outputs[0]).shape),
                     "params": sum(t.size for t in consts), "macs": op.macs(n, tg), "flash_bytes": flash,
                     "sram_param_bytes": ram, "activation_bytes": nbytes(tg.t(n.outputs[0])), "state": state,
                     "gradient_bytes": grad_bytes.get(n.id, 0), "tiles": 1})
        if tg.t(n.outputs[0]).role == "tile":
            tiled[n.name] = rows[-1]
    return rows


def memory_summary(tg, plan, facts, stack, budget_sram=None, budget_flash=None):
    from .compiler.layout import STATE_HEADER, sram_total, state_layout
    lay = state_layout(tg, facts.get("rounding", "stochastic"))
    parts = sram_total(plan, tg, facts.get("rounding", "stochastic"), stack)   # the one SRAM total
    if parts["state"] != facts["state"]:
        raise AssertionError(f"state blob {parts['state']} B, the build's {facts['state']} B")
    sram_state = min(lay.shadow.values(), default=lay.size) - STATE_HEADER    # the parameters alone
    flash_w = state_bytes(tg)[1]
    peak = sorted(live_at(plan, plan.peak_step), key=lambda b: -b.size)
    node = tg.nodes[min(plan.peak_step, len(tg.nodes) - 1)]
    ctx_bytes = parts["context"]    # the <name>_ctx struct on a 64-bit host (28 on a 32-bit board)
    total_sram = parts["total"]
    low = tg.meta.get("min_peak")
    # the minimum-peak plan of the same search: only its arena differs (same state, context, stack)
    min_peak = None if low is None else {"sram_total_bytes": total_sram - plan.arena_size + low["arena_bytes"],
                                         "arena_bytes": low["arena_bytes"], "patch": low["patch"]}
    return {
        "optimize": None if low is None else low["optimize"], "min_peak": min_peak,
        "arena_bytes": plan.arena_size, "arena_algorithm": plan.algorithm, "state_bytes": facts["state"],
        "trainable_param_bytes": sram_state, "context_bytes": ctx_bytes, "stack_estimate_bytes": stack,
        "sram_total_bytes": total_sram, "flash_weight_bytes": flash_w,
        "sram_budget_bytes": budget_sram, "flash_budget_bytes": budget_flash,
        "peak_step": plan.peak_step, "peak_node": f"{node.op} {node.name}",
        "live_at_peak": [{"tensor": tg.t(b.tensors[0]).name, "bytes": b.size, "offset": b.offset,
                          "dtype": tg.t(b.tensors[0]).dtype} for b in peak],
    }


def write_reports(out, tg, plan, facts, summary):
    out = Path(out)
    rows = layer_rows(tg)
    t1 = format_table(["layer", "op", "output", "params", "MACs", "flash B", "SRAM params B", "act B", "state",
                       "grad B"],
                      [(r["layer"], r["op"] + (f" x{r['tiles']} tiles" if r["tiles"] > 1 else ""),
                        "x".join(map(str, r["output"])), r["params"], r["macs"], r["flash_bytes"],
                        r["sram_param_bytes"], r["activation_bytes"], r["state"], r["gradient_bytes"]) for r in rows])
    s = summary
    kb = lambda v: f"{v / 1024:.1f} KB"
    trainer = "MeZO (zeroth-order: two forward passes a step, no backward graph)" if tg.meta.get("zo") else "backprop"
    lines = [f"model: {tg.meta.get('source')}  trainer: {trainer}  scheme: {tg.meta['training']['scheme']}  QAS: "
             f"{'on' if tg.meta['training']['qas'] else 'off'}",
             f"SRAM: arena {kb(s['arena_bytes'])} ({s['arena_algorithm']}) + state {kb(s['state_bytes'])} "
             f"+ context {s['context_bytes']} B + stack ~{kb(s['stack_estimate_bytes'])} = "
             f"{kb(s['sram_total_bytes'])}" + (f" of {kb(s['sram_budget_bytes'])}" if s["sram_budget_bytes"] else ""),
             f"flash: frozen weights {kb(s['flash_weight_bytes'])}" +
             (f" of {kb(s['flash_budget_bytes'])}" if s["flash_budget_bytes"] else "") + " (plus code)",
             f"peak at step {s['peak_step']} ({s['peak_node']}); live there:"]
    pt = tg.meta.get("patch")
    if pt:
        lines.insert(3, f"patch-based prefix: {pt['prefix_nodes']} frozen layers run in {pt['grid']}x{pt['grid']} tiles up "
                        f"to {pt['split']}; halos recompute {pt['patched_macs'] - pt['macs']} MACs "
                        f"(+{100 * (pt['patched_macs'] - pt['macs']) / max(1, pt['macs']):.0f}% of that prefix)"
                        + ("; the input is quantized tile by tile from the caller's buffer (no int8 copy)"
                           if tg.meta.get("input_external") else ""))
    low = s.get("min_peak")
    if low and low["sram_total_bytes"] != s["sram_total_bytes"]:
        lines.insert(2, min_peak_line(s, rows, pt))
    k = len({n.name for n in tg.nodes if n.op.endswith("_inplace")})
    if k:
        lines.insert(3, f"in place: {k} depthwise convolutions / input gradients write over their input")
    lines += [f"  {r['tensor']:<50} {r['dtype']:<8} {r['bytes']:>8} B  @ {r['offset']}" for r in s["live_at_peak"][:12]]
    text = "\n".join(lines) + "\n\nper layer:\n" + t1 + f"\n\ntotal: {sum(r['params'] for r in rows)} params, " \
        f"{sum(r['macs'] for r in rows)} forward MACs\n"
    full = text + "\n" + timeline(tg, plan) + "\n"
    (out / "report.txt").write_text(full)
    (out / "report.json").write_text(json.dumps({"summary": s, "layers": rows, "facts": facts}, indent=1))
    _png(out / "memory.png", tg, plan, s)
    return text


def min_peak_line(s, rows, chosen_patch):
    """'minimum-peak plan: X KB (...); chosen: Y KB (...)' when the chosen plan (--optimize speed under
    --sram: fewer recomputed MACs) is not the smallest one the planner found."""
    kb = lambda v: f"{v / 1024:.1f} KB"
    extra = lambda pt: 0 if not pt else pt["patched_macs"] - pt["macs"]
    forward = max(1, sum(r["macs"] for r in rows) - extra(chosen_patch))     # the unpatched forward's MACs

    def how(pt):
        if not pt:
            return "unpatched, +0% MACs"
        return f"patching {pt['grid']}x{pt['grid']} tiles, +{100 * extra(pt) / forward:.1f}% MACs"
    low = s["min_peak"]
    return (f"minimum-peak plan: {kb(low['sram_total_bytes'])} ({how(low['patch'])}); chosen: "
            f"{kb(s['sram_total_bytes'])} ({how(chosen_patch)}; --optimize {s['optimize']}: the fewest recomputed "
            f"MACs that fit the budget; --optimize memory gives the minimum)")


_COLORS = {"int8": (70, 120, 200), "float32": (240, 150, 50), "int32": (80, 170, 90), "uint8": (150, 150, 150)}
_EDGE = (40, 40, 40)


def short_name(name, keep=18):
    """/blocks/blocks.10/conv/conv.1/conv.1.0/Conv -> 'blocks.10/conv.1.0': the path's
    meaningful tail (an ONNX op's own name and a folder repeated by the next part dropped)."""
    parts = [p for p in str(name).split("/") if p]
    if len(parts) > 1 and parts[-1][:1].isupper():
        parts = parts[:-1]
    parts = [p for k, p in enumerate(parts) if not (k + 1 < len(parts) and parts[k + 1].startswith(p))]
    text = "/".join(parts[-2:]) or str(name)
    return text if len(text) <= keep else text[-keep:]


def step_label(tg, node):
    """A schedule step's label: the layer for a forward node, the kind of backward work
    (dX input gradient, dW weight gradient, upd update) and the layer for the rest."""
    fwd = set(tg.meta["training"]["forward"])
    name = short_name(node.name)
    if node.id in fwd:
        return name
    op = node.op
    tag = ("dX" if "grad_input" in op else "dW" if "grad_weight" in op else "db" if "grad_bias" in op
           else "upd" if "update" in op else "loss" if "loss" in op else "d")
    return f"{tag} {name}"


def timeline(tg, plan, width=48):
    """The memory plan as text, one line per schedule step: the arena drawn `width`
    characters wide, each live buffer as its letter over the bytes it holds ('.' free),
    and the bytes live at that step; the peak step is marked; then the buffers' letters."""
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    size = max(1, plan.arena_size)
    order = sorted(plan.buffers, key=lambda b: (b.start, b.offset))
    mark = {id(b): letters[k % len(letters)] for k, b in enumerate(order)}
    fwd = set(tg.meta["training"]["forward"])
    lines = [f"memory timeline: the arena ({size} B) {width} characters wide, a letter per live buffer "
             f"('.' free; letters repeat after 62 buffers); F forward, B backward, * the peak"]
    for step, node in enumerate(tg.nodes):
        row = ["."] * width
        live = [b for b in order if b.start <= step <= b.end]
        for b in live:
            a = b.offset * width // size
            e = max(a + 1, -(-(b.offset + b.size) * width // size))
            for c in range(a, min(e, width)):
                row[c] = mark[id(b)]
        total = sum(b.size for b in live)
        lines.append(f"{step:>4} {'F' if node.id in fwd else 'B'}{'*' if step == plan.peak_step else ' '}"
                     f"|{''.join(row)}| {total:>8} B  {node.op} {short_name(node.name, 40)}")
    lines.append("buffers (letter: tensor, bytes, steps):")
    for b in order:
        t = tg.t(b.tensors[0])
        lines.append(f"  {mark[id(b)]}: {t.name} ({t.dtype}), {b.size} B, steps {b.start}-{b.end}")
    return "\n".join(lines)


def _png(path, tg, plan, summary=None):
    """The memory plan as a picture, drawn with tinytrain/pngdraw.py (no plotting library):
    every arena buffer as a box over its lifetime (x: schedule step) and offsets (y), the
    state blob and stack above the arena, the --sram budget, the peak, forward | backward,
    and the layer of every step along the x axis."""
    from .pngdraw import ADVANCE, Canvas, text_width
    s = summary or {"state_bytes": 0, "context_bytes": 0, "stack_estimate_bytes": 0, "sram_budget_bytes": None,
                    "peak_node": "", "sram_total_bytes": plan.arena_size}
    kb = lambda v: f"{v / 1024:.1f} KB"
    steps = max(1, len(tg.nodes))
    sx = 8 if steps <= 200 else max(2, 1600 // steps)
    left, right, top, plot_h = 70, 250, 48, 380
    labels = max(text_width(step_label(tg, n)) for n in tg.nodes) + 10 if tg.nodes else 10
    bottom = 22 + labels + 40
    w = left + steps * sx + right
    c = Canvas(max(w, 900), top + plot_h + bottom)
    arena, state = plan.arena_size, s["state_bytes"]
    extra = s["context_bytes"] + s["stack_estimate_bytes"]
    total = arena + state + extra
    budget = s.get("sram_budget_bytes")
    ymax = max(total * 1.12, 1)
    budget_on_scale = budget is not None and budget <= total * 1.6
    if budget_on_scale:
        ymax = max(ymax, budget * 1.06)
    y_of = lambda b: top + plot_h - b * plot_h / ymax
    x_of = lambda step: left + step * sx
    # y grid and axis in KB
    tick = next(t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10 ** 4, 10 ** 5, 10 ** 6)
                if ymax / 1024 / t <= 8)
    for k in range(0, int(ymax / 1024 / tick) + 1):
        y = y_of(k * tick * 1024)
        c.hline(left, x_of(steps), int(y), (225, 225, 225))
        c.text(left - 8 - text_width(str(k * tick)), int(y) - 3, str(k * tick))
    c.text(4, top - 14, "SRAM (KB)")
    # the arena's buffers
    for b in plan.buffers:
        t = tg.t(b.tensors[0])
        x0, x1 = x_of(b.start), x_of(b.end + 1)
        y0, y1 = y_of(b.offset + b.size), y_of(b.offset)
        c.rect(x0, y0, x1, y1, _COLORS.get(t.dtype, (120, 120, 120)))
        if y1 - y0 >= 3 and x1 - x0 >= 3:
            c.frame(x0, y0, x1, y1 + 1, _EDGE)
    # the state blob and the context + stack, live all the time
    for lo, hi, color, what in ((arena, arena + state, (150, 90, 190), f"state blob {kb(state)}"),
                                (arena + state, total, (200, 200, 200), f"stack + context {kb(extra)}")):
        if hi > lo:
            c.rect(x_of(0), y_of(hi), x_of(steps), y_of(lo), color)
            c.frame(x_of(0), y_of(hi), x_of(steps), y_of(lo) + 1, _EDGE)
            c.text(x_of(steps) + 6, int((y_of(hi) + y_of(lo)) / 2) - 3, what)
    c.text(x_of(steps) + 6, int(y_of(arena / 2)) - 3, f"arena {kb(arena)}")
    c.frame(left, top, x_of(steps) + 1, top + plot_h + 1, (0, 0, 0))
    # forward | backward
    fwd = set(tg.meta["training"]["forward"])
    n_fwd = sum(1 for n in tg.nodes if n.id in fwd)
    c.vline(x_of(n_fwd), top, top + plot_h, (210, 30, 30), width=2)
    c.text(x_of(n_fwd) - 6 - text_width("forward"), top + 4, "forward", (210, 30, 30))
    c.text(x_of(n_fwd) + 6, top + 4, "backward", (210, 30, 30))
    # the budget
    red = (200, 0, 0)
    if budget is not None:
        if budget_on_scale:
            c.hline(left, x_of(steps), int(y_of(budget)), red, dash=6)
            c.rect(left, int(y_of(budget)) - 1, x_of(steps), int(y_of(budget)), red)
            c.text(x_of(steps) + 6, int(y_of(budget)) - 3, f"budget {kb(budget)}", red)
        else:
            c.text(x_of(steps) + 6, top - 3, f"budget {kb(budget)}", red)
            c.text(x_of(steps) + 6, top + 7, f"(above: {kb(budget - total)} free)", red)
    # the peak
    pk = min(plan.peak_step, steps - 1)
    xp = x_of(pk) + sx // 2
    c.vline(xp, top, top + plot_h, (0, 0, 0), dash=3)
    yp = int(y_of(arena))
    for k in range(6):                              # a triangle pointing down at the peak
        c.rect(xp - 6 + k, yp - 8 + k, xp + 7 - k, yp - 7 + k, (0, 0, 0))
    peak_text = f"peak: arena {kb(arena)}, SRAM {kb(total)} at step {pk}"
    px = min(max(left, xp - text_width(peak_text) // 2), c.w - text_width(peak_text) - 4)
    c.text(px, max(top + 16, yp - 20), peak_text)
    # title and legend
    c.text(left, 8, f"memory plan of {short_name(tg.meta.get('source') or 'model', 40)}: "
                    f"scheme {tg.meta['training'].get('scheme')}, arena {kb(arena)} ({plan.algorithm}) + state "
                    f"{kb(state)} + stack/context {kb(extra)} = {kb(total)}"
                    + (f" of {kb(budget)}" if budget else ""), scale=1)
    c.text(left, 22, f"peak at step {pk}: {s.get('peak_node', '')}"[:160])
    # x axis: step numbers and every step's layer, written upwards
    y_axis = top + plot_h
    for k in range(0, steps + 1, 10):
        c.vline(x_of(k), y_axis, y_axis + 4, (0, 0, 0))
        c.text(x_of(k) - text_width(str(k)) // 2, y_axis + 6, str(k))
    if sx >= ADVANCE + 1:
        for k, n in enumerate(tg.nodes):
            color = (0, 0, 0) if n.id in fwd else (110, 110, 110)
            if k == pk:
                color = red
            label = step_label(tg, n)
            c.text(x_of(k) + (sx - 7) // 2, y_axis + 20 + text_width(label), label, color, vertical=True)
    ly = c.h - 16
    x = left
    for dtype, what in (("int8", "int8 activations"), ("float32", "float32 gradients"), ("int32", "int32"),
                        ("uint8", "masks (1 bit)")):
        c.rect(x, ly, x + 12, ly + 8, _COLORS[dtype])
        c.text(x + 16, ly, what)
        x += 16 + text_width(what) + 18
    c.rect(x, ly, x + 12, ly + 8, (150, 90, 190))
    c.text(x + 16, ly, "trained parameters (state blob)")
    x += 16 + text_width("trained parameters (state blob)") + 18
    c.text(x, ly, "x: schedule step, its layer below (grey: backward)")
    c.save(path)
    return path
