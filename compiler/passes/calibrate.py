"""calibrate: run the float graph on the user's samples and record each
activation's range: min/max, or the given percentile of the values (which
ignores rare outliers and spends the 256 codes on the bulk)."""
import numpy as np

from ..errors import TinytrainError
from ..reference import run_float

RESERVOIR = 1 << 20


def calibrate(graph, samples, method="minmax", percentile=99.99, batch=64, seed=0):
    samples = np.asarray(samples, dtype=np.float32)
    want = tuple(graph.meta["input_shape"][1:])
    if samples.ndim != len(want) + 1 or tuple(samples.shape[1:]) != want:
        raise TinytrainError(f"calibration data has shape {list(samples.shape)}, the model takes "
                             f"[N, {', '.join(map(str, want))}]", field="x")
    if len(samples) == 0:
        raise TinytrainError("no calibration samples", field="x")
    if not np.all(np.isfinite(samples)):
        raise TinytrainError("calibration data contains NaN or Inf", field="x")
    if method not in ("minmax", "percentile"):
        raise TinytrainError(f"unknown calibration method '{method}' (minmax or percentile)", field="method")
    rng = np.random.default_rng(seed)
    lo, hi, keep = {}, {}, {}
    for start in range(0, len(samples), batch):
        _, env = run_float(graph, samples[start:start + batch], keep=True)
        for tid, v in env.items():
            if graph.t(tid).kind == "const":
                continue
            lo[tid] = min(lo.get(tid, np.inf), float(v.min()))
            hi[tid] = max(hi.get(tid, -np.inf), float(v.max()))
            if method == "percentile":
                flat = v.reshape(-1)
                if flat.size > RESERVOIR // 8:
                    flat = rng.choice(flat, RESERVOIR // 8, replace=False)
                keep.setdefault(tid, []).append(flat)
    if method == "percentile":
        for tid, parts in keep.items():
            vals = np.concatenate(parts)
            if vals.size > RESERVOIR:
                vals = rng.choice(vals, RESERVOIR, replace=False)
            lo[tid] = float(np.percentile(vals, 100.0 - percentile))
            hi[tid] = float(np.percentile(vals, percentile))
    for tid in lo:
        if not (np.isfinite(lo[tid]) and np.isfinite(hi[tid])):
            raise TinytrainError(f"activation '{graph.t(tid).name}' overflows to Inf/NaN on the calibration data")
    return {tid: (lo[tid], hi[tid]) for tid in lo}
