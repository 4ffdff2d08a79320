"""Loading the data people bring: .npz (arrays x and y), .npy (x only),
.csv (one sample a row; a final extra column is the label) and folders of
images (one subfolder per class, as image data sets come: `read_image_folder`).

Limits, checked on the file's headers before anything is decompressed or read:
- at most MAX_BYTES (2 GiB; the environment variable TINYTRAIN_MAX_DATA_BYTES
  overrides it) of array data, counted as the arrays expand (a .npz member's
  .npy header gives its shape and dtype), and at most MAX_SAMPLES samples;
  a .csv file may be at most MAX_BYTES / 4 bytes on disk (its float64 values
  take up to 4x the text);
- calibration reads only the first CALIB_SAMPLES (500) samples of its file
  (`load_calibration`), whatever the file holds.
Arrays are read without pickle (an object array is refused).

Values: x must be floating point, finite, with at least one sample; integer x
(e.g. uint8 images 0..255) is refused, since only the user knows the model's
input range (convert it first, e.g. x / 255).  Labels y are integer class
indices (integer-valued floats are accepted, as a .csv holds them); strings,
complex numbers, booleans and fractions are refused.

Layout: samples must have the model's per-sample shape (ONNX input without
the batch axis: NCHW or NCW for a torch export, NHWC or NWC for a TensorFlow
one).  Shapes that differ only by axes of size 1 are reshaped (no value moves:
[N, 28, 28] for a [1, 1, 28, 28] model).  Data in the other layout is refused
with a line naming both layouts, or read correctly with `layout=` (the CLI's
`--layout`): it is transposed into the model's layout.  A .csv row is one
sample flattened in row-major order of `layout` (default: the model's).
Anything else is refused; arbitrary reshapes are never made.
"""
import os
import warnings
from pathlib import Path

import numpy as np

from .compiler.errors import TinytrainError

MAX_BYTES = 2 << 30
MAX_SAMPLES = 10_000_000
CALIB_SAMPLES = 500
LIMIT_ENV = "TINYTRAIN_MAX_DATA_BYTES"

# layout -> (rank of the input with its batch axis, True when channels come last)
LAYOUTS = {"nchw": (4, False), "nhwc": (4, True), "ncw": (3, False), "nwc": (3, True)}


def max_bytes():
    """The byte limit: MAX_BYTES unless TINYTRAIN_MAX_DATA_BYTES says otherwise."""
    text = os.environ.get(LIMIT_ENV)
    if text is None or not text.strip():
        return MAX_BYTES
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v <= 0:
        raise TinytrainError(f"'{text}' is not a positive number of bytes", field=LIMIT_ENV)
    return v


# -- reading .npy headers and arrays within the limits ------------------------
def _header(fp, where, field):
    """-> (shape, fortran_order, dtype) from a .npy header, refusing what needs pickle."""
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
    except (ValueError, EOFError, OSError, SyntaxError, TypeError) as e:
        raise TinytrainError(f"not a readable .npy array: {e}", file=where, field=field) from None
    if dtype.hasobject or dtype.fields is not None or dtype.shape != ():
        raise TinytrainError(f"has dtype {dtype}: expected a plain numeric array (objects need pickle, "
                             "which tinytrain does not load)", file=where, field=field)
    return tuple(int(d) for d in shape), bool(fortran), dtype


def _plan(shape, dtype, available, take, budget, where, field):
    """Check a declared array against the file and the limits before reading it.
    -> (rows to read, bytes to read)."""
    if len(shape) == 0:
        raise TinytrainError("is a single number, expected an array with one sample per row", file=where, field=field)
    n = shape[0]
    if n == 0:
        raise TinytrainError(f"has no samples (shape {list(shape)})", file=where, field=field)
    if n > MAX_SAMPLES:
        raise TinytrainError(f"has {n} samples, more than the limit of {MAX_SAMPLES}", file=where, field=field)
    per = int(np.prod(shape[1:], dtype=np.float64)) * dtype.itemsize
    if per == 0:
        raise TinytrainError(f"has empty samples (shape {list(shape)})", file=where, field=field)
    total = float(n) * per
    if total > available:
        raise TinytrainError(f"declares shape {list(shape)} ({total:.0f} bytes) but holds {available} bytes: "
                             "truncated or corrupt", file=where, field=field)
    rows = n if take is None else min(n, take)
    need = rows * per
    if need > budget[0]:
        raise TinytrainError(f"shape {list(shape)} of {dtype} would take {need / 2**20:.0f} MiB, over the "
                             f"{max_bytes() / 2**20:.0f} MiB limit (raise it with {LIMIT_ENV}=bytes)",
                             file=where, field=field)
    budget[0] -= need
    return rows, need


