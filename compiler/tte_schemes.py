"""The Tiny Training Engine's sparse-update schemes, read in TTE's own format.

A TTE scheme (mit-han-lab/tiny-training, its `backward_config`) names layers by
their index among the model's **convolutions** (every conv, depthwise and
pointwise alike, in forward order, the first conv = 0; the classifier is not
counted and always trains, weights and bias):

    {"n_bias_update": 25,                         # biases of the last 25 convs
     "manual_weight_idx": [27, 30, 33, 36, 39, 42, 45, 48],   # or "27-30-33-...": weights of these convs,
     "weight_update_ratio": [1, 1, 1, 1, 1, 0.125, 0.5, 1]}   # each at this fraction of its input channels

Fields, as TTE reads them: `n_bias_update` an int or "all"; `manual_weight_idx` a list,
a dash-separated string or null (then `n_weight_update`, an int or "all" = n_bias_update,
picks the last convs); `weight_update_ratio` a list, a dash-separated string, one number
for every layer, or null (all 1); a ratio 0 skips the layer's weight (its bias still
learns), an integer > 1 is a channel count; each weight layer must also be a bias layer.
`enable_backward_config` (must be 1), `pw1_weight_only` (keep only expanding 1x1 convs),
`weight_select_criteria` (TTE's training code picks channels by magnitude, its compiler
and tinytrain take the first ones), `quantize_gradient`, `train_scale`, `freeze_fc`
(must be 0) are accepted. The object may sit under a `backward_config` key.

Mapping onto a tinytrain graph: TTE conv k = the k-th conv2d node in graph order,
the last weighted layer (the classifier) excluded; a ratio r of a pointwise or full
conv keeps the first r*C_in input channels (weight layout OHWI: the last axis), of a
depthwise conv the first r*C channels -- what TTE's compiled backward does.

TTE's published schemes (compilation/mcu_ir_gen.py, keyed by TTE's own estimate of their
memory) are presets `tte-<net>-<kb>`, or `tte-<kb>` with the net recognised from the
model's layers. A preset counts its biases on TTE's definition of the net (TTE_NETS below:
the layers of the models in its algorithm/assets/mcu_models), so a model with extra convs
after TTE's last (a feature-mix conv) keeps them frozen, as TTE's net does not have them.
"""
import json

from .errors import TinytrainError
from .ops.conv import Conv2d

RATIOS = (1.0, 0.5, 0.25, 0.125)
KNOWN_KEYS = {"enable_backward_config", "n_bias_update", "n_weight_update", "manual_weight_idx",
              "weight_update_ratio", "weight_select_criteria", "pw1_weight_only", "quantize_gradient",
              "train_scale", "freeze_fc"}
CRITERIA = ("magnitude+", "magnitude-", "random")

# TTE's three nets, from the layer configs of its models: stem conv 3->16 3x3 stride 2, then
# inverted-residual blocks (expanded channels or None for no 1x1 expand, out channels, depthwise
# kernel, stride); no feature-mix conv; the classifier takes the last block's channels.
TTE_NETS = {
    "mbv2": ("MobileNetV2-w0.35", [
        (None, 8, 3, 1), (48, 8, 3, 2), (48, 8, 3, 1), (48, 16, 3, 2), (96, 16, 3, 1), (96, 16, 3, 1),
        (96, 24, 3, 2), (144, 24, 3, 1), (144, 24, 3, 1), (144, 24, 3, 1), (144, 32, 3, 1), (192, 32, 3, 1),
        (192, 32, 3, 1), (192, 56, 3, 2), (336, 56, 3, 1), (336, 56, 3, 1), (336, 112, 3, 1)]),
    "proxyless": ("ProxylessNAS-w0.3", [
        (None, 8, 3, 1), (24, 16, 5, 2), (48, 16, 3, 1), (48, 16, 7, 2), (48, 16, 3, 1), (48, 16, 5, 1),
        (48, 16, 5, 1), (96, 24, 7, 2), (72, 24, 5, 1), (72, 24, 5, 1), (72, 24, 5, 1), (144, 32, 5, 1),
        (96, 32, 5, 1), (96, 32, 5, 1), (96, 32, 5, 1), (192, 64, 7, 2), (384, 64, 7, 1), (192, 64, 7, 1),
        (192, 64, 7, 1), (384, 96, 7, 1)]),
    "mcunet": ("MCUNet-5FPS", [
        (None, 8, 3, 1), (32, 16, 3, 2), (48, 16, 3, 1), (48, 24, 7, 2), (120, 24, 3, 1), (120, 40, 3, 2),
        (160, 40, 7, 1), (160, 48, 5, 1), (144, 48, 3, 1), (192, 48, 3, 1), (240, 96, 7, 2), (384, 96, 5, 1),
        (384, 96, 5, 1), (576, 160, 3, 1)]),
}

