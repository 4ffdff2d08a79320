"""Flash a real board: `tinytrain flash BUILD_DIR --board stm32f746g-disco`.

Builds the firmware if needed (tinytrain/boards.py: the same build as the QEMU
boards, with the board's glue: UART console, DWT cycle counter, exit status
word), then programs it with pyOCD through the board's on-board debug probe
(the `pyocd` command, or `python -m pyocd` when only the module is installed):

    pyocd json --probes                      which probes are attached
    pyocd flash -t <target> -u <probe> --format elf firmware.elf

pyOCD is an optional dependency: `pip install 'tinytrain[boards]'`.  Every
failure is a one-line TinytrainError (CLI exit 2): pyOCD missing, no probe,
several probes and no --probe, a QEMU board, pyOCD's own error.
"""
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

from .compiler.errors import TinytrainError

PYOCD_HINT = "install it with: pip install 'tinytrain[boards]' (or pip install pyocd)"
EXIT_MAGIC = 0x54545845


def pyocd_command():
    """The pyocd CLI as an argv prefix, or a TinytrainError saying how to install it."""
    exe = shutil.which("pyocd")
    if exe is not None:
        return [exe]
    if importlib.util.find_spec("pyocd") is not None:
        return [sys.executable, "-m", "pyocd"]
    raise TinytrainError(f"pyocd is not installed: {PYOCD_HINT}")


def _pyocd(cmd, args, what, timeout):
    try:
        res = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise TinytrainError(f"pyocd {what} did not answer within {timeout:.0f} s") from None
    except OSError as e:
        raise TinytrainError(f"pyocd could not be started ({e}): {PYOCD_HINT}") from None
    return res


def _last_line(text):
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no output"


def list_probes(cmd, timeout=60):
    """[{unique_id, board_name, target, ...}] from `pyocd json --probes`."""
    res = _pyocd(cmd, ["json", "--probes"], "json --probes", timeout)
    try:
        obj = json.loads(res.stdout)
    except ValueError:
        raise TinytrainError(f"pyocd json --probes failed (exit {res.returncode}): "
                             f"{_last_line(res.stdout + res.stderr)}") from None
    if res.returncode != 0 or obj.get("status", 0) != 0:
        raise TinytrainError(f"pyocd could not list the debug probes: "
                             f"{_last_line(str(obj.get('error', '')) or res.stderr)}")
    return list(obj.get("boards", []))


def choose_probe(board, probes, wanted=None):
    name = board["name"]
    if not probes:
        raise TinytrainError(f"no debug probe attached: connect {name}'s debug USB port "
                             f"({board['flash_with'].get('probe', 'its on-board probe')}); `pyocd list` shows "
                             "what pyOCD sees (on Linux the probe also needs pyOCD's udev rules)")
    ids = [str(p.get("unique_id", "")) for p in probes]
    if wanted:
        if wanted not in ids:
            raise TinytrainError(f"no attached probe has the id '{wanted}' (attached: {', '.join(ids)})",
                                 field="--probe")
        return wanted
    if len(probes) > 1:
        raise TinytrainError(f"{len(probes)} debug probes attached ({', '.join(ids)}): choose one with --probe",
                             field="--probe")
    return ids[0]


def _up_to_date(elf, build_dir, name):
    if not elf.is_file():
        return False
    t = elf.stat().st_mtime
    sources = [build_dir / f"{name}.c", build_dir / f"{name}.h"]
    return all(not s.exists() or s.stat().st_mtime <= t for s in sources)


def symbol_address(elf, symbol):
    """The address of a symbol of the ELF (arm-none-eabi-nm), or None."""
    nm = shutil.which("arm-none-eabi-nm")
    if nm is None:
        return None
    res = subprocess.run([nm, str(elf)], capture_output=True, text=True)
    for line in res.stdout.splitlines():
        w = line.split()
        if len(w) == 3 and w[2] == symbol:
            return int(w[0], 16)
    return None


