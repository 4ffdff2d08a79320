"""Hyper-parameter checks, in one place: the CLI's argparse types, the Python API,
the trainers' constructors and the emitted C's `<name>_init` use the same bounds.

Every value must be a finite number inside a documented range (docs/architecture.md,
Numerics, "Hyper-parameters"): a NaN, an infinity or a value that is negative or
huge is a user mistake (one line, exit 2), never undefined behaviour later.

  lr               (0, 1e3]   float32(1e3) is finite; every step is clipped to +-2^20
                              integer steps before any float-to-int conversion, so
                              no finite lr can overflow an integer (the bound keeps
                              lr * gradient * QAS factor a meaningful float)
  momentum         [0, 1)     v = mu v + g stays bounded
  accumulate       1..65536   samples averaged per update
  queries          1..1024    MeZO estimates per step (unrolled loop bound in C)
  eps              1..16      MeZO perturbation in int8 steps (<= 127 - e weight room)
  weight_headroom  [1, 64]    trained weights' scale x h (beyond 64 they round to 0)
  logit_range      (0, 1e6]   a float model's logits quantized to [-R, R]
  percentile       (50, 100]  percentile calibration
"""
import math

from .errors import TinytrainError

LR_MAX = 1e3
ACCUMULATE_MAX = 1 << 16
QUERIES_MAX = 1024
EPS_MAX = 16
HEADROOM_MAX = 64.0
LOGIT_RANGE_MAX = 1e6


def check_finite(v, field, integer=False):
    """A finite real number (not a bool, string or array), else a one-line error naming `field`."""
    if isinstance(v, (bool, str, bytes)) or getattr(v, "ndim", 0) != 0 or \
            getattr(getattr(v, "dtype", None), "kind", "") == "b":
        raise TinytrainError(f"{v!r} is not a number", field=field)
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        raise TinytrainError(f"{v!r} is not a number", field=field) from None
    if not math.isfinite(f):
        raise TinytrainError(f"{f} is not a finite number", field=field)
    if integer:
        if f != int(f):
            raise TinytrainError(f"{v!r} is not a whole number", field=field)
        return int(f)
    return f


def check_lr(v, field="lr"):
    f = check_finite(v, field)
    if not 0.0 < f <= LR_MAX:
        raise TinytrainError(f"learning rate {f:g} must be in (0, {LR_MAX:g}]", field=field)
    if float(_f32(f)) == 0.0:
        raise TinytrainError(f"learning rate {f:g} is 0 in float32", field=field)
    return f


def check_momentum(v, field="momentum"):
    f = check_finite(v, field)
    if not 0.0 <= f < 1.0:
        raise TinytrainError(f"momentum {f:g} must be in [0, 1)", field=field)
    return f


def check_accumulate(v, field="accumulate"):
    n = check_finite(v, field, integer=True)
    if not 1 <= n <= ACCUMULATE_MAX:
        raise TinytrainError(f"accumulate {n} must be in 1..{ACCUMULATE_MAX}", field=field)
    return n


def check_queries(v, field="queries"):
    n = check_finite(v, field, integer=True)
    if not 1 <= n <= QUERIES_MAX:
        raise TinytrainError(f"queries {n} must be in 1..{QUERIES_MAX}", field=field)
    return n


def check_eps(v, field="eps"):
    n = check_finite(v, field, integer=True)
    if not 1 <= n <= EPS_MAX:
        raise TinytrainError(f"perturbation {n} must be 1..{EPS_MAX} quantization steps", field=field)
    return n


def check_headroom(v, field="weight_headroom"):
    f = check_finite(v, field)
    if not 1.0 <= f <= HEADROOM_MAX:
        raise TinytrainError(f"weight headroom {f:g} must be in [1, {HEADROOM_MAX:g}]", field=field)
    return f


def check_logit_range(v, field="logit_range"):
    f = check_finite(v, field)
    if not 0.0 < f <= LOGIT_RANGE_MAX:
        raise TinytrainError(f"logit range {f:g} must be in (0, {LOGIT_RANGE_MAX:g}]", field=field)
    return f


def check_percentile(v, field="percentile"):
    f = check_finite(v, field)
    if not 50.0 < f <= 100.0:
        raise TinytrainError(f"percentile {f:g} must be in (50, 100]", field=field)
    return f


def _f32(f):
    import numpy as np
    return np.float32(f)


def argtype(check, flag, integer=False):
    """An argparse `type=` for a flag: parses the text and applies `check`; argparse then
    prints `tinytrain <cmd>: error: argument --flag: ...` and exits 2."""
    import argparse

    def parse(text):
        try:
            v = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {'a whole' if integer else 'a'} number") from None
        try:
            return check(v, field=flag)
        except TinytrainError as e:
            raise argparse.ArgumentTypeError(e.problem) from None
    parse.__name__ = flag.lstrip("-").replace("-", "_")
    return parse