# The published schemes (mit-han-lab/tiny-training, compilation/mcu_ir_gen.py): name ->
# (n_bias_update, manual_weight_idx, weight_update_ratio).
PUBLISHED = {
    "mbv2": {
        "49kb": (16, [36, 39, 40, 41, 42, 45, 48, 49], [1, 1, 0, 0.25, 0.125, 0.125, 0.125, 0.125]),
        "73kb": (20, [32, 33, 36, 39, 41, 42, 45, 48], [0.125, 0.5, 0.5, 1, 0.25, 0.125, 0.125, 1]),
        "99kb": (25, [27, 30, 33, 36, 39, 42, 45, 48], [1, 1, 1, 1, 1, 0.125, 0.5, 1]),
        "123kb": (31, [27, 30, 33, 36, 39, 42, 45, 48], [1, 1, 1, 1, 1, 0.5, 1, 1]),
        "138kb": (34, [27, 30, 33, 36, 39, 42, 45, 48], [1, 1, 1, 1, 1, 1, 1, 1]),
    },
    "proxyless": {
        "49kb": (21, [39, 42, 44, 45, 50, 51, 54, 57], [0.25, 1, 0, 1, 0, 0.125, 0.25, 0.25]),
        "74kb": (28, [33, 36, 39, 42, 45, 51, 54, 57], [0.5, 0.25, 1, 1, 1, 0.5, 0.25, 0.5]),
        "98kb": (25, [36, 39, 42, 45, 48, 51, 54, 57], [1, 0.5, 1, 1, 0.25, 0.5, 1, 1]),
        "120kb": (32, [36, 39, 42, 45, 48, 51, 54, 57], [1, 1, 1, 1, 0.5, 1, 1, 1]),
        "148kb": (45, [36, 39, 42, 45, 48, 51, 54, 57], [1, 1, 1, 1, 1, 1, 1, 1]),
    },
    "mcunet": {
        "49kb": (20, [23, 24, 27, 30, 33, 39], [0, 0.25, 0.5, 0.5, 0, 0]),
        "74kb": (21, [21, 23, 24, 26, 27, 30], [1, 0, 1, 0, 0.5, 1]),
        "99kb": (22, [21, 24, 27, 30, 36, 39], [1, 1, 1, 1, 0.125, 0.25]),
        "124kb": (24, [21, 24, 27, 30, 33, 39], [0.25, 1, 1, 1, 0.5, 0.5]),
        "148kb": (23, [21, 24, 27, 30, 36, 39], [1, 1, 1, 1, 1, 0.5]),
    },
}


def preset_names():
    return [f"tte-{net}-{kb}" for net, schemes in PUBLISHED.items() for kb in schemes]


def net_convs(net):
    """TTE's convs of a net, in its index order: (kind 'conv'|'dw', c_in, c_out, kernel, stride)."""
    rows, c = [("conv", 3, 16, 3, 2)], 16
    for mid, out, k, s in TTE_NETS[net][1]:
        if mid is not None:
            rows.append(("conv", c, mid, 1, 1))
        m = c if mid is None else mid
        rows += [("dw", m, m, k, s), ("conv", m, out, 1, 1)]
        c = out
    return rows


