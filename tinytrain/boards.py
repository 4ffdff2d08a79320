"""Boards: build the emitted C project into firmware for a microcontroller
board and (tinytrain/qemu.py) run it under QEMU.

    tinytrain build BUILD_DIR --board qemu-mps2-an386 [--name NAME]
    tinytrain run BUILD_DIR --board qemu-mps2-an386 --data samples.npz --steps 20 [--check --model m.onnx ...]
        [--profile [out.json]]

A board is a folder of boards/ (installed as tinytrain/boards/) with a
board.json (core, FPU, SRAM, flash, compiler flags, linker script, QEMU
machine) and its linker script; boards/common/ holds the startup code, the
porting layer (board.c: print, exit, instruction counter) and the generic
training program main.c.  The build writes two files of its own beside the
objects: tt_app.h (maps the model's prefixed API to main.c's APP_* names, and
the run's steps, learning rate and seed) and tt_samples.c (samples and labels
as const arrays, so in flash).

A board of kind "linux-user" (boards/linux-aarch64) is a Linux program instead:
its board.json names the cross compiler and the runner (qemu-aarch64 -L ...),
and the same main.c and output protocol are used.

Profiling (`run --profile`): the build forces tt_profile.h into NAME.c, which
defines the model's NAME_PROFILE(k) hook as app_profile(k) (main.c), and
tt_app.h gets APP_PROFILE_NODES; without it the hook stays empty.
"""
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .compiler.errors import TinytrainError
from .tools import APT_PACKAGES, require_tool

INSTALL_HINT = f"install it with: apt-get install -y --no-install-recommends {APT_PACKAGES}"
CFLAGS = ["-std=c99", "-O2", "-ffunction-sections", "-fdata-sections", "-ffp-contract=off", "-Wall", "-Wextra",
          "-Werror", "-pedantic"]
LDFLAGS = ["-nostartfiles", "--specs=nano.specs", "-Wl,--gc-sections", "-Wl,--print-memory-usage"]
DEFAULT_STACK = 4096


def boards_dir():
    """boards/ beside tinytrain/ in the source tree, tinytrain/boards in a wheel."""
    here = Path(__file__).resolve().parent
    for d in (here / "boards", here.parent / "boards"):
        if (d / "common" / "main.c").is_file():
            return d
    raise TinytrainError(f"the board files are missing from this installation (looked in {here / 'boards'} "
                         f"and {here.parent / 'boards'})")


def available_boards():
    return sorted(p.parent.name for p in boards_dir().glob("*/board.json")
                  if "qemu" in json.loads(p.read_text()) or "cflags" in json.loads(p.read_text()))


def load_board(name):
    """board.json of a board, with its folder as board['dir']."""
    path = boards_dir() / str(name) / "board.json"
    if not path.is_file():
        raise TinytrainError(f"unknown board '{name}' (available: {', '.join(available_boards())})",
                             field="--board")
    board = json.loads(path.read_text())
    if "cflags" not in board:
        raise TinytrainError(f"board '{name}' is not a cross-compiled target (the host build runs through "
                             "`tinytrain train --backend c`); boards: " + ", ".join(available_boards()),
                             field="--board")
    board["dir"] = path.parent
    return board


def is_linux(board):
    return board.get("kind") == "linux-user"


def profile_nodes(build_dir, name):
    """<name>_profile.json written by `tinytrain compile`: [{index, node, op, phase}]."""
    path = Path(build_dir) / f"{name}_profile.json"
    if not path.is_file():
        raise TinytrainError(f"no {path.name} beside {name}.c: regenerate the project with `tinytrain compile` "
                             "(profiles need its node list)", file=path)
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------- the compiled model

