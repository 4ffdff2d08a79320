"""The Python API (the CLI is a thin layer over it).

    import tinytrain as tt
    model = tt.load("model.onnx")                       # float IR, BN folded
    qmodel = tt.quantize(model, calib_x)                # int8 IR
    sim = tt.Simulator(qmodel); logits = sim.run(x)     # bit-exact int8 forward
"""
from .compiler import serialize
from .compiler.pipeline import load as _load
from .compiler.pipeline import quantize_graph
from .sim.simulator import Simulator


def load(path, input_shape=None):
    """An ONNX file -> the float IR (BatchNorm folded, ReLU/ReLU6 fused).
    A `.tt.npz` file (saved by `save`) loads as it was saved."""
    if str(path).endswith(".tt.npz"):
        return serialize.load(path)
    return _load(path, input_shape)


def quantize(model, calib_x, method="minmax", percentile=99.99, output_range=None):
    """Post-training int8 quantization calibrated on calib_x (ONNX input layout).
    output_range=(lo, hi) fixes the logits' range (room to grow during training)."""
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        model = load(model)
    return quantize_graph(model, calib_x, method=method, percentile=percentile, output_range=output_range)


def save(graph, path):
    return serialize.save(graph, path)


__all__ = ["load", "quantize", "save", "Simulator"]