def _is_depthwise(graph, node):
    return Conv2d.is_depthwise(node, graph)


def tte_convs(layers):
    """The model's convs as TTE counts them, from its weighted layers (scheme.weighted_layers: graph
    order, the classifier last): the conv2d nodes, the classifier excluded."""
    return [n for n in layers[:-1] if n.op == Conv2d.name]


def conv_signature(graph, node):
    w = graph.t(node.inputs[1])
    x = graph.t(node.inputs[0])
    return ("dw" if _is_depthwise(graph, node) else "conv", x.shape[3], w.shape[0], w.shape[1],
            node.attrs["stride"][0])


def differences(graph, layers, net):
    """How the model's convs differ from TTE's definition of `net`: a list of one-line notes
    (empty: the same convs), and whether the layer structure (kind, kernel, stride of each of TTE's
    convs) matches, so that TTE's indices pick the layers TTE picks."""
    ours = [conv_signature(graph, n) for n in tte_convs(layers)]
    theirs = net_convs(net)
    notes, structural = [], len(ours) >= len(theirs)
    if len(ours) != len(theirs):
        notes.append(f"the model has {len(ours)} convs, TTE's {TTE_NETS[net][0]} {len(theirs)}")
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if (a[0], a[3], a[4]) != (b[0], b[3], b[4]):
            structural = False
            notes.append(f"conv {i}: {a[0]} {a[3]}x{a[3]}/{a[4]} here, {b[0]} {b[3]}x{b[3]}/{b[4]} in TTE's net")
        elif a[1:3] != b[1:3]:
            notes.append(f"conv {i}: {a[1]}->{a[2]} channels here, {b[1]}->{b[2]} in TTE's net")
    return notes, structural


def detect_net(graph, layers):
    """The TTE net whose conv structure the model has, or None."""
    for net in TTE_NETS:
        if differences(graph, layers, net)[1]:
            return net
    return None


def _int(v, field, allow_all=None):
    if allow_all is not None and v == "all":
        return allow_all
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        also = " or 'all'" if allow_all is not None else ""
        raise TinytrainError(f"expected a non-negative integer{also}, got {v!r}", field=field)
    return v


def _list(v, field, conv):
    """TTE writes lists as JSON lists or as dash-separated strings ("21-24-27")."""
    if isinstance(v, str):
        parts = v.split("-") if v else []
        try:
            return [conv(p) for p in parts]
        except ValueError:
            raise TinytrainError(f"expected numbers separated by '-', got {v!r}", field=field) from None
    if isinstance(v, list):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return [v]
    raise TinytrainError(f"expected a list or a dash-separated string, got {v!r}", field=field)


def _number(p):
    f = float(p)
    return int(f) if f.is_integer() else f


def is_tte_config(spec):
    """A TTE backward_config (or a dict of them by name, as in TTE's mcu_ir_gen.py)?"""
    if not isinstance(spec, dict) or not spec:
        return False
    if {"backward_config", "n_bias_update", "manual_weight_idx"} & set(spec):
        return True
    return all(isinstance(v, dict) and "n_bias_update" in v for v in spec.values())


