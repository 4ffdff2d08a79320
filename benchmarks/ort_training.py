"""The phone/host peer: onnxruntime-training (on-device training API) on the models and
update schemes of benchmarks/speed.py, batch 1, one thread, float32, plain SGD.

onnxruntime-training lives in its own venv (it needs onnx 1.17.0 and must not sit beside plain
onnxruntime; see benchmarks/peers_ort.md for the install commands). This script runs in the
project's environment (it asks tinytrain which layers each scheme trains) and starts the venv's
python for the ORT work, one subprocess per measurement:

    python benchmarks/ort_training.py --ort-python /work/ort_venv/bin/python > benchmarks/peers_ort.md

Steps:
  1. tinytrain resolves the scheme ("sparse", "classifier", "full") on its float graph; its weighted
     layers carry the ONNX Conv/Gemm node names, so each maps back to ONNX initializers: the node's
     weight, and its bias (or, for a Conv without bias followed by BatchNormalization, the BN's beta:
     tinytrain folds BN, so its conv bias is the BN shift). Input-channel ratios < 1 (partial weight
     updates) cannot be expressed in ORT: those weights train whole.
  2. `--generate` (venv): onnxruntime.training.artifacts.generate_artifacts(requires_grad=..., frozen_params=
     the rest, CrossEntropyLoss, SGD). For a model with BatchNormalization a BN-folded copy is built too.
  3. `--measure` (venv, fresh process): Module + Optimizer with intra/inter-op threads = 1; timed step =
     train_step + optimizer step + lazy_reset_grad; median after warm-up; peak RSS (VmHWM) above the floor.
     The child imports only onnxruntime.training.api (the package __init__, which pulls in torch, is
     bypassed), so the floor is onnxruntime's, as in an app that uses the on-device API.
  4. `--infer` (venv): an InferenceSession forward of the same ONNX file (all graph optimizations) for scale.
  5. In this process, the C training step and PyTorch eager of each (model, scheme), set up as speed.py does,
     timed in the same rounds so that all three columns share one protocol (best of the rounds' medians:
     the machine is shared).
"""
import argparse
import ast
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMES = ("sparse", "classifier", "full")
WARMUP = 5
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


# ---------------------------------------------------------------- shared helpers

def speed_cases():
    """(label, model path under models/, input shape) exactly as benchmarks/speed.py lists them."""
    tree = ast.parse((ROOT / "benchmarks" / "speed.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CASES" for t in node.targets):
            return [tuple(c) for c in ast.literal_eval(node.value)]
    raise SystemExit("benchmarks/speed.py: no CASES list found")


def status(field):
    """A /proc/self/status memory field in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


# ---------------------------------------------------------------- venv side: artifacts

def bias_of(graph, node):
    """The initializer that plays tinytrain's bias of this Conv/Gemm: its own, or the beta of the
    BatchNormalization that consumes it (tinytrain folds BN into the conv)."""
    if len(node.input) > 2 and node.input[2]:
        return node.input[2]
    users = [n for n in graph.node if node.output[0] in n.input]
    if len(users) == 1 and users[0].op_type == "BatchNormalization":
        return users[0].input[2]
    raise SystemExit(f"{node.name}: no bias and no BatchNormalization after it (tinytrain would add a zero bias; "
                     "ORT cannot train a tensor the ONNX file does not have)")


def fold_batchnorm(model):
    """A copy with every Conv -> BatchNormalization pair folded into the Conv (inference statistics), the
    conv keeping its weight's name and taking the BN's beta name for its bias, so scheme names still map."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    arr = {k: numpy_helper.to_array(v) for k, v in inits.items()}
    producer = {o: n for n in g.node for o in n.output}
    drop, new_inits = [], {}
    for bn in [n for n in g.node if n.op_type == "BatchNormalization"]:
        conv = producer.get(bn.input[0])
        users = [n for n in g.node if bn.input[0] in n.input]
        if conv is None or conv.op_type != "Conv" or len(users) != 1:
            raise SystemExit(f"{bn.name}: not after a Conv used only by it; cannot fold")
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (arr[bn.input[i]] for i in (1, 2, 3, 4))
        scale = gamma / np.sqrt(var + eps)
        w = arr[conv.input[1]] * scale.reshape(-1, 1, 1, 1)
        b0 = arr[conv.input[2]] if len(conv.input) > 2 and conv.input[2] else 0.0
        b = beta + (b0 - mean) * scale
        new_inits[conv.input[1]] = w.astype(np.float32)
        new_inits[bn.input[2]] = b.astype(np.float32)
        del conv.input[2:]
        conv.input.append(bn.input[2])
        conv.output[0] = bn.output[0]
        drop.append(bn)
    for n in drop:
        g.node.remove(n)
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used and i.name not in new_inits]
    del g.initializer[:]
    g.initializer.extend(keep)
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in new_inits.items())
    onnx.checker.check_model(m)
    return m


