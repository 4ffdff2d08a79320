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


def qemu_command(board, elf):
    q = board["qemu"]
    return ["qemu-system-arm", "-machine", q["machine"], "-nographic", "-monitor", "none", "-serial", "none",
            "-chardev", "stdio,id=sh0", "-semihosting-config", "enable=on,target=native,chardev=sh0",
            "-icount", "shift=0", *q.get("args", []), "-kernel", str(elf)]


def _explain(code, tail):
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


def run_firmware(fw, timeout=600):
    """Run fw (boards.Firmware) in QEMU -> RunResult; a failure is a TinytrainError."""
    import shutil
    from .boards import INSTALL_HINT
    if shutil.which("qemu-system-arm") is None:
        raise TinytrainError(f"qemu-system-arm not found: {INSTALL_HINT}")
    board = fw.board
    try:
        res = subprocess.run(qemu_command(board, fw.elf), capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
        code, out = res.returncode, res.stdout + res.stderr
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        code = 124
    (fw.elf.parent / "run.log").write_text(out)
    if code != 0 or "\ndone " not in "\n" + out:
        tail = [ln for ln in out.splitlines() if ln.strip()][-1:] or ["no output"]
        raise TinytrainError(f"{board['name']}: the firmware failed: {_explain(code, tail)}; last line: "
                             f"{tail[0][:200]} (log: {fw.elf.parent / 'run.log'})")
    return parse_output(out)


def parse_output(text):
    r = RunResult(output=text)
    chunks, size = {}, -1
    for line in text.splitlines():
        w = line.split()
        if not w:
            continue
        if w[0] == "step" and len(w) == 10:
            r.steps.append(Step(int(w[1]), int(w[3], 16), int(w[5]), int(w[7]), int(w[9])))
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
    r.state = b"".join(chunks[k] for k in sorted(chunks))
    if len(r.state) != size or zlib.crc32(r.state) != r.crc32:
        raise TinytrainError(f"the state blob read from the board is damaged ({len(r.state)} of {size} bytes, "
                             f"CRC {zlib.crc32(r.state):08x}, the board says {r.crc32:08x})")
    return r


def format_steps(res):
    rows = ["step  label  pred  loss       accuracy  instructions"]
    correct = 0
    for s in res.steps:
        correct += s.pred == s.label
        rows.append(f"{s.step:>4}  {s.label:>5}  {s.pred:>4}  {s.loss:<9.5f}  {correct / (s.step + 1):>7.1%}  "
                    f"{s.instructions:>12,}")
    if res.steps:
        mean = sum(s.instructions for s in res.steps) / len(res.steps)
        rows.append(f"mean {mean:,.0f} instructions per training step (under -icount, +-40)")
    return "\n".join(rows)


def state_arrays(tg, state, name, rounding="stochastic"):
    """The trained parameters read out of a state blob: {tensor id: flat array}."""
    from .compiler.codegen.emit_c import Emitter
    off = Emitter(tg, None, name, rounding).state_off
    return {tid: np.frombuffer(state, dtype=tg.t(tid).data.dtype, count=tg.t(tid).size, offset=o)
            for tid, o in off.items()}


def compare_with_simulator(tg, res, x, y, steps, lr, seed, rounding="stochastic", name="model"):
    """Replay the board's steps in the simulator (tg is trained in place): the
    losses, predicted classes and final parameters must be bit-identical.
    x in the ONNX layout.  -> a one-line report, or a TinytrainError."""
    from .train.backprop import BackpropTrainer
    if len(res.steps) != steps:
        raise TinytrainError(f"the board reported {len(res.steps)} steps, expected {steps}")
    sim = BackpropTrainer(tg, lr=lr, seed=seed, rounding=rounding)
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
