"""Run board firmware under QEMU and read what it prints (boards/common/main.c),
and replay the same steps in the simulator to compare bit for bit."""
import re
import struct
import subprocess
import zlib
from dataclasses import dataclass, field

import numpy as np

from .compiler.errors import TinytrainError

EXCEPTIONS = {2: "NMI", 3: "HardFault", 4: "MemManage", 5: "BusFault", 6: "UsageFault", 11: "SVCall",
              12: "DebugMonitor", 14: "PendSV", 15: "SysTick"}
STATUS = {1: "NULL pointer", 2: "buffer alignment", 3: "buffer size", 4: "label", 5: "state blob", 6: "input value"}


@dataclass
class Step:
    step: int
    loss_bits: int
    pred: int
    label: int
    instructions: int

    @property
    def loss(self):
        return struct.unpack("<f", struct.pack("<I", self.loss_bits))[0]


@dataclass
class RunResult:
    steps: list = field(default_factory=list)
    state: bytes = b""
    crc32: int = 0
    init_instructions: int = 0
    stack_peak: int = 0
    stack_size: int = 0
    skipped: int = 0
    output: str = ""
    profile: dict = field(default_factory=dict)      # node index -> instructions summed over profile_steps
    profile_steps: int = 0


def qemu_command(board, elf, plugin=None):
    if board.get("kind") == "linux-user":
        return [*board["run"], *(["-plugin", str(plugin)] if plugin else []), str(elf)]
    q = board["qemu"]
    return ["qemu-system-arm", "-machine", q["machine"], "-nographic", "-monitor", "none", "-serial", "none",
            "-chardev", "stdio,id=sh0", "-semihosting-config", "enable=on,target=native,chardev=sh0",
            "-icount", "shift=0", *q.get("args", []), "-kernel", str(elf)]


def _explain(code, tail):
    if code < 0:
        import signal
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    if code == 124:
        return "did not finish in time (raise --timeout)"
    if code == 134:
        return "the core locked up (a fault inside a fault handler): QEMU aborted"
    if 200 <= code < 256:
        n = code - 200
        why = "; the stack overflowed its region (build with a larger --stack)" if "stack overflowed" in tail[0] else ""
        return f"fault: exception {n} ({EXCEPTIONS.get(n, 'interrupt')}){why}"
    if 10 < code < 20:
        return f"init returned status -{code - 10} ({STATUS.get(code - 10, '?')})"
    if 20 < code < 30:
        return f"train_step returned status -{code - 20} ({STATUS.get(code - 20, '?')})"
    if code == 30:
        return "the stack overflowed its reserved region (build with a larger --stack)"
    return f"exit status {code}"


def run_firmware(fw, timeout=600, on_line=None):
    """Run fw (boards.Firmware) in QEMU -> RunResult; a failure is a TinytrainError.
    on_line(line), if given, hears each line the board prints as it prints it."""
    import threading
    from .tools import require_tool
    board = fw.board
    cmd = qemu_command(board, fw.elf, getattr(fw, "plugin", None))
    require_tool(cmd[0], board)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, errors="replace")
    expired = threading.Event()

    def expire():
        expired.set()
        proc.kill()
    timer = threading.Timer(timeout, expire)
    timer.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line.rstrip("\n"))
        code = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    code = 124 if expired.is_set() else code
    out = "".join(lines)
    (fw.elf.parent / "run.log").write_text(out)
    if code != 0 or "\ndone " not in "\n" + out:
        tail = [ln for ln in out.splitlines() if ln.strip()][-1:] or ["no output"]
        raise TinytrainError(f"{board['name']}: the firmware failed: {_explain(code, tail)}; last line: "
                             f"{tail[0][:200]} (log: {fw.elf.parent / 'run.log'})")
    return parse_output(out)


def step_printer(out=None):
    """An on_line for run_firmware that prints one progress line per training step as the board
    reports it (the rows of format_steps)."""
    import sys
    out = out or sys.stdout
    seen = {"n": 0, "correct": 0}
    print(STEP_HEADER, file=out, flush=True)

    def on_line(line):
        s = _step(line.split())
        if s is not None:
            seen["n"] += 1
            seen["correct"] += s.pred == s.label
            print(_step_row(s, seen["correct"]), file=out, flush=True)
    return on_line


