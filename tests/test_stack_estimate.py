"""compile's stack estimate (gcc -fstack-usage): compiled concurrently, cached per user by
the bytes of each source and its headers; the cache never changes the answer and a changed
header is never served a stale result."""
from pathlib import Path

import numpy as np
import pytest

import tinytrain as tt
from tinytrain.compiler.pipeline import compile_graph
from tinytrain.host import _quoted_includes, _stack_key, STACK_FLAGS, stack_estimate, stack_usage

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    x = np.load(ROOT / "models" / "data" / "mnist_calib.npz")["x"][:16]
    gq = tt.quantize(tt.load(ROOT / "models" / "mcu_cnn_mnist.onnx"), x, output_range=(-16, 16))
    out = tmp_path_factory.mktemp("stack")
    compile_graph(gq, out, name="m", update="sparse")
    srcs = [out / "m.c"] + sorted((out / "runtime" / "src").glob("*.c"))
    return out, srcs, [out, out / "runtime" / "include"]


def test_cached_and_parallel_give_the_serial_answer(project, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    out, srcs, dirs = project
    serial = stack_usage(srcs, dirs, jobs=1, cache=False)
    assert serial and serial.get("m_train_step", 0) > 0
    assert stack_usage(srcs, dirs, jobs=2, cache=True) == serial        # computed, then stored
    assert len(list((tmp_path / "tinytrain" / "stack").glob("*.json"))) == len(srcs)
    assert stack_usage(srcs, dirs, jobs=2, cache=True) == serial        # served from the cache
    assert stack_estimate(out, "m") == stack_estimate(out, "m") > 64


def test_the_key_follows_every_included_header(project, tmp_path):
    out, srcs, dirs = project
    assert (out / "m.h").resolve() in _quoted_includes(srcs[0], dirs)
    copy = tmp_path / "p"
    import shutil
    shutil.copytree(out, copy)
    cdirs = [copy, copy / "runtime" / "include"]
    csrc = copy / "m.c"
    key = _stack_key(csrc, ["gcc", *STACK_FLAGS], cdirs)
    assert key == _stack_key(srcs[0], ["gcc", *STACK_FLAGS], dirs)          # where it lives does not matter
    h = copy / "runtime" / "include" / "tt_kernels.h"
    h.write_text(h.read_text() + "\n/* changed */\n")
    assert _stack_key(csrc, ["gcc", *STACK_FLAGS], cdirs) != key
    assert _stack_key(srcs[0], ["gcc", "-O3"], dirs) != key


def test_a_failing_compile_gives_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "runtime" / "src").mkdir(parents=True)
    (tmp_path / "m.c").write_text("int broken( {\n")
    assert stack_estimate(tmp_path, "m") == 2048
