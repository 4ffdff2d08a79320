"""Build a small C shared library for a test and load it with cffi; the cffi
declarations come from the runtime's own header (header_cdef), so they cannot
drift from the C prototypes."""
import re
import subprocess
from pathlib import Path

import cffi

ROOT = Path(__file__).resolve().parent.parent
INCLUDE = ROOT / "runtime_c" / "include"
# every runtime source file (one truth: the folder, as the emitted packages and the host build glob it)
RUNTIME_SOURCES = sorted((ROOT / "runtime_c" / "src").glob("*.c"))
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


def _strip_inline_functions(text):
    """Drop every `static inline ... { ... }` definition (cffi takes declarations only)."""
    out, i = [], 0
    for m in re.finditer(r"static\s+inline\b", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        j = text.index("{", m.end())
        depth = 0
        while True:
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        i = j + 1
    out.append(text[i:])
    return "".join(out)


def header_cdef(header=INCLUDE / "tt_kernels.h"):
    """The typedefs and function prototypes of a runtime header, for ffi.cdef: comments,
    preprocessor lines, the extern "C" wrapper and static inline helpers removed; what is
    left is the header's own declarations, verbatim."""
    text = re.sub(r"/\*.*?\*/", " ", Path(header).read_text(), flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    text = re.sub(r'extern\s+"C"\s*\{', " ", text)
    text = _strip_inline_functions(text)
    lines = [line for line in text.splitlines() if line.strip() and line.strip() != "}"]   # extern "C"'s end
    return "\n".join(lines) + "\n"