def flash(build_dir, board_name, name=None, probe=None, rebuild=False, x=None, y=None, steps=1, lr=0.02, seed=0,
          stack=None, graph=None, timeout=300):
    """Build (if needed) and program the firmware -> (Firmware or None, elf path, probe id)."""
    from .boards import build, load_board, model_facts
    board = load_board(board_name)
    if not board.get("real_board"):
        raise TinytrainError(f"{board['name']} is a QEMU board, there is nothing to flash: run it with "
                             f"`tinytrain run {build_dir} --board {board['name']} --data ...`", field="--board")
    cmd = pyocd_command()                                  # before a build that would be wasted
    probe = choose_probe(board, list_probes(cmd), probe)
    facts = model_facts(build_dir, name)
    elf = Path(build_dir) / board["name"] / "firmware.elf"
    fw = None
    if rebuild or x is not None or stack is not None or not _up_to_date(elf, Path(build_dir), facts["name"]):
        fw = build(build_dir, board["name"], facts["name"], x, y, steps, lr, seed, stack, graph=graph)
        elf = fw.elf
    target = board["flash_with"]["target"]
    res = _pyocd(cmd, ["flash", "-t", target, "-u", probe, "--format", "elf", str(elf)], "flash", timeout)
    if res.returncode != 0:
        pack = board["flash_with"].get("pack")
        hint = f" (the target {target} comes from a CMSIS pack: install it once with `{pack}`)" if pack else ""
        raise TinytrainError(f"pyocd flash -t {target} failed (exit {res.returncode}): "
                             f"{_last_line(res.stdout + res.stderr)}{hint}", file=elf)
    return fw, elf, probe


def cmd_flash(args):
    x = y = None
    steps = 1
    if args.data:
        from .boards import model_facts
        from .data import load_dataset
        facts = model_facts(args.build_dir, args.name)
        shape = [1, facts["input_size"]] if Path(args.data).suffix.lower() == ".csv" else None
        x, y = load_dataset(args.data, shape, need_labels=True)
        steps = args.steps or len(x)
    fw, elf, probe = flash(args.build_dir, args.board, args.name, args.probe, args.rebuild, x, y, steps, args.lr,
                           args.seed, args.stack)
    from .boards import load_board
    board = load_board(args.board)
    if fw is not None:
        print(fw.summary())
    print(f"flashed {elf} to {board['name']} through probe {probe} (pyocd target {board['flash_with']['target']}); "
          "the board is reset and runs")
    print(f"output: {board['console']}; e.g. `python -m serial.tools.miniterm /dev/ttyACM0 115200`")
    addr = symbol_address(elf, "tt_exit_status")
    if addr is not None:
        print(f"exit status: `pyocd cmd -t {board['flash_with']['target']} -u {probe} -c 'read32 {addr:#010x} 8'` "
              f"reads {{{EXIT_MAGIC:#x}, status}} once the program has ended (boards/README.md)")
    return 0


def add_flash_command(sub):
    """Register `tinytrain flash` on the CLI's subparsers."""
    s = sub.add_parser("flash", help="build and flash a real board (pyOCD): stm32f746g-disco, nrf52840-dk")
    s.add_argument("build_dir", help="the output folder of `tinytrain compile`")
    s.add_argument("--board", required=True, help="a real board of boards/: stm32f746g-disco, nrf52840-dk")
    s.add_argument("--name", help="the model's --name (default: the only model in the folder)")
    s.add_argument("--probe", help="the debug probe's unique id (`pyocd list`), when several are attached")
    s.add_argument("--data", help="labelled samples (.npz with x and y, or .csv) stored in flash for the training "
                                  "run (default: one zero sample)")
    s.add_argument("--steps", type=int, default=0, help="training steps; step s uses sample s mod N (default N)")
    s.add_argument("--lr", type=float, default=0.02)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--stack", type=int, help="bytes reserved for the stack (default: the board's)")
    s.add_argument("--rebuild", action="store_true", help="build even when the firmware is up to date")
    s.set_defaults(func=cmd_flash)

