"""packages: the emitted C library as the packages embedded users build with.

Written beside <name>.c / <name>.h / runtime/ (the folder `out` of emit / emit_mezo):

  CMakeLists.txt                      add_subdirectory(out) -> targets <name> and tinytrain_runtime
  sources.mk                          TT_<NAME>_SRCS / _INCS / _CFLAGS for plain Makefiles
  library.json                        PlatformIO library (srcDir ., a srcFilter, the flags)
  zephyr/module.yml, CMakeLists.txt,  Zephyr module (zephyr_library, CONFIG_TINYTRAIN_<NAME>)
         Kconfig
  arduino/tinytrain_<name>/           Arduino library: library.properties, src/ (every source
                                      flattened into one folder), examples/<Name>Train/<Name>Train.ino

Every package compiles the library's sources with the float rules of the simulator: no
contraction into fused multiply-add (-ffp-contract=off) and no fast-math, whatever the
project's own flags are (GCC's GNU modes, e.g. -std=gnu11, contract by default).  Arduino
has no per-library flags, so its copies of the sources start with a pragma that does the
same.  Only text is written; nothing here runs a compiler.  docs/packaging.md describes the
layout and how each is used.
"""
import json
from pathlib import Path

import numpy as np

from ..errors import TinytrainError
from .cformat import check_name, comment_text

KINDS = ("cmake", "make", "platformio", "zephyr", "arduino")
# flags the library's own sources need (GCC / Clang); the project's other flags are its own
FLOAT_FLAGS = ["-fno-fast-math", "-ffp-contract=off"]
# the first lines of every Arduino copy: the same rule as FLOAT_FLAGS, from inside the file
ARDUINO_PROLOGUE = """\
/* tinytrain: float arithmetic in the order of the simulator (Arduino has no per-library flags) */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize ("fp-contract=off")
#endif
"""


def parse_kinds(spec):
    """'all' | 'none' | a comma list of KINDS -> tuple of kinds (in KINDS order)."""
    spec = (spec or "").strip().lower()
    if spec in ("all", ""):
        return KINDS
    if spec == "none":
        return ()
    got = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in got if s not in KINDS]
    if bad:
        raise TinytrainError(f"unknown package '{bad[0]}': use all, none or a comma list of {', '.join(KINDS)}",
                             field="--package")
    return tuple(k for k in KINDS if k in got)


def describe(out, written):
    """The top-level entries written, for the CLI: 'CMakeLists.txt, sources.mk, zephyr/, ...'."""
    out, seen = Path(out), []
    for p in written:
        parts = Path(p).relative_to(out).parts
        item = parts[0] if len(parts) == 1 else (parts[0] + "/" + (parts[1] + "/" if parts[0] == "arduino" else ""))
        if item not in seen:
            seen.append(item)
    return ", ".join(seen)


def input_range(graph):
    """The float range the model's int8 input covers: (lo, hi)."""
    t = graph.t(graph.inputs[0])
    if t.q is None:
        return -1.0, 1.0
    s, zp = float(np.asarray(t.q.scale).reshape(-1)[0]), int(np.asarray(t.q.zero_point).reshape(-1)[0])
    return (-128 - zp) * s, (127 - zp) * s


def camel(name):
    """kws -> Kws, my_model -> MyModel (Arduino example names)."""
    return "".join(p[:1].upper() + p[1:] for p in name.split("_") if p) or "Model"


def write_packages(out, facts, graph=None, kinds=KINDS, version="0.1.0"):
    """Write the packages for the library in `out` (already emitted).  -> list of written paths.
    facts: the dict emit / emit_mezo return (name, input, classes, trainer); graph: for the
    input range of the example sketch."""
    out = Path(out)
    name = facts["name"]
    lib = Lib(out, name, facts, graph, version)
    written = []
    for kind in kinds:
        written += getattr(lib, kind)()
    return written