def generate(spec):
    """spec: {model, out, fold_bn, layers: {node name: {"w": ratio or None, "b": bool}}} -> artifacts in out,
    prints {requires_grad count, trained parameter count, partial layers}."""
    import numpy as np
    import onnx
    from onnxruntime.training import artifacts

    model = onnx.load(spec["model"])
    g = model.graph
    by_name = {n.name: n for n in g.node}
    names = []
    partial = []
    for layer, what in spec["layers"].items():
        node = by_name.get(layer)
        if node is None or node.op_type not in ("Conv", "Gemm", "MatMul"):
            raise SystemExit(f"tinytrain layer {layer!r} is not a Conv/Gemm/MatMul node of {spec['model']}")
        if what["w"] is not None:
            names.append(node.input[1])
            if what["w"] < 1.0:
                partial.append(f"{layer} ({what['w']:g})")
        if what["b"]:
            names.append(bias_of(g, node))
    if spec["fold_bn"]:
        model = fold_batchnorm(model)
    sizes = {i.name: int(np.prod(i.dims)) for i in model.graph.initializer}
    missing = [n for n in names if n not in sizes]
    if missing:
        raise SystemExit(f"not initializers of the model: {missing}")
    frozen = [n for n in sizes if n not in names]
    os.makedirs(spec["out"], exist_ok=True)
    artifacts.generate_artifacts(model, requires_grad=names, frozen_params=frozen,
                                 loss=artifacts.LossType.CrossEntropyLoss, optimizer=artifacts.OptimType.SGD,
                                 artifact_directory=spec["out"])
    onnx.save(model, os.path.join(spec["out"], "forward.onnx"))
    stats = {i for n in model.graph.node if n.op_type == "BatchNormalization" for i in n.input[3:5]}
    kept = [n for n in frozen if n not in stats]  # BN running statistics change in ORT's training graph
    Path(spec["out"], "check.json").write_text(json.dumps({"trained": names[-1], "frozen": kept[:1]}))
    print(json.dumps({"requires_grad": len(names), "trained": sum(sizes[n] for n in names),
                      "total": sum(sizes.values()), "partial": partial}))


# ---------------------------------------------------------------- venv side: timing

def import_training_api():
    """onnxruntime and onnxruntime.training.api without torch, as an app using the on-device API runs.
    This CUDA build's `import onnxruntime` tries ORTModule (torch) and carries on without it on an
    ImportError; onnxruntime/training/__init__.py imports torch too, so it is bypassed."""
    import types

    sys.modules["torch"] = None  # import torch -> ImportError
    import onnxruntime
    pkg = types.ModuleType("onnxruntime.training")
    pkg.__path__ = [os.path.join(os.path.dirname(onnxruntime.__file__), "training")]
    sys.modules["onnxruntime.training"] = pkg
    from onnxruntime.training import api
    return onnxruntime, api


def thread_options(ort):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return so


def timed(fn, n):
    """After warm-up: median wall ms per call, median process-CPU ms per call (what the call cost when the
    process was preempted by other work on a shared machine), and CPU time / wall time over all calls (at most
    ~1 with one thread; well below 1 when the process waited for a core)."""
    for _ in range(WARMUP):
        fn()
    ts, cs = [], []
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        t0, p0 = time.perf_counter(), time.process_time()
        fn()
        ts.append(time.perf_counter() - t0)
        cs.append(time.process_time() - p0)
    ratio = (time.process_time() - c0) / (time.perf_counter() - w0)
    return 1000 * statistics.median(ts), 1000 * statistics.median(cs), ratio