def parse(spec):
    """A TTE backward_config (dict) -> (n_bias_update, manual_weight_idx, weight_update_ratio, pw1_only),
    with 'all' left as the string and indices not yet checked against a model."""
    if isinstance(spec, dict) and "backward_config" in spec:
        spec = spec["backward_config"]
    if not isinstance(spec, dict):
        raise TinytrainError("a TTE scheme is an object with n_bias_update, manual_weight_idx, weight_update_ratio",
                             field="backward_config")
    unknown = sorted(set(spec) - KNOWN_KEYS)
    if unknown:
        if all(isinstance(spec[k], dict) for k in spec):
            raise TinytrainError(f"holds {len(spec)} schemes ({', '.join(list(spec)[:5])}); give one scheme "
                                 f"per file, or a preset ({', '.join(preset_names()[:2])}, ...)", field=unknown[0])
        raise TinytrainError(f"unknown TTE scheme field (known: {', '.join(sorted(KNOWN_KEYS))})", field=unknown[0])
    if spec.get("enable_backward_config", 1) not in (1, True):
        raise TinytrainError("is 0: TTE then trains every layer; use --update full", field="enable_backward_config")
    for k in ("quantize_gradient", "train_scale", "freeze_fc"):
        if spec.get(k, 0) not in (0, False):
            raise TinytrainError("is not supported (only 0)", field=k)
    crit = spec.get("weight_select_criteria", "magnitude+")
    if crit not in CRITERIA:
        raise TinytrainError(f"expected one of {', '.join(CRITERIA)}, got {crit!r}", field="weight_select_criteria")
    pw1 = spec.get("pw1_weight_only", 0)
    if pw1 not in (0, 1, False, True):
        raise TinytrainError(f"expected 0 or 1, got {pw1!r}", field="pw1_weight_only")
    if "n_bias_update" not in spec:
        raise TinytrainError("is missing", field="n_bias_update")
    n_bias = spec["n_bias_update"]
    if n_bias != "all":
        n_bias = _int(n_bias, "n_bias_update")
    idx = spec.get("manual_weight_idx")
    if idx is None:
        nw = spec.get("n_weight_update", 0)
        if nw != "all":
            nw = _int(nw, "n_weight_update")
        idx = nw                                # resolved against the model: the last nw convs
    else:
        idx = _list(idx, "manual_weight_idx", int)
        for i in idx:
            _int(i, "manual_weight_idx")
        if idx != sorted(set(idx)):
            raise TinytrainError(f"must be ascending without repeats (TTE pairs ratios with indices in that "
                                 f"order), got {idx}", field="manual_weight_idx")
    ratios = spec.get("weight_update_ratio")
    if ratios is not None:
        ratios = _list(ratios, "weight_update_ratio", _number)
        for r in ratios:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or r < 0:
                raise TinytrainError(f"expected ratios in [0, 1] or channel counts, got {r!r}",
                                     field="weight_update_ratio")
        if isinstance(spec["weight_update_ratio"], (int, float)):
            ratios = ratios[0]                  # one number for every layer
    return n_bias, idx, ratios, bool(pw1)


