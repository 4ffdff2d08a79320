"""numba's on-disk cache lives in a per-user folder keyed by tinytrain's version and sources
(tinytrain/_numba_cache.py): nothing is written into the package, a changed helper never gets a
kernel compiled from its old source, and install / use / reinstall-editable leaves a working CLI."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tinytrain import __version__, _numba_cache

from .test_packaging import ROOT, build_wheel

MODEL = ROOT / "models" / "mcu_cnn_mnist.onnx"
CALIB = ROOT / "models" / "data" / "mnist_calib.npz"

# a kernel of compiler/ops/linear.py that inlines compiler/quant/fixedpoint.py's requantize:
# acc = 4 * 10 * 3 = 120, multiplier 2^30 (0.5), shift 0 -> 60
FC = """
import os, numpy as np, tinytrain, tinytrain.compiler.ops.linear as L
x = np.full((1, 4), 10, np.int8); w = np.full((1, 4), 3, np.int8); b = np.zeros(1, np.int32)
out = np.zeros((1, 1), np.int8); mask = np.zeros((1, 1), np.uint8)
L._fully_connected_s8(x, w, b, out, mask, 0, 0, np.array([1 << 30], np.int32), np.array([0], np.int32), -128, 127)
print(tinytrain.__file__, L.__file__, os.environ["NUMBA_CACHE_DIR"], int(out[0, 0]))
"""


def _env(tmp_path, **extra):
    """The environment of a fresh user: no NUMBA_CACHE_DIR, a private XDG cache folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "PYTHONPATH")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    env.update(extra)
    return env


def _nb_files(*dirs):
    return {p: p.stat().st_mtime_ns for d in dirs for p in Path(d).rglob("*.nb[ic]")}


def _copy_package(dest):
    """tinytrain/ with compiler/ inside it (the wheel's layout), without caches."""
    ignore = shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc")
    shutil.copytree(ROOT / "tinytrain", dest / "tinytrain", ignore=ignore)
    shutil.copytree(ROOT / "compiler", dest / "tinytrain" / "compiler", ignore=ignore)


def test_kernels_cache_outside_the_package(tmp_path):
    before = _nb_files(ROOT / "tinytrain", ROOT / "compiler")
    res = subprocess.run([sys.executable, "-c", FC], env=_env(tmp_path), cwd=tmp_path, capture_output=True,
                         text=True, timeout=600, check=True)
    *_, cache, value = res.stdout.split()
    assert value == "60"
    expected = tmp_path / "xdg" / "tinytrain" / "numba"
    assert Path(cache).parent == expected and Path(cache).name.startswith(f"{__version__}-"), cache
    assert list(Path(cache).rglob("linear._fully_connected_s8-*.nbi")), "numba wrote no index into the cache folder"
    assert _nb_files(ROOT / "tinytrain", ROOT / "compiler") == before, "numba wrote into the package"


def test_user_cache_dir_is_kept_and_numba_imported_first(tmp_path):
    mine = tmp_path / "mine"
    res = subprocess.run([sys.executable, "-c", FC], env=_env(tmp_path, NUMBA_CACHE_DIR=str(mine)),
                         cwd=tmp_path, capture_output=True, text=True, timeout=600, check=True)
    assert res.stdout.split()[2] == str(mine) and list(mine.rglob("*.nbi"))
    # numba imported before tinytrain: its config is pointed at the folder all the same
    res = subprocess.run([sys.executable, "-c", "import numba, tinytrain, os; from numba.core import config;"
                          "print(config.CACHE_DIR == os.environ['NUMBA_CACHE_DIR'] != '')"],
                         env=_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=300, check=True)
    assert res.stdout.strip() == "True"


def test_hash_covers_version_and_every_source(tmp_path):
    _copy_package(tmp_path)
    roots = [tmp_path / "tinytrain"]          # compiler/ is inside, as in a wheel
    assert _numba_cache.source_roots()[0] == ROOT / "tinytrain"
    h = _numba_cache.source_hash(__version__, roots)
    assert h == _numba_cache.source_hash(__version__, roots), "not deterministic"
    # the same sources give the same folder wherever they are (checkout or wheel layout)
    assert h == _numba_cache.source_hash(__version__)
    assert _numba_cache.source_hash("0.0.0-other", roots) != h
    helper = tmp_path / "tinytrain" / "compiler" / "quant" / "fixedpoint.py"
    src = helper.read_bytes()
    helper.write_bytes(src.replace(b"(np.int64(1) << (n - np.int64(1)))", b"(np.int64(1) << n)", 1))
    assert helper.read_bytes() != src
    assert _numba_cache.source_hash(__version__, roots) != h
    helper.write_bytes(src)
    assert _numba_cache.source_hash(__version__, roots) == h
    (tmp_path / "tinytrain" / "compiler" / "ops" / "new_op.py").write_text("X = 1\n")
    assert _numba_cache.source_hash(__version__, roots) != h


