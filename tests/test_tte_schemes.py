"""TTE's sparse-update schemes (compiler/tte_schemes.py): its config format read unchanged,
its published schemes as presets, bad configs refused with one line."""
import json
from pathlib import Path

import pytest

import tinytrain as tt
from tinytrain.cli import main
from tinytrain.compiler import tte_schemes as T
from tinytrain.compiler.errors import TinytrainError
from tinytrain.compiler.scheme import resolve, tte_convs, weighted_layers

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "models" / "paper"

# Layers of TTE's own model definitions (algorithm/assets/mcu_models/*.pkl, read by hand) at the
# indices its schemes name: conv index -> (out, in) channels of that 1x1 conv, in TTE's net.
MCUNET_TTE = {20: (40, 160), 21: (160, 40), 24: (144, 48), 27: (192, 48), 30: (240, 48), 36: (384, 96), 39: (576, 96),
              41: (160, 576)}
MBV2_TTE = {26: (24, 144), 27: (144, 24), 42: (336, 56), 45: (336, 56), 48: (336, 56), 50: (112, 336)}


@pytest.fixture(scope="module")
def nets():
    return {n: tt.load(PAPER / f) for n, f in [("mbv2", "mbv2_w035_128.onnx"), ("proxyless", "proxyless_w03_128.onnx"),
                                                 ("mcunet", "mcunet_128.onnx")]}


def _w(g, node):
    return g.t(node.inputs[1]).shape


def test_tte_json_picks_the_layers_tte_picks(nets, tmp_path):
    g = nets["mcunet"]
    f = tmp_path / "mcunet_100kb.json"          # the sparse_update.sh form: dash-separated strings
    f.write_text(json.dumps({"backward_config": {"enable_backward_config": 1, "n_bias_update": 22,
                                                 "manual_weight_idx": "21-24-27-30-36-39",
                                                 "weight_update_ratio": "1-1-1-1-0.125-0.25",
                                                 "weight_select_criteria": "magnitude+", "pw1_weight_only": 0}}))
    s = resolve(g, str(f))
    convs = [n for n in weighted_layers(g)[:-1] if n.op == "conv2d"]
    assert len(convs) == 42                     # TTE's MCUNet-5FPS has 42 convs
    by_id = {n.id: i for i, n in enumerate(convs)}
    head = weighted_layers(g)[-1]
    assert s.weights.pop(head.id) == 1.0 and head.id in s.biases      # the classifier always trains
    assert {by_id[k]: r for k, r in s.weights.items()} == {21: 1, 24: 1, 27: 1, 30: 1, 36: 0.125, 39: 0.25}
    assert sorted(by_id[k] for k in s.biases if k != head.id) == list(range(20, 42))
    for i, (co, ci) in MCUNET_TTE.items():      # the same layers as in TTE's model
        assert _w(g, convs[i]) == (co, 1, 1, ci), i
    # the same scheme as the preset, and as a plain list form
    p = resolve(g, "tte-mcunet-99kb")
    assert p.weights == resolve(g, str(f)).weights and p.biases == resolve(g, str(f)).biases
    d = resolve(g, json.loads(T.dumps("mcunet", "99kb")))
    assert d.weights == p.weights and d.biases == p.biases


def test_presets_on_the_paper_nets(nets):
    for net, g in nets.items():
        assert T.detect_net(g, weighted_layers(g)) == net
        convs = tte_convs(g)
        for kb, (n_bias, idx, ratios) in T.PUBLISHED[net].items():
            s = resolve(g, f"tte-{net}-{kb}")
            head = weighted_layers(g)[-1].id
            want = {convs[i].id: float(r) for i, r in zip(idx, ratios) if r > 0}
            assert {k: v for k, v in s.weights.items() if k != head} == want
            n_tte = len(T.net_convs(net))        # biases counted back from TTE's last conv
            assert s.biases - {head} == {convs[i].id for i in range(n_tte - n_bias, n_tte)}
        assert resolve(g, f"tte-{list(T.PUBLISHED[net])[2]}").name == f"tte-{net}-{list(T.PUBLISHED[net])[2]}"
    g = nets["mbv2"]
    convs = tte_convs(g)
    for i, (co, ci) in MBV2_TTE.items():
        assert _w(g, convs[i]) == (co, 1, 1, ci), i
    assert len(convs) == 52 and _w(g, convs[51]) == (448, 1, 1, 112)    # our feature-mix conv, not in TTE's net
    assert convs[51].id not in resolve(g, "tte-mbv2-99kb").biases
    notes, structural = T.differences(nets["proxyless"], weighted_layers(nets["proxyless"]), "proxyless")
    assert structural and any("conv 57: 56->336 channels here, 64->384" in n for n in notes)
    assert T.differences(nets["mcunet"], weighted_layers(nets["mcunet"]), "mcunet") == ([], True)


def test_tte_net_tables_match_the_nets_layout(nets):
    # independent of T.net_convs: MCUNet here is built from the same block list as TTE's
    g = nets["mcunet"]
    ours = [T.conv_signature(g, n) for n in tte_convs(g)]
    assert ours == T.net_convs("mcunet")
    assert len(T.net_convs("mbv2")) == 51 and len(T.net_convs("proxyless")) == 60


