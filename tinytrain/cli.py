"""tinytrain command line.  A user mistake prints one line and exits 2."""
import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .compiler import hparams, recipe
from .compiler.errors import TinytrainError
from .compiler.hparams import argtype


def _shape(text):
    try:
        dims = [int(d) for d in text.replace("x", ",").split(",") if d.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a shape like 1,3,32,32") from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"'{text}' is not a shape like 1,3,32,32")
    return dims


def _data(args, g, path, calibration=False, **kw):
    """A data file in the model's input shape, read from its --layout (tinytrain/data.py);
    calibration: only the first data.CALIB_SAMPLES samples are read."""
    from .data import load_calibration, load_dataset
    where = dict(layout=getattr(args, "layout", None), model_layout=g.meta.get("input_layout"))
    if calibration:
        return load_calibration(path, g.meta["input_shape"], **where)
    return load_dataset(path, g.meta["input_shape"], **where, **kw)


def _support(op, known, failed):
    """inspect's verdict for one ONNX op: a converter exists ("yes"), and this model's use of it
    imports (an op whose node stopped the import says so)."""
    if not known:
        return "NO"
    if failed is not None and failed.op == op:
        return "NO (in this model" + (f": node '{failed.node}')" if failed.node is not None else ")")
    return "yes"


def cmd_inspect(args):
    from .report import format_table, layer_table, onnx_op_support
    from .api import load
    print(f"model: {args.model}")
    support = None
    if not str(args.model).endswith(".tt.npz"):
        try:
            support = onnx_op_support(args.model)
        except Exception:
            support = None      # load() below gives the precise error
    from .data import model_layout
    try:                                   # a model is supported only when its whole import succeeds
        g, failed = load(args.model, args.input_shape), None
    except TinytrainError as e:
        g, failed = None, e
    if support:
        print("\nONNX ops:")
        print(format_table(["op", "count", "supported"], [(o, c, _support(o, s, failed)) for o, c, s in support]))
    if failed is not None:
        print(f"\nmodel: NOT supported: the import stops at {failed.format()}")
        raise failed
    rows = layer_table(g)
    layout = model_layout(g.meta.get("input_shape"), g.meta.get("input_layout"))
    print(f"\ntinytrain IR ({g.t(g.inputs[0]).dtype}): input {g.meta.get('input_name')} "
          f"{g.meta.get('input_shape')}, layout {(layout or 'flat').upper()} (data files in this layout, or "
          f"--layout; stored as {list(g.t(g.inputs[0]).shape)}, NHWC)")
    geo = lambda r, k: "x".join(map(str, r[k])) if k in r else ""
    print(format_table(["#", "layer", "op", "kernel", "stride", "groups", "output (NHWC)", "params", "MACs",
                        "fused act"],
                       [(i, r["node"], r["op"] + (" (depthwise)" if r.get("depthwise") else ""), geo(r, "kernel"),
                         geo(r, "stride"), r.get("groups", ""), "x".join(map(str, r["output"])), r["params"],
                         r["macs"], "" if r["act"] is None else f"clamp{tuple(r['act'])}")
                        for i, r in enumerate(rows)]))
    print(f"\ntotal: {len(rows)} layers, {sum(r['params'] for r in rows)} parameters, "
          f"{sum(r['macs'] for r in rows)} MACs per sample")
    print("model: supported (the whole import succeeds)")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(args.model), "input_layout": layout, "layers": rows,
                                               "onnx_ops": support}, indent=1, default=str))
    unsupported = [o for o, _, s in (support or []) if not s]
    return 2 if unsupported else 0


def _staged(run):
    """The command writes into a temporary folder that replaces -o only when it succeeds
    (tinytrain/outdir.py); -o is checked before any work.  An error that carries
    `keep_output` (a diverged training run: its last good weights) commits what was written
    before it reaches the user."""
    def cmd(args):
        from .outdir import prepare
        staging = prepare(args.output, force=getattr(args, "force", False), command=args.command)
        with staging as tmp:
            try:
                return run(args, tmp)
            except TinytrainError as e:
                if getattr(e, "keep_output", False):
                    staging.commit()
                raise
    return cmd


