"""The README's snippets run exactly as printed: the block after each
`<!-- readme-test: KIND -->` marker (python: run in a fresh interpreter; cli: every line
run in a shell; c: compiled against `tinytrain compile ... --name kws` inside a small
main, then run).  Each runs in a scratch folder holding `models/` of the repository, so
relative paths read as they do from the repository root and outputs land outside it."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def blocks(kind):
    """The indented code blocks that follow a `<!-- readme-test: kind -->` marker."""
    out = []
    for m in re.finditer(r"<!-- readme-test: (\w+) -->\n\n((?:(?: {4}.*)?\n)+)", README):
        if m.group(1) == kind:
            lines = m.group(2).rstrip("\n").split("\n")
            out.append("\n".join(ln[4:] for ln in lines))
    return out


@pytest.fixture
def scratch(tmp_path):
    (tmp_path / "models").symlink_to(ROOT / "models")
    return tmp_path


def env():
    e = dict(os.environ)
    e["PATH"] = str(Path(sys.executable).parent) + os.pathsep + e.get("PATH", "")
    return e


def test_markers_are_found():
    assert len(blocks("python")) == 1 and len(blocks("c")) == 1 and len(blocks("cli")) == 1
    assert "tt.train(" in blocks("python")[0] and "kws_train_step" in blocks("c")[0]


def test_python_snippet_runs(scratch):
    r = subprocess.run([sys.executable, "-c", blocks("python")[0]], cwd=scratch, capture_output=True, text=True,
                       env=env(), timeout=1800)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    acc = float(re.search(r"test accuracy ([\d.]+)%", r.stdout).group(1))
    assert acc > 40                          # Fashion-MNIST from an MNIST model: well above 10% chance
    assert (scratch / "mcu_cnn.tt.npz").is_file()


def test_cli_tour_runs(scratch):
    lines = [ln for ln in blocks("cli")[0].splitlines() if ln.strip()]
    assert len(lines) >= 5 and all(ln.startswith("tinytrain ") for ln in lines)
    for line in lines:
        r = subprocess.run(["bash", "-c", line], cwd=scratch, capture_output=True, text=True, env=env(),
                           timeout=1800)
        assert r.returncode == 0, line + "\n" + r.stdout[-2000:] + r.stderr[-2000:]
        if "--trainer auto" in line:
            assert "trainer: mezo" in r.stdout
    assert (scratch / "out" / "kws" / "memory.png").read_bytes()[:4] == b"\x89PNG"
    assert "memory timeline:" in (scratch / "out" / "kws" / "report.txt").read_text()


MAIN = """#include <stdio.h>
#include "kws.h"

int main(void)
{
    static float input[KWS_INPUT_SIZE];
    float logits[KWS_NUM_CLASSES];
    float loss = -1.0f;
    int32_t label = 3, predicted = -1, i;
    uint32_t seed = 1u;
    for (i = 0; i < KWS_INPUT_SIZE; ++i) {
        input[i] = (float)(i % 7) / 7.0f;
    }
    {
@SNIPPET@
    }
    printf("loss %f predicted %d\\n", (double)loss, (int)predicted);
    return 0;
}
"""


def test_c_snippet_compiles_and_runs(scratch):
    from tinytrain.cli import main
    out = scratch / "kws"
    assert main(["compile", str(ROOT / "models" / "mcu_cnn_mnist.onnx"), "--calib",
                 str(ROOT / "models" / "data" / "mnist_calib.npz"), "--name", "kws", "--package", "none",
                 "-o", str(out)]) == 0
    snippet = "\n".join("        " + ln for ln in blocks("c")[0].splitlines())
    (scratch / "main.c").write_text(MAIN.replace("@SNIPPET@", snippet))
    srcs = [str(out / "kws.c"), *map(str, sorted((out / "runtime" / "src").glob("*.c"))), str(scratch / "main.c")]
    cmd = ["gcc", "-std=c99", "-O1", "-Wall", "-Werror", "-ffp-contract=off", f"-I{out}",
           f"-I{out / 'runtime' / 'include'}", *srcs, "-lm", "-o", str(scratch / "app")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, shlex.join(cmd) + "\n" + r.stderr[-3000:]
    r = subprocess.run([str(scratch / "app")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    loss, predicted = r.stdout.split()[1], int(r.stdout.split()[3])
    assert float(loss) > 0 and 0 <= predicted < 10


def test_readme_lr_matches_the_cli_default():
    from tinytrain.compiler.recipe import LR
    assert f"sizeof state, {LR['backprop']:g}f, seed, 0)" in blocks("c")[0]