class Lib:
    def __init__(self, out, name, facts, graph, version):
        self.out, self.name, self.NAME, self.facts, self.version = out, check_name(name), name.upper(), facts, version
        if not (out / f"{name}.c").is_file() or not (out / "runtime" / "src").is_dir():
            raise TinytrainError(f"no emitted library '{name}' in {out} (run emit first)", field="output")
        self.runtime_src = sorted(p.name for p in (out / "runtime" / "src").glob("*.c"))
        self.runtime_inc = sorted(p.name for p in (out / "runtime" / "include").glob("*.h"))
        src = graph.meta.get("source") if graph is not None else None
        self.source = comment_text(Path(str(src)).name) if src else "an ONNX model"   # comments / free text only
        self.range = input_range(graph) if graph is not None else (-1.0, 1.0)
        self.mezo = facts.get("trainer") == "mezo"

    def _write(self, rel, text):
        p = self.out / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return p

    def _banner(self, c="#"):
        return (f"{c} generated by tinytrain {self.version} for the training library '{self.name}' "
                f"({self.source}); regenerate, do not edit\n")

    # -- CMake ------------------------------------------------------------------------------------
    def cmake(self):
        n = self.name
        opts = "\n".join(f"  $<$<C_COMPILER_ID:GNU,Clang,AppleClang,ARMClang>:{f}>" for f in FLOAT_FLAGS)
        rt = "\n".join(f'    "${{CMAKE_CURRENT_SOURCE_DIR}}/runtime/src/{f}"' for f in self.runtime_src)
        text = f"""{self._banner()}#
#   add_subdirectory(path/to/this/folder {n})     # from your project
#   target_link_libraries(app PRIVATE tinytrain::{n})
#
# Two static libraries: {n} ({n}.c, include directory: this folder) and tinytrain_runtime (the
# kernels, runtime/; defined once however many tinytrain models the build adds).  Their sources
# are compiled as C99 with no fused multiply-add contraction and no fast-math (the float order of
# tinytrain's simulator); your targets keep their own flags.  Works with any toolchain file
# (e.g. arm-none-eabi-gcc with -mcpu=cortex-m4 -mfloat-abi=hard).
cmake_minimum_required(VERSION 3.15)
project({n} LANGUAGES C)

set(TT_{self.NAME}_C_OPTIONS
{opts})

if(NOT TARGET tinytrain_runtime)
  add_library(tinytrain_runtime STATIC
{rt})
  target_include_directories(tinytrain_runtime PUBLIC "${{CMAKE_CURRENT_SOURCE_DIR}}/runtime/include")
  target_compile_options(tinytrain_runtime PRIVATE ${{TT_{self.NAME}_C_OPTIONS}})
  set_target_properties(tinytrain_runtime PROPERTIES C_STANDARD 99 C_STANDARD_REQUIRED ON C_EXTENSIONS OFF)
  if(NOT MSVC AND CMAKE_C_COMPILER_ID MATCHES "^(GNU|Clang|AppleClang)$")
    target_link_libraries(tinytrain_runtime PUBLIC m)   # floorf
  endif()
endif()

add_library({n} STATIC "${{CMAKE_CURRENT_SOURCE_DIR}}/{n}.c")
add_library(tinytrain::{n} ALIAS {n})
target_include_directories({n} PUBLIC "${{CMAKE_CURRENT_SOURCE_DIR}}")
target_link_libraries({n} PUBLIC tinytrain_runtime)
target_compile_options({n} PRIVATE ${{TT_{self.NAME}_C_OPTIONS}})
set_target_properties({n} PROPERTIES C_STANDARD 99 C_STANDARD_REQUIRED ON C_EXTENSIONS OFF)
"""
        return [self._write("CMakeLists.txt", text)]

    # -- plain Make -------------------------------------------------------------------------------
    def make(self):
        N = f"TT_{self.NAME}"
        rt = " \\\n    ".join(f"$({N}_DIR)runtime/src/{f}" for f in self.runtime_src)
        text = f"""{self._banner()}#
#   include path/to/this/folder/sources.mk
#   OBJS += $(patsubst %.c,build/%.o,$(notdir $({N}_SRCS)))     (any object naming you like)
#   CFLAGS += $(addprefix -I,$({N}_INCS))
#   $({N}_OBJS_OF_YOURS): CFLAGS += $({N}_CFLAGS)       (the library's sources only)
#
# {N}_MODEL_SRCS is {self.name}.c, {N}_RUNTIME_SRCS the kernels: with two tinytrain models in one
# firmware, compile the runtime of one of them only.  {N}_CFLAGS: C99, no fused multiply-add
# contraction, no fast-math (the float order of tinytrain's simulator); add your -mcpu / -O2.
{N}_DIR := $(dir $(lastword $(MAKEFILE_LIST)))
{N}_MODEL_SRCS := $({N}_DIR){self.name}.c
{N}_RUNTIME_SRCS := \\
    {rt}
{N}_SRCS := $({N}_MODEL_SRCS) $({N}_RUNTIME_SRCS)
{N}_INCS := $({N}_DIR). $({N}_DIR)runtime/include
{N}_CFLAGS := -std=c99 {' '.join(FLOAT_FLAGS)}
"""
        return [self._write("sources.mk", text)]

    # -- PlatformIO -------------------------------------------------------------------------------
    def platformio(self):
        doc = {
            "name": f"tinytrain_{self.name}",
            "version": self.version,
            "description": f"On-device training library '{self.name}' generated by tinytrain from {self.source}: "
                           f"train_step / predict / save / load, caller-owned buffers, no malloc",
            "keywords": ["tinyml", "on-device-training", "int8", "tinytrain"],
            "license": "Apache-2.0",
            "frameworks": "*",
            "platforms": "*",
            "headers": f"{self.name}.h",
            "build": {
                "srcDir": ".",
                "includeDir": "runtime/include",
                "srcFilter": ["-<*>", f"+<{self.name}.c>", "+<runtime/src/*.c>"],
                "flags": ["-std=c99"] + FLOAT_FLAGS,
                "libArchive": True,
            },
        }
        return [self._write("library.json", json.dumps(doc, indent=2) + "\n")]

    # -- Zephyr -----------------------------------------------------------------------------------
    def zephyr(self):
        n, cfg = self.name, f"TINYTRAIN_{self.NAME}"
        opts = " ".join(FLOAT_FLAGS)
        rt = "\n".join(f'      "${{TT_{self.NAME}_DIR}}/runtime/src/{f}"' for f in self.runtime_src)
        module = f"""{self._banner()}name: tinytrain_{n}
build:
  cmake: zephyr
  kconfig: zephyr/Kconfig
"""
        cmake = f"""{self._banner()}#
# Zephyr module: west.yml, or -DZEPHYR_EXTRA_MODULES=<the folder above this one>, then
# CONFIG_{cfg}=y in prj.conf and #include "{n}.h" in the application.
if(CONFIG_{cfg})
  set(TT_{self.NAME}_DIR "${{CMAKE_CURRENT_LIST_DIR}}/..")
  if(NOT TARGET tinytrain_runtime)
    zephyr_library_named(tinytrain_runtime)
    zephyr_library_sources(
{rt})
    zephyr_library_compile_options({opts})
    zephyr_include_directories("${{TT_{self.NAME}_DIR}}/runtime/include")
  endif()
  zephyr_library_named(tinytrain_{n})
  zephyr_library_sources("${{TT_{self.NAME}_DIR}}/{n}.c")
  zephyr_library_compile_options({opts})
  zephyr_include_directories("${{TT_{self.NAME}_DIR}}")
endif()
"""
        f = self.facts
        kconfig = f"""{self._banner()}
config {cfg}
\tbool "tinytrain training library {n}"
\tselect REQUIRES_FULL_LIBC
\thelp
\t  The on-device training library '{n}' generated by tinytrain from
\t  {self.source}: {n}_init / {n}_train_step / {n}_predict / {n}_save / {n}_load.
\t  The application owns the buffers: {f.get('arena', '?')} bytes of arena
\t  ({self.NAME}_ARENA_SIZE) and {f.get('state', '?')} bytes of learned state ({self.NAME}_STATE_SIZE).
\t  Needs floorf from the C library (not in the minimal libc).
"""
        return [self._write("zephyr/module.yml", module), self._write("zephyr/CMakeLists.txt", cmake),
                self._write("zephyr/Kconfig", kconfig)]

    # -- Arduino ----------------------------------------------------------------------------------
    def arduino(self):
        lib = f"tinytrain_{self.name}"
        root = self.out / "arduino" / lib
        src = root / "src"
        src.mkdir(parents=True, exist_ok=True)   # nothing deleted: tinytrain/outdir.py replaces old copies
        written = []
        files = [(self.out / f"{self.name}.h", f"{self.name}.h"), (self.out / f"{self.name}.c", f"{self.name}.c")]
        files += [(self.out / "runtime" / "include" / h, h) for h in self.runtime_inc]
        files += [(self.out / "runtime" / "src" / c, c) for c in self.runtime_src]
        for path, base in files:
            text = path.read_text()
            if base.endswith(".c"):
                text = ARDUINO_PROLOGUE + f'#line 1 "{base}"\n' + text
            written.append(self._write(Path("arduino") / lib / "src" / base, text))
        props = (f"name={lib}\nversion={self.version}\nauthor=tinytrain\nmaintainer=tinytrain\n"
                 f"sentence=On-device training library '{self.name}' generated by tinytrain from {self.source}.\n"
                 f"paragraph=Trains the int8 model on the board: {self.name}_train_step, {self.name}_predict, "
                 f"{self.name}_save / {self.name}_load. Caller-owned buffers, no malloc. Needs a 32-bit board.\n"
                 f"category=Data Processing\nurl=\narchitectures=*\n"
                 f"includes={self.name}.h\n")
        written.append(self._write(Path("arduino") / lib / "library.properties", props))
        ex = camel(self.name) + "Train"
        written.append(self._write(Path("arduino") / lib / "examples" / ex / f"{ex}.ino", self._sketch(ex)))
        return written

    def _sketch(self, ex):
        n, N, f = self.name, self.NAME, self.facts
        lo, hi = (float(np.float32(v)) for v in self.range)
        half = float(np.float32(0.1 * (hi - lo)))
        mid = float(np.float32(min(max(0.0, lo + half), hi - half)))
        lr = "0.0001f" if self.mezo else "0.02f"
        return f"""/* {ex}: trains the tinytrain library '{n}' ({self.source}) on the board and prints the
 * loss over Serial.  The samples are synthetic (one fixed random pattern per class plus noise,
 * inside the model's input range): replace make_sample() with your sensor data.
 * Generated by tinytrain {self.version}; an example, edit freely.
 *
 * Memory: {N}_ARENA_SIZE = {f.get('arena', '?')} bytes of arena, {N}_STATE_SIZE = {f.get('state', '?')} bytes of
 * learned state (save it with {n}_save, see {n}.h).
 */
#include <{n}.h>

#define TRAIN_STEPS 40
#define LEARNING_RATE {lr}{"   /* MeZO: much smaller than backprop's */" if self.mezo else ""}

/* synthetic samples: values in [INPUT_MID - INPUT_HALF, INPUT_MID + INPUT_HALF], a tenth of the
   range the model's int8 input covers ({lo:.4g} to {hi:.4g}) either side, around 0 when it fits */
static const float INPUT_MID = {mid!r}f;
static const float INPUT_HALF = {half!r}f;

static {n}_ctx ctx;
alignas({N}_ALIGN) static uint8_t arena[{N}_ARENA_SIZE];
alignas({N}_ALIGN) static uint8_t state[{N}_STATE_SIZE];
static float sample[{N}_INPUT_SIZE];
static uint32_t noise = 12345u;
static uint32_t step_no = 0;
static int failed = 0;

static uint32_t xorshift32(uint32_t *s)
{{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *s = x;
    return x;
}}

static float unit(uint32_t *s)          /* uniform in [0, 1) */
{{
    return (float)(xorshift32(s) >> 8) * (1.0f / 16777216.0f);
}}

static void make_sample(int32_t label)
{{
    uint32_t pattern = 0x9E3779B9u * (uint32_t)(label + 1);      /* the same pattern for a class every time */
    for (int i = 0; i < {N}_INPUT_SIZE; ++i) {{
        const float v = 0.85f * (2.0f * unit(&pattern) - 1.0f) + 0.3f * (unit(&noise) - 0.5f);
        sample[i] = INPUT_MID + INPUT_HALF * v;
    }}
}}

void setup()
{{
    Serial.begin(115200);
    while (!Serial && millis() < 3000) {{
    }}
    const int rc = {n}_init(&ctx, arena, sizeof arena, state, sizeof state, LEARNING_RATE, 1u, 0);
    if (rc != {N}_OK) {{
        Serial.print("{n}_init failed: ");
        Serial.println(rc);
        failed = 1;
        return;
    }}
    Serial.print("{n}: training ");
    Serial.print(TRAIN_STEPS);
    Serial.print(" steps on ");
    Serial.print({N}_NUM_CLASSES);
    Serial.println(" synthetic classes");
}}

void loop()
{{
    if (failed || step_no >= TRAIN_STEPS) {{
        return;
    }}
    const int32_t label = (int32_t)(step_no % {N}_NUM_CLASSES);
    float loss = 0.0f;
    int32_t predicted = -1;
    make_sample(label);
    const int rc = {n}_train_step(&ctx, sample, label, &loss, &predicted);
    if (rc != {N}_OK) {{
        Serial.print("{n}_train_step failed: ");
        Serial.println(rc);
        failed = 1;
        return;
    }}
    Serial.print("step ");
    Serial.print(step_no);
    Serial.print(" label ");
    Serial.print(label);
    Serial.print(" predicted ");
    Serial.print(predicted);
    Serial.print(" loss ");
    Serial.println(loss, 4);
    step_no += 1;
    if (step_no == TRAIN_STEPS) {{
        int correct = 0;
        for (int32_t c = 0; c < {N}_NUM_CLASSES; ++c) {{
            make_sample(c);
            if ({n}_predict(&ctx, sample, nullptr, &predicted) == {N}_OK && predicted == c) {{
                correct += 1;
            }}
        }}
        Serial.print("done steps ");
        Serial.print(ctx.steps);
        Serial.print(" correct ");
        Serial.print(correct);
        Serial.print(" of ");
        Serial.println({N}_NUM_CLASSES);
    }}
}}
"""
