"""The compiler pipeline: a flat list of passes, each followed by the IR check.

    import ONNX -> simplify_reshapes -> fold_affine (BatchNorm) -> fuse_activation (ReLU/ReLU6)
        -> absorb_transpose (Flatten of NHWC into the linear layer's weights)
        -> calibrate -> quantize
        -> autodiff (loss, backward, in-place SGD) -> prune (the sparse-update scheme)
"""
import numpy as np

from .frontend.onnx_import import import_onnx
from .ir import verify
from .passes.absorb_transpose import absorb_transpose
from .passes.autodiff import autodiff
from .passes.prune import prune
from .passes.calibrate import calibrate
from .passes.fold_affine import fold_affine
from .passes.fuse_activation import fuse_activation
from .passes.quantize import quantize
from .passes.simplify_reshapes import simplify_reshapes
from .scheme import resolve as resolve_scheme

FLOAT_PASSES = (
    ("simplify_reshapes", simplify_reshapes),
    ("fold_affine", fold_affine),
    ("fuse_activation", fuse_activation),
    ("absorb_transpose", absorb_transpose),
)


def load(path, input_shape=None):
    """ONNX file -> verified float IR, BatchNorm folded, activations fused."""
    g = verify(import_onnx(path, input_shape), "import")
    for name, p in FLOAT_PASSES:
        g = verify(p(g), name)
    return g


def quantize_graph(graph, calib_x, method="minmax", percentile=99.99):
    """Float IR + calibration samples (ONNX input layout) -> verified int8 IR."""
    ranges = calibrate(graph, calib_x, method=method, percentile=percentile)
    info = {"method": method, "samples": int(len(np.asarray(calib_x)))}
    if method == "percentile":
        info["percentile"] = percentile
    return verify(quantize(graph, ranges, info), "quantize")


def training_graph(graph_int8, update="sparse", qas=True):
    """int8 IR -> verified training graph for an update scheme (preset name,
    JSON path, dict or Scheme)."""
    scheme = resolve_scheme(graph_int8, update)
    g = verify(autodiff(graph_int8, qas=qas), "autodiff")
    return verify(prune(g, scheme), "prune")