def parse_output(text):
    r = RunResult(output=text)
    chunks, size = {}, -1
    for line in text.splitlines():
        w = line.split()
        if not w:
            continue
        if _step(w) is not None:
            r.steps.append(_step(w))
        elif w[0] == "init" and len(w) == 3:
            r.init_instructions = int(w[2])
        elif w[:2] == ["state", "size"]:
            size, r.crc32 = int(w[2]), int(w[4], 16)
        elif w[0] == "state" and len(w) == 3:
            chunks[int(w[1])] = bytes.fromhex(w[2])
        elif w[:2] == ["stack", "peak"]:
            r.stack_peak, r.stack_size = int(w[2]), int(w[4])
        elif w[0] == "done":
            r.skipped = int(w[4])
        elif w[:2] == ["profile", "nodes"] and len(w) == 5:
            r.profile_steps = int(w[4])
        elif w[0] == "profile" and len(w) == 4 and w[2] == "instr":
            r.profile[int(w[1])] = int(w[3])
    r.state = b"".join(chunks[k] for k in sorted(chunks))
    if len(r.state) != size or zlib.crc32(r.state) != r.crc32:
        raise TinytrainError(f"the state blob read from the board is damaged ({len(r.state)} of {size} bytes, "
                             f"CRC {zlib.crc32(r.state):08x}, the board says {r.crc32:08x})")
    return r


STEP_HEADER = "step  label  pred  loss       accuracy  instructions"


def _step(words):
    """A board's `step ...` line (its 10 words) -> Step, else None."""
    if words and words[0] == "step" and len(words) == 10:
        return Step(int(words[1]), int(words[3], 16), int(words[5]), int(words[7]), int(words[9]))
    return None


def _step_row(s, correct):
    return (f"{s.step:>4}  {s.label:>5}  {s.pred:>4}  {s.loss:<9.5f}  {correct / (s.step + 1):>7.1%}  "
            f"{s.instructions:>12,}")


def format_steps(res, board=None, rows_shown=True):
    """The run's steps as a table (rows_shown=False: only the summary line, when step_printer
    already printed the rows as they came)."""
    rows = [STEP_HEADER] if rows_shown else []
    correct = 0
    for s in res.steps:
        correct += s.pred == s.label
        if rows_shown:
            rows.append(_step_row(s, correct))
    linux = (board or {}).get("kind") == "linux-user"
    if res.steps and linux and not any(s.instructions for s in res.steps):
        rows.append(f"no instruction counter on {board['name']} (the counting plugin was not built: no host C "
                    "compiler)")
    elif res.steps:
        mean = sum(s.instructions for s in res.steps) / len(res.steps)
        how = "exact, counted by the QEMU plugin" if linux else "under -icount, +-40"
        rows.append(f"mean {mean:,.0f} instructions per training step ({how})")
    return "\n".join(rows)


def state_arrays(tg, state, name, rounding="stochastic"):
    """The trained parameters read out of a state blob: {tensor id: flat array}."""
    from .compiler.layout import state_layout
    off = state_layout(tg, rounding).offsets
    return {tid: np.frombuffer(state, dtype=tg.t(tid).data.dtype, count=tg.t(tid).size, offset=o)
            for tid, o in off.items()}


def compare_with_simulator(tg, res, x, y, steps, lr, seed, rounding="stochastic", name="model", trainer=None):
    """Replay the board's steps in the simulator (tg is trained in place): the
    losses, predicted classes and final parameters must be bit-identical.
    x in the ONNX layout; trainer: a MezoTrainer whose graph is tg (a MeZO library),
    default backprop.  -> a one-line report, or a TinytrainError."""
    from .train.backprop import BackpropTrainer
    if len(res.steps) != steps:
        raise TinytrainError(f"the board reported {len(res.steps)} steps, expected {steps}")
    sim = trainer if trainer is not None else BackpropTrainer(tg, lr=lr, seed=seed, rounding=rounding)
    for s in res.steps:
        k = s.step % len(x)
        loss, logits = sim.step(x[k], y[k])
        bits = struct.unpack("<I", np.float32(loss).tobytes())[0]
        pred = int(np.argmax(np.asarray(logits).reshape(-1)))
        if bits != s.loss_bits or pred != s.pred:
            raise TinytrainError(f"step {s.step}: the board's loss {s.loss_bits:08x} / class {s.pred} differ from "
                                 f"the simulator's {bits:08x} / {pred}")
    params = state_arrays(tg, res.state, name, rounding)
    for tid, got in params.items():
        want = np.asarray(tg.t(tid).data).reshape(-1)
        if got.tobytes() != want.tobytes():
            bad = int(np.sum(got.view(np.uint8) != want.view(np.uint8)))
            raise TinytrainError(f"after {steps} steps the board's {tg.t(tid).name} differs from the "
                                 f"simulator's ({bad} bytes)")
    n = sum(v.size for v in params.values())
    return (f"check: {steps} steps bit-identical with the simulator (loss bits, predicted classes) and the "
            f"{len(params)} trained tensors ({n} values) equal bit for bit")