def _quantize(args, out):
    from .api import load, quantize, save
    from .report import accuracy, format_table, layer_errors
    if args.max_calib < 0:
        raise TinytrainError(f"--max-calib {args.max_calib} is negative", field="--max-calib")
    g = load(args.model, args.input_shape)
    cx, cy = _data(args, g, args.calib, max_samples=args.max_calib or None)
    gq = quantize(g, cx, method=args.method, percentile=args.percentile)
    final = Path(args.output)
    model_path = final / save(gq, out / (Path(args.model).name.split(".")[0] + ".tt.npz")).relative_to(out)
    report = {"model": str(args.model), "int8_model": str(model_path), "calibration": gq.meta["calibration"]}
    lines = [f"int8 model: {model_path}",
             f"calibration: {len(cx)} samples from {args.calib}, {args.method}"
             + (f" ({args.percentile})" if args.method == "percentile" else "")]
    if args.test:
        tx, ty = _data(args, g, args.test, need_labels=True)
        src = args.test
    else:
        tx, ty, src = cx, cy, args.calib
    if ty is not None:
        acc = accuracy(args.model, gq, tx, ty)
        report["accuracy"] = dict(acc, data=str(src))
        lines.append(f"accuracy on {acc['samples']} samples of {src}: float (onnxruntime) "
                     f"{100 * acc['float_top1']:.2f}%, int8 (simulator) {100 * acc['int8_top1']:.2f}%, "
                     f"top-1 agreement {100 * acc['top1_agreement']:.2f}%")
    errs = layer_errors(g, gq, tx[:args.report_samples])
    report["layers"] = errs
    table = format_table(["layer", "op", "scale", "zp", "rms err", "max err", "SQNR dB"],
                         [(r["node"], r["op"], f"{r['scale']:.3g}", r["zero_point"], f"{r['rms_error']:.3g}",
                           f"{r['max_abs_error']:.3g}", "-" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}")
                          for r in errs])
    text = "\n".join(lines) + f"\n\nper-layer error, int8 dequantized vs float ({min(len(tx), args.report_samples)} " \
                              f"samples):\n" + table + "\n"
    (out / "report.txt").write_text(text)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(text, end="")
    print(f"reports: {final / 'report.txt'}, {final / 'report.json'}")
    return 0


cmd_quantize = _staged(_quantize)


