"""A non-editable install carries the compiler, runtime_c/ and boards/, and the
CLI works from any directory."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_wheel(tmp_path):
    """`pip wheel --no-deps` of the checkout into tmp_path/wheels; the wheel's path."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(ROOT), "-w", str(wheels)],
                   check=True, timeout=600, cwd=tmp_path)
    return next(wheels.glob("tinytrain-*.whl"))


def test_wheel_installs_and_runs_from_elsewhere(tmp_path):
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    for must in ("tinytrain/cli.py", "tinytrain/compiler/ir.py", "tinytrain/compiler/frontend/onnx_import.py",
                 "tinytrain/runtime_c/include/tt_fixedpoint.h", "tinytrain/boards/host/board.json"):
        assert must in names, must
    # every Python package of the source tree is in the wheel (a package missing from pyproject's
    # list would still work in an editable install and fail in a real one)
    for top, inside in ((ROOT / "tinytrain", "tinytrain"), (ROOT / "compiler", "tinytrain/compiler")):
        for init in top.rglob("__init__.py"):
            rel = init.relative_to(top).as_posix()
            assert f"{inside}/{rel}" in names, f"{inside}/{rel} is not in the wheel: add it to pyproject's packages"
    # install the wheel alone into a folder and run it from another directory: the
    # source tree must play no part (the dependencies come from this environment)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                    str(target), str(wheel)], check=True, timeout=300)
    env = dict(os.environ, PYTHONPATH=str(target))
    work = tmp_path / "elsewhere"
    work.mkdir()
    res = subprocess.run([sys.executable, "-c", "import tinytrain, tinytrain.compiler.ir as ir, importlib.resources as r;"
                          "print(tinytrain.__file__); print(ir.__file__);"
                          "print(r.files('tinytrain.runtime_c').joinpath('include/tt_fixedpoint.h').is_file())"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=120, check=True)
    lines = res.stdout.split()
    assert lines[0].startswith(str(target)) and lines[1].startswith(str(target)) and lines[2] == "True", res.stdout
    res = subprocess.run([sys.executable, "-m", "tinytrain.cli", "inspect", str(ROOT / "models" / "mcu_cnn_mnist.onnx")],
                         cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "conv2d" in res.stdout and "MACs" in res.stdout
    # the main job's code paths: compile to C (codegen, memory plan, packages) and the trainers
    res = subprocess.run([sys.executable, "-m", "tinytrain.cli", "compile", str(ROOT / "models" / "mcu_cnn_mnist.onnx"),
                          "--calib", str(ROOT / "models" / "data" / "mnist_calib.npz"), "--sram", "256k",
                          "-o", str(work / "build")], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert (work / "build" / "model.c").is_file() and (work / "build" / "runtime" / "src").is_dir()
    subprocess.run([sys.executable, "-c", "import tinytrain.train.backprop, tinytrain.train.mezo, tinytrain.host"],
                   cwd=work, env=env, check=True, timeout=120)
