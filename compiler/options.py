"""The build-options record: every option a build was made with, created once (from the CLI's
flags or the API's arguments) and passed as one argument to compile_graph / compile_mezo /
training_graph (compiler/pipeline.py).  `tinytrain compile` writes it into the build folder as
BUILD_FILE (listed in the folder's .tinytrain-manifest.json like every file it writes), and
`tinytrain build`, `run --check`, `flash` and the host runtime read it back (read_build), so no
option is repeated by hand.

The file is data: read_build accepts only the fields below, each of its type, and refuses
anything else with one line naming the field.
"""
import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from .errors import TinytrainError

BUILD_FILE = "build.json"
FORMAT = 1


@dataclass(frozen=True)
class BuildOptions:
    # the training graph (training_graph)
    update: str = "sparse"              # a preset, tte-..., or a scheme.json path
    qas: bool = True
    float_classifier: bool = False
    weight_headroom: float = 2.0
    chunk_bytes: int = 8192
    # quantization of a float model (its calibration: the first data.CALIB_SAMPLES samples)
    logit_range: float = 16.0
    # the plan and the C (compile_graph / compile_mezo)
    name: str = "model"
    trainer: str = "backprop"           # backprop or mezo (as built: never auto)
    rounding: str = "stochastic"
    in_place: bool = True
    patch: bool = True
    sram: int = None                    # SRAM budget in bytes: checked (and steers the patching)
    plan_sram: int = None               # steers the patching only, no check
    optimize: str = "speed"             # speed: the fewest recomputed MACs that fit the budget; memory: the min peak
    flash: int = None                   # flash budget for the frozen weights
    eps: int = 1                        # MeZO
    queries: int = 1
    # what the build was made from
    model: str = None
    model_sha256: str = None
    calib: str = None
    calib_sha256: str = None
    calib_samples: int = None
    input_shape: list = None
    input_layout: str = None            # the model's input layout (NCHW, NHWC, ...)
    data_layout: str = None             # --layout: the layout of the data files
    normalization: dict = None          # the input's quantization (scale, zero point) and float range
    version: str = None                 # tinytrain's

    def with_(self, **kw):
        return replace(self, **kw)

    def steer_sram(self):
        """The budget the plan's patching aims at (none for optimize=memory: the smallest plan)."""
        if self.optimize == "memory":
            return None
        return self.sram if self.sram is not None else self.plan_sram

    def to_dict(self):
        return {"format": FORMAT, **asdict(self)}


_TYPES = {f.name: f for f in fields(BuildOptions)}
_KINDS = {"update": str, "qas": bool, "float_classifier": bool, "weight_headroom": (int, float), "chunk_bytes": int,
          "logit_range": (int, float), "name": str, "trainer": str, "rounding": str, "in_place": bool, "patch": bool,
          "sram": int, "plan_sram": int, "flash": int, "eps": int, "queries": int, "model": str, "model_sha256": str,
          "calib": str, "calib_sha256": str, "calib_samples": int, "input_shape": list, "input_layout": str,
          "data_layout": str, "normalization": dict, "version": str, "optimize": str}
_CHOICES = {"trainer": ("backprop", "mezo"), "rounding": ("stochastic", "shadow"), "optimize": ("speed", "memory")}


def from_dict(d, file=None):
    """A record read from a file -> BuildOptions; a field that is unknown or of the wrong type is refused."""
    if not isinstance(d, dict):
        raise TinytrainError("is not a build record (a JSON object)", file=file)
    d = dict(d)
    if d.pop("format", None) != FORMAT:
        raise TinytrainError(f"is not a build record of format {FORMAT}: regenerate it with `tinytrain compile`",
                             file=file)
    for k, v in d.items():
        if k not in _TYPES:
            raise TinytrainError(f"unknown field '{k}' in the build record", file=file, field=k)
        kind = _KINDS[k]
        if v is not None and (not isinstance(v, kind) or (isinstance(v, bool) and bool not in
                                                         (kind if isinstance(kind, tuple) else (kind,)))):
            raise TinytrainError(f"field '{k}' has the wrong type ({type(v).__name__})", file=file, field=k)
        if k in _CHOICES and v not in _CHOICES[k]:
            raise TinytrainError(f"field '{k}' is '{v}', not one of {', '.join(_CHOICES[k])}", file=file, field=k)
    return BuildOptions(**d)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_build(folder, options):
    path = Path(folder) / BUILD_FILE
    path.write_text(json.dumps(options.to_dict(), indent=1) + "\n")
    return path


def read_build(folder):
    """The record `tinytrain compile` wrote into folder -> BuildOptions, or None without one."""
    path = Path(folder) / BUILD_FILE
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise TinytrainError(f"is not valid JSON ({e})", file=path) from None
    return from_dict(d, file=path)