def _train(args, out):
    from .api import load, quantize_for_training, save
    from .compiler.pipeline import training_graph
    from .compiler.passes.autodiff import strip_training
    from .compiler.scheme import resolve
    from .train.backprop import BackpropTrainer
    from .train.loop import fit
    g = load(args.model, args.input_shape)
    x, y = _data(args, g, args.data, need_labels=True)
    test = _data(args, g, args.test, need_labels=True) if args.test else None
    if g.t(g.inputs[0]).dtype != "int8":
        cx = _data(args, g, args.calib, calibration=True)[0] if args.calib else x
        g = quantize_for_training(g, cx, args.logit_range)
    if args.lr is None:
        args.lr = recipe.default_lr(args.trainer)
    n_cls = g.t(g.outputs[0]).size
    for name, labels in (("--data", y), ("--test", None if test is None else test[1])):
        if labels is not None and (labels.min() < 0 or labels.max() >= n_cls):
            raise TinytrainError(f"{name} has labels outside the model's {n_cls} classes", field="y")
    if not args.allow_one_class and len(y) and (y == y[0]).all():
        raise TinytrainError(f"every label is {int(y[0])}: a classifier cannot learn from one class (it learns "
                             f"to always answer {int(y[0])}); pass --allow-one-class to train anyway", file=args.data)
    if args.update == "auto":
        kw = dict(qas=not args.no_qas, float_classifier=args.float_classifier, weight_headroom=args.weight_headroom)
        args.update, why = _choose_scheme(g, args, _size(args, "--sram"), kw)
        print(f"update: {args.update} ({why})")
    scheme = resolve(g, args.update)
    opts = _build_options(args, trainer=args.trainer)
    final = Path(args.output)
    if getattr(args, "native", False) and args.backend != "c":
        raise TinytrainError("--native builds the C library for this CPU: it needs --backend c", field="--native")
    if args.trainer in ("mezo", "hybrid"):
        if args.trainer == "hybrid" and args.backend == "c":
            raise TinytrainError("--trainer hybrid runs in the simulator only (--backend sim)")
        from .train.mezo import MezoTrainer
        if args.backend == "c":
            from .compiler.pipeline import compile_mezo
            from .host import HostTrainer
            tg, plan, facts = compile_mezo(g, out / "c", options=opts.with_(update=scheme))
            trainer = HostTrainer(out / "c", "model", tg, plan, facts, lr=args.lr, seed=args.seed,
                                  native=args.native)
        else:
            trainer = MezoTrainer(g, scheme, lr=args.lr, eps=args.eps, queries=args.queries, seed=args.seed,
                                  hybrid=args.trainer == "hybrid")
            tg = trainer.graph                # its meta["training"]: passes/zo_plan.py zo_training_meta
    elif args.backend == "c":
        if args.momentum or args.accumulate != 1:
            raise TinytrainError("--momentum and --accumulate run in the simulator only (--backend sim)")
        from .compiler.pipeline import compile_graph
        from .host import HostTrainer
        tg, plan, facts = compile_graph(g, out / "c", options=opts.with_(update=scheme))
        trainer = HostTrainer(out / "c", "model", tg, plan, facts, lr=args.lr, seed=args.seed, rounding=args.rounding,
                              native=args.native)
        print(f"C build: {final / 'c'} (arena {facts['arena']} B, state {facts['state']} B)")
    else:
        tg = training_graph(g, options=opts.with_(update=scheme))
        trainer = BackpropTrainer(tg, lr=args.lr, rounding=args.rounding, seed=args.seed, momentum=args.momentum,
                                  accumulate=args.accumulate)
    rows = scheme.describe(g)
    how = (f"QAS {'off' if args.no_qas else 'on'}, {args.rounding} rounding" if args.trainer == "backprop" else
           f"{args.trainer}: eps {args.eps}, {args.queries} quer{'y' if args.queries == 1 else 'ies'}")
    print(f"update scheme '{scheme.name}': {sum(1 for r in rows if r[3] != '-')} weight tensors, "
          f"{sum(1 for r in rows if r[4] == 'yes')} biases of {len(rows)} layers; {how}, lr {args.lr}")
    report = {"model": str(args.model), "scheme": scheme.name, "lr": args.lr, "qas": not args.no_qas,
              "rounding": args.rounding, "seed": args.seed, "float_classifier": args.float_classifier}
    if test is not None:
        report["test_accuracy_before"] = trainer.evaluate(*test)
        print(f"test accuracy before training: {100 * report['test_accuracy_before']:.2f}%")
    from .train.monitor import DivergenceError
    try:
        report["history"] = fit(trainer, x, y, epochs=args.epochs, seed=args.seed, test=test,
                                progress=not args.quiet, out=sys.stdout, limit=args.max_samples)
        diverged = None
    except DivergenceError as e:            # the trainer holds the last good weights again
        diverged = e
        report["history"] = e.history
        report["divergence"] = e.record
    report["skipped_updates"] = trainer.skipped
    report["saturated_updates"] = getattr(trainer, "saturated", 0)
    if report["skipped_updates"] or report["saturated_updates"]:
        print(f"updates: {report['skipped_updates']} skipped (non-finite loss or gradient), "
              f"{report['saturated_updates']} elements saturated (int8 +-127 or the bias limit)")
    report["backend"] = args.backend
    if args.backend == "c":
        trainer.sync_to_graph()               # the C state blob -> the graph's weights
        if args.trainer == "backprop":
            # the compiled graph carries memory rewrites (tiles, in-place kernels): save the plain
            # graph, with the trained parameters carried over by name
            plain = training_graph(g, options=opts.with_(update=scheme))
            trained = {tg.t(t).name: tg.t(t) for t in tg.meta["training"]["trainable"]}
            for t in plain.meta["training"]["trainable"]:
                plain.t(t).data[...] = trained[plain.t(t).name].data
            tg = plain
    kind = "trained" if diverged is None else "last-good"
    path = final / save(strip_training(tg), out / (Path(args.model).name.split(".")[0] + f".{kind}.tt.npz")
                        ).relative_to(out)
    report[f"{kind.replace('-', '_')}_model"] = str(path)
    (out / "train_report.json").write_text(json.dumps(report, indent=1))
    if diverged is not None:
        diverged.path = path
        diverged.problem += f"; saved as {path}"
        diverged.args = (diverged.format(),)
        diverged.keep_output = True           # the last good weights and the report reach -o
        raise diverged
    print(f"trained int8 model: {path}")
    if test is not None:
        print(f"test accuracy after training: {100 * report['history'][-1]['test_accuracy']:.2f}%")
    return 0


cmd_train = _staged(_train)


AUTO_SCHEMES = ("full", "last-8", "sparse", "last-4", "tte", "last-2", "bias", "classifier")


def _size(args, flag):
    """A --sram / --flash value in bytes (None when not given); a bad one is a one-line error."""
    from .memreport import parse_size
    text = getattr(args, flag.lstrip("-"), None)
    try:
        return parse_size(text) if text is not None else None
    except ValueError as e:
        raise TinytrainError(str(e), field=flag) from None


