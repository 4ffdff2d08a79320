"""emit_zo: a zeroth-order (MeZO) training library: the inference graph's
forward, twice per step, with in-place perturbations (compiler/ops/zo.py) and no
backward.  Same API, prefix and buffers as emit_c; bit-exact with
tinytrain.train.mezo.MezoTrainer."""
import numpy as np

from ..cfmt import c_float
from .emit_c import Emitter, _emit_node, _header, _source, runtime_dir, signature  # noqa: F401


def _items_code(e, items, phase, sign=0):
    lines = []
    for it in items:
        p = e.ptr(it["tid"])
        if it["kind"] == "weight":
            if phase == "perturb":
                lines.append(f"    {e.name}_count(&ctx->saturated, tt_zo_perturb_s8({p}, {it['w_inner']}, {it['w_k']}, "
                             f"{it['rows']}, {it['g_inner']}, {it['g_k']}, {sign * e.g.meta['zo']['eps']}, &zs));")
            else:
                lines.append(f"    {e.name}_count(&ctx->saturated, tt_zo_update_s8({p}, {it['w_inner']}, {it['w_k']}, "
                             f"{it['rows']}, {it['g_inner']}, {it['g_k']}, {e.array('zof', it['factor'], 'float')}, "
                             f"scaled, {it['limit']}, &zs, &ctx->prng));")
        else:
            n = len(it["factor"])
            if phase == "perturb":
                lines.append(f"    {e.name}_count(&ctx->saturated, tt_zo_perturb_s32({p}, {n}, "
                             f"{e.array('zoa', it['amount'], 'int32_t')}, {sign}, {int(it['perturb_limit'])}, &zs));")
            else:
                lines.append(f"    {e.name}_count(&ctx->saturated, tt_zo_update_s32({p}, {n}, "
                             f"{e.array('zof', it['factor'], 'float')}, scaled, {int(it['limit'])}, &zs, "
                             "&ctx->prng));")
    return lines


def emit_mezo(graph, plan, out, name="model", queries=1):
    """graph: the output of zo_plan (meta["zo"]); writes <name>.c/.h and runtime/."""
    import json
    import shutil
    from pathlib import Path
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items = graph.meta["zo"]["items"]
    from ..passes.zo_plan import zo_training_meta
    graph.meta["training"] = zo_training_meta(graph)        # as zo_plan recorded it (nodes may have moved)
    e = Emitter(graph, plan, name)
    e.bias_limits = {it["tid"]: int(it["limit"]) for it in items if it["kind"] == "bias"}
    for n in graph.nodes:
        _emit_node(e, n)
    e.line(f"{e.NAME}_PROFILE({len(e.profile)});")
    forward_body, e.body = e.body, []
    logits = graph.t(graph.outputs[0])
    k = logits.size
    inv_q = c_float(np.float32(1.0 / queries))
    loss = (f"for (i = 0; i < {k}; ++i) {{ z[i] = {c_float(logits.q.scale)} * (float)((int32_t){e.ptr(logits.id)}[i]"
            f" - {int(logits.q.zero_point)}); }}")
    body = [f"    uint32_t seed, zs;", f"    float lp, lm, p, scaled, z[{k}], g[{k}];", "    int32_t i, q, best;",
            "    *loss = 0.0f;",
            f"    for (q = 0; q < {queries}; ++q) {{",
            "    seed = tt_prng_next(&ctx->prng);",
            "    tt_prng_seed(&zs, seed);"]
    body += _items_code(e, items, "perturb", 1)
    body += [f"    {name}_forward(ctx, 0, NULL);",
             "    if (q == 0) {",
             f"        best = 0; for (i = 1; i < {k}; ++i) {{ if ({e.ptr(logits.id)}[i] > {e.ptr(logits.id)}[best]) "
             "{ best = i; } } *pred = best;",
             "    }",
             f"    {loss}", f"    lp = tt_softmax_xent(z, {k}, label, g);",
             "    tt_prng_seed(&zs, seed);"]
    body += _items_code(e, items, "perturb", -2)
    body += [f"    {name}_forward(ctx, 0, NULL);", f"    {loss}", f"    lm = tt_softmax_xent(z, {k}, label, g);",
             "    tt_prng_seed(&zs, seed);"]
    body += _items_code(e, items, "perturb", 1)
    body += ["    p = (lp - lm) * 0.5f;",
             f"    if (!(p - p == 0.0f)) {{ {name}_count(&ctx->skipped, 1); continue; }}",
             f"    scaled = (p * ctx->lr) * {inv_q};",
             "    tt_prng_seed(&zs, seed);"]
    body += _items_code(e, items, "update")
    body += ["    *loss = *loss + (lp + lm) * 0.5f;", "    }", f"    *loss = *loss * {inv_q};"]
    sig = signature(graph)
    facts = dict(arena=plan.arena_size, state=e.state_size, signature=sig, input=graph.t(graph.inputs[0]).size,
                 classes=k, name=name, trainer="mezo")
    (out / f"{name}.h").write_text(_header(e, facts))
    (out / f"{name}.c").write_text(_source(e, facts, forward_body, [], zo_body=body))
    (out / f"{name}_profile.json").write_text(json.dumps(e.profile, indent=1) + "\n")
    rt = out / "runtime"
    for sub in ("include", "src"):       # file by file: never deletes what else the folder holds
        shutil.copytree(runtime_dir() / sub, rt / sub, dirs_exist_ok=True)
    return facts