def measure(art, shape, n):
    import gc

    import numpy as np
    ort, api = import_training_api()
    gc.collect()
    floor = status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    state = api.CheckpointState.load_checkpoint(os.path.join(art, "checkpoint"))
    module = api.Module(os.path.join(art, "training_model.onnx"), state, device="cpu",
                        session_options=thread_options(ort))
    opt = api.Optimizer(os.path.join(art, "optimizer_model.onnx"), module)
    opt.set_learning_rate(0.01)
    module.train()
    setup = status("VmRSS")
    x = np.random.default_rng(0).random((4,) + tuple(shape), dtype=np.float32)[:1]
    xv = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x))
    yv = ort.OrtValue.ortvalue_from_numpy(np.array([1], dtype=np.int64))
    params = state.parameters
    check = json.loads(Path(art, "check.json").read_text())
    before = {k: params[k].data.copy() for k in [check["trained"]] + check["frozen"]}
    losses = []

    def step():
        losses.append(float(module(xv, yv).numpy()))
        opt.step()
        module.lazy_reset_grad()
    med, cpu_ms, cpu = timed(step, n)
    peak = status("VmHWM")
    changed = not np.array_equal(before[check["trained"]], params[check["trained"]].data)
    still = all(np.array_equal(before[k], params[k].data) for k in check["frozen"])
    if not (changed and still and np.isfinite(losses).all() and losses[-1] < losses[0] and cpu < 1.1):
        raise SystemExit(f"sanity check failed: trained changed {changed}, frozen kept {still}, "
                         f"loss {losses[0]:.4f} -> {losses[-1]:.4f}, CPU time / wall time {cpu:.2f}")
    print(json.dumps({"ms": med, "cpu_ms": cpu_ms, "cpu_per_wall": cpu, "floor": floor, "setup": setup, "peak": peak,
                      "losses": losses[:3], "steps": len(losses)}))


def infer(model, shape, n):
    import numpy as np
    import onnxruntime as ort
    so = thread_options(ort)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((4,) + tuple(shape), dtype=np.float32)[:1]
    name = sess.get_inputs()[0].name
    med, cpu_ms, cpu = timed(lambda: sess.run(None, {name: x}), n)
    print(json.dumps({"ms": med, "cpu_ms": cpu_ms, "cpu_per_wall": cpu}))


# ---------------------------------------------------------------- project side: orchestration

def layers_of(model_path, scheme):
    """tinytrain's scheme on its float graph, as ({ONNX node name: {"w": ratio or None, "b": bool}}, the number
    of parameters tinytrain updates: a weight with ratio r updates ceil(r * input channels) of them)."""
    import math

    import tinytrain as tt
    from tinytrain.compiler.scheme import is_depthwise, resolve, weighted_layers
    g = tt.load(model_path)
    s = resolve(g, scheme)
    count = 0
    for n in weighted_layers(g):
        w, b = g.t(n.inputs[1]).data, g.t(n.inputs[2]).data
        r = s.weights.get(n.id)
        if r is not None:
            axis = 0 if is_depthwise(g, n) else -1
            count += w.size // w.shape[axis] * math.ceil(w.shape[axis] * r)
        count += b.size if n.id in s.biases else 0
    return {n.name: {"w": s.weights.get(n.id), "b": n.id in s.biases}
            for n in weighted_layers(g) if s.trains(n.id)}, count


def has_batchnorm(model_path):
    import onnx
    return any(n.op_type == "BatchNormalization" for n in onnx.load(str(model_path)).graph.node)


def child(py, *args):
    env = dict(os.environ, **THREAD_ENV)
    r = subprocess.run([py, __file__, *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])}: failed\n{r.stderr[-3000:]}{r.stdout[-1000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def speed_md_rows():
    """(label, scheme) -> (C ms, PyTorch eager ms) from the committed benchmarks/speed.md, if it parses."""
    rows = {}
    path = ROOT / "benchmarks" / "speed.md"
    if not path.is_file():
        return rows
    head = None
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| model |"):
            head = cells
        elif head and line.startswith("|") and not line.startswith("|---") and len(cells) == len(head):
            row = dict(zip(head, cells))
            try:
                rows[(row["model"], row["scheme"])] = (float(row["C step ms"]), float(row["PyTorch eager ms"]))
            except (KeyError, ValueError):
                pass
    return rows


def versions(py):
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('onnxruntime-training', 'onnx', 'numpy', 'torch', 'protobuf')}))")
    return json.loads(subprocess.run([py, "-c", code], capture_output=True, text=True, check=True).stdout)


