"""Packages: `tinytrain compile` also writes the library as a CMake project, a plain sources.mk,
a PlatformIO library.json, a Zephyr module and an Arduino library with a sketch that trains.

Each is built here the way its tool builds it.  CMake and Make run for real (host gcc and
arm-none-eabi-gcc for a Cortex-M4F).  The Arduino IDE, PlatformIO and Zephyr are not installed:
the Arduino library is built as arduino-builder does (the .ino as C++ after `#include <Arduino.h>`,
src/ as the only include path, a stub Arduino.h written here), PlatformIO's library.json is
resolved by hand (srcDir, srcFilter, includeDir, flags) and compiled, and the Zephyr module's
CMakeLists.txt runs under a few lines of CMake standing in for Zephyr's zephyr_library_* functions.
Every Cortex-M build is checked for fused multiply-adds: none may appear (the simulator's float
order), although the projects' own flags (GNU C modes, even -ffast-math) would create them.
"""
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tinytrain.cli import main

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "imu_cnn.onnx"
DATA = ROOT / "models" / "data" / "basicmotions_train.npz"
NAME = "kws"
ARM = ["-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"]
STEPS = 24


def _needs(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    return pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not installed")


needs_cmake = _needs("cmake", "make", "gcc")
needs_arm = _needs("arm-none-eabi-gcc", "arm-none-eabi-g++", "arm-none-eabi-objdump", "arm-none-eabi-ar")


def run(cmd, cwd=None, timeout=300):
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def fused_ops(obj):
    """Fused multiply-add instructions (vfma, vfms, vfnma, vfnms) in an ARM object or archive."""
    return len(re.findall(r"\tvfn?m[as]\.", run(["arm-none-eabi-objdump", "-d", obj])))


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    out = tmp_path_factory.mktemp("pkg") / "kws_out"
    assert main(["compile", str(MODEL), "--calib", str(DATA), "--name", NAME, "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def lib2(tmp_path_factory):
    """A second model in one firmware, compiled with --package cmake only."""
    out = tmp_path_factory.mktemp("pkg2") / "vww_out"
    assert main(["compile", str(MODEL), "--calib", str(DATA), "--name", "vww", "--update", "classifier",
                 "--package", "cmake", "-o", str(out)]) == 0
    return out


MAIN_C = r"""
#include <math.h>
#include <stdio.h>
#include "kws.h"
#ifdef WITH_VWW
#include "vww.h"
#endif

static kws_ctx ctx;
static uint8_t arena[KWS_ARENA_SIZE] __attribute__((aligned(KWS_ALIGN)));
static uint8_t state[KWS_STATE_SIZE] __attribute__((aligned(KWS_ALIGN)));
static float x[KWS_INPUT_SIZE];

static void sample(int32_t label, uint32_t noise)
{
    uint32_t p = 0x9E3779B9u * (uint32_t)(label + 1), i;
    for (i = 0; i < KWS_INPUT_SIZE; ++i) {
        p ^= p << 13; p ^= p >> 17; p ^= p << 5;
        noise ^= noise << 13; noise ^= noise >> 17; noise ^= noise << 5;
        x[i] = 4.0f * (float)(p >> 8) / 16777216.0f - 2.0f + 0.5f * (float)(noise >> 8) / 16777216.0f;
    }
}

int main(void)
{
    int32_t s, pred = -1;
    float loss = 0.0f;
    int rc = kws_init(&ctx, arena, sizeof arena, state, sizeof state, 0.02f, 1u, 0);
    if (rc != KWS_OK) { printf("init %d\n", rc); return 1; }
    for (s = 0; s < STEPS; ++s) {
        sample(s % KWS_NUM_CLASSES, 77u + (uint32_t)s);
        rc = kws_train_step(&ctx, x, s % KWS_NUM_CLASSES, &loss, &pred);
        if (rc != KWS_OK) { printf("train_step %d\n", rc); return 2; }
        printf("step %d loss %a pred %d\n", (int)s, (double)loss, (int)pred);
    }
    sample(1, 5u);
    rc = kws_predict(&ctx, x, NULL, &pred);
    printf("predict %d %d\nsteps %d\n", rc, (int)pred, (int)ctx.steps);
#ifdef WITH_VWW
    {
        static vww_ctx c2;
        static uint8_t a2[VWW_ARENA_SIZE] __attribute__((aligned(VWW_ALIGN)));
        static uint8_t s2[VWW_STATE_SIZE] __attribute__((aligned(VWW_ALIGN)));
        rc = vww_init(&c2, a2, sizeof a2, s2, sizeof s2, 0.02f, 1u, 0);
        rc = rc ? rc : vww_train_step(&c2, x, 0, &loss, &pred);
        printf("vww %d %a\n", rc, (double)loss);
    }
#endif
    return 0;
}
"""

USER_CMAKE = """cmake_minimum_required(VERSION 3.15)
project(user_app C)
add_subdirectory(${TT_LIB} kws)
add_executable(app main.c)
target_compile_definitions(app PRIVATE STEPS=%d)
target_link_libraries(app PRIVATE tinytrain::kws)
""" % STEPS

TOOLCHAIN = f"""set(CMAKE_SYSTEM_NAME Generic)
set(CMAKE_SYSTEM_PROCESSOR arm)
set(CMAKE_C_COMPILER arm-none-eabi-gcc)
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)
# a project whose own flags are GNU C with fast-math: the library must still get the simulator's float order
set(CMAKE_C_FLAGS_INIT "{' '.join(ARM)} -O2 -std=gnu11 -ffast-math")
set(CMAKE_EXE_LINKER_FLAGS_INIT "--specs=nosys.specs")
"""


def _steps(stdout):
    return [(int(m[1]), float.fromhex(m[2]), int(m[3])) for m in re.finditer(r"step (\d+) loss (\S+) pred (-?\d+)",
                                                                          stdout)]


def _commands(build):
    """compile_commands.json -> {source file name: command}."""
    return {Path(c["file"]).name: c["command"] for c in json.loads((build / "compile_commands.json").read_text())}


@needs_cmake
def test_cmake_add_subdirectory_host_build_trains(lib, lib2, tmp_path):
    """A user project add_subdirectory()s two models (the runtime target is defined once),
    builds with the host gcc and trains through both."""
    assert (lib2 / "CMakeLists.txt").is_file()
    for absent in ("sources.mk", "library.json", "zephyr", "arduino"):      # --package cmake
        assert not (lib2 / absent).exists(), absent
    user = tmp_path / "user"
    user.mkdir()
    (user / "CMakeLists.txt").write_text(USER_CMAKE + f"add_subdirectory({lib2} vww)\n"
                                         "target_link_libraries(app PRIVATE tinytrain::vww)\n"
                                         "target_compile_definitions(app PRIVATE WITH_VWW)\n")
    (user / "main.c").write_text(MAIN_C)
    b = tmp_path / "b"
    run(["cmake", "-S", user, "-B", b, f"-DTT_LIB={lib}", "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON"])
    run(["cmake", "--build", b, "-j", "1"])
    stdout = run([b / "app"], timeout=120)
    steps = _steps(stdout)
    assert [s for s, _, _ in steps] == list(range(STEPS)), stdout
    assert all(math.isfinite(loss) and loss > 0 for _, loss, _ in steps), stdout
    assert all(0 <= p < 4 for _, _, p in steps)
    assert len({loss for _, loss, _ in steps}) > 1          # it is really computing
    assert re.search(r"predict 0 [0-3]\nsteps %d\n" % STEPS, stdout), stdout
    m = re.search(r"vww 0 (\S+)", stdout)
    assert m and math.isfinite(float.fromhex(m[1])), stdout
    # the library's sources get C99 and the float flags; the user's main.c keeps its own
    cmds = _commands(b)
    for f in [f"{NAME}.c", "vww.c"] + [p.name for p in (lib / "runtime" / "src").glob("*.c")]:
        assert "-std=c99" in cmds[f] and "-ffp-contract=off" in cmds[f] and "-fno-fast-math" in cmds[f], cmds[f]
    assert "-ffp-contract=off" not in cmds["main.c"]


@needs_cmake
@needs_arm
def test_cmake_cortex_m4_toolchain_file(lib, tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "CMakeLists.txt").write_text(USER_CMAKE)
    (user / "main.c").write_text(MAIN_C)
    (tmp_path / "arm.cmake").write_text(TOOLCHAIN)
    b = tmp_path / "b"
    run(["cmake", "-S", user, "-B", b, f"-DTT_LIB={lib}", f"-DCMAKE_TOOLCHAIN_FILE={tmp_path / 'arm.cmake'}",
         "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON"])
    run(["cmake", "--build", b, "-j", "1", "--target", NAME, "tinytrain_runtime"])
    libs = [b / "kws" / f"lib{NAME}.a", b / "kws" / "libtinytrain_runtime.a"]
    for a in libs:
        assert "elf32-littlearm" in run(["arm-none-eabi-objdump", "-f", a])
        assert fused_ops(a) == 0, a
    # the whole firmware links too (newlib's libm for floorf, nosys stubs)
    run(["cmake", "--build", b, "-j", "1"])
    assert "elf32-littlearm" in run(["arm-none-eabi-objdump", "-f", b / "app"])
    assert "-ffast-math" in _commands(b)[f"{NAME}.c"]      # the project's flag was there, and lost


MAKEFILE = """include {rel}/sources.mk
CC := arm-none-eabi-gcc
AR := arm-none-eabi-ar
CFLAGS := {arm} -O2 -std=gnu11 -Wall -Wextra -Werror
TT_OBJS := $(patsubst %.c,obj/%.o,$(notdir $(TT_KWS_SRCS)))
vpath %.c $(sort $(dir $(TT_KWS_SRCS)))
CFLAGS += $(addprefix -I,$(TT_KWS_INCS))
$(TT_OBJS): CFLAGS += $(TT_KWS_CFLAGS)

libkws.a: $(TT_OBJS)
\t$(AR) rcs $@ $^
obj/%.o: %.c | obj
\t$(CC) $(CFLAGS) -c $< -o $@
obj:
\tmkdir -p $@
"""


@needs_arm
@_needs("make")
def test_sources_mk_cortex_m4_werror(lib, tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "Makefile").write_text(MAKEFILE.format(rel=os.path.relpath(lib, proj), arm=" ".join(ARM)))
    run(["make", "-C", proj, "-j1"])
    members = set(run(["arm-none-eabi-ar", "t", proj / "libkws.a"]).split())
    expected = {f"{NAME}.o"} | {p.stem + ".o" for p in (lib / "runtime" / "src").glob("*.c")}
    assert members == expected
    assert fused_ops(proj / "libkws.a") == 0
    mk = (lib / "sources.mk").read_text()
    for var in ("TT_KWS_SRCS", "TT_KWS_INCS", "TT_KWS_CFLAGS", "TT_KWS_RUNTIME_SRCS", "TT_KWS_MODEL_SRCS"):
        assert re.search(rf"^{var} :=", mk, re.M), var


ARDUINO_H = r"""/* a stand-in for the Arduino core: what the example sketch uses, printing to stdout */
#ifndef ARDUINO_H
#define ARDUINO_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
class StubSerial {
public:
    void begin(unsigned long) {}
    explicit operator bool() const { return true; }
    size_t print(const char *s) { return (size_t)printf("%s", s); }
    size_t print(int v) { return (size_t)printf("%d", v); }
    size_t print(unsigned int v) { return (size_t)printf("%u", v); }
    size_t print(long v) { return (size_t)printf("%ld", v); }
    size_t print(unsigned long v) { return (size_t)printf("%lu", v); }
    size_t print(double v, int digits = 2) { return (size_t)printf("%.*f", digits, v); }
    size_t println() { return (size_t)printf("\n"); }
    template <typename T> size_t println(T v) { size_t n = print(v); return n + println(); }
    size_t println(double v, int digits) { size_t n = print(v, digits); return n + println(); }
};
extern StubSerial Serial;
unsigned long millis(void);
void setup(void);
void loop(void);
#endif
"""

ARDUINO_MAIN = r"""#include <Arduino.h>
StubSerial Serial;
unsigned long millis(void) { return 0; }
int main(void)
{
    setup();
    for (int i = 0; i < 60; ++i) {
        loop();
    }
    return 0;
}
"""


def _arduino(lib, tmp_path):
    root = lib / "arduino" / f"tinytrain_{NAME}"
    stub = tmp_path / "core"
    stub.mkdir()
    (stub / "Arduino.h").write_text(ARDUINO_H)
    ino = root / "examples" / "KwsTrain" / "KwsTrain.ino"
    sketch = tmp_path / "KwsTrain.ino.cpp"          # what arduino-builder compiles
    sketch.write_text('#include <Arduino.h>\n#line 1 "KwsTrain.ino"\n' + ino.read_text())
    return root, stub, sketch


def test_arduino_layout(lib):
    root = lib / "arduino" / f"tinytrain_{NAME}"
    props = dict(line.split("=", 1) for line in (root / "library.properties").read_text().splitlines()
                 if line and not line.startswith("#"))
    for key in ("name", "version", "author", "maintainer", "sentence", "paragraph", "category", "url",
                "architectures", "includes"):
        assert key in props, key
    assert props["name"] == root.name and re.fullmatch(r"\d+\.\d+\.\d+", props["version"])
    src = root / "src"
    assert all(p.is_file() for p in src.iterdir())            # flat: src/ is the only include path
    names = {p.name for p in src.iterdir()}
    assert props["includes"] in names
    wanted = {f"{NAME}.h", f"{NAME}.c"} | {p.name for p in (lib / "runtime" / "include").iterdir()} | \
        {p.name for p in (lib / "runtime" / "src").iterdir()}
    assert names == wanted
    # the copies are the emitted sources, behind a float-order prologue and a #line
    body = (src / f"{NAME}.c").read_text().split(f'#line 1 "{NAME}.c"\n', 1)[1]
    assert body == (lib / f"{NAME}.c").read_text()
    assert (src / f"{NAME}.h").read_text() == (lib / f"{NAME}.h").read_text()
    assert (root / "examples" / "KwsTrain" / "KwsTrain.ino").is_file()


@needs_arm
def test_arduino_sketch_and_sources_build_for_cortex_m4(lib, tmp_path):
    root, stub, sketch = _arduino(lib, tmp_path)
    objs = tmp_path / "o"
    objs.mkdir()
    # the sketch as C++: the library's C headers must be C++-safe (extern "C")
    run(["arm-none-eabi-g++", *ARM, "-Os", "-std=gnu++11", "-fno-exceptions", "-fno-rtti", "-Wall", "-Wextra",
         "-Werror", "-I", stub, "-I", root / "src", "-c", sketch, "-o", objs / "sketch.o"])
    syms = run(["arm-none-eabi-objdump", "-t", objs / "sketch.o"])
    assert re.search(rf"\*UND\*\s+\S+\s+{NAME}_train_step$", syms, re.M), "unmangled C call expected"
    # src/ as Arduino builds it: GNU C (which contracts a*b+c into vfma by default), src/ the only include path
    cflags = [*ARM, "-Os", "-std=gnu11", "-ffunction-sections", "-fdata-sections", "-Wall", "-Wextra", "-Werror",
              "-I", root / "src"]
    for c in sorted((root / "src").glob("*.c")):
        run(["arm-none-eabi-gcc", *cflags, "-c", c, "-o", objs / (c.stem + ".o")])
        assert fused_ops(objs / (c.stem + ".o")) == 0, c.name
    # the prologue is what keeps them out: the emitted kws.c with the same flags has them
    run(["arm-none-eabi-gcc", *cflags, "-I", lib / "runtime" / "include", "-c", lib / f"{NAME}.c",
         "-o", tmp_path / "plain.o"])
    assert fused_ops(tmp_path / "plain.o") > 0


@_needs("gcc", "g++")
def test_arduino_sketch_trains_on_the_host(lib, tmp_path):
    root, stub, sketch = _arduino(lib, tmp_path)
    (tmp_path / "main.cpp").write_text(ARDUINO_MAIN)
    objs = []
    for c in sorted((root / "src").glob("*.c")):
        o = tmp_path / (c.stem + ".o")
        run(["gcc", "-O1", "-std=gnu11", "-Wall", "-Werror", "-I", root / "src", "-c", c, "-o", o])
        objs.append(o)
    exe = tmp_path / "sketch"
    run(["g++", "-O1", "-std=gnu++11", "-Wall", "-Wextra", "-Werror", "-I", stub, "-I", root / "src", sketch,
         tmp_path / "main.cpp", *objs, "-lm", "-o", exe])
    stdout = run([exe], timeout=120)
    lines = re.findall(r"^step (\d+) label (\d+) predicted (\d+) loss (\S+)$", stdout, re.M)
    n = int(re.search(r"#define TRAIN_STEPS (\d+)", sketch.read_text())[1])
    assert [int(s) for s, _, _, _ in lines] == list(range(n)), stdout
    assert all(math.isfinite(float(loss)) for *_, loss in lines), stdout
    assert [int(lab) for _, lab, _, _ in lines] == [s % 4 for s in range(n)]
    m = re.search(r"^done steps (\d+) correct (\d+) of 4$", stdout, re.M)
    assert m and int(m[1]) == n, stdout
    # it learns the synthetic classes: the loss falls, the classes come out right
    losses = [float(loss) for *_, loss in lines]
    q = n // 4
    assert sum(losses[-q:]) < 0.75 * sum(losses[:q]), losses
    assert int(m[2]) >= 3, stdout


def _pio_filter(src_dir, patterns):
    """PlatformIO's srcFilter: +<glob> / -<glob> applied in order, relative to srcDir."""
    chosen = set()
    for item in patterns:
        sign, pat = item[0], item[2:-1]
        assert sign in "+-" and item[1] == "<" and item.endswith(">"), item
        hits = {p for p in src_dir.glob(pat) if p.is_file()} | {q for p in src_dir.glob(pat) if p.is_dir()
                                                                  for q in p.rglob("*") if q.is_file()}
        chosen = chosen | hits if sign == "+" else chosen - hits
    return {p for p in chosen if p.suffix in (".c", ".cpp", ".S")}


PIO_MAIN = r"""#include <kws.h>
static kws_ctx ctx;
alignas(KWS_ALIGN) static uint8_t arena[KWS_ARENA_SIZE];
alignas(KWS_ALIGN) static uint8_t state[KWS_STATE_SIZE];
static float x[KWS_INPUT_SIZE];
int main()
{
    float loss;
    int32_t pred;
    if (kws_init(&ctx, arena, sizeof arena, state, sizeof state, 0.02f, 1u, 0) != KWS_OK) {
        return 1;
    }
    return kws_train_step(&ctx, x, 0, &loss, &pred);
}
"""


@needs_arm
def test_platformio_library_json_builds(lib, tmp_path):
    doc = json.loads((lib / "library.json").read_text())
    assert doc["name"] and re.fullmatch(r"\d+\.\d+\.\d+", doc["version"])
    build = doc["build"]
    src_dir, inc_dir = lib / build["srcDir"], lib / build["includeDir"]
    files = _pio_filter(src_dir, build["srcFilter"])
    assert files == {lib / f"{NAME}.c"} | set((lib / "runtime" / "src").glob("*.c"))   # no Arduino copies
    assert (src_dir / doc["headers"]).is_file()
    # the library's own sources: the project's flags first, then the library's build.flags
    objs = []
    for f in sorted(files):
        o = tmp_path / (f.stem + ".o")
        run(["arm-none-eabi-gcc", *ARM, "-Os", "-std=gnu11", "-Wall", "-Werror", *build["flags"],
             "-I", src_dir, "-I", inc_dir, "-c", f, "-o", o])
        assert fused_ops(o) == 0, f.name
        objs.append(o)
    # a project source sees what PlatformIO exports to dependents: srcDir and includeDir
    (tmp_path / "main.cpp").write_text(PIO_MAIN)
    run(["arm-none-eabi-g++", *ARM, "-Os", "-std=gnu++11", "-fno-exceptions", "-fno-rtti", "-Wall", "-Werror",
         "-I", src_dir, "-I", inc_dir, "-c", tmp_path / "main.cpp", "-o", tmp_path / "main.o"])
    run(["arm-none-eabi-gcc", *ARM, "--specs=nosys.specs", tmp_path / "main.o", *objs, "-lm", "-o",
         tmp_path / "firmware.elf"])


ZEPHYR_SHIM = """cmake_minimum_required(VERSION 3.15)
project(zephyr_shim C)
# Zephyr is not installed: its few library functions the module calls, on plain CMake
add_library(zephyr_interface INTERFACE)
macro(zephyr_library_named name)
  add_library(${name} STATIC)
  target_link_libraries(${name} PRIVATE zephyr_interface)
  set(ZEPHYR_CURRENT_LIBRARY ${name})
endmacro()
function(zephyr_library_sources)
  target_sources(${ZEPHYR_CURRENT_LIBRARY} PRIVATE ${ARGN})
endfunction()
function(zephyr_library_compile_options)
  target_compile_options(${ZEPHYR_CURRENT_LIBRARY} PRIVATE ${ARGN})
endfunction()
function(zephyr_include_directories)
  target_include_directories(zephyr_interface INTERFACE ${ARGN})
endfunction()
set(%(cfg)s y)
add_subdirectory(${MODULE}/%(cmake)s module)
add_library(app STATIC app.c)
target_link_libraries(app PRIVATE zephyr_interface)
"""


@needs_cmake
@needs_arm
def test_zephyr_module(lib, tmp_path):
    yaml = pytest.importorskip("yaml")
    mod = yaml.safe_load((lib / "zephyr" / "module.yml").read_text())
    assert mod["name"] == f"tinytrain_{NAME}"
    assert (lib / mod["build"]["cmake"] / "CMakeLists.txt").is_file()
    kconfig = (lib / mod["build"]["kconfig"]).read_text()
    cfg = re.search(r"^config (\w+)$", kconfig, re.M)[1]
    assert cfg == f"TINYTRAIN_{NAME.upper()}" and re.search(r"^\tbool \"", kconfig, re.M)
    cmake = (lib / mod["build"]["cmake"] / "CMakeLists.txt").read_text()
    assert f"if(CONFIG_{cfg})" in cmake and "zephyr_library_named" in cmake
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "CMakeLists.txt").write_text(ZEPHYR_SHIM % {"cfg": f"CONFIG_{cfg}", "cmake": mod["build"]["cmake"]})
    (shim / "app.c").write_text(f'#include "{NAME}.h"\nint app_size(void) {{ return (int){NAME.upper()}_ARENA_SIZE; }}\n')
    (tmp_path / "arm.cmake").write_text(TOOLCHAIN.replace("-ffast-math", "-ffunction-sections"))
    b = tmp_path / "b"
    run(["cmake", "-S", shim, "-B", b, f"-DMODULE={lib}", f"-DCMAKE_TOOLCHAIN_FILE={tmp_path / 'arm.cmake'}"])
    run(["cmake", "--build", b, "-j", "1"])
    for a in (b / "module" / f"libtinytrain_{NAME}.a", b / "module" / "libtinytrain_runtime.a"):
        assert fused_ops(a) == 0, a
    assert (b / "libapp.a").is_file()


def test_package_option_errors_are_one_line(tmp_path, capsys):
    assert main(["compile", str(MODEL), "--package", "cmake,vcpkg", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--package" in err and "vcpkg" in err
    assert not (tmp_path / "o").exists()