def _read_array(fp, available, take, budget, where, field):
    """A .npy array from an open stream: its header, the checks, then only the
    first `take` rows (all of them when take is None)."""
    start = fp.tell()
    shape, fortran, dtype = _header(fp, where, field)
    available -= fp.tell() - start
    fortran = fortran and len(shape) > 1                    # its rows are not contiguous: read it whole
    rows, need = _plan(shape, dtype, available, None if fortran else take, budget, where, field)
    data = fp.read(need)
    if len(data) != need:
        raise TinytrainError(f"holds {len(data)} of the {need} bytes its header declares: truncated",
                             file=where, field=field)
    a = np.frombuffer(data, dtype=dtype)
    if fortran:
        a = a.reshape(shape[::-1]).transpose()
    else:
        a = a.reshape((rows,) + shape[1:])
    return a[:take] if take is not None else a, shape[0]


def read_npz(path, keys=None, take=None, budget=None):
    """The arrays of a .npz (those named in keys, or all), each checked from its .npy header
    against the member's declared size and the limits before it is decompressed.
    -> {name: (array, rows the file holds)}."""
    import zipfile
    budget = [max_bytes()] if budget is None else budget
    out = {}
    with zipfile.ZipFile(path) as z:
        members = {m.filename[:-4]: m for m in z.infolist() if m.filename.endswith(".npy")}
        for key in (members if keys is None else [k for k in keys if k in members]):
            with z.open(members[key]) as fp:
                out[key] = _read_array(fp, members[key].file_size, take, budget, path, key)
    return out


def _read_npz(path, take, budget):
    out = read_npz(path, ("x", "y"), take, budget)
    if "x" not in out:
        import zipfile
        with zipfile.ZipFile(path) as z:
            names = [m.filename[:-4] for m in z.infolist() if m.filename.endswith(".npy")]
        raise TinytrainError(f"no array 'x' (has: {', '.join(names) or 'nothing'})", file=path, field="x")
    (x, nx), (y, ny) = out["x"], out.get("y", (None, None))
    if ny is not None and ny != nx:
        raise TinytrainError(f"x has {nx} samples, y has {ny} labels", file=path, field="y")
    return x, y


def _read_npy(path, take, budget):
    with open(path, "rb") as fp:
        return _read_array(fp, path.stat().st_size, take, budget, path, "x")[0]


def _read_csv(path, take, budget):
    size = path.stat().st_size
    if size * 4 > budget[0]:
        raise TinytrainError(f"{size / 2**20:.0f} MiB of text is over the limit for a .csv "
                             f"({budget[0] / 4 / 2**20:.0f} MiB; raise it with {LIMIT_ENV}=bytes)", file=path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # an empty file warns; it is refused below
        x = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2, max_rows=take)
    if len(x) == 0 or x.shape[1] == 0:
        raise TinytrainError("has no samples", file=path, field="x")
    return x