def _scheme_need(g, update, args, sram, kw, stack=2048):
    """SRAM a backprop build of this scheme needs, as `compile` would plan it (compiler/layout.py
    sram_total: arena + state blob with --rounding's shadows + context + stack), and its trainable
    parameter count; None if the scheme cannot be trained by backprop."""
    from .compiler.layout import sram_total
    from .compiler.pipeline import memory_plan, training_graph
    rounding = getattr(args, "rounding", "stochastic")
    try:
        tg = training_graph(g, update, **kw)
    except TinytrainError:
        return None
    tg, plan = memory_plan(tg, in_place=not getattr(args, "no_in_place", False), sram=sram, rounding=rounding,
                           optimize=getattr(args, "optimize", "speed"))
    return (sram_total(plan, tg, rounding, stack)["total"],
            sum(tg.t(t).size for t in tg.meta["training"]["trainable"]))


def _choose_scheme(g, args, sram, kw):
    """--update auto: of the presets, the one with the most trainable parameters whose plan
    fits --sram (with a 2 KB stack margin)."""
    if sram is None:
        raise TinytrainError("--update auto chooses the scheme that fits the SRAM budget: give --sram", field="--update")
    fits, smallest = [], None
    for name in AUTO_SCHEMES:
        r = _scheme_need(g, name, args, sram, kw)
        if r is None:
            continue
        need, params = r
        if smallest is None or need < smallest[1]:
            smallest = (name, need)
        if need <= sram:
            fits.append((params, name, need))
    if not fits:
        raise TinytrainError(f"no update scheme fits {sram / 1024:.0f} KB of SRAM (the smallest, {smallest[0]}, "
                             f"needs ~{smallest[1] / 1024:.0f} KB); try --trainer mezo", field="--sram")
    params, name, need = max(fits)
    others = ", ".join(n for _, n, _ in sorted(fits, reverse=True)[1:])
    return name, (f"the most trainable parameters that fit: {params}, ~{need / 1024:.0f} KB of {sram / 1024:.0f} KB"
                  + (f"; also fit: {others}" if others else ""))


def _mezo_need(g, update, args, stack=2048):
    """SRAM a MeZO build of this scheme needs (arena of the forward with the input kept for
    the second pass + trainable state + context + stack), as compile_mezo plans it; None if
    MeZO cannot train it."""
    from .compiler.passes.plan_memory import plan_memory, state_bytes
    from .compiler.passes.zo_plan import zo_plan
    from .compiler.scheme import resolve
    try:
        gz = zo_plan(g, resolve(g, update), args.eps)
    except TinytrainError:
        return None
    gz.outputs = list(gz.outputs) + [gz.inputs[0]]
    arena = plan_memory(gz).arena_size
    gz.meta["training"] = {"trainable": [it["tid"] for it in gz.meta["zo"]["items"]]}
    return arena + state_bytes(gz)[0] + 40 + stack


def _choose_trainer(g, args, sram, kw):
    """--trainer auto: backprop when its plan fits the budget, else MeZO when its plan fits;
    neither: one line with what both need."""
    from .compiler.pipeline import training_graph
    kb = lambda v: f"~{v / 1024:.0f} KB"
    try:
        training_graph(g, args.update, **kw)
        need, why = _scheme_need(g, args.update, args, sram, kw)[0], None
    except TinytrainError as e:
        need, why = None, f"backprop cannot train this scheme: {e.problem}"
    if need is not None and (sram is None or need <= sram):
        return "backprop", f"it fits: {kb(need)}" + ("" if sram is None else f" of {sram / 1024:.0f} KB")
    why = why or f"backprop needs {kb(need)}, more than the {sram / 1024:.0f} KB budget"
    mezo = _mezo_need(g, args.update, args)
    if mezo is None:
        raise TinytrainError(f"--trainer auto: {why}, and MeZO cannot train scheme '{args.update}' either",
                             field="--trainer")
    if sram is not None and mezo > sram:
        raise TinytrainError(f"neither trainer fits {sram / 1024:.0f} KB of SRAM: backprop needs "
                             f"{'-' if need is None else kb(need)}, MeZO {kb(mezo)} (scheme '{args.update}'); "
                             f"try a smaller --update, e.g. classifier or bias", field="--sram")
    return "mezo", f"{why}; MeZO fits: {kb(mezo)}" + ("" if sram is None else f" of {sram / 1024:.0f} KB")