def model_facts(build_dir, name=None):
    """The model's name and the size macros of its header (NAME.h of `tinytrain compile`)."""
    build_dir = Path(build_dir)
    if not build_dir.is_dir():
        raise TinytrainError("no such folder (make one with `tinytrain compile ... -o DIR`)", file=build_dir)
    if name is None:                      # the build record's (compiler/options.py build.json)
        from .compiler.options import read_build
        rec = read_build(build_dir)
        name = rec.name if rec is not None and (build_dir / f"{rec.name}.h").is_file() else None
    if name is None:
        found = [h.stem for h in sorted(build_dir.glob("*.h"))
                 if (build_dir / f"{h.stem}.c").is_file() and f"#define {h.stem.upper()}_ARENA_SIZE" in h.read_text()]
        if len(found) != 1:
            raise TinytrainError(("no compiled model here (no NAME.h and NAME.c from `tinytrain compile`)" if not found
                                  else f"several models here ({', '.join(found)}): choose one with --name"),
                                 file=build_dir)
        name = found[0]
    from .compiler.codegen.cformat import check_name
    check_name(name)
    header = build_dir / f"{name}.h"
    if not header.is_file() or not (build_dir / f"{name}.c").is_file():
        raise TinytrainError(f"no {name}.h / {name}.c here (the --name given to `tinytrain compile`)", file=build_dir)
    if not (build_dir / "runtime" / "src").is_dir():
        raise TinytrainError("the runtime/ folder written by `tinytrain compile` is missing", file=build_dir)
    macros = dict(re.findall(rf"#define {name.upper()}_(\w+) (\w+)", header.read_text()))
    facts = {"name": name}
    for key in ("ARENA_SIZE", "STATE_SIZE", "ALIGN", "INPUT_SIZE", "NUM_CLASSES", "SIGNATURE"):
        if key not in macros:
            raise TinytrainError(f"{name}.h has no {name.upper()}_{key}: regenerate it with `tinytrain compile`",
                                 file=header)
        facts[key.lower()] = int(macros[key].rstrip("uU"), 0)
    return facts


def to_device_layout(x, input_size, graph=None):
    """Samples in the model's ONNX input layout -> [N, input_size] float32 in the
    C input layout (NHWC).  With the graph its recorded input order is used;
    without it the ONNX convention: [N, C, H, W] and [N, C, L] are channels-first."""
    x = np.asarray(x, np.float32)
    if graph is not None:
        from .compiler.reference import to_ir_layout
        x = to_ir_layout(graph, x)
    elif x.ndim == 4:
        x = x.transpose(0, 2, 3, 1)
    elif x.ndim == 3:
        x = x.transpose(0, 2, 1)
    x = np.ascontiguousarray(x).reshape(len(x), -1)
    if x.shape[1] != input_size:
        raise TinytrainError(f"samples have {x.shape[1]} values each, the model takes {input_size}", field="x")
    return x


def write_app(out, board, facts, x, y, steps, lr, seed, profile_nodes=0):
    """tt_app.h and tt_samples.c for main.c: x [N, input_size] in the device layout; with
    profile_nodes > 0 also tt_profile.h (forced into NAME.c: NAME_PROFILE(k) -> app_profile(k))."""
    from .compiler.cfmt import c_float
    n, N = facts["name"], facts["name"].upper()
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    y = np.asarray(y).astype(np.int64)
    if not (0 < steps < 2 ** 31):
        raise TinytrainError(f"--steps {steps} must be a positive number", field="--steps")
    if np.any((y < 0) | (y >= facts["num_classes"])):
        raise TinytrainError(f"labels outside the model's {facts['num_classes']} classes", field="y")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    profile = ""
    if profile_nodes:
        profile = f'#define APP_PROFILE_NODES {int(profile_nodes)}\n#include "tt_profile.h"\n'
        (out / "tt_profile.h").write_text(f"""/* tt_profile.h: generated by tinytrain run --profile, forced into {n}.c
 * (-include): the model's profiling hook calls main.c's app_profile.  Do not edit. */
#ifndef TT_PROFILE_H
#define TT_PROFILE_H
#include <stdint.h>
void app_profile(int32_t k);
#define {N}_PROFILE(k) app_profile(k)
#endif
""")
    (out / "tt_app.h").write_text(f"""/* tt_app.h: generated by tinytrain build for main.c.  Do not edit. */
#ifndef TT_APP_H
#define TT_APP_H
#include "{n}.h"

#define APP_BOARD "{board['name']}"
#define APP_MODEL "{n}"
#define APP_CTX {n}_ctx
#define APP_ARENA_SIZE {N}_ARENA_SIZE
#define APP_STATE_SIZE {N}_STATE_SIZE
#define APP_ALIGN {N}_ALIGN
#define APP_INPUT_SIZE {N}_INPUT_SIZE
#define APP_INIT {n}_init
#define APP_TRAIN_STEP {n}_train_step
#define APP_STEPS {int(steps)}
#define APP_NUM_SAMPLES {len(x)}
#define APP_LR {c_float(lr)}
#define APP_SEED {int(seed) & 0xFFFFFFFF}u
{profile}
extern const float app_samples[APP_NUM_SAMPLES][APP_INPUT_SIZE];
extern const int32_t app_labels[APP_NUM_SAMPLES];

#endif
""")
    rows = ",\n".join("    {" + ", ".join(c_float(v) for v in row) + "}" for row in x)
    (out / "tt_samples.c").write_text(
        "/* tt_samples.c: generated by tinytrain build: the training samples, const (in flash). */\n"
        '#include "tt_app.h"\n\n'
        f"const float app_samples[APP_NUM_SAMPLES][APP_INPUT_SIZE] = {{\n{rows}\n}};\n\n"
        f"const int32_t app_labels[APP_NUM_SAMPLES] = {{{', '.join(str(int(v)) for v in y)}}};\n")


