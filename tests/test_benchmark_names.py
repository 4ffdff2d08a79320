"""A script in benchmarks/ runs with benchmarks/ first on sys.path, so a script named like a module
that a library imports (benchmarks/coverage.py was: numba imports `coverage` when it compiles)
shadows it for every import."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import sys
sys.path.insert(0, {bench!r})
import numpy, onnx, onnxruntime, numba
from numba import njit
njit(lambda a: a + 1)(1)                      # numba's compile path imports its optional helpers
import tinytrain.api
bad = sorted(n for n, m in sys.modules.items()
             if getattr(m, "__file__", None) and m.__file__.startswith({bench!r}))
print(bad)
"""


def test_no_benchmark_script_shadows_a_module_the_libraries_import():
    bench = str(ROOT / "benchmarks")
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
    clash = sorted(scripts & (set(sys.builtin_module_names) | set(sys.stdlib_module_names)))
    assert not clash, f"benchmarks/ scripts named like standard modules: {clash}"
    res = subprocess.run([sys.executable, "-c", PROBE.format(bench=bench)], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]", f"imports resolved into benchmarks/: {res.stdout}"
