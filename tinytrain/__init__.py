"""tinytrain: on-device training compiler and runtime."""
__version__ = "0.1.0"

from .api import Simulator, load, quantize, save, train  # noqa: E402
from .compiler.errors import TinytrainError  # noqa: E402

__all__ = ["load", "quantize", "train", "save", "Simulator", "TinytrainError", "__version__"]
