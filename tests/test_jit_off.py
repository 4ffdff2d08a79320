"""The numba kernels and the same code run as plain Python (NUMBA_DISABLE_JIT=1)
agree exactly: quantized weights, every activation of every op case."""
import os
import subprocess
import sys

import numpy as np

from .op_cases import CASES


def _dump(tmp_path, jit):
    out = tmp_path / ("jit" if jit else "nojit")
    env = dict(os.environ, NUMBA_DISABLE_JIT="0" if jit else "1")
    subprocess.run([sys.executable, "-m", "tests.jit_dump", str(out)], check=True, env=env, timeout=600,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return out


def test_jit_and_python_agree(tmp_path):
    a, b = _dump(tmp_path, True), _dump(tmp_path, False)
    assert (a / "mode.txt").read_text() == "DISABLE_JIT=0" and (b / "mode.txt").read_text() == "DISABLE_JIT=1"
    for case in CASES:
        with np.load(a / f"{case.__name__}.npz") as za, np.load(b / f"{case.__name__}.npz") as zb:
            assert sorted(za.files) == sorted(zb.files)
            for k in za.files:
                np.testing.assert_array_equal(za[k], zb[k], err_msg=f"{case.__name__} {k}")