class _Phases:
    """`compile` says what it did as it goes: one line per phase with its time."""

    def __init__(self):
        import time
        self.clock = time.perf_counter
        self.last = self.clock()

    def __call__(self, what):
        now = self.clock()
        print(f"[{now - self.last:5.1f} s] {what}", flush=True)
        self.last = now


def _compile(args, out):
    from .api import load, quantize_for_training
    from .compiler.pipeline import compile_graph
    from .host import stack_estimate
    from .memreport import memory_summary, parse_size, write_reports
    from .compiler.codegen.cformat import check_name
    check_name(args.name)
    sizes = {}
    for flag, text in (("--sram", args.sram), ("--flash", args.flash)):
        try:
            sizes[flag] = parse_size(text) if text is not None else None
        except ValueError as e:
            raise TinytrainError(str(e), field=flag) from None
    sram, flash = sizes["--sram"], sizes["--flash"]
    from .compiler.codegen.packages import describe, parse_kinds, write_packages
    packages = parse_kinds(args.package)
    phase = _Phases()
    g = load(args.model, args.input_shape)
    phase(f"import: {args.model}, {len(g.nodes)} layers")
    cx = None
    if g.t(g.inputs[0]).dtype != "int8":
        if not args.calib:
            raise TinytrainError("a float model needs calibration samples: pass --calib data.npz", file=args.model)
        cx = _data(args, g, args.calib, calibration=True)[0]
        g = quantize_for_training(g, cx, args.logit_range)
        phase(f"quantize: int8, calibrated on {len(cx)} samples of {args.calib}")
    final = Path(args.output)
    opts = _build_options(args, name=args.name, in_place=not args.no_in_place, plan_sram=sram, flash=flash,
                          optimize=args.optimize,
                          **_provenance(g, args.model, None if cx is None else args.calib, None if cx is None
                                        else len(cx)))
    kw = dict(qas=opts.qas, float_classifier=opts.float_classifier, weight_headroom=opts.weight_headroom)
    if args.update == "auto":
        args.update, why = _choose_scheme(g, args, sram, kw)
        print(f"update: {args.update} ({why})")
    trainer = args.trainer
    if trainer == "auto":
        trainer, why = _choose_trainer(g, args, sram, kw)
        print(f"trainer: {trainer} ({why})")
    update = str(Path(args.update).resolve()) if Path(args.update).suffix == ".json" else args.update
    opts = opts.with_(update=update, trainer=trainer)
    if trainer == "mezo":
        from .compiler.pipeline import compile_mezo
        opts = opts.with_(rounding="stochastic")       # MeZO's updates round stochastically
        tg, plan, facts = compile_mezo(g, out, options=opts)
        phase(f"MeZO graph, memory plan and C: arena {plan.arena_size} B")
    else:
        tg, plan, facts = compile_graph(g, out, options=opts, progress=phase)
    from .compiler.options import write_build
    write_build(out, opts)              # read back by build, run --check, flash and the host runtime
    written = write_packages(out, facts, tg, packages, version=__version__)
    if written:
        phase(f"packages: {describe(out, written)}")
    stack = stack_estimate(out, args.name)
    phase(f"stack estimate: {stack} B (gcc -fstack-usage)")
    summary = memory_summary(tg, plan, facts, stack, sram, flash)
    text = write_reports(out, tg, plan, facts, summary)
    phase(f"reports: report.txt (with the memory timeline), report.json, memory.png")
    print(text, end="")
    problems = []
    if sram is not None and summary["sram_total_bytes"] > sram:
        problems.append(f"needs {summary['sram_total_bytes'] / 1024:.1f} KB of SRAM, budget {sram / 1024:.1f} KB")
    if flash is not None and summary["flash_weight_bytes"] > flash:
        problems.append(f"needs {summary['flash_weight_bytes'] / 1024:.1f} KB of flash for weights, "
                        f"budget {flash / 1024:.1f} KB")
    if problems:
        fits = []
        for alt in ("sparse", "tte", "last-4", "last-2", "bias", "classifier"):
            if alt == args.update:
                continue
            r = _scheme_need(g, alt, args, sram, kw, stack)
            if r is None:
                continue
            need = r[0]
            if sram is None or need <= sram:
                fits.append(f"{alt} fits in {need / 1024:.0f} KB")
        biggest = ", ".join(f"{r['tensor']} {r['bytes'] / 1024:.1f} KB" for r in summary["live_at_peak"][:3])
        raise TinytrainError("does not fit: " + "; ".join(problems) + f" (peak at {summary['peak_node']}: {biggest})"
                             + (f"; {', '.join(fits)}" if fits else "; no preset fits either"))
    print(f"C project: {final / (args.name + '.c')}, {final / (args.name + '.h')}, {final / 'runtime'}; "
          f"reports: {final / 'report.txt'}, {final / 'report.json'}, {final / 'memory.png'}")
    if written:
        print(f"packages in {final}: {describe(out, written)}")
    return 0


