"""Per-node and per-phase instruction counts on the QEMU Cortex-M boards
(`tinytrain run --profile`): the generated NAME_PROFILE(k) hook, defined only
in a profiling build, attributes the instructions between marks to nodes; the
counts add up to the step, the phases are all there, the convolutions
dominate, and profiling changes neither the results nor (absent) the code."""
import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest

import tinytrain as tt
from tinytrain.boards import build
from tinytrain.cli import main
from tinytrain.compiler.pipeline import compile_graph
from tinytrain.data import load_dataset
from tinytrain.qemu import compare_with_simulator, format_profile, profile_report, run_firmware

ROOT = Path(__file__).resolve().parent.parent
D = ROOT / "models" / "data"
MODEL = ROOT / "models" / "mcu_cnn_mnist.onnx"
STEPS, LR, SEED = 3, 0.02, 1
MISSING = [t for t in ("arm-none-eabi-gcc", "qemu-system-arm") if shutil.which(t) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"{' and '.join(MISSING)} not installed (apt-get install "
                                "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)")


@pytest.fixture(scope="module")
def fmnist():
    return load_dataset(D / "fmnist_train.npz")


@pytest.fixture(scope="module")
def project(fmnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("prof")
    gq = tt.quantize(tt.load(MODEL), fmnist[0][:200], output_range=(-16, 16))
    tg, plan, facts = compile_graph(gq, out, name="m", update="sparse")
    return out, tg


@pytest.fixture(scope="module")
def runs(project, fmnist):
    """The same 3 steps built plain and with profiling, on an386."""
    out, tg0 = project
    x, y = fmnist[0][:STEPS], fmnist[1][:STEPS]
    got = {}
    for profile in (False, True):
        tg = copy.deepcopy(tg0)
        fw = build(out, "qemu-mps2-an386", "m", x, y, steps=STEPS, lr=LR, seed=SEED, graph=tg, profile=profile)
        nm = subprocess.run(["arm-none-eabi-nm", str(fw.elf)], capture_output=True, text=True).stdout
        got[profile] = (fw, run_firmware(fw, timeout=300), tg, nm)
        assert (fw.elf.parent / "tt_profile.h").is_file() == profile
    return got


def test_profile_adds_up_to_the_step_and_the_convolutions_dominate(project, runs):
    out, _ = project
    fw, res, tg, _ = runs[True]
    nodes = json.loads((out / "m_profile.json").read_text())
    assert res.profile_steps == STEPS and sorted(res.profile) == [n["index"] for n in nodes]
    rep = profile_report(res, nodes)
    step_total = sum(s.instructions for s in res.steps)
    attributed = sum(res.profile.values())
    # the unattributed part (input quantization, argmax, the calls) is small and not negative
    assert 0 <= step_total - attributed < 0.005 * step_total, (step_total, attributed)
    ph = rep["phases"]
    assert ph["forward"] > 0 and ph["backward"] > 0 and ph["update"] > 0 and ph["other"] >= 0
    assert abs(sum(ph.values()) - rep["step_instructions"]) < 1e-6 * rep["step_instructions"]
    assert ph["forward"] > ph["update"] and ph["backward"] > ph["update"]
    # convolutions (forward, depthwise, their gradients) are most of the step
    conv = sum(r["instructions"] for r in rep["nodes"] if "conv" in r["op"])
    assert conv > 0.8 * rep["step_instructions"], conv / rep["step_instructions"]
    top = max(rep["layers"], key=lambda r: r["instructions"])
    assert "conv" in top["op"], top
    # update nodes exist only for the trained layers of the sparse scheme; frozen layers have no update
    assert any(r["update"] == 0 and r["forward"] > 0 for r in rep["layers"])
    text = format_profile(rep)
    assert "forward" in text and "% step" in text and text.count("\n") == len(rep["layers"]) + 1
    assert len(format_profile(rep, top=10, by="nodes").splitlines()) == 12


def test_profiling_changes_no_result_and_is_absent_without_profile(project, runs, fmnist):
    plain_fw, plain, _, plain_nm = runs[False]
    prof_fw, prof, tg, prof_nm = runs[True]
    assert "app_profile" in prof_nm and "app_profile" not in plain_nm
    assert plain.profile == {} and plain.profile_steps == 0
    assert [(s.loss_bits, s.pred) for s in plain.steps] == [(s.loss_bits, s.pred) for s in prof.steps]
    assert plain.state == prof.state
    x, y = fmnist[0][:STEPS], fmnist[1][:STEPS]
    report = compare_with_simulator(tg, prof, x, y, STEPS, LR, SEED, name="m")
    assert "bit-identical" in report
    # the marks cost little: a few dozen instructions per node
    extra = sum(s.instructions for s in prof.steps) - sum(s.instructions for s in plain.steps)
    assert 0 < extra < 0.005 * sum(s.instructions for s in plain.steps)


def test_cli_run_profile_writes_json(project, fmnist, tmp_path, capsys):
    out, _ = project
    dest = tmp_path / "p.json"
    assert main(["run", str(out), "--board", "qemu-mps2-an500", "--name", "m", "--data", str(D / "fmnist_train.npz"),
                 "--steps", "2", "--profile", str(dest)]) == 0
    text = capsys.readouterr().out
    assert "per step (mean of 2)" in text and "backward" in text and f"profile: {dest}" in text
    rep = json.loads(dest.read_text())
    assert rep["board"] == "qemu-mps2-an500" and rep["steps"] == 2
    assert set(rep["phases"]) == {"forward", "backward", "update", "other"}
    assert len(rep["nodes"]) == len(json.loads((out / "m_profile.json").read_text()))