PHASES = ("forward", "backward", "update", "other")


def profile_report(res, nodes):
    """Per-node, per-layer and per-phase instructions of a profiled run.  nodes: the
    <name>_profile.json of the compile ([{index, node, op, phase}]).  Figures are means per
    step; a layer is the ONNX node a graph node came from (its forward, gradient and update
    nodes); "other" is the part of the step no node accounts for (input quantization,
    argmax, the calls; with MeZO the perturbations and updates)."""
    if not res.profile:
        raise TinytrainError("the board printed no profile (build with profiling: tinytrain run --profile)")
    if sorted(res.profile) != list(range(len(nodes))):
        raise TinytrainError(f"the board profiled {len(res.profile)} nodes, {len(nodes)} listed in the "
                             "profile json: regenerate the project")
    steps = max(res.profile_steps, 1)
    total = sum(s.instructions for s in res.steps) / steps
    share = (lambda v: v / total) if total else (lambda v: 0.0)
    rows, layers = [], {}
    phases = dict.fromkeys(PHASES, 0.0)
    for nd in nodes:
        v = res.profile[nd["index"]] / steps
        phases[nd["phase"]] = phases.get(nd["phase"], 0.0) + v
        rows.append(dict(index=nd["index"], node=nd["node"], op=nd["op"], phase=nd["phase"], instructions=v,
                         share=share(v)))
        lay = layers.setdefault(nd["node"], dict(layer=nd["node"], op=nd["op"], forward=0.0, backward=0.0,
                                                 update=0.0, instructions=0.0))
        if nd["phase"] == "forward":
            lay["op"] = nd["op"]
        lay[nd["phase"]] = lay.get(nd["phase"], 0.0) + v
        lay["instructions"] += v
    for lay in layers.values():
        lay["share"] = share(lay["instructions"])
    phases["other"] = total - sum(v for k, v in phases.items() if k != "other")
    return dict(steps=steps, step_instructions=total, phases=phases, layers=list(layers.values()), nodes=rows)


def format_profile(report, top=None, by="layers"):
    """The per-layer (or per-node: by="nodes") table in graph order, or the `top` largest,
    and the phase totals, all per step."""
    total = report["step_instructions"]
    rows = report[by]
    if top:
        rows = sorted(rows, key=lambda r: -r["instructions"])[:top]
    name = "layer" if by == "layers" else "node"
    w = max([len(r[name]) for r in rows] + [5])
    wo = max([len(r["op"]) for r in rows] + [2])
    if by == "layers":
        out = [f"{name:<{w}}  {'op':<{wo}}  {'forward':>12}  {'backward':>12}  {'update':>10}  {'total':>12}  "
               "% step"]
        out += [f"{r[name]:<{w}}  {r['op']:<{wo}}  {r['forward']:>12,.0f}  {r['backward']:>12,.0f}  "
                f"{r['update']:>10,.0f}  {r['instructions']:>12,.0f}  {100 * r['share']:>5.1f}%" for r in rows]
    else:
        out = [f"{'#':>4}  {name:<{w}}  {'op':<{wo}}  {'phase':<8}  {'instructions':>12}  % step"]
        out += [f"{r['index']:>4}  {r[name]:<{w}}  {r['op']:<{wo}}  {r['phase']:<8}  {r['instructions']:>12,.0f}  "
                f"{100 * r['share']:>5.1f}%" for r in rows]
    out.append(f"per step (mean of {report['steps']}): {total:,.0f} instructions: " + ", ".join(
        f"{k} {v:,.0f} ({100 * v / total if total else 0:.1f}%)" for k, v in report["phases"].items()))
    return "\n".join(out)
