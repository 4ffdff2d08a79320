"""A script in benchmarks/ runs with benchmarks/ first on sys.path, so a script named like an
installed module (benchmarks/coverage.py did) shadows it for every import, numba's included."""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_benchmark_script_shadows_an_installed_module():
    clash = []
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        name = script.stem
        if name in sys.builtin_module_names or name in sys.stdlib_module_names:
            clash.append(name)
            continue
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin is not None and Path(spec.origin).resolve() != script.resolve():
            clash.append(f"{name} ({spec.origin})")
    assert not clash, f"benchmarks/ scripts named like installed modules: {clash}"