# ---------------------------------------------------------------------------- build

@dataclass
class Firmware:
    elf: Path
    board: dict
    facts: dict
    flash_used: int
    ram_used: int              # static RAM including the reserved stack
    stack_reserved: int
    link_log: str = ""
    profile: bool = False
    plugin: Path = None        # linux-user: the instruction-counting QEMU plugin built for the host, if any

    @property
    def ram_static(self):
        return self.ram_used - self.stack_reserved

    def summary(self):
        b, f = self.board, self.facts
        if is_linux(b):
            return (f"{b['name']}: program {self.elf.name} (linked with the C library): code + constants "
                    f"{self.flash_used / 1024:.1f} KB, static data {self.ram_used / 1024:.1f} KB (arena "
                    f"{f['arena_size'] / 1024:.1f} KB, state {f['state_size'] / 1024:.1f} KB; the stack and the heap "
                    "not counted)")
        return (f"{b['name']}: flash {self.flash_used / 1024:.1f} KB of {b['flash'] / 1024:.0f} KB; RAM "
                f"{self.ram_used / 1024:.1f} KB of {b['sram'] / 1024:.0f} KB (arena {f['arena_size'] / 1024:.1f} KB, "
                f"state {f['state_size'] / 1024:.1f} KB, stack reserved {self.stack_reserved / 1024:.1f} KB, "
                f"other {(self.ram_static - f['arena_size'] - f['state_size'])} B)")


_UNITS = {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3}


def _memory_usage(text):
    """--print-memory-usage -> {region: used bytes}."""
    used = {}
    for region, value, unit in re.findall(r"^\s*(\w+):\s+(\d+)\s*(B|KB|MB|GB)\s", text, re.M):
        used[region] = int(value) * _UNITS[unit]
    return used


def _overflow_error(board, facts, stack, log):
    over = dict((r, int(b)) for r, b in re.findall(r"region `(\w+)' overflowed by (\d+) bytes", log))
    if "RAM" in over:
        size = board["sram"]
        need = size + over["RAM"]
        return TinytrainError(
            f"{board['name']}: the firmware needs {need / 1024:.1f} KB of RAM, the board has {size / 1024:.0f} KB "
            f"(arena {facts['arena_size'] / 1024:.1f} KB + state {facts['state_size'] / 1024:.1f} KB + stack "
            f"{stack / 1024:.1f} KB + the rest): the link fails with region `RAM' overflowed by {over['RAM']} bytes; "
            "compile with a smaller update scheme (--update sparse, bias, classifier) or check `tinytrain compile "
            f"--sram {size // 1024}k`")
    if "FLASH" in over:
        return TinytrainError(
            f"{board['name']}: the firmware needs {(board['flash'] + over['FLASH']) / 1024:.1f} KB of flash, the "
            f"board has {board['flash'] / 1024:.0f} KB (region `FLASH' overflowed by {over['FLASH']} bytes): fewer "
            "samples (--steps) or a smaller model")
    return None


def _run(cmd, what, file=None):
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if res.returncode != 0:
        raise TinytrainError(f"{what} failed:\n{(res.stdout + res.stderr)[-3000:]}", file=file)
    return res