def from_tte(graph, layers, spec, n_ref=None):
    """A TTE scheme (dict) on this graph (`layers`: its weighted layers, the classifier last) ->
    ({node id: input-channel ratio of its weight update}, {node ids whose bias learns}). `n_ref`: the
    conv count the biases are counted back from (default: the model's own; a preset passes that of
    TTE's net)."""
    n_bias, idx, ratios, pw1 = parse(spec)
    if not layers:
        raise TinytrainError("the model has no conv or linear layer to train")
    convs = tte_convs(layers)
    n = len(convs) if n_ref is None else n_ref
    if n_bias == "all":
        n_bias = n
    if n_bias > n:
        raise TinytrainError(f"{n_bias} is more than the model's {n} convs", field="n_bias_update")
    if not isinstance(idx, list):               # n_weight_update: the last convs
        nw = n_bias if idx == "all" else idx
        if nw > n_bias:
            raise TinytrainError(f"{nw} is more than n_bias_update {n_bias} (a layer whose weight learns also "
                                 "learns its bias)", field="n_weight_update")
        idx = list(range(n - nw, n))
    bias_layers = range(n - n_bias, n)
    for i in idx:
        if i >= len(convs):
            raise TinytrainError(f"index {i} is out of range (the model has {len(convs)} convs, 0..{len(convs) - 1})",
                                 field="manual_weight_idx")
        if i not in bias_layers:
            raise TinytrainError(f"conv {i} updates its weight but not its bias (n_bias_update {n_bias} covers convs "
                                 f"{n - n_bias}..{n - 1})", field="manual_weight_idx")
    if ratios is None:
        ratios = [1] * len(idx)
    elif not isinstance(ratios, list):
        ratios = [ratios] * len(idx)
    if len(ratios) != len(idx):
        raise TinytrainError(f"has {len(ratios)} ratios for {len(idx)} layers in manual_weight_idx",
                             field="weight_update_ratio")
    if pw1:                                     # expanding 1x1 convs only
        keep = [k for k, i in enumerate(idx) if _is_pw1(graph, convs[i])]
        idx, ratios = [idx[k] for k in keep], [ratios[k] for k in keep]
    weights, biases = {}, {convs[i].id for i in bias_layers}
    for i, r in zip(idx, ratios):
        node = convs[i]
        c = graph.t(node.inputs[0]).shape[3]
        if r > 1:
            if not float(r).is_integer() or r > c:
                raise TinytrainError(f"{r} channels of conv {i}, which has {c} input channels",
                                     field="weight_update_ratio")
            r = r / c
        if r == 0:
            continue                            # TTE: ratio 0 skips the weight, the bias still learns
        if float(r) not in RATIOS:
            raise TinytrainError(f"ratio {r:g} of conv {i} is not one tinytrain trains ({', '.join(f'{q:g}' for q in RATIOS)}, "
                                 "or 0)", field="weight_update_ratio")
        if r < 1 and (c * r) != int(c * r):
            raise TinytrainError(f"ratio {r:g} of conv {i} is not a whole number of its {c} input channels",
                                 field="weight_update_ratio")
        weights[node.id] = float(r)
    weights[layers[-1].id] = 1.0                # TTE always trains the classifier
    biases.add(layers[-1].id)
    return weights, biases


def _is_pw1(graph, node):
    w = graph.t(node.inputs[1])
    return w.shape[1] == 1 and w.shape[2] == 1 and w.shape[0] > graph.t(node.inputs[0]).shape[3]


def preset(graph, layers, name):
    """`tte-<net>-<kb>` or `tte-<kb>` -> (the preset's full name, weights, biases) as from_tte, or None
    if `name` is not of that form."""
    parts = name.split("-")
    if len(parts) == 3 and parts[1] in PUBLISHED:
        net, kb = parts[1], parts[2]
    elif len(parts) == 2 and parts[1].endswith("kb"):
        net, kb = detect_net(graph, layers), parts[1]
        if net is None:
            raise TinytrainError(f"'{name}': the model's convs are none of TTE's nets ({', '.join(TTE_NETS)}); "
                                 "name one (tte-<net>-<kb>) or give the scheme as a TTE JSON", field="update")
    else:
        return None
    if kb not in PUBLISHED[net]:
        raise TinytrainError(f"'{name}': TTE published no {kb} scheme for {net} (it has "
                             f"{', '.join(PUBLISHED[net])})", field="update")
    notes, structural = differences(graph, layers, net)
    if not structural:
        raise TinytrainError(f"'{name}' is TTE's scheme for its {TTE_NETS[net][0]}, whose convs this model does not "
                             f"have ({notes[0]})", field="update")
    n_bias, idx, ratios = PUBLISHED[net][kb]
    spec = {"n_bias_update": n_bias, "manual_weight_idx": idx, "weight_update_ratio": ratios}
    return (f"tte-{net}-{kb}",) + from_tte(graph, layers, spec, n_ref=len(net_convs(net)))


def dumps(net, kb):
    """A published scheme as a TTE-format JSON text (what a TTE user would bring)."""
    n_bias, idx, ratios = PUBLISHED[net][kb]
    return json.dumps({"n_bias_update": n_bias, "manual_weight_idx": idx, "weight_update_ratio": ratios})
