"""tinytrain: on-device training compiler and runtime."""
__version__ = "0.1.0"

from ._numba_cache import configure as _configure_numba_cache  # noqa: E402

_configure_numba_cache(__version__)  # before any module imports numba: its cache lives outside the package

from .api import Simulator, load, quantize, save, train  # noqa: E402
from .compiler.errors import TinytrainError  # noqa: E402

__all__ = ["load", "quantize", "train", "save", "Simulator", "TinytrainError", "__version__"]
