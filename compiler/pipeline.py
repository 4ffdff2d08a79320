"""The compiler pipeline: a flat list of passes, each followed by the IR check.

    import ONNX -> simplify_reshapes -> fold_affine (BatchNorm) -> fuse_activation (ReLU/ReLU6)
        -> absorb_transpose (Flatten of NHWC into the linear layer's weights)
        -> calibrate -> quantize
        -> weight_headroom (trained weights' scale x2) -> autodiff (loss, backward, in-place SGD)
        -> prune (the sparse-update scheme) -> chunk_grads (big weight gradients a slice of rows at a time)
"""
import numpy as np

from .frontend.onnx_import import import_onnx
from .passes.absorb_transpose import absorb_transpose
from .passes.autodiff import autodiff
from .passes.prune import prune
from .passes.calibrate import calibrate
from .passes.chunk_grads import chunk_grads
from .passes.float_head import float_head
from .passes.fold_affine import fold_affine
from .passes.fuse_activation import fuse_activation
from .passes.quantize import quantize
from .passes.simplify_reshapes import simplify_reshapes
from .passes.weight_headroom import weight_headroom as _weight_headroom
from .scheme import resolve as resolve_scheme
from .verify import verify

FLOAT_PASSES = (
    ("simplify_reshapes", simplify_reshapes),
    ("fold_affine", fold_affine),
    ("fuse_activation", fuse_activation),
    ("absorb_transpose", absorb_transpose),
)


def load(path, input_shape=None):
    """ONNX file -> verified float IR, BatchNorm folded, activations fused."""
    g = verify(import_onnx(path, input_shape), "import")
    for name, p in FLOAT_PASSES:
        g = verify(p(g), name)
    return g


def quantize_graph(graph, calib_x, method="minmax", percentile=99.99, output_range=None):
    """Float IR + calibration samples (ONNX input layout) -> verified int8 IR.

    output_range=(lo, hi) fixes the logits' range instead of calibrating it: a
    model that will be trained (a new classifier head) needs room for logits
    larger than the ones it produces before training."""
    ranges = calibrate(graph, calib_x, method=method, percentile=percentile)
    if output_range is not None:
        lo, hi = (float(v) for v in output_range)
        if not lo < 0 < hi:
            from .errors import TinytrainError
            raise TinytrainError(f"output range {output_range} must contain 0", field="output_range")
        ranges[graph.outputs[0]] = (lo, hi)
    info = {"method": method, "samples": int(len(np.asarray(calib_x)))}
    if output_range is not None:
        info["output_range"] = [lo, hi]
    if method == "percentile":
        info["percentile"] = percentile
    return verify(quantize(graph, ranges, info), "quantize")


def training_graph(graph_int8, update="sparse", qas=True, float_classifier=False, weight_headroom=2.0,
                   chunk_bytes=8192, options=None):
    """int8 IR -> verified training graph for an update scheme (preset name,
    JSON path, dict or Scheme); optionally with a float32 classifier.  Trained
    weights get `weight_headroom` (their scale x h) to grow without saturating.  A weight
    gradient larger than `chunk_bytes` is computed and applied a slice of rows at a time.
    options: a compiler/options.py BuildOptions, whose fields replace the keywords."""
    from .hparams import check_headroom
    if options is not None:
        update, qas, float_classifier = options.update, options.qas, options.float_classifier
        weight_headroom, chunk_bytes = options.weight_headroom, options.chunk_bytes
    weight_headroom = check_headroom(weight_headroom)
    scheme = resolve_scheme(graph_int8, update)
    graph_int8 = verify(_weight_headroom(graph_int8, scheme, weight_headroom), "weight_headroom")
    if float_classifier:
        graph_int8 = verify(float_head(graph_int8), "float_head")
    g = verify(autodiff(graph_int8, qas=qas), "autodiff")
    g = verify(prune(g, scheme), "prune")
    return verify(chunk_grads(g, chunk_bytes), "chunk_grads")