class Peers:
    """The C training step (emitted C, gcc -O2, through cffi) and PyTorch eager on tinytrain's float graph (BN
    folded) with the same scheme, set up exactly as benchmarks/speed.py does, timed in this process."""

    def __init__(self, rel, shape, scheme, tmp):
        import numpy as np
        import torch
        import torch.nn.functional as F

        import tinytrain as tt
        from tinytrain.compiler.pipeline import compile_graph
        from tinytrain.compiler.reference import to_ir_layout
        from tinytrain.compiler.scheme import Scheme, resolve
        from tinytrain.host import HostModel
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from torch_baseline import IRModule

        torch.set_num_threads(1)
        gf = tt.load(ROOT / "models" / rel)
        x = np.random.default_rng(0).random((4,) + tuple(shape), dtype=np.float32)
        gq = tt.quantize(gf, x, output_range=(-16, 16))
        out = os.path.join(tmp, f"c_{Path(rel).stem}_{scheme}")
        tg, _, facts = compile_graph(gq, out, name="m", update=scheme)
        hm = HostModel(out, "m", tg, facts, lr=0.01)
        self.c_step = lambda: hm.train_step(x[0], 1)
        model = IRModule(gf, resolve(gf, scheme))
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
        xt, yt = torch.tensor(to_ir_layout(gf, x[:1])), torch.tensor([1])

        def torch_step(model=model, opt=opt):
            opt.zero_grad()
            loss = F.cross_entropy(model(xt), yt)
            loss.backward()
            opt.step()
            return loss
        self.torch_step = torch_step

        def first_losses(k):
            """The losses of the first k steps of a fresh model whose scheme trains whole tensors (input-channel
            ratios set to 1, as ORT must): a check that ORT trains the same tensors."""
            sc = resolve(gf, scheme)
            m = IRModule(gf, Scheme(sc.name, {i: 1.0 for i in sc.weights}, set(sc.biases)))
            o = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01)
            return [float(torch_step(m, o).detach()) for _ in range(k)]
        self.first_losses = first_losses