# -- values -------------------------------------------------------------------
def check_x(x, where=None, field="x"):
    """Floating point, finite, at least one sample -> float32."""
    x = np.asarray(x)
    if x.ndim == 0 or len(x) == 0:
        raise TinytrainError(f"has no samples (shape {list(x.shape)})", file=where, field=field)
    dt = x.dtype
    if dt == np.bool_:
        raise TinytrainError("x is bool: expected floating-point values in the model's input range",
                             file=where, field=field)
    if np.issubdtype(dt, np.integer):
        raise TinytrainError(f"x is {dt}: convert it to the model's float input range first "
                             "(e.g. x / 255 for 8-bit images)", file=where, field=field)
    if np.issubdtype(dt, np.complexfloating):
        raise TinytrainError(f"x is {dt} (complex): expected real floating-point values", file=where, field=field)
    if not np.issubdtype(dt, np.floating):
        raise TinytrainError(f"x has dtype {dt}, expected floating-point numbers", file=where, field=field)
    if not np.all(np.isfinite(x)):
        raise TinytrainError("x contains NaN or Inf", file=where, field=field)
    with np.errstate(over="ignore"):              # refused just below, without a warning line
        x32 = x.astype(np.float32)
    if not np.all(np.isfinite(x32)):
        raise TinytrainError("x has values beyond the float32 range", file=where, field=field)
    return x32


def check_y(y, n, where=None, field="y"):
    """Integer class indices, one per sample -> int64."""
    y = np.asarray(y)
    dt = y.dtype
    if y.shape != (n,):
        raise TinytrainError(f"labels y have shape {list(y.shape)}, expected {n} integers", file=where, field=field)
    if dt == np.bool_:
        raise TinytrainError("labels y are bool (ambiguous): store the class indices as integers",
                             file=where, field=field)
    if np.issubdtype(dt, np.complexfloating):
        raise TinytrainError(f"labels y are {dt} (complex): expected integer class indices", file=where, field=field)
    if not (np.issubdtype(dt, np.integer) or np.issubdtype(dt, np.floating)):
        raise TinytrainError(f"labels y have dtype {dt}: expected integer class indices", file=where, field=field)
    if np.issubdtype(dt, np.floating):
        bad = ~np.isfinite(y) | (y != np.round(y)) | (np.abs(y) > 2**53)
        if np.any(bad):
            k = int(np.argmax(bad))
            raise TinytrainError(f"labels y must be integer class indices; y[{k}] is {y[k]}", file=where, field=field)
    elif dt == np.uint64 and np.any(y > np.iinfo(np.int64).max):
        raise TinytrainError("labels y hold values beyond int64", file=where, field=field)
    return y.astype(np.int64)


# -- layouts --------------------------------------------------------------------
def model_layout(input_shape, recorded=None):
    """The model's input layout: the importer's record, else ONNX's channels-first default
    (NCHW for 4-D, NCW for 3-D inputs); None for a flat input."""
    if recorded in LAYOUTS and LAYOUTS[recorded][0] == len(input_shape):
        return recorded
    return {4: "nchw", 3: "ncw"}.get(len(input_shape))


def _perm(src, dst):
    """Axis permutation (for np.transpose) taking an array in layout src to layout dst."""
    r = LAYOUTS[src][0]
    first = list(range(r))                              # the axis of N, C, spatial... in NC* layouts
    last = [0, r - 1] + list(range(1, r - 1))           # ... and in N*C layouts
    a = last if LAYOUTS[src][1] else first
    b = last if LAYOUTS[dst][1] else first
    return tuple(a[b.index(j)] for j in range(r))       # dst axis j holds the logical axis b.index(j)


def _squeezed(shape):
    return tuple(d for d in shape if d != 1)


def _shape_text(shape):
    return "[" + ", ".join(map(str, shape)) + "]"