def build(build_dir, board_name, name=None, x=None, y=None, steps=1, lr=0.02, seed=0, stack=None, graph=None,
          profile=False, force=False):
    """Cross-compile the project in build_dir (from `tinytrain compile`) with the
    board files and a training program over samples x (ONNX layout) and labels y
    (default: one zero sample, label 0) -> Firmware in build_dir/<board>/.
    profile: call main.c's app_profile before every node (per-node instructions)."""
    board = load_board(board_name)
    gcc = require_tool(board.get("compiler", "arm-none-eabi-gcc"), board)
    facts = model_facts(build_dir, name)
    nodes = len(profile_nodes(build_dir, facts["name"])) if profile else 0
    build_dir = Path(build_dir)
    from .outdir import in_place             # replaces the previous build's files only, records the new ones
    with in_place(build_dir / board["name"], force=force, command="build") as out:
        return _build(build_dir, out, board, gcc, facts, nodes, x, y, steps, lr, seed, stack, graph)


def _build(build_dir, out, board, gcc, facts, nodes, x, y, steps, lr, seed, stack, graph):
    if x is None:
        x, y = np.zeros((1, facts["input_size"]), np.float32), np.zeros(1, np.int64)
    else:
        x = to_device_layout(x, facts["input_size"], graph)
        if y is None:
            raise TinytrainError("training on the board needs labels: an array 'y'", field="y")
        x, y = x[:min(len(x), steps)], np.asarray(y)[:min(len(x), steps)]
    write_app(out, board, facts, x, y, steps, lr, seed, nodes)
    board_srcs = [(board["dir"] / s).resolve() for s in board["sources"]]
    cpu = list(board["cflags"])
    incs = [f"-I{out}", f"-I{build_dir}", f"-I{build_dir / 'runtime' / 'include'}",
            *dict.fromkeys(f"-I{s.parent}" for s in board_srcs)]
    srcs = [build_dir / f"{facts['name']}.c", *sorted((build_dir / "runtime" / "src").glob("*.c")), *board_srcs,
            out / "tt_samples.c"]
    objs = []
    for src in srcs:
        obj = out / (src.stem + ".o")
        forced = ["-include", out / "tt_profile.h"] if nodes and src == srcs[0] else []
        # a board's "opt_cflags" (after CFLAGS: its -O wins), e.g. -O3 for a phone's application core
        _run([gcc, *cpu, *CFLAGS, *board.get("opt_cflags", []), *incs, *forced, "-c", src, "-o", obj],
             f"{Path(gcc).name} ({src.name})", file=src)
        objs.append(obj)
    if is_linux(board):
        return _link_linux(board, gcc, facts, out, objs, bool(nodes))
    stack = int(stack or board.get("stack", DEFAULT_STACK))
    elf = out / "firmware.elf"
    cmd = [gcc, *cpu, "-T", board["dir"] / board["ldscript"], *(f"-L{s.parent}" for s in board_srcs), *LDFLAGS,
           f"-Wl,-Map={out / 'firmware.map'}", f"-Wl,--defsym=__stack_size__={stack}", *objs, "-lm", "-o", elf]
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    log = res.stdout + res.stderr
    (out / "link.log").write_text(log)
    if res.returncode != 0:
        raise _overflow_error(board, facts, stack, log) or TinytrainError(f"linking failed:\n{log[-3000:]}",
                                                                          file=elf)
    used = _memory_usage(res.stdout)
    return Firmware(elf, board, facts, used.get("FLASH", 0), used.get("RAM", 0), stack, log, bool(nodes))


def _host_plugin(board, out):
    """The board's QEMU TCG plugin (board.json "plugin", e.g. the instruction counter of
    linux-aarch64) built with the host's C compiler -> its .so, or None without one."""
    if not board.get("plugin"):
        return None
    cc = shutil.which("cc") or shutil.which("gcc")
    src = board["dir"] / board["plugin"]
    so = out / (src.stem + ".so")
    if cc is None or subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", str(src), "-o",
                                     str(so)], capture_output=True).returncode != 0:
        return None
    return so


