"""--optimize speed|memory (compiler/pipeline.py memory_plan, passes/patch_prefix.py best_patching):
under --sram, speed takes the patching with the fewest recomputed MACs that fits, memory the
smallest peak; the report names the minimum-peak plan whenever the chosen one is bigger, and the
choice is recorded in build.json, so `run --check` rebuilds the same graph."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import tinytrain as tt
from tinytrain.cli import main
from tinytrain.compiler.errors import TinytrainError
from tinytrain.compiler.layout import sram_total
from tinytrain.compiler.options import BuildOptions, from_dict, read_build
from tinytrain.compiler.pipeline import memory_plan, training_graph
from tinytrain.data import load_dataset

ROOT = Path(__file__).resolve().parent.parent
D = ROOT / "models" / "data"
MODEL = ROOT / "models" / "mcu_cnn_mnist.onnx"
LOOSE = 1 << 20            # the unpatched plan of the MCU CNN's classifier update fits: speed does not patch
MISSING = [t for t in ("arm-none-eabi-gcc", "qemu-system-arm") if shutil.which(t) is None]
needs_tools = pytest.mark.skipif(bool(MISSING), reason=f"{' and '.join(MISSING)} not installed")


@pytest.fixture(scope="module")
def classifier():
    x = load_dataset(D / "mnist_calib.npz")[0]
    gq = tt.quantize(tt.load(MODEL), x[:200], output_range=(-16, 16))
    return training_graph(gq, "classifier")


def test_memory_never_needs_more_than_speed(classifier):
    gs, ps = memory_plan(classifier, sram=LOOSE)
    gm, pm = memory_plan(classifier, sram=LOOSE, optimize="memory")
    assert gs.meta.get("patch") is None and gm.meta["patch"]["grid"] >= 2       # a real choice on this net
    assert sram_total(pm, gm)["total"] < sram_total(ps, gs)["total"]
    # speed records the smallest plan of its own search: the one memory builds
    assert gs.meta["min_peak"]["arena_bytes"] == pm.arena_size == gm.meta["min_peak"]["arena_bytes"]
    assert gs.meta["min_peak"]["patch"] == gm.meta["patch"]
    # without a budget both take the smallest plan; a budget that only the patched plan meets: the same
    g0, p0 = memory_plan(classifier)
    assert p0.arena_size == pm.arena_size and g0.meta["patch"] == gm.meta["patch"]
    gt, pt = memory_plan(classifier, sram=sram_total(pm, gm)["total"], optimize="speed")
    assert pt.arena_size <= sram_total(pm, gm)["total"] and gt.meta.get("patch") is not None
    with pytest.raises(TinytrainError, match="optimize is 'fast'"):
        memory_plan(classifier, optimize="fast")


def test_mobilenet_tte_under_a_loose_budget_knows_its_minimum():
    g = tt.load(ROOT / "models" / "paper" / "mbv2_w035_128.onnx")
    gq = tt.quantize(g, np.random.default_rng(0).random((2, 3, 128, 128), dtype=np.float32))
    tg = training_graph(gq, "tte")
    gs, ps = memory_plan(tg, sram=300 * 1024)
    gm, pm = memory_plan(tg, sram=300 * 1024, optimize="memory")
    assert gs.meta.get("patch") is None                       # it fits unpatched: no recomputed MACs
    assert pm.arena_size == gs.meta["min_peak"]["arena_bytes"] < ps.arena_size / 2
    assert sram_total(pm, gm)["total"] < 120 * 1024 < 250 * 1024 < sram_total(ps, gs)["total"]


def _compile(out, *extra):
    return main(["compile", str(MODEL), "--calib", str(D / "mnist_calib.npz"), "--update", "classifier", "--sram",
                 "1m", "--name", "kws", "--package", "none", "-o", str(out), *extra])


def test_report_names_the_minimum_peak_plan(tmp_path, capsys):
    assert _compile(tmp_path / "speed") == 0
    assert _compile(tmp_path / "memory", "--optimize", "memory") == 0
    speed = json.loads((tmp_path / "speed" / "report.json").read_text())["summary"]
    memory = json.loads((tmp_path / "memory" / "report.json").read_text())["summary"]
    assert memory["sram_total_bytes"] < speed["sram_total_bytes"]
    assert speed["optimize"] == "speed" and memory["optimize"] == "memory"
    low = speed["min_peak"]
    assert low["arena_bytes"] == memory["arena_bytes"] and low["patch"]["grid"] >= 2
    # the same state, context and stack: only the arena differs
    assert low["sram_total_bytes"] == speed["sram_total_bytes"] - speed["arena_bytes"] + low["arena_bytes"]
    text = (tmp_path / "speed" / "report.txt").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("minimum-peak plan:"))
    assert f"minimum-peak plan: {low['sram_total_bytes'] / 1024:.1f} KB (patching" in line
    assert f"chosen: {speed['sram_total_bytes'] / 1024:.1f} KB (unpatched" in line and "--optimize memory" in line
    assert "minimum-peak plan" not in (tmp_path / "memory" / "report.txt").read_text()     # they are the same
    assert read_build(tmp_path / "memory").optimize == "memory" and read_build(tmp_path / "speed").optimize == "speed"


def test_an_optimize_typo_is_one_line(tmp_path, capsys):
    assert _compile(tmp_path / "typo", "--optimize", "fast") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--optimize" in err[0] and "'fast'" in err[0], err
    assert not (tmp_path / "typo").exists()


def test_the_record_keeps_the_choice():
    o = BuildOptions(sram=4096, optimize="memory")
    assert o.steer_sram() is None and o.with_(optimize="speed").steer_sram() == 4096
    assert from_dict(o.to_dict()) == o
    old = BuildOptions().to_dict()
    del old["optimize"]                                        # a record written before the field existed
    assert from_dict(old).optimize == "speed"
    with pytest.raises(TinytrainError, match="field 'optimize' is 'fast'"):
        from_dict({**o.to_dict(), "optimize": "fast"})


@needs_tools
def test_run_check_rebuilds_the_memory_plan(tmp_path, capsys):
    out = tmp_path / "mem"
    assert _compile(out, "--optimize", "memory") == 0
    capsys.readouterr()
    assert main(["run", str(out), "--board", "qemu-mps2-an386", "--data", str(D / "fmnist_train.npz"), "--steps",
                 "2", "--check"]) == 0
    assert "check: 2 steps bit-identical" in capsys.readouterr().out
