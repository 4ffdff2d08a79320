"""Names in a model are data, never code (compiler/codegen/cformat.py).

A property-based test renames everything a hostile model file can name (nodes, tensors,
initializers, the graph, doc strings, metadata, the file itself) with hostile strings, compiles
the shipped models, builds the C warning-free and checks: the code outside comments is the code
of the un-renamed compile, every comment is plain ASCII (no '*/', no newline, no backslash, no
trigraph), the build files differ only in the escaped file name, and the object file defines and
references exactly the symbols of the un-renamed compile.  A deterministic test runs the issue's
injection through `tinytrain train --backend c` and `tinytrain compile`: nothing runs.
"""
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import tinytrain as tt
from tinytrain.cli import main
from tinytrain.compiler.codegen.cformat import comment_text
from tinytrain.compiler.codegen.packages import write_packages
from tinytrain.compiler.pipeline import compile_graph
from tinytrain.data import load_dataset

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"mcu_cnn_mnist": "fmnist_train", "imu_cnn": "basicmotions_train"}
CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-c"]
INJECTION = 'fc */ { extern int system(const char*); system("touch PWNED"); } /*'
HOSTILE = ["*/", "/*", "//", '\n#include "/etc/passwd"\n', "\\\n", "\\", "??/", "??=", "??'", "%s%n%x", '"', "'",
           '"); system("x', "`id`", "$(id)", "${HOME}", "\r\n", "\t", "\x0b\x0c\x1b[31m", "#pragma once", "#error x",
           "\u00e9\u4e2d\U0001f600", "\u2028\u2029", "\ufeff", "\u202e", "*/ int x; /*", "/* nested /* */",
           "a" * 300, "*/" * 200, INJECTION, "?" * 50, "model_init", "tt_state", "m_init", "CMakeLists.txt)\n",
           "]]\n#[[", "\n\tbool \"y\"\n", "name=evil\n"]
FUZZ = {"examples": 0, "strings": set()}


def _hostile():
    text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
    return st.lists(st.one_of(st.sampled_from(HOSTILE), text), min_size=1, max_size=4).map("".join)


