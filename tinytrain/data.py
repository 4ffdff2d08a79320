"""Loading the data people bring: .npz (arrays x and y), .npy (x only) and
.csv (one sample a row; a final extra column is the label)."""
from pathlib import Path

import numpy as np

from .compiler.errors import TinytrainError


def load_dataset(path, input_shape=None, need_labels=False):
    """-> (x float32 [N, ...], y int64 [N] or None), x reshaped to input_shape[1:] when given."""
    path = Path(path)
    if not path.is_file():
        raise TinytrainError("no such file", file=path)
    suffix = path.suffix.lower()
    y = None
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.files)
                if "x" not in keys:
                    raise TinytrainError(f"no array 'x' (has: {', '.join(keys) or 'nothing'})", file=path, field="x")
                x = z["x"]
                y = z["y"] if "y" in keys else None
        elif suffix == ".npy":
            x = np.load(path, allow_pickle=False)
        elif suffix == ".csv":
            x = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
        else:
            raise TinytrainError(f"unknown data format '{suffix}' (use .npz, .npy or .csv)", file=path)
    except TinytrainError:
        raise
    except Exception as e:
        raise TinytrainError(f"cannot read data: {type(e).__name__}: {e}", file=path) from None
    if not np.issubdtype(x.dtype, np.number):
        raise TinytrainError(f"x has dtype {x.dtype}, expected numbers", file=path, field="x")
    x = x.astype(np.float32)
    if input_shape is not None:
        per = int(np.prod(input_shape[1:]))
        if suffix == ".csv" and x.ndim == 2 and x.shape[1] == per + 1:
            x, y = x[:, :per], x[:, per]
        if x.ndim >= 1 and x.size == len(x) * per:
            x = x.reshape((len(x),) + tuple(input_shape[1:]))
        else:
            raise TinytrainError(f"x has shape {list(x.shape)}, the model takes "
                                 f"[N, {', '.join(map(str, input_shape[1:]))}]", file=path, field="x")
    if not np.all(np.isfinite(x)):
        raise TinytrainError("x contains NaN or Inf", file=path, field="x")
    if y is not None:
        y = np.asarray(y)
        if y.shape != (len(x),) or not np.all(np.equal(np.mod(y, 1), 0)):
            raise TinytrainError(f"labels y have shape {list(y.shape)}, expected {len(x)} integers",
                                 file=path, field="y")
        y = y.astype(np.int64)
    if need_labels and y is None:
        raise TinytrainError("this command needs labels: an array 'y'", file=path, field="y")
    return x, y