cmd_compile = _staged(_compile)


def _build_options(args, **kw):
    """The build-options record (compiler/options.py), created once from the flags of
    train / compile (kw: the command's own fields, e.g. name, trainer, budgets)."""
    from .compiler.options import BuildOptions
    return BuildOptions(update=args.update, qas=not args.no_qas, float_classifier=args.float_classifier,
                        weight_headroom=args.weight_headroom, logit_range=args.logit_range, rounding=args.rounding,
                        eps=args.eps, queries=args.queries, data_layout=getattr(args, "layout", None),
                        version=__version__, **kw)


def _provenance(g, model, calib=None, calib_samples=None):
    """The record's fields of what a build was made from: model and calibration files (absolute
    paths and sha256), the input's shape, layout and quantization (its normalization)."""
    from .compiler.options import sha256
    rec = dict(model=str(Path(model).resolve()), model_sha256=sha256(model),
               input_shape=[int(d) for d in g.meta.get("input_shape") or []] or None,
               input_layout=g.meta.get("input_layout"))
    if calib is not None:
        rec.update(calib=str(Path(calib).resolve()), calib_sha256=sha256(calib), calib_samples=int(calib_samples))
    x = g.t(g.inputs[0])
    if x.q is not None:
        scale, zp = float(x.q.scale), int(x.q.zero_point)
        rec["normalization"] = {"scale": scale, "zero_point": zp, "float_range": [(-128 - zp) * scale,
                                                                                 (127 - zp) * scale]}
    return rec


def _data_options(s):
    """Options of the commands that read data files."""
    s.add_argument("--layout", choices=["nchw", "nhwc", "ncw", "nwc"],
                   help="the layout the data's samples are in, when it is not the model's input layout "
                        "(e.g. nhwc images for a torch model): they are transposed (default: the model's)")


def _training_options(s):
    """Options shared by train and compile."""
    s.add_argument("--update", default="sparse",
                   help="full, bias, classifier, sparse, tte, last-<k>, TTE's published schemes tte-<net>-<kb> "
                        "(mbv2 49kb|73kb|99kb|123kb|138kb, proxyless 49kb|74kb|98kb|120kb|148kb, mcunet "
                        "49kb|74kb|99kb|124kb|148kb; tte-<kb> recognises the net), or a scheme.json (ours or "
                        "TTE's backward_config), or auto: the preset with the most trainable parameters that "
                        "fits --sram (default sparse)")
    s.add_argument("--rounding", choices=["stochastic", "shadow"], default="stochastic",
                   help="how int8 updates below one step survive (default stochastic)")
    s.add_argument("--no-qas", action="store_true", help="turn quantization-aware scaling off (for comparison)")
    s.add_argument("--float-classifier", action="store_true",
                   help="keep the last layer in float32 (more accurate updates, 4x its weight memory)")
    s.add_argument("--logit-range", type=argtype(hparams.check_logit_range, "--logit-range"),
                   default=recipe.LOGIT_RANGE,
                   help="a float model's logits are quantized to [-R, R], room to grow while training (default 16)")
    s.add_argument("--weight-headroom", type=argtype(hparams.check_headroom, "--weight-headroom"),
                   default=recipe.WEIGHT_HEADROOM,
                   help="trained weights get their scale x H so they can grow without saturating (default 2)")
    s.add_argument("--eps", type=argtype(hparams.check_eps, "--eps", integer=True), default=recipe.MEZO_EPS,
                   help="MeZO perturbation in quantization steps, 1..16 (default 1)")
    s.add_argument("--queries", type=argtype(hparams.check_queries, "--queries", integer=True),
                   default=recipe.MEZO_QUERIES,
                   help="MeZO two-point estimates per step, 1..1024 (default 1)")



