"""The training recipe: the defaults every way of training uses (the CLI, the Python API,
the generated headers' usage lines, the README, the benchmarks and the tests), in one place.

A float model is quantized for training on the first data.CALIB_SAMPLES samples of its
calibration data (tinytrain/data.py, where files are read) with its logits fixed to
[-LOGIT_RANGE, LOGIT_RANGE] (room to grow while training, rather than the calibration's
range); trained weights get their scale x WEIGHT_HEADROOM.  Imports nothing."""

LR = {"backprop": 0.02, "mezo": 1e-4, "hybrid": 0.02}   # learning rate by trainer
LOGIT_RANGE = 16.0          # a float model's logits are quantized to [-R, R]
WEIGHT_HEADROOM = 2.0       # trained weights' scale x H
MEZO_EPS = 1                # MeZO perturbation, in quantization steps
MEZO_QUERIES = 1            # MeZO two-point estimates per step
UPDATE = "sparse"           # the update scheme
ROUNDING = "stochastic"


def default_lr(trainer="backprop"):
    """The learning rate a trainer uses unless told otherwise."""
    return LR[trainer]
