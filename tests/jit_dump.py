"""Run every op case through quantization and the int8 simulator and save the
outputs: `python -m tests.jit_dump OUT_DIR`.  test_jit_off.py runs it with
and without NUMBA_DISABLE_JIT=1 and requires identical files."""
import sys
from pathlib import Path

import numpy as np

from tinytrain.compiler.pipeline import load, quantize_graph
from tinytrain.sim.simulator import Simulator

from .op_cases import CASES, build_case


def main(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    import numba
    (out / "mode.txt").write_text(f"DISABLE_JIT={int(numba.config.DISABLE_JIT)}")
    for case in CASES:
        path, calib, test = build_case(case, out)
        gq = quantize_graph(load(path), calib)
        sim = Simulator(gq)
        _, env = sim.run_int8(sim.quantize_input(test[:4]), keep=True)
        np.savez(out / f"{case.__name__}.npz", **{f"t{k}": v for k, v in env.items()},
                 **{f"w{t.id}": t.data for t in gq.tensors.values() if t.kind == "const"})


if __name__ == "__main__":
    main(sys.argv[1])
