"""Build a small C shared library for a test and load it with cffi."""
import subprocess
from pathlib import Path

import cffi

ROOT = Path(__file__).resolve().parent.parent
INCLUDE = ROOT / "runtime_c" / "include"
CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-ffp-contract=off", "-fPIC", "-shared"]


def build(sources, cdef, out_dir, name="shim", extra=()):
    ffi = cffi.FFI()
    ffi.cdef(cdef)
    lib_path = Path(out_dir) / f"lib{name}.so"
    cmd = ["gcc", *CFLAGS, *extra, f"-I{INCLUDE}", *map(str, sources), "-o", str(lib_path)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}\n{res.stderr}")
    return ffi, ffi.dlopen(str(lib_path))
