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
    sram_state, flash_w = state_bytes(tg)
    peak = sorted(live_at(plan, plan.peak_step), key=lambda b: -b.size)
    node = tg.nodes[min(plan.peak_step, len(tg.nodes) - 1)]
    ctx_bytes = 40                  # the <name>_ctx struct on a 64-bit host (28 on a 32-bit board)
    total_sram = plan.arena_size + facts["state"] + ctx_bytes + stack
    return {
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
    lines = [f"model: {tg.meta.get('source')}  scheme: {tg.meta['training']['scheme']}  QAS: "
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
    k = len({n.name for n in tg.nodes if n.op.endswith("_inplace")})
    if k:
        lines.insert(3, f"in place: {k} depthwise convolutions / input gradients write over their input")
    lines += [f"  {r['tensor']:<50} {r['dtype']:<8} {r['bytes']:>8} B  @ {r['offset']}" for r in s["live_at_peak"][:12]]
    text = "\n".join(lines) + "\n\nper layer:\n" + t1 + f"\n\ntotal: {sum(r['params'] for r in rows)} params, " \
        f"{sum(r['macs'] for r in rows)} forward MACs\n"
    (out / "report.txt").write_text(text)
    (out / "report.json").write_text(json.dumps({"summary": s, "layers": rows, "facts": facts}, indent=1))
    _png(out / "memory.png", tg, plan)
    return text


def _png(path, tg, plan):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(10, 5))
    fwd = set(tg.meta["training"]["forward"])
    for b in plan.buffers:
        t = tg.t(b.tensors[0])
        color = "tab:blue" if t.dtype == "int8" else ("tab:orange" if t.dtype == "float32" else "tab:gray")
        ax.add_patch(plt.Rectangle((b.start, b.offset / 1024), b.end - b.start + 1, b.size / 1024,
                                   facecolor=color, edgecolor="black", linewidth=0.2, alpha=0.8))
    n_fwd = sum(1 for n in tg.nodes if n.id in fwd)
    ax.axvline(n_fwd, color="red", linewidth=0.8)
    ax.set_xlim(0, len(tg.nodes) + 1)
    ax.set_ylim(0, plan.arena_size / 1024 * 1.05)
    ax.set_xlabel("schedule step (red line: forward | backward)")
    ax.set_ylabel("arena offset (KB)")
    ax.set_title(f"arena {plan.arena_size / 1024:.1f} KB ({plan.algorithm}); blue int8, orange float32, grey masks")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
