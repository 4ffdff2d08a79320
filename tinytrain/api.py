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
    from .compiler.hparams import check_percentile
    if method == "percentile":
        percentile = check_percentile(percentile)
    if output_range is not None:
        from .compiler.hparams import check_finite
        output_range = tuple(check_finite(v, "output_range") for v in output_range)
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        model = load(model)
    return quantize_graph(model, calib_x, method=method, percentile=percentile, output_range=output_range)


def train(model, x, y, test=None, update="sparse", epochs=1, lr=0.02, qas=True, rounding="stochastic",
          float_classifier=False, momentum=0.0, accumulate=1, seed=0, calib=None, logit_range=16.0,
          weight_headroom=2.0, progress=True):
    """Train a model on (x, y) in the bit-exact simulator, as the device would.

    model: an ONNX path, a float IR (quantized on `calib` or x first) or an int8 IR.
    -> (trained int8 IR, history, trainer).  Works in a notebook:
        qmodel, history, _ = tt.train("model.onnx", x, y, test=(tx, ty), update="sparse", epochs=2)
    """
    import sys

    from .compiler import hparams
    from .compiler.passes.autodiff import strip_training
    from .compiler.pipeline import training_graph
    from .train.backprop import BackpropTrainer
    from .train.loop import fit
    # every hyper-parameter is checked before any work (compiler/hparams.py)
    lr, momentum = hparams.check_lr(lr), hparams.check_momentum(momentum)
    accumulate, logit_range = hparams.check_accumulate(accumulate), hparams.check_logit_range(logit_range)
    weight_headroom = hparams.check_headroom(weight_headroom)
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        model = load(model)
    if model.t(model.inputs[0]).dtype != "int8":
        model = quantize(model, (x if calib is None else calib)[:500], output_range=(-logit_range, logit_range))
    tg = training_graph(model, update, qas=qas, float_classifier=float_classifier, weight_headroom=weight_headroom)
    trainer = BackpropTrainer(tg, lr=lr, rounding=rounding, seed=seed, momentum=momentum, accumulate=accumulate)
    history = fit(trainer, x, y, epochs=epochs, seed=seed, test=test, progress=progress, out=sys.stdout)
    return strip_training(tg), history, trainer


def save(graph, path):
    return serialize.save(graph, path)


__all__ = ["load", "quantize", "train", "save", "Simulator"]