def _link_linux(board, gcc, facts, out, objs, profile):
    """A Linux user-space program, linked as board.json's ldflags say (static: it runs under
    qemu-user or on the device without a sysroot); sizes from binutils' size."""
    prog = out / "train"
    res = subprocess.run([str(c) for c in [gcc, *board["cflags"], *board.get("ldflags", []),
                                           f"-Wl,-Map={out / 'train.map'}", *objs, "-lm", "-o", prog]],
                         capture_output=True, text=True)
    log = res.stdout + res.stderr
    (out / "link.log").write_text(log)
    if res.returncode != 0:
        raise TinytrainError(f"linking failed:\n{log[-3000:]}", file=prog)
    text = data = bss = 0
    size = shutil.which(str(gcc)[:-3] + "size") if str(gcc).endswith("gcc") else None
    if size:
        rows = subprocess.run([size, str(prog)], capture_output=True, text=True).stdout.splitlines()
        if len(rows) >= 2:
            text, data, bss = (int(v) for v in rows[1].split()[:3])
    return Firmware(prog, board, facts, text + data, data + bss, 0, log, profile, _host_plugin(board, out))


# ---------------------------------------------------------------------------- command line

# run --check's compile options: (flag, BuildOptions field, flag value -> field value)
_CHECK_FLAGS = (("--update", "update", None), ("--rounding", "rounding", None), ("--logit-range", "logit_range", None),
                ("--no-qas", "qas", lambda v: not v), ("--float-classifier", "float_classifier", None),
                ("--weight-headroom", "weight_headroom", None), ("--no-in-place", "in_place", lambda v: not v),
                ("--sram", "plan_sram", "size"), ("--trainer", "trainer", None), ("--eps", "eps", None),
                ("--queries", "queries", None), ("--model", "model", None), ("--calib", "calib", None))


def check_options(args, build_dir):
    """The options `tinytrain compile` recorded in build_dir (compiler/options.py build.json),
    with the flags given explicitly on top (a warning for each that contradicts the record).
    Without a record (an older build): the flags, with compile's defaults."""
    import sys
    from .compiler.options import BuildOptions, read_build
    rec = read_build(build_dir)
    opts = rec or BuildOptions()
    over = {}
    for flag, fld, conv in _CHECK_FLAGS:
        v = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if v is None:
            continue
        if conv == "size":
            from .memreport import parse_size
            try:
                v = parse_size(v)
            except ValueError as e:
                raise TinytrainError(str(e), field=flag) from None
        elif conv is not None:
            v = conv(v)
        if fld in ("model", "calib") or (fld == "update" and str(v).endswith(".json")):
            v = str(Path(v).resolve())
        if rec is not None and getattr(rec, fld) != v:
            print(f"tinytrain: warning: {flag} contradicts the build record {Path(build_dir) / 'build.json'} "
                  f"({fld} {getattr(rec, fld)!r}); using {v!r}", file=sys.stderr)
        over[fld] = v
    if rec is not None and over.get("plan_sram", rec.plan_sram) != rec.plan_sram:
        over.setdefault("sram", None)
    return opts.with_(**over), rec


def _graph_for_check(args, facts):
    """The training graph `tinytrain compile` made, rebuilt from the same model and
    options (the build record, or the flags); its signature must be the one in NAME.h.
    -> (graph, MezoTrainer or None, BuildOptions)"""
    from .api import load, quantize
    from .compiler.codegen.emit_c import signature
    from .compiler.options import sha256
    from .compiler.pipeline import training_graph
    from .data import load_calibration
    opts, rec = check_options(args, args.build_dir)
    if not opts.model:
        raise TinytrainError("--check replays the steps in the simulator: give the model and the options "
                             "`tinytrain compile` had (--model, --calib, --update, ...); a build compiled by this "
                             "version records them in build.json", field="--model")
    if not Path(opts.model).is_file():
        raise TinytrainError("the model this build was compiled from is gone: pass --model", file=opts.model)
    if rec is not None and args.model is None and rec.model_sha256 and sha256(opts.model) != rec.model_sha256:
        raise TinytrainError("the model changed since `tinytrain compile` (its sha256 differs from build.json's): "
                             "recompile, or pass --model", file=opts.model)
    g = load(opts.model, opts.input_shape)
    if g.t(g.inputs[0]).dtype != "int8":
        calib = opts.calib or args.data
        if not Path(calib).is_file():
            raise TinytrainError("the calibration file of this build is gone: pass --calib", file=calib)
        if rec is not None and args.calib is None and rec.calib_sha256 and sha256(calib) != rec.calib_sha256:
            raise TinytrainError("the calibration file changed since `tinytrain compile` (its sha256 differs from "
                                 "build.json's): recompile, or pass --calib", file=calib)
        cx = load_calibration(calib, g.meta["input_shape"], layout=opts.data_layout,   # as compile reads it
                              model_layout=g.meta.get("input_layout"))[0]
        g = quantize(g, cx, output_range=(-opts.logit_range, opts.logit_range))
    mezo = None
    if opts.trainer == "mezo":
        from .train.mezo import MezoTrainer
        mezo = MezoTrainer(g, opts.update, lr=args.lr, eps=opts.eps, queries=opts.queries, seed=args.seed)
        tg = mezo.graph                       # its meta["training"]: passes/zo_plan.py zo_training_meta
    else:
        from .compiler.pipeline import memory_plan
        tg = training_graph(g, options=opts)
        # patches (steered by --sram) and in-place depthwise, as compiled
        tg = memory_plan(tg, in_place=opts.in_place, sram=opts.steer_sram(), rounding=opts.rounding)[0]
    if signature(tg) != facts["signature"]:
        raise TinytrainError(f"the model, calibration and options given do not rebuild the graph compiled in "
                             f"{args.build_dir} (signature {signature(tg):08x}, {facts['name']}.h has "
                             f"{facts['signature']:08x}): pass the --model, --calib, --update, --logit-range, "
                             "--weight-headroom, --sram and --no-in-place given to `tinytrain compile` (and --trainer "
                             "mezo --eps for a MeZO library)", field="--check")
    return tg, mezo, opts