def conform(x, input_shape, layout=None, recorded_layout=None, where=None, flat_rows=False, field="x",
            refuse_ambiguous=False):
    """x [N, ...] -> x [N, *input_shape[1:]] in the model's layout (see the module's docstring).
    layout: the layout x is in (None: the model's); flat_rows: x's rows are flattened samples (.csv);
    refuse_ambiguous: without a layout, refuse samples whose shape reads the same in both layouts
    while their values would move (C == H == W); otherwise they are taken in the model's layout."""
    x = np.asarray(x)
    per = tuple(int(d) for d in input_shape[1:])
    mine = model_layout(input_shape, recorded_layout)
    if x.ndim == 0:
        raise TinytrainError("is a single number, expected an array with one sample per row", file=where, field=field)
    n = len(x)
    if layout is not None:
        if layout not in LAYOUTS:
            raise TinytrainError(f"unknown layout '{layout}' (nchw, nhwc, ncw or nwc)", field="--layout")
        if mine is None or LAYOUTS[layout][0] != len(input_shape):
            raise TinytrainError(f"--layout {layout} is for {LAYOUTS[layout][0] - 2}-D samples with channels; the "
                                 f"model's input is {_shape_text(input_shape)}"
                                 + (f" ({mine.upper()})" if mine else ""), field="--layout")
        if layout != mine:
            to_mine = _perm(layout, mine)
            given = tuple(per[i - 1] for i in _perm(mine, layout)[1:])
            if flat_rows and x.ndim == 2 and x.shape[1] == int(np.prod(given)):
                x = x.reshape((n,) + given)
            if x.shape[1:] != given and _squeezed(x.shape[1:]) == _squeezed(given):
                x = x.reshape((n,) + given)
            if x.shape[1:] != given:
                raise TinytrainError(f"x has shape {_shape_text(x.shape)}, --layout {layout} expects "
                                     f"[N, {_shape_text(given)[1:]}", file=where, field=field)
            return np.ascontiguousarray(x.transpose(to_mine))
    if x.shape[1:] == per:
        if refuse_ambiguous and layout is None and mine is not None:
            other = _other(mine)
            if tuple(per[i - 1] for i in _perm(mine, other)[1:]) == per and _moves(per, _perm(other, mine)):
                raise TinytrainError(f"x has samples of shape {_shape_text(per)}, which is both {mine.upper()} and "
                                     f"{other.upper()} for this model: say which with --layout {mine} or "
                                     f"--layout {other}", file=where, field=field)
        return x
    if _squeezed(x.shape[1:]) == _squeezed(per):
        return x.reshape((n,) + per)                # only axes of size 1 differ: no value moves
    if flat_rows and x.ndim == 2 and x.shape[1] == int(np.prod(per)):
        return x.reshape((n,) + per)                # .csv rows: row-major in the model's layout
    if mine is not None:
        other = _other(mine)
        other_shape = tuple(per[i - 1] for i in _perm(mine, other)[1:])
        if x.shape[1:] == other_shape:
            raise TinytrainError(f"x has samples of shape {_shape_text(other_shape)} ({other.upper()}), the model "
                                 f"takes {_shape_text(per)} ({mine.upper()}): pass --layout {other} to read it "
                                 "correctly", file=where, field=field)
    if x.ndim == 2 and x.shape[1] == int(np.prod(per)) and len(per) > 1:
        raise TinytrainError(f"x has flat samples of {x.shape[1]} values, the model takes "
                             f"[N, {_shape_text(per)[1:]}" + (f" ({mine.upper()})" if mine else "")
                             + ": reshape x (a .csv row is read in the model's layout)", file=where, field=field)
    raise TinytrainError(f"x has shape {_shape_text(x.shape)}, the model takes [N, {_shape_text(per)[1:]}"
                         + (f" ({mine.upper()})" if mine else ""), file=where, field=field)


def _other(layout):
    return {"nchw": "nhwc", "nhwc": "nchw", "ncw": "nwc", "nwc": "ncw"}[layout]


def _moves(shape, perm):
    """Whether transposing per-sample `shape` by the batch-first `perm` moves any value."""
    kept = [p - 1 for p in perm[1:] if shape[p - 1] != 1]
    return kept != sorted(kept)