def rename(model, hostile, suffix_last):
    """A copy of the ONNX model with every name, doc string and metadata entry replaced by a
    hostile string (consistently: a tensor keeps one name everywhere); still a valid model."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    count = [0]

    def fresh():
        i = count[0]
        count[0] += 1
        h = hostile[i % len(hostile)]
        return f"{h}#{i}" if suffix_last else f"{i}#{h}"      # unique: the added '#' and index are unambiguous

    g = m.graph
    tensors = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        tensors.setdefault(vi.name, None)
    for t in g.initializer:
        tensors.setdefault(t.name, None)
    for n in g.node:
        for x in list(n.input) + list(n.output):
            if x:
                tensors.setdefault(x, None)
    new = {k: fresh() for k in tensors}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        vi.name, vi.doc_string = new[vi.name], fresh()
    for t in g.initializer:
        t.name, t.doc_string = new[t.name], fresh()
    for n in g.node:
        n.name, n.doc_string = fresh(), fresh()
        for i, x in enumerate(n.input):
            if x:
                n.input[i] = new[x]
        for i, x in enumerate(n.output):
            if x:
                n.output[i] = new[x]
        for a in n.attribute:
            a.doc_string = fresh()
            if a.type == onnx.AttributeProto.TENSOR:
                a.t.name, a.t.doc_string = fresh(), fresh()
    g.name, g.doc_string = fresh(), fresh()
    m.doc_string, m.producer_name, m.domain = fresh(), fresh(), fresh()
    for _ in range(2):
        p = m.metadata_props.add()
        p.key, p.value = fresh(), fresh()
    onnx.checker.check_model(m)
    return m


def file_name(h):
    """A hostile file name the file system accepts (no '/', no NUL, <= 200 bytes)."""
    base = h.replace("/", "|").replace("\x00", "")
    while len(base.encode("utf-8", "surrogatepass")) > 200:
        base = base[:-1]
    return (base or "x") + ".onnx"


def strip_c(text):
    """C text -> (code without comments, list of comment bodies).  String and character literals
    are kept as code.  Only for the emitted files (no trigraphs, no line splices: checked first)."""
    code, comments, i, n = [], [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("/*", i):
            j = text.index("*/", i + 2)
            comments.append(text[i + 2:j])
            code.append(" ")
            i = j + 2
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            comments.append(text[i + 2:j])
            i = j
        elif c in "\"'":
            j = i + 1
            while text[j] != c:
                j += 2 if text[j] == "\\" else 1
            code.append(text[i:j + 1])
            i = j + 1
        else:
            code.append(c)
            i += 1
    return "".join(code), comments


def check_plain(path, text):
    """Generated text: ASCII, no control characters but newline and tab; C: no line splice, no trigraph;
    Make/CMake/YAML/Kconfig: no comment line continued by a backslash."""
    bad = sorted({c for c in text if not (c in "\n\t" or " " <= c <= "~")})
    assert not bad, f"{path}: characters {bad!r}"
    if not path.endswith((".c", ".h", ".ino")):
        assert not any(ln.lstrip().startswith("#") and ln.endswith("\\") for ln in text.splitlines()), path
        return
    assert "\\\n" not in text, f"{path}: a backslash-newline"
    assert "??" not in text, f"{path}: a trigraph start"


def compile_model(model_path, x, out, name="m"):
    g = tt.load(model_path)
    gq = tt.quantize(g, x[:16])
    tg, plan, facts = compile_graph(gq, out, name=name, update="classifier")
    write_packages(out, facts, tg)
    obj = out / f"{name}.o"
    res = subprocess.run(["gcc", *CFLAGS, f"-I{out}", f"-I{out / 'runtime' / 'include'}", str(out / f"{name}.c"),
                          "-o", str(obj)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return obj, str(model_path)


def symbols(obj):
    res = subprocess.run(["nm", "-g", str(obj)], capture_output=True, text=True, check=True)
    defined, undefined = set(), set()
    for line in res.stdout.splitlines():
        parts = line.split()
        (undefined if parts[-2] == "U" else defined).add(parts[-1])
    return defined, undefined


def generated(out):
    """Every text file compile writes, relative path -> text (runtime/ is copied, not generated)."""
    files = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        if p.is_file() and not rel.startswith("runtime/") and p.suffix not in (".o", ".so"):
            files[rel] = p.read_text(encoding="utf-8", errors="surrogateescape")
    return files


@pytest.fixture(scope="module")
def baselines(tmp_path_factory):
    """The un-renamed compile of each model (file model.onnx): symbols and the generated files."""
    res = {}
    for m, data in MODELS.items():
        x = load_dataset(ROOT / "models" / "data" / f"{data}.npz")[0]
        d = tmp_path_factory.mktemp(f"base_{m}")
        src = d / "model.onnx"
        src.write_bytes((ROOT / "models" / f"{m}.onnx").read_bytes())
        obj, _ = compile_model(src, x, d / "out")
        res[m] = dict(x=x, proto=onnx.load(str(ROOT / "models" / f"{m}.onnx")), syms=symbols(obj),
                      files=generated(d / "out"), src=comment_text("model.onnx"))
    return res


def compare(base, out, src_escaped):
    files = generated(out)
    assert sorted(files) == sorted(base["files"])
    for rel, text in files.items():
        check_plain(rel, text)
        ref = base["files"][rel]
        if rel.endswith((".c", ".h", ".ino")):
            code, comments = strip_c(text)
            ref_code, ref_comments = strip_c(ref)
            assert code.replace(src_escaped, "SRC") == ref_code.replace(base["src"], "SRC"), rel
            assert len(comments) == len(ref_comments), rel
            assert not any("/*" in c for c in comments), rel
        elif rel.endswith(".json") and not rel.endswith("_profile.json"):
            doc, ref_doc = json.loads(text), json.loads(ref)
            assert json.dumps(doc).replace(src_escaped, "SRC") == json.dumps(ref_doc).replace(base["src"], "SRC")
        elif rel.endswith("_profile.json"):
            prof, ref_prof = json.loads(text), json.loads(ref)
            assert [(p["index"], p["op"], p["phase"]) for p in prof] == \
                   [(p["index"], p["op"], p["phase"]) for p in ref_prof]
        else:                                   # CMake, Make, YAML, Kconfig, .properties
            assert text.replace(src_escaped, "SRC") == ref.replace(base["src"], "SRC"), rel


def _fuzz(baselines, model, hostile, suffix_last):
    base = baselines[model]
    FUZZ["examples"] += 1
    FUZZ["strings"].update(hostile)
    with tempfile.TemporaryDirectory(prefix="tt_names_") as d:
        d = Path(d)
        src = d / file_name(hostile[0])
        onnx.save(rename(base["proto"], hostile, suffix_last), str(src))
        out = d / "out"
        obj, _ = compile_model(src, base["x"], out)
        defined, undefined = symbols(obj)
        assert all(s.startswith("m_") for s in defined), sorted(defined)
        assert (defined, undefined) == base["syms"]
        compare(base, out, comment_text(src.name))


# no shrinking: a failing example is reported as drawn (shrinking one costs minutes of compiles);
# the small IMU model gets most examples, the MNIST CNN (a 0.5 MB model.c) a few
FUZZ_SETTINGS = dict(deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@settings(max_examples=22, **FUZZ_SETTINGS)
@given(hostile=st.lists(_hostile(), min_size=1, max_size=6), suffix_last=st.booleans())
def test_hostile_names_stay_data_imu(baselines, hostile, suffix_last):
    _fuzz(baselines, "imu_cnn", hostile, suffix_last)


@settings(max_examples=3, **FUZZ_SETTINGS)
@given(hostile=st.lists(_hostile(), min_size=1, max_size=6), suffix_last=st.booleans())
def test_hostile_names_stay_data_mnist(baselines, hostile, suffix_last):
    _fuzz(baselines, "mcu_cnn_mnist", hostile, suffix_last)


def test_fuzz_counts():
    """Runs after the fuzz test (file order): it ran, and on how much (printed for the report)."""
    if FUZZ["examples"] == 0:
        pytest.skip("the fuzz test was deselected")
    print(f"\nnames fuzz: {FUZZ['examples']} examples, {len(FUZZ['strings'])} distinct hostile strings")
    assert FUZZ["examples"] >= 10


def _injected_imu(tmp_path, node_name):
    m = onnx.load(str(ROOT / "models" / "imu_cnn.onnx"))
    gemm = [n for n in m.graph.node if n.op_type == "Gemm"]
    assert len(gemm) == 1
    gemm[0].name = node_name
    onnx.checker.check_model(m)
    path = tmp_path / "imu_injected.onnx"
    onnx.save(m, str(path))
    return path


def test_issue_injection_does_not_run_through_train_backend_c(tmp_path, capsys):
    """The issue's Gemm name (with a file of this test's own instead of /tmp/pwned): `tinytrain train
    --backend c` builds the C with gcc and trains through it; the shell command never runs."""
    pwned = tmp_path / "pwned"
    model = _injected_imu(tmp_path, INJECTION.replace("PWNED", str(pwned)))
    data = ROOT / "models" / "data" / "basicmotions_train.npz"
    out = tmp_path / "run"
    rc = main(["train", str(model), "--data", str(data), "--backend", "c", "--update", "classifier",
               "--max-samples", "8", "--quiet", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert (out / "c" / "libmodel.so").is_file()          # the host library was built and used
    assert not pwned.exists()
    text = (out / "c" / "model.c").read_text()
    code, comments = strip_c(text)
    assert "system" not in code and "extern" not in code
    assert any("system(%22touch" in c for c in comments)   # the name is there, as an inert comment
    nm = subprocess.run(["nm", "-D", "--undefined-only", str(out / "c" / "libmodel.so")], capture_output=True,
                        text=True, check=True).stdout
    assert "system" not in nm


@pytest.mark.parametrize("node_name", ['x */\n#include "/etc/passwd"\n/*', "x \\\n*/ int y; /*", "x ??/\n*/ /*"],
                         ids=["include", "line-splice", "trigraph-splice"])
def test_comment_breakouts_stay_comments(node_name, tmp_path):
    """`tinytrain compile` of a model whose Gemm name tries to close the comment: the C builds
    warning-free (a pulled-in /etc/passwd would not) and holds no line but ours."""
    model = _injected_imu(tmp_path, node_name)
    calib = tmp_path / "calib.npz"
    x = load_dataset(ROOT / "models" / "data" / "basicmotions_train.npz")[0]
    np.savez(calib, x=x[:16])
    out = tmp_path / "c"
    assert main(["compile", str(model), "--calib", str(calib), "--update", "classifier", "--name", "m",
                 "-o", str(out)]) == 0
    text = (out / "m.c").read_text()
    check_plain("m.c", text)
    code, _ = strip_c(text)
    assert "/etc/passwd" not in code and "int y;" not in code
    assert not any(line.startswith("#include \"/") for line in text.splitlines())
    obj = out / "m.o"
    subprocess.run(["gcc", *CFLAGS, f"-I{out}", f"-I{out / 'runtime' / 'include'}", str(out / "m.c"), "-o", str(obj)],
                   check=True)
    assert all(s.startswith("m_") for s in symbols(obj)[0])


def test_comment_text_is_inert():
    for s in HOSTILE + ["".join(chr(c) for c in range(1, 0x250))]:
        t = comment_text(s)
        check_plain("comment", t)
        assert "*" not in t and "\\" not in t and "?" not in t and "\n" not in t
        assert len(t) <= 123
    assert comment_text("/conv1/Conv_2") == "/conv1/Conv_2"           # ordinary ONNX names stay readable
    assert comment_text("fc */ x") == "fc %2A/ x"
    assert comment_text("\u00e9") == "%C3%A9"


def test_every_entry_point_checks_the_name(tmp_path):
    """The Python API refuses what the CLI refuses, before writing anything."""
    from tinytrain.compiler.codegen.cformat import check_name
    from tinytrain.compiler.errors import TinytrainError
    from tinytrain.compiler.pipeline import compile_mezo
    from tinytrain.host import build
    for ok in ("model", "m", "kws", "Model2", "mnist_cnn", "a" * 32):
        assert check_name(ok) == ok
    x = load_dataset(ROOT / "models" / "data" / "basicmotions_train.npz")[0]
    gq = tt.quantize(tt.load(ROOT / "models" / "imu_cnn.onnx"), x[:16])
    out = tmp_path / "c"
    for call in (lambda: compile_graph(gq, out, name="tt_state", update="classifier"),
                 lambda: compile_mezo(gq, out, name="while", update="classifier"),
                 lambda: build(out, "_Reserved")):
        with pytest.raises(TinytrainError) as e:
            call()
        assert e.value.field == "--name" and "\n" not in str(e.value)
        assert not out.exists()