def main(py, repeat_small, repeat_large, rounds):
    os.environ.update(THREAD_ENV)  # before torch loads (Peers)
    cases = speed_cases()
    v = versions(py)
    load0 = os.getloadavg()[0]
    c_rows = speed_md_rows()
    partial_notes = {}
    configs = []  # (label, variant, scheme, artifact dir, shape, n, generate output, tinytrain count)
    peers = {}  # (label, scheme) -> (Peers, n)
    with tempfile.TemporaryDirectory() as tmp:
        for label, rel, shape in cases:
            path = ROOT / "models" / rel
            variants = [("as shipped", False)] + ([("BN folded", True)] if has_batchnorm(path) else [])
            n = repeat_small if shape[1] < 100 else repeat_large
            for scheme in SCHEMES:
                peers[(label, scheme)] = (Peers(rel, shape, scheme, tmp), n)
            for vname, fold in variants:
                for scheme in SCHEMES:
                    art = os.path.join(tmp, f"{Path(rel).stem}_{int(fold)}_{scheme}")
                    layers, tt_count = layers_of(path, scheme)
                    sp = os.path.join(tmp, "spec.json")
                    Path(sp).write_text(json.dumps({"model": str(path), "out": art, "fold_bn": fold, "layers": layers}))
                    gen = child(py, "--generate", sp)
                    if gen["partial"]:
                        partial_notes[(label, scheme)] = gen["partial"]
                    configs.append((label, vname, scheme, art, shape, n, gen, tt_count))
        # rounds spread over time: each ORT row measured once per round in a fresh process, then the C step
        # and PyTorch eager of each (model, scheme) in this process
        runs = [[] for _ in configs]
        infs, c_runs, t_runs = {}, {k: [] for k in peers}, {k: [] for k in peers}
        for _ in range(rounds):
            for i, (label, vname, scheme, art, shape, n, *_rest) in enumerate(configs):
                if scheme == SCHEMES[0]:  # the forward of this graph, once per round
                    r = child(py, "--infer", os.path.join(art, "forward.onnx"), json.dumps(shape), str(n))
                    infs.setdefault((label, vname), []).append(r)
                runs[i].append(child(py, "--measure", art, json.dumps(shape), str(n)))
                print(label, vname, scheme, f"ORT {runs[i][-1]['ms']:.2f} ms", file=sys.stderr, flush=True)
            for k, (peer, n) in peers.items():
                c_runs[k].append(timed(peer.c_step, n))
                t_runs[k].append(timed(peer.torch_step, n))
                print(*k, f"C {c_runs[k][-1][0]:.2f} ms, torch {t_runs[k][-1][0]:.2f} ms", file=sys.stderr, flush=True)
    lines = []
    add = lines.append
    fmt = (lambda a: "-" if a is None else f"{a:.2f}")
    add("# Peer: onnxruntime-training on the host speed benchmark's models\n")
    args = " ".join(sys.argv[1:]) or f"--ort-python {py}"
    add(f"Command: `python benchmarks/ort_training.py {args} > benchmarks/peers_ort.md`  ")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "compiler", "runtime_c", "tinytrain"], cwd=ROOT,
                           capture_output=True, text=True).stdout.splitlines()
    dirty = [line[3:] for line in dirty]
    add(f"Code: tinytrain at {head}" + (f", with uncommitted changes in {', '.join(dirty)}" if dirty else "")
        + " (the C step measured here is that tree's).  ")
    add(f"Machine: {platform.machine()} ({os.cpu_count()} cores, 1 thread used). onnxruntime-training "
        f"{v['onnxruntime-training']}, onnx {v['onnx']}, numpy {v['numpy']}, protobuf {v['protobuf']} in its own "
        f"venv (torch {v['torch']} there for artifact generation only); the project's environment runs the C step "
        "(gcc -O2, cffi) and PyTorch eager exactly as benchmarks/speed.py sets them up. Batch 1, plain SGD lr 0.01, "
        "cross-entropy. Every figure: the best of "
        f"{rounds} rounds spread over the whole run (ORT: a fresh process each round), a round being the median of "
        f"{repeat_small} (28x28) / {repeat_large} (128x128) steps after {WARMUP} warm-up steps.\n")
    add("## C step vs PyTorch eager vs onnxruntime-training (same run, same protocol)\n")
    add("ORT on the graph tinytrain trains (BN folded where the file has BN). ms per step.\n")
    add("| model | scheme | C step ms | PyTorch eager ms | ORT step ms | ORT / C | PyTorch / C | ORT / PyTorch "
        "| C step ms in speed.md |")
    add("|---|---|---|---|---|---|---|---|---|")
    ort_best = {}
    for (label, vname, scheme, *_rest), rs in zip(configs, runs):
        ort_best[(label, vname, scheme)] = min(rs, key=lambda r: r["ms"])
    checks = []
    for (label, scheme), (peer, _) in peers.items():
        c = min(r[0] for r in c_runs[(label, scheme)])
        t = min(r[0] for r in t_runs[(label, scheme)])
        best = ort_best.get((label, "BN folded", scheme)) or ort_best[(label, "as shipped", scheme)]
        o = best["ms"]
        add(f"| {label} | {scheme} | {c:.2f} | {t:.2f} | {o:.2f} | {o / c:.2f} | {t / c:.2f} | {o / t:.2f} "
            f"| {fmt(c_rows.get((label, scheme), (None,))[0])} |")
        ref = peer.first_losses(len(best["losses"]))
        checks.append((label, scheme, ref, best["losses"]))
    add("")
    add("Same tensors trained? The losses of the first three SGD steps on the sample (ORT / PyTorch eager, float32, "
        "fresh models; for this check PyTorch trains the scheme's partial weights whole, as ORT does): " + "; ".join(
            f"{label} {scheme}: " + ", ".join(f"{a:.5f}/{b:.5f}" for a, b in zip(ort_l, ref))
            for label, scheme, ref, ort_l in checks)
        + ".  ")
    diff = max(abs(a - b) / max(abs(b), 1e-6) for _, _, ref, ort_l in checks for a, b in zip(ort_l, ref))
    add(f"Largest relative difference: {diff:.1e}.\n")
    add("## onnxruntime-training rows\n")
    add("| model | ONNX graph | scheme | ORT trained params | tinytrain updates | ORT step ms | ORT step CPU ms "
        "| rounds' medians ms | ORT inference ms | peak RSS MiB | above floor MiB | steps' working set MiB |")
    add("|---|---|---|---|---|---|---|---|---|---|---|---|")
    floors, cpu = [], []
    for (label, vname, scheme, art, shape, n, gen, tt_count), rs in zip(configs, runs):
        m = ort_best[(label, vname, scheme)]
        inf = min(infs[(label, vname)], key=lambda r: r["ms"])
        floors.extend(r["floor"] for r in rs)
        cpu.extend(r["cpu_per_wall"] for r in rs + infs[(label, vname)])
        spread = ", ".join(f"{r['ms']:.2f}" for r in rs)
        add(f"| {label} | {vname} | {scheme} | {gen['trained']:,} of {gen['total']:,} | {tt_count:,} | {m['ms']:.2f} "
            f"| {m['cpu_ms']:.2f} | {spread} | {inf['ms']:.2f} | {m['peak']:.0f} | {m['peak'] - m['floor']:.1f} "
            f"| {m['peak'] - m['setup']:.1f} |")
    add("")
    add(f"Load average (1 min) at start {load0:.2f}, at end {os.getloadavg()[0]:.2f}: the 2 cores were shared "
        "with other work, hence best-of-rounds.  ")
    cpu.extend(r[2] for rs in list(c_runs.values()) + list(t_runs.values()) for r in rs)
    add(f"One thread: process CPU time / wall time over each round's timed steps was {min(cpu):.2f}-{max(cpu):.2f} "
        "(at most 1 with one busy thread; below 1 while the process waited for a core).\n")
    add("Columns:")
    add("- ORT trained params: elements of the ONNX initializers given to `requires_grad` (the rest are "
        "`frozen_params`). tinytrain updates: the parameters tinytrain's scheme updates (fewer in sparse: partial "
        "weight updates, below).")
    add("- ORT step ms: median wall time per step in the best round; ORT step CPU ms: median process CPU time "
        "per step in that round (equal to the wall time when the process had a core to itself); rounds' medians: "
        "every round's, in order.")
    add("- ORT inference ms: an `InferenceSession` forward of the same graph (all graph optimizations, 1 thread), "
        "for scale.")
    add(f"- peak RSS: VmHWM of the measuring process. Its floor (VmRSS after importing onnxruntime and numpy, "
        f"before loading anything) was {min(floors):.0f}-{max(floors):.0f} MiB; above floor = loading the "
        "checkpoint and the training and optimizer sessions plus the steps; steps' working set = peak minus "
        "VmRSS right after that setup.")
    rev = subprocess.run(["git", "log", "-1", "--format=%h", "--", "benchmarks/speed.md"], cwd=ROOT,
                         capture_output=True, text=True).stdout.strip() or "?"
    add(f"- C step ms in speed.md: benchmarks/speed.md (last commit {rev}) when this ran, a single round measured "
        "by benchmarks/speed.py (another benchmark); this run's C column is the same step set up the same way.\n")
    add("Sparse scheme, partial weight updates: tinytrain trains only a fraction of the input channels of some "
        "weights; ORT's `requires_grad` is per tensor, so these weights train whole here (more gradient work "
        "for ORT than for tinytrain):")
    for (label, scheme), layers in partial_notes.items():
        add(f"- {label}, {scheme}: {', '.join(layers)}")
    add("")
    return "\n".join(lines)


