"""The first hour of a new user (issue 16): the memory picture without a plotting
library and the text timeline, `inspect` naming kernels/strides/groups, one training
recipe for the CLI and the API, `tt.train` the function whatever was imported,
--trainer auto / --update auto, the header's documentation, lazy imports, defaults in
--help."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinytrain.cli import main
from tinytrain.pngdraw import Canvas, glyph, read_png

from .onnx_builder import Builder

ROOT = Path(__file__).resolve().parent.parent
RNG = np.random.default_rng(0)


def dw_cnn(path):
    """x [1, 3, 8, 8] -> Conv 3x3 -> Relu -> depthwise Conv 3x3 stride 2 (group 4) -> Relu
    -> GlobalAveragePool -> Flatten -> Gemm -> 3 logits."""
    b = Builder([1, 3, 8, 8])
    c = b.op("Conv", [b.input, b.init(RNG.standard_normal((4, 3, 3, 3)) * 0.3), b.init(np.zeros(4))],
             pads=[1, 1, 1, 1])
    d = b.op("Conv", [b.op("Relu", [c]), b.init(RNG.standard_normal((4, 1, 3, 3)) * 0.3), b.init(np.zeros(4))],
             pads=[1, 1, 1, 1], strides=[2, 2], group=4)
    r = b.op("GlobalAveragePool", [b.op("Relu", [d])])
    b.model(b.op("Gemm", [b.op("Flatten", [r]), b.init(RNG.standard_normal((3, 4))), b.init(np.zeros(3))],
                 transB=1), path)
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    model = dw_cnn(d / "dw.onnx")
    y = np.arange(96) % 3                    # learnable: the class's channel is brighter
    x = RNG.random((96, 3, 8, 8), dtype=np.float32) * 0.5
    x[np.arange(96), y] += 0.5
    np.savez(d / "data.npz", x=x, y=y)
    return model, d / "data.npz", d


@pytest.fixture(scope="module")
def compiled(small):
    model, data, d = small
    out = d / "build"
    assert main(["compile", str(model), "--calib", str(data), "--sram", "64k", "--name", "dw", "-o", str(out)]) == 0
    return out


# -- 1. the memory picture and the timeline ----------------------------------
def test_png_writer_round_trips():
    c = Canvas(20, 10)
    c.rect(2, 3, 5, 6, (255, 0, 0))
    c.text(8, 1, "A1", (0, 0, 255))
    px = read_png(c.png())
    assert px.shape == (10, 20, 3)
    assert (px[3:6, 2:5] == (255, 0, 0)).all() and (px[0:3, 0:2] == 255).all()
    blue = (px == (0, 0, 255)).all(axis=2)
    assert (blue[1:8, 8:13] == glyph("A")).all() and (blue[1:8, 14:19] == glyph("1")).all()
    assert (glyph("a") == glyph("A")).all()


def test_memory_png_is_written_without_matplotlib(compiled):
    """memory.png exists and is a valid PNG whatever is installed; it shows the arena's
    buffers (int8 blue, float32 orange), the state blob (purple), the budget (red)."""
    px = read_png((compiled / "memory.png").read_bytes())
    assert px.shape[0] > 300 and px.shape[1] >= 900
    colors = {tuple(c) for c in px.reshape(-1, 3)[::7]}
    from tinytrain.memreport import _COLORS
    assert _COLORS["int8"] in colors and _COLORS["float32"] in colors
    assert (150, 90, 190) in colors                         # the state blob
    assert any(r > 150 and g < 60 and b < 60 for r, g, b in colors)    # the budget / peak in red


def test_report_has_the_text_timeline(compiled):
    """report.txt: one line per schedule step with the live buffers as letters and the
    live bytes, the peak marked, and the peak's live bytes equal the arena's high water."""
    import json
    text = (compiled / "report.txt").read_text()
    assert "memory timeline:" in text and "trainer: backprop" in text
    rows = [ln for ln in text.splitlines() if ln[:5].strip().isdigit() and "|" in ln]
    summary = json.loads((compiled / "report.json").read_text())["summary"]
    assert len(rows) >= 10
    peak = [ln for ln in rows if ln[6] == "*"]
    assert len(peak) == 1 and int(peak[0].split()[0]) == summary["peak_step"]
    live = int(peak[0].split("|")[2].split()[0])
    assert live == sum(b["bytes"] for b in summary["live_at_peak"])
    assert "buffers (letter: tensor, bytes, steps):" in text


# -- 2. inspect: kernel, stride, groups, depthwise; the input layout ----------
def test_inspect_shows_conv_geometry_and_layout(small, capsys, tmp_path):
    import json
    model, _, _ = small
    assert main(["inspect", str(model), "--json", str(tmp_path / "i.json")]) == 0
    out = capsys.readouterr().out
    assert "layout NCHW" in out
    head = next(ln for ln in out.splitlines() if ln.startswith("#"))
    assert all(h in head for h in ("kernel", "stride", "groups"))
    rows = json.loads((tmp_path / "i.json").read_text())["layers"]
    conv, dw = [r for r in rows if r["op"].startswith("conv")]
    assert (conv["kernel"], conv["stride"], conv["groups"], conv["depthwise"]) == ([3, 3], [1, 1], 1, False)
    assert (dw["kernel"], dw["stride"], dw["groups"], dw["depthwise"]) == ([3, 3], [2, 2], 4, True)
    line = next(ln for ln in out.splitlines() if "(depthwise)" in ln)
    assert "3x3" in line and "2x2" in line and " 4 " in line
    assert "kernel" not in next(r for r in rows if r["op"] == "fully_connected")


# -- 3. one recipe; tt.train the function -------------------------------------
def test_cli_and_api_train_the_same_model(small, tmp_path, capsys):
    """The same inputs through `tinytrain train` and tt.train give the same int8 model
    (calibration subset, logit range, headroom, lr: compiler/recipe.py)."""
    import tinytrain as tt
    model, data, _ = small
    assert main(["train", str(model), "--data", str(data), "--epochs", "1", "--quiet", "-o", str(tmp_path)]) == 0
    cli_model = tt.load(tmp_path / "dw.trained.tt.npz")
    d = np.load(data)
    api_model, _, _ = tt.train(str(model), d["x"], d["y"], epochs=1, progress=False)
    a = {t.name: t for t in cli_model.tensors.values() if t.kind == "const"}
    b = {t.name: t for t in api_model.tensors.values() if t.kind == "const"}
    assert a.keys() == b.keys() and a
    for k in a:
        assert np.array_equal(a[k].data, b[k].data), k
    out_q = [t.q for t in cli_model.tensors.values() if t.id in cli_model.outputs][0]
    assert abs(out_q.scale * 255 - 32.0) < 0.5          # logits fixed to [-16, 16], not calibrated


@pytest.mark.parametrize("first", ["import tinytrain.train.backprop", "from tinytrain.train import loop",
                                   "import tinytrain.train", "from tinytrain import train"])
def test_tt_train_is_the_function(first):
    code = (f"{first}\nimport tinytrain as tt, tinytrain.train.monitor, inspect\n"
            "assert inspect.isfunction(tt.train), tt.train\n"
            "assert tt.train.__module__ == 'tinytrain.api'\nprint('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.strip() == "ok", r.stderr


# -- 6. start-up: no numpy, onnx or numba for `import tinytrain` and --help ---
def test_help_imports_nothing_heavy():
    code = ("import sys\nfrom tinytrain.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "import tinytrain\n"
            "heavy = [m for m in ('numpy', 'onnx', 'numba', 'onnxruntime', 'tinytrain.api') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "HEAVY []" in r.stdout, r.stdout + r.stderr


def test_optional_commands_keep_their_own_help_lines():
    """The light stand-ins of build/run/flash/mezo say what the modules' own parsers say."""
    import argparse
    from tinytrain.cli import OPTIONAL_COMMANDS, build_parser

    def choices(p):
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        return {c.dest: c.help for c in sub._choices_actions}
    light = choices(build_parser(["inspect"]))
    for name in OPTIONAL_COMMANDS:
        real = choices(build_parser([name]))
        assert light[name] == real[name] == OPTIONAL_COMMANDS[name][2]
    p = build_parser(["mezo"])
    with pytest.raises(SystemExit):
        p.parse_args(["mezo", "--help"])