def memory_plan(graph, in_place=True, patch=True, sram=None, rounding="stochastic", optimize="speed"):
    """A training (or zeroth-order) graph -> (graph, plan): the frozen prefix run patch by
    patch when that helps (patch_prefix; with `sram` and optimize="speed", the cheapest patching
    that fits beside the state blob and the context; optimize="memory": the smallest arena
    whatever the budget), frozen depthwise convs in place (inplace_depthwise), then the static
    arena.  The returned graph's meta["min_peak"] records the smallest arena the same search
    found ({"arena_bytes", "patch", "optimize"}) for the report."""
    from .errors import TinytrainError
    from .layout import context_bytes, state_bytes
    from .passes.inplace_depthwise import inplace_depthwise
    from .passes.patch_prefix import best_patching
    from .passes.plan_memory import lower_bound, plan_memory
    if optimize not in ("speed", "memory"):
        raise TinytrainError(f"optimize is '{optimize}', not one of speed, memory", field="--optimize")
    prepped = {}                          # id(g) -> (g, prep(g)): each candidate prepared once

    def prep(g):
        if id(g) not in prepped:
            prepped[id(g)] = (g, verify(inplace_depthwise(g), "inplace_depthwise") if in_place else g)
        return prepped[id(g)][1]
    if patch:
        budget = None if sram is None or optimize == "memory" else \
            sram - state_bytes(graph, rounding)[0] - context_bytes()
        graph, plan, _, low = best_patching(graph, lambda g: plan_memory(prep(g), in_place=in_place), budget,
                                            bound_fn=lambda g: lower_bound(prep(g), in_place=in_place),
                                            min_peak=True)
        graph = verify(graph, "patch_prefix")
        out = prep(graph)
        out.meta["min_peak"] = {"arena_bytes": int(low[1].arena_size), "patch": low[0].meta.get("patch"),
                                "optimize": optimize}
        return out, plan
    graph = prep(graph)
    return graph, plan_memory(graph, in_place=in_place)


def compile_graph(graph_int8, out, name="model", update="sparse", qas=True, float_classifier=False,
                  rounding="stochastic", sram=None, in_place=True, weight_headroom=2.0, chunk_bytes=8192,
                  patch=True, plan_sram=None, options=None, progress=None):
    """int8 IR -> training graph -> memory plan (checked against `sram` bytes) -> C.
    `plan_sram` only steers the plan (the cheapest patching that fits) without the check.
    options: a compiler/options.py BuildOptions (the CLI's and the API's one record), whose
    fields replace the keywords.  `progress(text)`, if given, hears of each phase as it ends
    (the CLI prints them).  -> (training graph as compiled, plan, facts)"""
    from .codegen.cformat import check_name
    from .codegen.emit_c import emit
    from .options import BuildOptions
    from .passes.plan_memory import check_budget
    o = options if options is not None else BuildOptions(
        name=name, update=update, qas=qas, float_classifier=float_classifier, rounding=rounding, sram=sram,
        in_place=in_place, weight_headroom=weight_headroom, chunk_bytes=chunk_bytes, patch=patch, plan_sram=plan_sram)
    check_name(o.name)
    say = progress or (lambda text: None)
    tg = training_graph(graph_int8, options=o)
    say(f"training graph: {len(tg.nodes)} steps, scheme {tg.meta['training']['scheme']}")
    tg, plan = memory_plan(tg, in_place=o.in_place, patch=o.patch, sram=o.steer_sram(), rounding=o.rounding,
                           optimize=o.optimize)
    check_budget(tg, plan, o.sram, rounding=o.rounding)
    say(f"memory plan: arena {plan.arena_size} B ({plan.algorithm})")
    facts = emit(tg, plan, out, name=o.name, rounding=o.rounding)
    say(f"emit C: {o.name}.c, {o.name}.h, runtime/")
    return tg, plan, facts


def compile_mezo(graph_int8, out, name="model", update="sparse", eps=1, queries=1, sram=None, options=None):
    """int8 IR -> zeroth-order training library (two forward passes a step, no backward).
    options: a BuildOptions, whose fields replace the keywords.  -> (zo graph, plan, facts)"""
    from .codegen.cformat import check_name
    from .codegen.emit_zo import emit_mezo
    from .options import BuildOptions
    o = options if options is not None else BuildOptions(name=name, update=update, eps=eps, queries=queries,
                                                         sram=sram, trainer="mezo")
    check_name(o.name)
    from .passes.plan_memory import check_budget, plan_memory
    from .passes.zo_plan import zo_plan
    from .hparams import check_eps, check_queries
    eps, queries = check_eps(o.eps), check_queries(o.queries)
    gz = verify(zo_plan(graph_int8, resolve_scheme(graph_int8, o.update), eps), "zo_plan")   # its meta["training"]
    # the step runs the forward twice: the quantized input must survive the first pass
    outputs = list(gz.outputs)
    gz.outputs = outputs + [gz.inputs[0]]
    plan = plan_memory(gz)
    gz.outputs = outputs
    check_budget(gz, plan, o.sram)
    facts = emit_mezo(gz, plan, out, name=o.name, queries=queries)
    return gz, plan, facts