NOTES = """## Fairness

- Numbers: ORT and PyTorch train in float32; tinytrain's C step is int8 (int32 accumulators, fixed-point
  requantization, int8 weight updates with the scheme's input-channel ratios). Same model, same trained
  tensors (up to the partial updates above: PyTorch masks those gradients, ORT cannot), same loss, plain SGD,
  batch 1, one thread for all three.
- Kernels: ORT's CPU kernels are SIMD-tuned for this x86 (MLAS GEMM behind its im2col convolutions and
  their gradients), PyTorch's are oneDNN's; tinytrain's C kernels are portable loops at -O2 written for
  Cortex-M. On the host the ratios measure kernel maturity more than int8 vs float; they say nothing about a
  microcontroller, where neither ORT nor PyTorch runs (no OS; ORT's process floor alone is ~60 MiB).
- Per-step overhead: PyTorch eager interprets tinytrain's IR node by node in Python (benchmarks/
  torch_baseline.py), ORT runs a prebuilt graph, the C step is one call through cffi.
- BatchNorm: the MCU CNN ships with BatchNormalization after each conv. tinytrain (and the PyTorch eager
  baseline in speed.py) fold it into the conv and train the folded bias. On the file as shipped ORT's
  training graph turns each BN into `BatchNormInternal` (training mode: batch statistics of the one sample,
  running-statistics update) plus `BatchNormalizationGrad`: different numerics and extra work. The "BN folded"
  rows fold BN (inference statistics) into the conv before generating the artifacts: the like-for-like peer of
  tinytrain. In both, tinytrain's conv "bias" is the BN beta (folded: the conv bias named after it) and BN's
  gamma stays frozen, even in "full". MobileNetV2-w0.35 ships with BN already folded.
- Graph: the generated training graph keeps every op separate (Conv, then Clip, whose gradient is a
  compare-and-mask chain); the inference column is the same forward with ORT's inference fusions (Conv+Clip
  etc.). An app on the on-device API runs exactly this training graph.
- Defaults otherwise: no gradient checkpointing, no mixed precision, CPU memory arena on.
- Step call: through the Python binding of the on-device API (OrtValue inputs); the C/C++ API would save the
  binding's few microseconds per call.
- Process: the measuring process blocks `import torch` and imports `onnxruntime.training.api` without the
  package `__init__` (this CUDA build's `import onnxruntime` and `onnxruntime/training/__init__.py` both try
  torch; an app on the C/C++/Java/ObjC on-device API never loads it), so its floor is ORT's own (~60 MiB).
- onnxruntime-training 1.19.2 is a CUDA build; the CPU execution provider is used (`device="cpu"`).
- Checks in every measurement: the last trained tensor changed, a frozen tensor (not a BN running statistic)
  did not, the loss is finite and fell over the steps on the one repeated sample; the process CPU time over the
  timed steps never exceeds its wall time (one thread).

## Install (its own venv, outside the repo)

As done here (pip with this machine's configured package index):

    python3 -m venv /work/ort_venv
    /work/ort_venv/bin/pip install onnxruntime-training==1.19.2 onnx==1.17.0 numpy
    /work/ort_venv/bin/pip install torch==2.13.0      # resolved to the 2.13.0+cpu wheel

Reproducible (checked in a fresh venv, same versions):

    python3 -m venv /work/ort_venv
    /work/ort_venv/bin/pip install -r benchmarks/ort_training_requirements.txt

onnxruntime-training 1.19.2 is the newest wheel for Python 3.11; it needs onnx 1.17.0 (newer onnx writes IR
version 14, which it rejects). `onnxruntime.training` imports torch (artifact generation uses it), so torch is
in the venv; take the CPU build (an unpinned torch pulls a multi-GB CUDA build). Plain onnxruntime, which the
project itself uses, must not be installed beside onnxruntime-training.
"""


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--generate":
        generate(json.loads(Path(sys.argv[2]).read_text()))
    elif len(sys.argv) > 1 and sys.argv[1] == "--measure":
        measure(sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--infer":
        infer(sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]))
    else:
        ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
        ap.add_argument("--ort-python", default="/work/ort_venv/bin/python",
                        help="python of the venv holding onnxruntime-training (default /work/ort_venv/bin/python)")
        ap.add_argument("--repeat-small", type=int, default=100, help="timed steps for 28x28 models")
        ap.add_argument("--repeat-large", type=int, default=40, help="timed steps for 128x128 models")
        ap.add_argument("--rounds", type=int, default=7, help="measurements of each row (the best median is kept)")
        a = ap.parse_args()
        if not Path(a.ort_python).is_file():
            raise SystemExit(f"--ort-python {a.ort_python}: no such file (install: see benchmarks/peers_ort.md)")
        print(main(a.ort_python, a.repeat_small, a.repeat_large, a.rounds))
        print(NOTES)
