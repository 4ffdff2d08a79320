"""The Python API (the CLI is a thin layer over it).

    import tinytrain as tt
    model = tt.load("model.onnx")                       # float IR, BN folded
    qmodel = tt.quantize(model, calib_x)                # int8 IR
    sim = tt.Simulator(qmodel); logits = sim.run(x)     # bit-exact int8 forward
"""
from .compiler import recipe, serialize
from .compiler.pipeline import load as _load
from .compiler.pipeline import quantize_graph
from .sim.simulator import Simulator
from .train.monitor import DivergenceError  # noqa: F401  (re-exported)


def load(path, input_shape=None):
    """An ONNX file -> the float IR (BatchNorm folded, ReLU/ReLU6 fused).
    A `.tt.npz` file (saved by `save`) loads as it was saved."""
    if str(path).endswith(".tt.npz"):
        return serialize.load(path)
    return _load(path, input_shape)


def _in_layout(model, x, layout, field="x"):
    """x in the model's input shape and layout; layout: the layout x is in (nchw, nhwc, ncw,
    nwc; None: the model's).  The rules of tinytrain/data.py: no arbitrary reshape."""
    from .data import conform
    return conform(x, model.meta["input_shape"], layout, model.meta.get("input_layout"), field=field)


def quantize(model, calib_x, method="minmax", percentile=99.99, output_range=None, layout=None):
    """Post-training int8 quantization calibrated on calib_x (in the model's input layout,
    or in `layout`, e.g. "nhwc", transposed to it).
    output_range=(lo, hi) fixes the logits' range (room to grow during training)."""
    from .compiler.hparams import check_percentile
    if method == "percentile":
        percentile = check_percentile(percentile)
    if output_range is not None:
        from .compiler.hparams import check_finite
        output_range = tuple(check_finite(v, "output_range") for v in output_range)
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        model = load(model)
    calib_x = _in_layout(model, calib_x, layout)
    return quantize_graph(model, calib_x, method=method, percentile=percentile, output_range=output_range)


def quantize_for_training(model, calib_x, logit_range=recipe.LOGIT_RANGE):
    """The recipe's int8 model for training (compiler/recipe.py): calibrated on the first
    data.CALIB_SAMPLES samples of calib_x (in the model's layout), the logits' range fixed to
    [-logit_range, logit_range].  The CLI's train and compile and `train` below use it."""
    from .data import CALIB_SAMPLES
    return quantize_graph(model, calib_x[:CALIB_SAMPLES], output_range=(-logit_range, logit_range))


def train(model, x, y, test=None, update=recipe.UPDATE, epochs=1, lr=recipe.LR["backprop"], qas=True,
          rounding=recipe.ROUNDING, float_classifier=False, momentum=0.0, accumulate=1, seed=0, calib=None,
          logit_range=recipe.LOGIT_RANGE, weight_headroom=recipe.WEIGHT_HEADROOM, progress=True, layout=None,
          allow_one_class=False):
    """Train a model on (x, y) in the bit-exact simulator, as the device would.

    model: an ONNX path, a float IR (quantized on `calib` or x first: their first
    data.CALIB_SAMPLES samples) or an int8 IR.  layout: the layout x, test and calib are in
    ("nchw", "nhwc", "ncw", "nwc"; default the model's), transposed to the model's.
    -> (trained int8 IR, history, trainer).  Works in a notebook:
        qmodel, history, _ = tt.train("model.onnx", x, y, test=(tx, ty), update="sparse", epochs=2)

    Labels that are all one class raise TinytrainError (a classifier cannot learn from
    them) unless allow_one_class=True.  A run that diverges (tinytrain/train/monitor.py:
    non-finite or pinned loss, one-class collapse, skipped updates) raises DivergenceError,
    a TinytrainError whose `model` is the int8 IR with the last good weights, `history`
    the finished epochs, `trainer` the trainer (set back to those weights), `step`,
    `reason` and `last_good_step` where and why it stopped.
    """
    import sys

    import numpy as np

    from .compiler.errors import TinytrainError
    from .compiler import hparams
    from .compiler.passes.autodiff import strip_training
    from .compiler.pipeline import training_graph
    from .train.backprop import BackpropTrainer
    from .train.loop import fit
    # every hyper-parameter is checked before any work (compiler/hparams.py)
    lr, momentum = hparams.check_lr(lr), hparams.check_momentum(momentum)
    accumulate, logit_range = hparams.check_accumulate(accumulate), hparams.check_logit_range(logit_range)
    weight_headroom = hparams.check_headroom(weight_headroom)
    labels = np.asarray(y).reshape(-1)
    if not allow_one_class and labels.size and (labels == labels[0]).all():
        raise TinytrainError(f"every label is {labels[0]}: a classifier cannot learn from one class; pass "
                             f"allow_one_class=True to train anyway", field="y")
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        model = load(model)
    x = _in_layout(model, x, layout)
    if test is not None:
        test = (_in_layout(model, test[0], layout, field="test"), test[1])
    if model.t(model.inputs[0]).dtype != "int8":
        cx = x if calib is None else _in_layout(model, calib, layout, field="calib")
        model = quantize_for_training(model, cx, logit_range)
    from .compiler.options import BuildOptions       # the one record of the build's options
    opts = BuildOptions(update=update, qas=qas, float_classifier=float_classifier, weight_headroom=weight_headroom,
                        logit_range=logit_range, rounding=rounding)
    tg = training_graph(model, options=opts)
    trainer = BackpropTrainer(tg, lr=lr, rounding=opts.rounding, seed=seed, momentum=momentum, accumulate=accumulate)
    try:
        history = fit(trainer, x, y, epochs=epochs, seed=seed, test=test, progress=progress, out=sys.stdout,
                      lr_flag="lr")
    except DivergenceError as e:              # the trainer holds the last good weights again
        e.model, e.trainer = strip_training(tg), trainer
        raise
    return strip_training(tg), history, trainer


def save(graph, path):
    return serialize.save(graph, path)


__all__ = ["load", "quantize", "train", "save", "Simulator", "DivergenceError"]