def test_changed_helper_is_never_served_stale(tmp_path):
    """The bug: a kernel of ops/linear.py cached while fixedpoint.requantize was right was served
    after fixedpoint.py changed (numba's index is keyed on linear.py's mtime and size only)."""
    pkg = tmp_path / "pkg"
    _copy_package(pkg)
    env = _env(tmp_path, PYTHONPATH=str(pkg))

    def run():
        out = subprocess.run([sys.executable, "-c", FC], env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=600, check=True).stdout.split()
        assert out[0].startswith(str(pkg)) and out[1].startswith(str(pkg)), out   # the copy is what runs
        return out[2], out[3]

    cache1, v1 = run()
    assert v1 == "60" and list(Path(cache1).rglob("*.nbi"))
    helper = pkg / "tinytrain" / "compiler" / "quant" / "fixedpoint.py"
    src = helper.read_text()
    old = "    return sat_s32(rounded)\n"
    assert src.count(old) == 1
    stat = (pkg / "tinytrain" / "compiler" / "ops" / "linear.py").stat()
    helper.write_text(src.replace(old, "    return sat_s32(rounded + np.int64(1))\n"))
    cache2, v2 = run()
    assert (pkg / "tinytrain" / "compiler" / "ops" / "linear.py").stat().st_mtime_ns == stat.st_mtime_ns
    assert cache2 != cache1
    assert v2 == "61", "a kernel compiled from the old fixedpoint.py was served"


def test_install_use_then_editable_install_keeps_the_cli(tmp_path):
    """issue 16: pip install (wheel), a simulator command, pip install -e: the CLI still works."""
    wheel = build_wheel(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    cli = venv / "bin" / "tinytrain"
    env = _env(tmp_path)
    work = tmp_path / "work"
    work.mkdir()

    def run(*args, timeout=600):
        res = subprocess.run([str(a) for a in args], env=env, cwd=work, capture_output=True, text=True,
                             timeout=timeout)
        assert res.returncode == 0, f"{args}: {res.stdout}\n{res.stderr}"
        return res.stdout

    run(py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel))
    site = Path(run(py, "-c", "import tinytrain, os; print(os.path.dirname(tinytrain.__file__))").strip())
    assert site.is_relative_to(venv), site
    run(cli, "quantize", MODEL, "--calib", CALIB, "--max-calib", "8", "--report-samples", "8", "-o", work / "q")
    assert not list(site.rglob("*.nb[ic]")), "numba wrote its cache into the installed package"
    assert list((tmp_path / "xdg" / "tinytrain" / "numba").rglob("*.nbi"))
    run(py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", ROOT)
    assert not site.exists(), f"the uninstalled wheel left {sorted(p.name for p in site.rglob('*'))[:10]}"
    assert "usage: tinytrain" in run(cli, "--help")
    out = run(cli, "inspect", MODEL)
    assert "conv2d" in out and "MACs" in out
    where = run(py, "-c", "import tinytrain; print(tinytrain.__file__)").strip()
    assert Path(where).resolve() == (ROOT / "tinytrain" / "__init__.py").resolve(), where


def test_old_source_versions_are_pruned(tmp_path, monkeypatch):
    """A new cache folder (changed sources) removes the oldest ones beyond KEEP; a user's
    NUMBA_CACHE_DIR is never touched."""
    parent = tmp_path / "xdg" / "tinytrain" / "numba"
    for i in range(_numba_cache.KEEP + 3):
        d = parent / f"0.0.{i}-{i:016x}"
        d.mkdir(parents=True)
        os.utime(d, (1000 + i, 1000 + i))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    d = _numba_cache.cache_dir(__version__)
    assert d.parent == parent and d.is_dir()
    left = {p.name for p in parent.iterdir() if p != d}
    assert left == {f"0.0.{i}-{i:016x}" for i in range(3, _numba_cache.KEEP + 3)}
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    assert _numba_cache.configure(__version__) == str(tmp_path / "mine") and not (tmp_path / "mine").exists()
