"""A non-editable install carries the compiler, runtime_c/ and boards/, and the
CLI works from any directory."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_installs_and_runs_from_elsewhere(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT),
                    "-w", str(wheels)], check=True, timeout=300, cwd=tmp_path)
    wheel = next(wheels.glob("tinytrain-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for must in ("tinytrain/cli.py", "tinytrain/compiler/ir.py", "tinytrain/compiler/frontend/onnx_import.py",
                 "tinytrain/runtime_c/include/tt_fixedpoint.h", "tinytrain/boards/host/board.json"):
        assert must in names, must
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   timeout=300)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    work = tmp_path / "elsewhere"
    work.mkdir()
    res = subprocess.run([str(py), "-c", "import tinytrain, tinytrain.compiler.ir as ir, importlib.resources as r;"
                          "print(tinytrain.__file__); print(ir.__file__);"
                          "print(r.files('tinytrain.runtime_c').joinpath('include/tt_fixedpoint.h').is_file())"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=120, check=True)
    lines = res.stdout.split()
    assert str(venv) in lines[0] and str(venv) in lines[1] and lines[2] == "True", res.stdout
    res = subprocess.run([str(venv / "bin" / "tinytrain"), "inspect", str(ROOT / "models" / "mcu_cnn_mnist.onnx")],
                         cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "conv2d" in res.stdout and "MACs" in res.stdout
