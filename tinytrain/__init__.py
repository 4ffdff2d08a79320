"""tinytrain: on-device training compiler and runtime."""
__version__ = "0.1.0"

from ._numba_cache import configure as _configure_numba_cache  # noqa: E402

_configure_numba_cache(__version__)  # before any module imports numba: its cache lives outside the package

# The API loads on first use (PEP 562): `import tinytrain` and `tinytrain --help` stay
# fast; numpy, onnx and numba come in when a function needs them.
_API = {"load": ".api", "quantize": ".api", "train": ".api", "save": ".api", "Simulator": ".api",
        "DivergenceError": ".api", "TinytrainError": ".compiler.errors"}

# The subpackage tinytrain.train shares its name with the function tinytrain.train.  Import
# the (empty) subpackage now, so that no later `import tinytrain.train.x` binds the module
# over the name; then drop the module's binding: `tinytrain.train` is the function.
from . import train as _train_package  # noqa: E402,F401

del train  # noqa: F821  (bound by the import above)


def __getattr__(name):
    if name in _API:
        import importlib
        value = getattr(importlib.import_module(_API[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tinytrain' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))


__all__ = ["load", "quantize", "train", "save", "Simulator", "TinytrainError", "__version__"]