class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless it has none (None, a switch) or
    already names it."""

    def _get_help_string(self, action):
        h = action.help or ""
        if "default" in h or action.default is None or action.default is False or not action.option_strings \
                or action.default == argparse.SUPPRESS:
            return h
        return h + " (default: %(default)s)"


class _UsageError(Exception):
    """An argparse error (a bad flag value, a missing argument): main prints it as one line."""


class _Parser(argparse.ArgumentParser):
    """Errors as one line (main); every option's default in its help."""

    def __init__(self, *a, **kw):
        kw.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*a, **kw)

    def error(self, message):
        raise _UsageError(f"{self.prog.split(' ', 1)[-1] + ': ' if ' ' in self.prog else ''}{message}")

    def add_argument(self, *a, **kw):
        action = super().add_argument(*a, **kw)
        if action.help is None and action.option_strings and action.default is not None \
                and action.default is not False:
            action.help = "(default: %(default)s)"          # an option without help still shows its default
        return action


# Commands whose modules pull numpy/onnx in: registered from their module only when one of
# them runs (or its --help is asked); otherwise as a name and help line, so `tinytrain
# --help` imports neither.  tests/test_first_hour.py checks these lines are the modules' own.
OPTIONAL_COMMANDS = {
    "build": ("boards", "add_board_commands",
              "cross-compile a compiled C project for a board: flash, RAM, stack"),
    "run": ("boards", "add_board_commands",
            "train on a board under QEMU: per-step loss, accuracy, instructions"),
    "flash": ("flash", "add_flash_command",
              "build and flash a real board (pyOCD): stm32f746g-disco, nrf52840-dk"),
    "mezo": ("mezo_ort_cli", "add_commands",
             "zeroth-order (MeZO) training of a float ONNX model on onnxruntime, at inference memory; "
             "--replay rebuilds the trained model from its seeds"),
    "fleet": ("fleet", "add_fleet_command", "federated training over a fleet of devices (Flower)"),
}


def _optional_module(module):
    """Imported here, statically, so the import graph (tests/test_imports.py) sees them."""
    if module == "boards":
        from . import boards as m
    elif module == "flash":
        from . import flash as m
    elif module == "fleet":
        from .fleet import cli as m
    else:
        from . import mezo_ort_cli as m
    return m


def _add_optional_commands(sub, argv):
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    wanted = words[0] if words else None
    done = set()
    for name, (module, fn, text) in OPTIONAL_COMMANDS.items():
        if (module, fn) in done:
            continue
        if wanted is not None and OPTIONAL_COMMANDS.get(wanted, (None, None))[:2] == (module, fn):
            try:
                add = getattr(_optional_module(module), fn)
            except ImportError:
                continue
            add(sub)
            done.add((module, fn))
        else:
            sub.add_parser(name, help=text, add_help=False).set_defaults(func=None)


def _force_option(s):
    s.add_argument("--force", action="store_true",
                   help="write into a non-empty -o tinytrain did not write, or over generated files you edited "
                        "(only the files tinytrain writes are replaced; nothing else is deleted)")