# -- 7. every flag's default in --help ----------------------------------------
@pytest.mark.parametrize("cmd", ["inspect", "quantize", "train", "compile", "build", "run", "flash", "mezo"])
def test_every_flag_shows_its_default(cmd, capsys):
    import argparse
    from tinytrain.cli import build_parser
    p = build_parser([cmd])
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[cmd]
    with pytest.raises(SystemExit):
        sub.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for a in sub._actions:
        if a.option_strings and a.default not in (None, False, argparse.SUPPRESS) and a.dest != "help":
            h = sub._get_formatter()._expand_help(a) if a.help else ""
            assert "default" in h, (cmd, a.option_strings)
            assert " ".join(h.split()) in text


# -- 5. --trainer auto, train --update auto, the header, report names MeZO -----
def _one_error(argv, capsys):
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("tinytrain: error:"), err
    return err[0]


def test_trainer_auto_checks_that_mezo_fits(capsys, tmp_path):
    model, calib = ROOT / "models" / "mcu_cnn_mnist.onnx", ROOT / "models" / "data" / "mnist_calib.npz"
    line = _one_error(["compile", model, "--calib", calib, "--trainer", "auto", "--sram", "16k", "-o", tmp_path / "a"],
                      capsys)
    assert "neither trainer fits 16 KB" in line and "backprop needs ~" in line and "MeZO ~" in line
    assert not (tmp_path / "a" / "model.c").exists()
    assert main(["compile", str(model), "--calib", str(calib), "--trainer", "auto", "--sram", "60k",
                 "-o", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "trainer: mezo (backprop needs ~" in out and "MeZO fits: ~" in out
    assert "trainer: MeZO" in (tmp_path / "b" / "report.txt").read_text()
    h = (tmp_path / "b" / "model.h").read_text()
    assert "0.0001f, 1u, 0);   (lr: the CLI's mezo default)" in h


def test_train_update_auto(small, capsys, tmp_path):
    model, data, _ = small
    line = _one_error(["train", model, "--data", data, "--update", "auto", "-o", tmp_path], capsys)
    assert "--sram" in line
    assert main(["train", str(model), "--data", str(data), "--update", "auto", "--sram", "64k", "--epochs",
                 "0", "--quiet", "-o", str(tmp_path)]) == 0
    assert "update: last-8 (the most trainable parameters that fit" in capsys.readouterr().out


def test_header_documents_input_lr_and_reset(compiled):
    from tinytrain.compiler.recipe import LR
    h = (compiled / "dw.h").read_text()
    assert f"sizeof state, {LR['backprop']:g}f, 1u, 0);" in h
    assert "one sample in channels-last order (8x8x3, NHWC)" in h
    assert "from the ONNX input 'x' [1, 3, 8, 8] (NCHW: move the channels last)" in h
    lo, hi = h.split("values in [")[1].split("]")[0].split(", ")
    assert -0.05 < float(lo) <= 0.0 and 0.95 < float(hi) < 1.05       # the calibration data is in [0, 1)
    assert "dw_reset puts the trained parameters back" in h


# -- 6. what long commands print ----------------------------------------------
def test_rate_and_eta():
    from tinytrain.train.loop import rate_eta
    assert rate_eta(10, 110, 2.0) == "5.0 samples/s, ETA 0:20"
    assert rate_eta(1, 7201, 1.0) == "1.0 samples/s, ETA 2:00:00"
    assert rate_eta(0, 10, 0.0) == "-- samples/s, ETA --"


def test_progress_lines_have_rate_and_eta(small, capsys, tmp_path):
    model, data, _ = small
    assert main(["train", str(model), "--data", str(data), "--epochs", "1", "-o", str(tmp_path)]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch 1/1 [")]
    assert lines and all("samples/s, ETA " in ln for ln in lines)
    assert lines[-1].endswith("ETA 0:00")


def test_compile_prints_its_phases(compiled, capsys, small):
    model, data, d = small
    assert main(["compile", str(model), "--calib", str(data), "--name", "dw", "-o", str(d / "again")]) == 0
    out = capsys.readouterr().out.splitlines()
    phases = [ln.split("] ")[1].split(":")[0] for ln in out if ln.startswith("[") and " s] " in ln]
    assert phases == ["import", "quantize", "training graph", "memory plan", "emit C", "packages",
                      "stack estimate", "reports"]