# -- the entry points -------------------------------------------------------------
def load_dataset(path, input_shape=None, need_labels=False, layout=None, model_layout=None, max_samples=None):
    """-> (x float32 [N, ...], y int64 [N] or None).  With input_shape (the model's ONNX
    input), x comes in that shape (see `conform`); layout: the layout the file's samples
    are in (default: the model's); model_layout: the model's, when the importer recorded
    one; max_samples: read only the first N samples."""
    path = Path(path)
    if path.is_dir():
        return read_image_folder(path, input_shape, model_layout, max_samples, need_labels)
    if not path.is_file():
        raise TinytrainError("no such file", file=path)
    suffix = path.suffix.lower()
    budget = [max_bytes()]
    y = None
    try:
        if suffix == ".npz":
            x, y = _read_npz(path, max_samples, budget)
        elif suffix == ".npy":
            x = _read_npy(path, max_samples, budget)
        elif suffix == ".csv":
            x = _read_csv(path, max_samples, budget)
        else:
            raise TinytrainError(f"unknown data format '{suffix}' (use .npz, .npy or .csv)", file=path)
    except TinytrainError:
        raise
    except Exception as e:
        raise TinytrainError(f"cannot read data: {type(e).__name__}: {e}", file=path) from None
    if input_shape is not None and suffix == ".csv":
        per = int(np.prod(input_shape[1:]))
        if x.ndim == 2 and x.shape[1] == per + 1:
            x, y = x[:, :per], x[:, per]
    x = check_x(x, path)
    if input_shape is not None:
        x = conform(x, input_shape, layout, model_layout, path, flat_rows=suffix == ".csv", refuse_ambiguous=True)
    elif layout is not None:
        raise TinytrainError("--layout needs the model's input shape", field="--layout")
    if y is not None:
        y = check_y(y, len(x), path)
    if need_labels and y is None:
        raise TinytrainError("this command needs labels: an array 'y'", file=path, field="y")
    return x, y


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def read_image_folder(path, input_shape, recorded_layout=None, max_samples=None, need_labels=False):
    """A folder with one subfolder per class (`cats/`, `dogs/`: labels 0, 1, ... in the
    subfolders' sorted name order) of image files, or a folder of images alone (no labels).
    Each image is converted to the model's channels (1: grey, 3: RGB), resized to its H x W
    (bilinear) and scaled to [0, 1] (x / 255), in the model's layout; files are taken in
    sorted order.  -> (x float32, y int64 or None).  Needs Pillow."""
    if input_shape is None or len(input_shape) != 4:
        raise TinytrainError("a folder of images needs a model with an image input (N, C, H, W or N, H, W, C)",
                             file=path)
    try:
        from PIL import Image
    except ImportError:
        raise TinytrainError("reading a folder of images needs Pillow: pip install pillow", file=path) from None
    layout = model_layout(input_shape, recorded_layout)
    last = LAYOUTS[layout][1]
    c, h, w = (input_shape[3], input_shape[1], input_shape[2]) if last else input_shape[1:]
    if c not in (1, 3):
        raise TinytrainError(f"the model takes {c} channels: images are read as 1 (grey) or 3 (RGB)", file=path)
    classes = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    groups = [(k, d) for k, d in enumerate(classes)] if classes else [(None, path)]
    files = [(k, f) for k, d in groups for f in sorted(d.iterdir())
             if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise TinytrainError("no images found (one subfolder per class of .png/.jpg/... files)", file=path)
    limit = min(MAX_SAMPLES, max_bytes() // (4 * c * h * w))
    if max_samples:
        files = files[:max_samples]
    if len(files) > limit:
        raise TinytrainError(f"{len(files)} images are over the limit of {limit} for this input size "
                             f"(the environment variable {LIMIT_ENV} raises it)", file=path)
    x = np.empty((len(files), c, h, w), np.float32)
    for i, (_, f) in enumerate(files):
        try:
            with Image.open(f) as im:
                im = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
                a = np.asarray(im, np.float32) / np.float32(255.0)
        except Exception as e:
            raise TinytrainError(f"cannot read the image: {type(e).__name__}: {e}", file=f) from None
        x[i] = a[None] if c == 1 else a.transpose(2, 0, 1)
    if last:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    y = None if groups[0][0] is None else np.array([k for k, _ in files], np.int64)
    if need_labels and y is None:
        raise TinytrainError("this command needs labels: put the images in one subfolder per class", file=path)
    return x, y


def load_calibration(path, input_shape=None, layout=None, model_layout=None, samples=CALIB_SAMPLES):
    """The calibration subset: the first CALIB_SAMPLES samples of the file (only those are read)."""
    return load_dataset(path, input_shape, layout=layout, model_layout=model_layout, max_samples=samples)