def build_parser(argv=None):
    """The CLI's parser; argv (default sys.argv[1:]): the command line it is for, so that only
    the command that runs imports its module."""
    p = _Parser(prog="tinytrain", description="On-device training compiler for int8 models.")
    p.add_argument("--version", action="version", version=f"tinytrain {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("inspect", help="ops, shapes, parameters and MACs per layer, and what is not supported")
    s.add_argument("model", help="model.onnx (or a .tt.npz saved by tinytrain)")
    s.add_argument("--input-shape", type=_shape, help="override the input shape, e.g. 1,3,32,32 (default: the model's)")
    s.add_argument("--json", help="also write the report as JSON to this file")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("quantize", help="post-training int8 quantization with an accuracy report")
    s.add_argument("model", help="model.onnx")
    s.add_argument("--calib", required=True, help="calibration samples (.npz with x[, y], .npy, .csv)")
    s.add_argument("--test", help="labelled test data for the float-vs-int8 accuracy report")
    s.add_argument("--method", choices=["minmax", "percentile"], default="minmax",
                   help="activation ranges: min/max of the calibration, or a percentile of |x| (clips outliers)")
    s.add_argument("--percentile", type=argtype(hparams.check_percentile, "--percentile"), default=99.99,
                   help="the percentile of --method percentile")
    s.add_argument("--max-calib", type=int, default=500,
                   help="read only the first N calibration samples (default 500; 0: the whole file)")
    s.add_argument("--report-samples", type=int, default=100, help="samples for the per-layer error report")
    s.add_argument("--input-shape", type=_shape, help="override the input shape, e.g. 1,3,32,32 (default: the model's)")
    _data_options(s)
    s.add_argument("-o", "--output", required=True, help="output folder")
    _force_option(s)
    s.set_defaults(func=cmd_quantize)

    s = sub.add_parser("train", help="train the int8 model on labelled data (sparse update, QAS)")
    s.add_argument("model", help="model.onnx (quantized on --calib or --data first) or an int8 .tt.npz")
    s.add_argument("--data", required=True, help="labelled training data (.npz with x and y, or .csv)")
    s.add_argument("--test", help="labelled test data, evaluated before and after every epoch")
    s.add_argument("--calib", help="calibration samples for a float model (default: the training data); "
                                   "the first 500 are used")
    _training_options(s)
    _data_options(s)
    s.add_argument("--epochs", type=int, default=1, help="passes over the training data")
    s.add_argument("--lr", type=argtype(hparams.check_lr, "--lr"), default=None,
                   help=f"learning rate, in (0, 1000] (default: {recipe.LR['backprop']} for backprop and hybrid, "
                        f"{recipe.LR['mezo']} for mezo)")
    s.add_argument("--trainer", choices=["backprop", "mezo", "hybrid"], default="backprop",
                   help="mezo: zeroth-order (two forward passes, a much smaller --lr); hybrid: "
                        "backprop for the classifier, MeZO for the rest")
    s.add_argument("--momentum", type=argtype(hparams.check_momentum, "--momentum"), default=0.0,
                   help="SGD momentum in [0, 1) (default 0: TTE found it hurts at batch 1)")
    s.add_argument("--accumulate", type=argtype(hparams.check_accumulate, "--accumulate", integer=True), default=1,
                   help="average the gradients of N samples per update (1..65536)")
    s.add_argument("--max-samples", type=int, default=0, help="use at most N training samples per epoch (0: all)")
    s.add_argument("--seed", type=int, default=0, help="seed of the data order and stochastic rounding")
    s.add_argument("--backend", choices=["sim", "c"], default="sim",
                   help="sim: the numba simulator; c: compile to C, build with gcc, train through it (bit-exact)")
    s.add_argument("--native", action="store_true",
                   help="with --backend c: build for this CPU's instruction set (-march=native; still bit-exact)")
    s.add_argument("--input-shape", type=_shape, help="override the input shape, e.g. 1,3,32,32 (default: the model's)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--sram", help="SRAM budget for --update auto, e.g. 256k (the plan compile would make)")
    s.add_argument("--allow-one-class", action="store_true",
                   help="train even when every --data label is the same class (refused by default)")
    s.add_argument("-o", "--output", required=True, help="output folder")
    _force_option(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("compile", help="compile the model and its training graph into a C project")
    s.add_argument("model", help="model.onnx (quantized on --calib) or an int8 .tt.npz")
    s.add_argument("--calib", help="calibration samples for a float model (the first 500 are used)")
    _training_options(s)
    _data_options(s)
    s.add_argument("--sram", help="SRAM budget, e.g. 256k: fail with a breakdown when the plan needs more")
    s.add_argument("--flash", help="flash budget for the frozen weights, e.g. 1m")
    s.add_argument("--optimize", choices=["speed", "memory"], default="speed",
                   help="speed: under --sram, the plan with the fewest recomputed MACs (patch halos) that fits; "
                        "memory: the smallest SRAM peak whatever the budget (the report gives both when they differ)")
    s.add_argument("--name", default="model", help="prefix of every C symbol (default model): a C identifier of at "
                   "most 32 ASCII characters, not a keyword, not reserved, not tt_* / app_*")
    s.add_argument("--no-in-place", action="store_true", help="no in-place buffers (to measure what they save)")
    s.add_argument("--trainer", choices=["backprop", "mezo", "auto"], default="backprop",
                   help="mezo: zeroth-order, two forward passes a step at inference memory; auto: backprop when "
                        "it fits --sram, else mezo")
    s.add_argument("--input-shape", type=_shape, help="override the input shape, e.g. 1,3,32,32 (default: the model's)")
    s.add_argument("--package", default="all",
                   help="build files written beside the C: all (default), none, or a comma list of "
                        "cmake,make,platformio,zephyr,arduino")
    s.add_argument("-o", "--output", required=True, help="output folder for the C project")
    _force_option(s)
    s.set_defaults(func=cmd_compile)
    _add_optional_commands(sub, argv)
    return p


def main(argv=None):
    try:
        args = build_parser(argv).parse_args(argv)
    except _UsageError as e:              # one line, exit 2, like every other user mistake
        print(f"tinytrain: error: {TinytrainError._printable(e)}", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except TinytrainError as e:
        print(f"tinytrain: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tinytrain: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:          # output piped into head & co.
        return 0


if __name__ == "__main__":
    sys.exit(main())
