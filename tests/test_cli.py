"""The command line: the README's main job, reports, and one-line errors with exit 2."""
import json
from pathlib import Path

import numpy as np
import pytest

import tinytrain as tt
from tinytrain.cli import main
from tinytrain.data import load_dataset

from .onnx_builder import Builder

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "mcu_cnn_mnist.onnx"
CALIB = ROOT / "models" / "data" / "mnist_calib.npz"
TEST = ROOT / "models" / "data" / "mnist_test.npz"


def test_quantize_writes_model_and_reports(tmp_path, capsys):
    assert main(["quantize", str(MODEL), "--calib", str(CALIB), "--test", str(TEST), "-o", str(tmp_path),
                 "--report-samples", "20"]) == 0
    out = capsys.readouterr().out
    assert "float (onnxruntime)" in out and "SQNR" in out
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["accuracy"]["samples"] == 1000 and len(rep["layers"]) > 10
    assert (tmp_path / "report.txt").read_text().startswith("int8 model:")
    # the saved int8 model reloads and predicts exactly like the reported accuracy says
    gq = tt.load(rep["int8_model"])
    tx, ty = load_dataset(TEST)
    assert np.mean(tt.Simulator(gq).predict(tx) == ty) == pytest.approx(rep["accuracy"]["int8_top1"])


def test_quantize_percentile(tmp_path, capsys):
    assert main(["quantize", str(MODEL), "--calib", str(CALIB), "--method", "percentile", "--percentile", "99.9",
                 "--max-calib", "50", "-o", str(tmp_path), "--report-samples", "10"]) == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["calibration"] == {"method": "percentile", "samples": 50, "percentile": 99.9}
    assert "accuracy" in rep          # mnist_calib has labels: accuracy on the calibration data


def test_inspect(capsys):
    assert main(["inspect", str(MODEL)]) == 0
    out = capsys.readouterr().out
    assert "conv2d" in out and "fully_connected" in out and "parameters" in out


def test_inspect_lists_unsupported_ops(tmp_path, capsys):
    b = Builder([1, 4])
    y = b.op("Gemm", ["x", b.init(np.ones((3, 4), np.float32))], transB=1)
    y = b.op("Erf", [y])
    b.model(y, tmp_path / "m.onnx")
    assert main(["inspect", str(tmp_path / "m.onnx")]) == 2
    cap = capsys.readouterr()
    assert "Erf" in cap.out and "NO" in cap.out
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tinytrain: error:") and "Erf" in err[0] and "Erf_2" in err[0]


@pytest.mark.parametrize("problem", ["missing", "no_x", "bad_shape", "nan", "bad_labels"])
def test_bad_data_is_one_line_exit_2(problem, tmp_path, capsys):
    path = tmp_path / "d.npz"
    if problem == "no_x":
        np.savez(path, images=np.zeros((2, 1, 28, 28), np.float32))
    elif problem == "bad_shape":
        np.savez(path, x=np.zeros((2, 3, 28, 28), np.float32))
    elif problem == "nan":
        np.savez(path, x=np.full((2, 1, 28, 28), np.nan, np.float32))
    elif problem == "bad_labels":
        np.savez(path, x=np.zeros((2, 1, 28, 28), np.float32), y=np.zeros(3))
    assert main(["quantize", str(MODEL), "--calib", str(path), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tinytrain: error:") and "d.npz" in err[0], err


@pytest.mark.parametrize("name", ["tt_state", "tt", "TT_X", "Tt_y", "app", "app_main", "int", "_Bool", "static_assert",
                                  "_Model", "_m", "a__b", "m_", "9lives", "my-model", "m\u00f6del", "a" * 33, "",
                                  "x; system", "m\n#define"])
def test_compile_refuses_bad_name(name, tmp_path, capsys):
    """--name becomes every C symbol's prefix: keywords, reserved identifiers, the runtime's tt_* and the
    board harness's app_* names, non-identifiers and over-long names are one line, exit 2, nothing written."""
    out = tmp_path / "c"
    assert main(["compile", str(MODEL), "--calib", str(CALIB), "--update", "classifier", "--name", name,
                 "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tinytrain: error:") and "--name" in err[0], err
    assert not out.exists()


def test_compile_accepts_a_32_character_name(tmp_path, capsys):
    name = "Kws_v2" + "x" * 26
    assert main(["compile", str(ROOT / "models" / "imu_cnn.onnx"), "--calib",
                 str(ROOT / "models" / "data" / "basicmotions_train.npz"), "--update", "classifier", "--name", name,
                 "--package", "none", "-o", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / f"{name}.c").is_file()


def test_inspect_says_supported_only_when_the_whole_import_succeeds(tmp_path, capsys):
    """Every op of this model has a converter, but its ReduceMean over channels does not import:
    inspect must not call the model supported."""
    import onnx
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], [0.1] * 108)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMean", ["c"], ["y"], name="mean_over_channels", axes=[1], keepdims=1)]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]),
                              opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert main(["inspect", str(path)]) == 2
    out, err = capsys.readouterr()
    assert "model: NOT supported" in out and "mean_over_channels" in out
    assert [ln for ln in out.splitlines() if ln.split()[:1] == ["ReduceMean"]][0].split()[2] == "NO"
    assert len(err.strip().splitlines()) == 1 and err.startswith("tinytrain: error:")
    assert main(["inspect", str(ROOT / "models" / "mcu_cnn_mnist.onnx")]) == 0
    assert "model: supported" in capsys.readouterr().out
