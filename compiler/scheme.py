"""Sparse-update schemes: which parameters learn on the device.

A scheme names the *weighted layers* (conv2d / fully_connected nodes, counted
0..L-1 in graph order, negative indices from the end, or by ONNX node name):

    {"bias": [-6, -5, -4, -3, -2, -1],            # layers whose bias learns
     "weights": {"-2": 1.0, "-3": 0.5, "-4": 0.25}, # layers whose weights learn, fraction of
                                                    # input channels (1, 1/2, 1/4, 1/8)
     "classifier": true}                            # the last layer: weights and bias

Presets:
  full        every weight and bias
  last-<k>    weights and biases of the last k weighted layers
  bias        every bias, plus the classifier
  classifier  the classifier only
  sparse      a TTE-like scheme: biases of the last half of the layers, the weights
              of the last three non-depthwise convs before the classifier with
              input-channel ratios 1, 1/2, 1/4 (nearest the classifier first),
              and the classifier
  tte         a TTE-sized scheme for a small SRAM budget: biases of the last third
              of the layers, the weights of the last two non-depthwise convs whose
              int8 weights take at most 16 KB (16 K parameters, each layer held whole
              in SRAM; the same layers for a float and an int8 graph), and the classifier
              (tinytrain's own scheme, not one of TTE's)
  tte-<net>-<kb>  TTE's published schemes (net mbv2, proxyless, mcunet; tte-<kb> recognises the
              net), and a JSON in TTE's own format: compiler/tte_schemes.py
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

from . import tte_schemes
from .errors import TinytrainError
from .ops import get_op
from .ops.conv import Conv2d

RATIOS = (1.0, 0.5, 0.25, 0.125)
TTE_HELP = [f"{net} {'|'.join(kbs)}" for net, kbs in tte_schemes.PUBLISHED.items()]
PRESETS = ("full", "bias", "classifier", "sparse", "tte", "last-<k>", "tte-<net>-<kb>")
TTE_WEIGHT_BYTES = 16 * 1024


def weighted_layers(graph):
    return [n for n in graph.nodes if get_op(n.op).weighted]


def is_depthwise(graph, node):
    """Conv2d.is_depthwise for any node (False for other ops)."""
    return node.op == Conv2d.name and Conv2d.is_depthwise(node, graph)


@dataclass
class Scheme:
    """Resolved: node id -> input-channel ratio of its weight update (absent:
    frozen), and the node ids whose bias learns."""
    name: str
    weights: dict = field(default_factory=dict)
    biases: set = field(default_factory=set)

    def trains(self, node_id):
        return node_id in self.weights or node_id in self.biases

    def describe(self, graph):
        layers = weighted_layers(graph)
        rows = []
        for i, n in enumerate(layers):
            w = self.weights.get(n.id)
            rows.append((i, n.name, n.op, "-" if w is None else f"{w:g}", "yes" if n.id in self.biases else "-"))
        return rows


def _resolve_layer(key, layers, names):
    if isinstance(key, str) and key in names:
        return names[key]
    try:
        i = int(key)
    except (TypeError, ValueError):
        raise TinytrainError(f"scheme names layer {key!r}, which is neither an index nor a layer name",
                             field="scheme") from None
    if not -len(layers) <= i < len(layers):
        raise TinytrainError(f"scheme layer index {i} is out of range (the model has {len(layers)} weighted "
                             "layers)", field="scheme")
    return layers[i]


def from_dict(graph, spec, name="custom"):
    layers = weighted_layers(graph)
    names = {n.name: n for n in layers}
    s = Scheme(name)
    if not isinstance(spec, dict) or set(spec) - {"bias", "weights", "classifier"}:
        raise TinytrainError("a scheme is an object with keys 'bias', 'weights', 'classifier'", field="scheme")
    for k in spec.get("bias", []):
        s.biases.add(_resolve_layer(k, layers, names).id)
    weights = spec.get("weights", {})
    if not isinstance(weights, dict):
        raise TinytrainError("scheme 'weights' maps layers to input-channel ratios", field="weights")
    for k, r in weights.items():
        if r not in RATIOS:
            raise TinytrainError(f"weight ratio {r} of layer {k!r} is not one of {RATIOS}", field="weights")
        s.weights[_resolve_layer(k, layers, names).id] = float(r)
    if spec.get("classifier", False):
        s.weights[layers[-1].id] = 1.0
        s.biases.add(layers[-1].id)
    if not s.weights and not s.biases:
        raise TinytrainError("the scheme trains nothing", field="scheme")
    return s


def preset(graph, name):
    layers = weighted_layers(graph)
    if not layers:
        raise TinytrainError("the model has no conv or linear layer to train")
    if name == "full":
        return from_dict(graph, {"bias": list(range(len(layers))), "weights": {i: 1.0 for i in range(len(layers))}},
                         name)
    if name == "bias":
        return from_dict(graph, {"bias": list(range(len(layers))), "classifier": True}, name)
    if name == "classifier":
        return from_dict(graph, {"classifier": True}, name)
    if name.startswith("last-"):
        try:
            k = int(name[5:])
        except ValueError:
            k = 0
        if k <= 0:
            raise TinytrainError(f"'{name}': expected last-<k> with k >= 1", field="update")
        k = min(k, len(layers))
        idx = list(range(len(layers) - k, len(layers)))
        return from_dict(graph, {"bias": idx, "weights": {i: 1.0 for i in idx}}, name)
    if name == "sparse":
        half = list(range(len(layers) // 2, len(layers)))
        convs = [i for i in range(len(layers) - 1) if not is_depthwise(graph, layers[i])]
        weights = {i: r for i, r in zip(reversed(convs[-3:]), RATIOS[:3])}
        return from_dict(graph, {"bias": half, "weights": weights, "classifier": True}, name)
    if name == "tte":
        third = list(range(len(layers) - max(1, len(layers) // 3), len(layers)))
        small = [i for i in range(len(layers) - 1) if not is_depthwise(graph, layers[i])
                 and graph.t(layers[i].inputs[1]).size <= TTE_WEIGHT_BYTES]     # int8: 1 byte a weight
        return from_dict(graph, {"bias": third, "weights": {i: 1.0 for i in small[-2:]}, "classifier": True}, name)
    if name.startswith("tte-"):
        r = tte_schemes.preset(graph, layers, name)
        if r is not None:
            return Scheme(*r)
    raise TinytrainError(f"unknown update scheme '{name}' (presets: {', '.join(PRESETS)} with {', '.join(TTE_HELP)}; "
                         "or a .json file)", field="update")


def tte_convs(graph):
    """The model's convs as TTE's schemes index them (compiler/tte_schemes.py)."""
    return tte_schemes.tte_convs(weighted_layers(graph))


def from_tte(graph, spec, name="tte-scheme"):
    """A scheme in TTE's format (a dict) -> Scheme."""
    return Scheme(name, *tte_schemes.from_tte(graph, weighted_layers(graph), spec))


def resolve(graph, update):
    """A preset name, a path to a JSON scheme, a dict, or a Scheme -> Scheme."""
    if isinstance(update, Scheme):
        return update
    if isinstance(update, dict):
        if tte_schemes.is_tte_config(update):
            return from_tte(graph, update)
        return from_dict(graph, update)
    text = str(update)
    if text.endswith(".json"):
        path = Path(text)
        if not path.is_file():
            raise TinytrainError("no such file", file=path)
        try:
            spec = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise TinytrainError(f"not a JSON scheme: {e}", file=path) from None
        try:
            if tte_schemes.is_tte_config(spec):
                return from_tte(graph, spec, path.stem)
            return from_dict(graph, spec, path.stem)
        except TinytrainError as e:
            raise e.with_context(file=path) from None
    return preset(graph, text)