def cmd_build(args):
    fw = build(args.build_dir, args.board, args.name, stack=args.stack, profile=args.profile, force=args.force)
    print(fw.summary())
    if fw.board.get("real_board"):
        print(f"firmware: {fw.elf} (map: {fw.elf.with_suffix('.map')}); put it on the board with "
              f"`tinytrain flash {args.build_dir} --board {args.board}`")
        return 0
    print(f"firmware: {fw.elf} (map: {fw.elf.with_suffix('.map')}); the stack peak is measured by "
          f"`tinytrain run {args.build_dir} --board {args.board} --data ...`")
    return 0


def cmd_run(args):
    from .data import load_dataset
    from .qemu import compare_with_simulator, format_steps, run_firmware
    if load_board(args.board).get("real_board"):
        raise TinytrainError(f"{args.board} is a real board, QEMU cannot run it: use `tinytrain flash "
                             f"{args.build_dir} --board {args.board}` and read its serial port", field="--board")
    facts = model_facts(args.build_dir, args.name)
    tg, mezo, opts = _graph_for_check(args, facts) if args.check else (None, None, None)
    shape = tg.meta["input_shape"] if tg is not None else None
    if shape is None and Path(args.data).suffix.lower() == ".csv":
        shape = [1, facts["input_size"]]          # flat rows, taken in the device's (NHWC) order
    x, y = load_dataset(args.data, shape, need_labels=True)
    steps = args.steps or len(x)
    profile = args.profile is not None
    fw = build(args.build_dir, args.board, facts["name"], x, y, steps, args.lr, args.seed, args.stack, graph=tg,
               profile=profile, force=args.force)
    print(fw.summary())
    from .qemu import step_printer
    res = run_firmware(fw, timeout=args.timeout, on_line=step_printer())      # one line per step, live
    print(format_steps(res, fw.board, rows_shown=False))
    if is_linux(fw.board):
        print(f"stack peak {res.stack_peak} B below main (of {res.stack_size} B painted)")
    else:
        print(f"stack peak {res.stack_peak} B of {res.stack_size} B reserved; RAM static + stack peak "
              f"{(fw.ram_static + res.stack_peak) / 1024:.1f} KB of {fw.board['sram'] / 1024:.0f} KB")
    if profile:
        from .qemu import format_profile, profile_report
        report = profile_report(res, profile_nodes(args.build_dir, facts["name"]))
        report.update(board=fw.board["name"], model=facts["name"])
        print(format_profile(report))
        path = Path(args.profile) if args.profile else fw.elf.parent / "profile.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1) + "\n")
        print(f"profile: {path}")
    if args.check:
        n = min(len(x), steps)
        report = compare_with_simulator(tg, res, x[:n], y[:n], steps, args.lr, args.seed, opts.rounding,
                                        facts["name"], trainer=mezo)
        print(report)
    return 0