@pytest.mark.parametrize("spec, field", [
    ({"n_bias_update": 6, "manual_weight_idx": [45], "weight_update_ratio": [1]}, "manual_weight_idx"),
    ({"n_bias_update": 2, "manual_weight_idx": [30], "weight_update_ratio": [1]}, "manual_weight_idx"),
    ({"n_bias_update": 4, "manual_weight_idx": [38, 39], "weight_update_ratio": [1, 0.3]}, "weight_update_ratio"),
    ({"n_bias_update": 4, "manual_weight_idx": [38, 39], "weight_update_ratio": [1]}, "weight_update_ratio"),
    ({"n_bias_update": 4, "manual_weight_idx": [39, 38], "weight_update_ratio": [1, 1]}, "manual_weight_idx"),
    ({"n_bias_update": 4, "manual_weight_idx": "38-x"}, "manual_weight_idx"),
    ({"n_bias_update": 99}, "n_bias_update"),
    ({"n_bias_update": True}, "n_bias_update"),
    ({"manual_weight_idx": [39]}, "n_bias_update"),
    ({"n_bias_update": 4, "n_weight_updates": 2}, "n_weight_updates"),
    ({"backward_config": {"enable_backward_config": 0, "n_bias_update": 4}}, "enable_backward_config"),
    ({"n_bias_update": 4, "quantize_gradient": 1}, "quantize_gradient"),
    ({"n_bias_update": 4, "manual_weight_idx": [39], "weight_update_ratio": [3]}, "weight_update_ratio"),
    ({"n_bias_update": 2, "n_weight_update": 3}, "n_weight_update"),
    ({"49kb": {"n_bias_update": 4}, "99kb": {"n_bias_update": 6}}, "49kb"),     # mcu_ir_gen.py's dict of schemes
])
def test_bad_tte_configs_are_refused(spec, field):
    g = tt.load(ROOT / "models" / "mcu_cnn_mnist.onnx")       # 40 convs
    with pytest.raises(TinytrainError) as e:
        resolve(g, spec)
    assert e.value.field == field and "\n" not in str(e.value)


def test_tte_forms_tte_accepts(nets):
    g = tt.load(ROOT / "models" / "mcu_cnn_mnist.onnx")       # 40 convs
    convs = tte_convs(g)
    head = weighted_layers(g)[-1].id
    # n_weight_update instead of indices (the last convs), one ratio for all, 'all' biases
    s = resolve(g, {"n_bias_update": "all", "manual_weight_idx": None, "n_weight_update": 3, "weight_update_ratio": 0.5})
    assert s.weights == {convs[37].id: 0.5, convs[38].id: 0.5, convs[39].id: 0.5, head: 1.0}
    assert s.biases == {n.id for n in convs} | {head}
    # a channel count instead of a ratio; pw1_weight_only keeps the expanding 1x1 convs (39: 32 -> 160)
    s = resolve(g, {"n_bias_update": 3, "manual_weight_idx": "37-38-39", "weight_update_ratio": "1-1-4",
                    "pw1_weight_only": 1})
    assert s.weights == {convs[39].id: 0.125, head: 1.0}


def test_presets_refuse_another_net(nets):
    for name in ("tte-mbv2-99kb", "tte-mcunet-98kb", "tte-99kb"):
        with pytest.raises(TinytrainError) as e:
            resolve(tt.load(ROOT / "models" / "mcu_cnn_mnist.onnx") if name != "tte-mcunet-98kb" else nets["mcunet"],
                    name)
        assert e.value.field == "update"


def test_cli_refuses_a_bad_tte_scheme_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"n_bias_update": 4, "manual_weight_idx": [38, 39], "weight_update_ratio": [1, 0.3]}))
    rc = main(["compile", str(ROOT / "models" / "mcu_cnn_mnist.onnx"), "--calib",
               str(ROOT / "models" / "data" / "mnist_calib.npz"), "--update", str(bad), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("tinytrain: error:") and "bad.json" in err[0] and "weight_update_ratio" in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_tte_scheme_trains_bit_exact_in_c(tmp_path):
    from .test_compile import _bit_exact
    from tinytrain.data import load_dataset
    x, y = load_dataset(ROOT / "models" / "data" / "fmnist_train.npz")
    gq = tt.quantize(tt.load(ROOT / "models" / "mcu_cnn_mnist.onnx"), x[:200], output_range=(-16, 16))
    # a depthwise conv at 1/2 of its channels, pointwise convs at 1/4 and 1/8 of their inputs, one
    # weight skipped (ratio 0: bias only), one whole; biases of the last 6 convs
    spec = {"n_bias_update": 6, "manual_weight_idx": [34, 35, 36, 38, 39],
            "weight_update_ratio": [0.5, 0.25, 0, 0.125, 1]}
    s = resolve(gq, spec)
    convs = tte_convs(gq)
    assert s.weights[convs[34].id] == 0.5 and convs[36].id not in s.weights and convs[36].id in s.biases
    tg = _bit_exact(tmp_path, gq, x, y, 40, spec)
    assert len(tg.meta["training"]["trainable"]) == 5 + 7   # 4 conv weights + the classifier's, 6 + 1 biases