def add_board_commands(sub):
    """Register `tinytrain build` and `tinytrain run` on the CLI's subparsers."""
    from .compiler import hparams
    from .compiler.hparams import argtype
    s = sub.add_parser("build", help="cross-compile a compiled C project for a board: flash, RAM, stack")
    s.add_argument("build_dir", help="the output folder of `tinytrain compile`")
    s.add_argument("--board", required=True, help="a folder of boards/, e.g. qemu-mps2-an386, qemu-mps2-an500")
    s.add_argument("--name", help="the model's --name (default: the only model in the folder)")
    s.add_argument("--stack", type=int, help="bytes reserved for the stack (default: the board's)")
    s.add_argument("--profile", action="store_true",
                   help="define the model's profiling hook: the program prints instructions per node")
    s.add_argument("--force", action="store_true",
                   help="build into a BUILD_DIR/<board>/ that holds files tinytrain did not write, or over "
                        "generated files you edited (nothing else is deleted)")
    s.set_defaults(func=cmd_build)

    s = sub.add_parser("run", help="train on a board under QEMU: per-step loss, accuracy, instructions")
    s.add_argument("build_dir", help="the output folder of `tinytrain compile`")
    s.add_argument("--board", required=True, help="a folder of boards/ with a QEMU machine")
    s.add_argument("--name", help="the model's --name (default: the only model in the folder)")
    s.add_argument("--data", required=True,
                   help="labelled samples (.npz with x and y, or .csv), stored in flash; in the model's ONNX layout "
                        "(channels first; with --check the model's own input order is used)")
    s.add_argument("--steps", type=int, default=0, help="training steps; step s uses sample s mod N (default N)")
    s.add_argument("--lr", type=argtype(hparams.check_lr, "--lr"), default=0.02)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--stack", type=int, help="bytes reserved for the stack (default: the board's)")
    s.add_argument("--timeout", type=float, default=600, help="seconds before QEMU is stopped (default 600)")
    s.add_argument("--check", action="store_true",
                   help="replay the steps in the simulator: losses, classes and final weights bit for bit")
    s.add_argument("--profile", nargs="?", const="", metavar="OUT.json",
                   help="instructions per node and per phase (forward, backward, update, other), means over the "
                        "steps; JSON to OUT.json (default BUILD_DIR/<board>/profile.json)")
    # --check rebuilds the compiled graph from BUILD_DIR/build.json (what `tinytrain compile` recorded);
    # these flags override the record (older builds without one: compile's defaults)
    rec = " (default: the build record's)"
    s.add_argument("--model", help="with --check: the model given to `tinytrain compile`" + rec)
    s.add_argument("--calib", help="with --check: its calibration samples" + rec)
    s.add_argument("--update", help="with --check: the compile's --update" + rec)
    s.add_argument("--rounding", choices=["stochastic", "shadow"], help="with --check: the compile's" + rec)
    s.add_argument("--logit-range", type=argtype(hparams.check_logit_range, "--logit-range"),
                   help="with --check: the compile's" + rec)
    s.add_argument("--no-qas", action="store_true", default=None, help="with --check: the compile had --no-qas")
    s.add_argument("--float-classifier", action="store_true", default=None,
                   help="with --check: the compile had --float-classifier")
    s.add_argument("--weight-headroom", type=argtype(hparams.check_headroom, "--weight-headroom"),
                   help="with --check: the compile's" + rec)
    s.add_argument("--no-in-place", action="store_true", default=None, help="with --check: the compile had --no-in-place")
    s.add_argument("--sram", help="with --check: the compile's --sram (it steers the patching of the plan)" + rec)
    s.add_argument("--trainer", choices=["backprop", "mezo"],
                   help="with --check: the compile's --trainer (mezo: replay with the MeZO simulator)" + rec)
    s.add_argument("--eps", type=argtype(hparams.check_eps, "--eps", integer=True),
                   help="with --check --trainer mezo: the compile's --eps" + rec)
    s.add_argument("--queries", type=argtype(hparams.check_queries, "--queries", integer=True),
                   help="with --check --trainer mezo: the compile's --queries" + rec)
    s.add_argument("--force", action="store_true",
                   help="build into a BUILD_DIR/<board>/ that holds files tinytrain did not write, or over "
                        "generated files you edited (nothing else is deleted)")
    s.set_defaults(func=cmd_run)
