"""Output folders (tinytrain/outdir.py): staged, committed only on success, never losing a file
tinytrain did not write."""
import json
import os
from pathlib import Path

import pytest

from tinytrain import outdir
from tinytrain.cli import main
from tinytrain.compiler.errors import TinytrainError
from tinytrain.outdir import MANIFEST, prepare

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "mcu_cnn_mnist.onnx"
CALIB = ROOT / "models" / "data" / "mnist_calib.npz"
COMPILE = ["compile", str(MODEL), "--calib", str(CALIB), "--update", "classifier", "--package", "none"]


def snapshot(folder):
    """Every file under folder (dot files too) -> its bytes."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinytrain: error:") and "\n" not in err, err
    return err


def write(tmp, files):
    for rel, text in files.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text(text)


# ------------------------------------------------------------------ the mechanism, without a compile

def test_commit_into_a_new_folder_with_a_manifest(tmp_path):
    target = tmp_path / "a" / "b"                        # missing parents are created at commit only
    with prepare(target, command="compile") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".b.tmp-")
        assert not (tmp_path / "a").exists()
        write(tmp, {"model.c": "int m;", "runtime/src/tt_x.c": "int x;"})
    assert sorted(os.listdir(tmp_path)) == ["a"]        # no temporary folder left
    m = json.loads((target / MANIFEST).read_text())
    assert m["tool"] == "tinytrain" and m["command"] == "compile" and m["version"]
    assert sorted(m["files"]) == ["model.c", "runtime/src/tt_x.c"]
    assert m["files"]["model.c"]["sha256"] == outdir.sha256(target / "model.c")


@pytest.mark.parametrize("exc", [TinytrainError("over budget"), KeyboardInterrupt()])
def test_a_failure_leaves_nothing_and_the_old_build_untouched(tmp_path, exc):
    with pytest.raises(type(exc)):
        with prepare(tmp_path / "new") as tmp:
            write(tmp, {"half.c": "int"})
            raise exc
    assert os.listdir(tmp_path) == []
    with prepare(tmp_path / "old", command="compile") as tmp:
        write(tmp, {"model.c": "int v1;"})
    before = snapshot(tmp_path / "old")
    with pytest.raises(type(exc)):
        with prepare(tmp_path / "old", command="compile") as tmp:
            write(tmp, {"model.c": "int v2;", "more.c": ""})
            raise exc
    assert snapshot(tmp_path / "old") == before and os.listdir(tmp_path) == ["old"]


def test_rerun_replaces_exactly_its_own_files(tmp_path):
    t = tmp_path / "o"
    with prepare(t, command="compile") as tmp:
        write(tmp, {"model.c": "1", "CMakeLists.txt": "cmake", "runtime/src/tt_a.c": "a"})
    with prepare(t, command="train") as tmp:             # another command's files are kept
        write(tmp, {"model.trained.tt.npz": "w"})
    write(t, {"runtime/src/my_driver.c": "mine", "notes.txt": "mine"})
    with prepare(t, command="compile") as tmp:           # no CMakeLists.txt this time
        write(tmp, {"model.c": "2", "runtime/src/tt_a.c": "a2"})
    s = snapshot(t)
    assert s["model.c"] == b"2" and s["runtime/src/tt_a.c"] == b"a2" and "CMakeLists.txt" not in s
    assert s["runtime/src/my_driver.c"] == b"mine" and s["notes.txt"] == b"mine"
    assert s["model.trained.tt.npz"] == b"w"
    files = json.loads(s[MANIFEST])["files"]
    assert sorted(files) == ["model.c", "model.trained.tt.npz", "runtime/src/tt_a.c"]
    assert files["model.trained.tt.npz"]["command"] == "train"


def test_a_modified_generated_file_is_refused_unless_force(tmp_path):
    t = tmp_path / "o"
    with prepare(t, command="compile") as tmp:
        write(tmp, {"model.c": "gen", "model.h": "gen"})
    (t / "model.h").write_text("my edit")
    with pytest.raises(TinytrainError, match=r"model\.h was written by tinytrain and has been modified"):
        prepare(t, command="compile")
    prepare(t, command="train")                          # another command does not touch it: fine
    with prepare(t, force=True, command="compile") as tmp:   # --force: the regenerated file replaces it
        write(tmp, {"model.c": "gen2", "model.h": "gen2"})
    assert (t / "model.h").read_text() == "gen2"
    (t / "model.h").write_text("my edit")
    with prepare(t, force=True, command="compile") as tmp:   # no longer written: the edit is kept, unlisted
        write(tmp, {"model.c": "gen3"})
    assert (t / "model.h").read_text() == "my edit"
    assert sorted(json.loads((t / MANIFEST).read_text())["files"]) == ["model.c"]
    prepare(t, command="compile")                        # and no longer refused


def test_a_foreign_folder_is_refused_and_force_replaces_only_what_tinytrain_writes(tmp_path):
    t = tmp_path / "project"
    write(t, {"main.c": "user", "model.c": "user's model.c", "src/lib.c": "user"})
    with pytest.raises(TinytrainError, match="not empty and was not written by tinytrain"):
        prepare(t)
    with prepare(t, force=True, command="compile") as tmp:
        write(tmp, {"model.c": "gen"})
    s = snapshot(t)
    assert s["main.c"] == b"user" and s["src/lib.c"] == b"user" and s["model.c"] == b"gen"
    # a file at a path tinytrain now writes that it did not write before is refused at commit
    with pytest.raises(TinytrainError, match=r"main\.c exists and was not written by tinytrain"):
        with prepare(t, command="compile") as tmp:
            write(tmp, {"model.c": "gen", "main.c": "gen"})
    assert snapshot(t) == s


def test_bad_targets_are_refused_before_any_work(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("")
    with pytest.raises(TinytrainError, match="is a file, not a folder"):
        prepare(tmp_path / "f")
    with pytest.raises(TinytrainError, match="is not a folder"):
        prepare(tmp_path / "f" / "sub" / "o")
    (tmp_path / MANIFEST).write_text("[1, 2]")
    with pytest.raises(TinytrainError, match="not a tinytrain manifest"):
        prepare(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"files": {"../../etc/x": {"sha256": "0", "command": "c"}}}))
    with pytest.raises(TinytrainError, match="outside the folder"):
        prepare(tmp_path)
    # not writable: root ignores chmod, so the permission check itself is stubbed here (the real
    # chmod case is test_read_only_folder_chmod)
    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(outdir.os, "access", lambda p, mode: False)
    with pytest.raises(TinytrainError, match="ro is not writable"):
        prepare(tmp_path / "ro")
    with pytest.raises(TinytrainError, match="is not writable"):
        prepare(tmp_path / "ro" / "new")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a chmod 555 folder anyway")
def test_read_only_folder_chmod(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(TinytrainError, match="not writable"):
            prepare(ro)
    finally:
        ro.chmod(0o755)


# ------------------------------------------------------------------ through the CLI

def test_compile_keeps_user_files_and_a_failed_compile_leaves_nothing(tmp_path, capsys, monkeypatch):
    out = tmp_path / "build"
    assert main([*COMPILE, "-o", str(out)]) == 0
    files = json.loads((out / MANIFEST).read_text())["files"]
    assert "model.c" in files and "runtime/src/tt_conv.c" in files and "runtime/include/tt_kernels.h" in files
    (out / "runtime" / "src" / "my_driver.c").write_text("int my_driver(void) { return 1; }\n")
    assert main([*COMPILE, "-o", str(out)]) == 0               # recompile: the user's driver survives
    assert (out / "runtime" / "src" / "my_driver.c").read_text() == "int my_driver(void) { return 1; }\n"
    assert "runtime/src/my_driver.c" not in json.loads((out / MANIFEST).read_text())["files"]
    capsys.readouterr()
    # over budget: the previous build stays byte for byte, and nothing else appears
    before = snapshot(out)
    assert main([*COMPILE, "--sram", "8k", "-o", str(out)]) == 2
    assert "does not fit" in one_line_error(capsys)
    assert snapshot(out) == before and os.listdir(tmp_path) == ["build"]
    # Ctrl-C in the middle of a compile into a new folder: no folder at all
    import tinytrain.memreport as memreport

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(memreport, "write_reports", ctrl_c)
    assert main([*COMPILE, "-o", str(tmp_path / "new")]) == 130
    assert capsys.readouterr().err.strip() == "tinytrain: interrupted"
    assert os.listdir(tmp_path) == ["build"]
    monkeypatch.undo()
    # an edited generated file is refused, naming it; the build is untouched
    (out / "model.h").write_text((out / "model.h").read_text() + "/* my edit */\n")
    before = snapshot(out)
    assert main([*COMPILE, "-o", str(out)]) == 2
    assert "model.h was written by tinytrain and has been modified" in one_line_error(capsys)
    assert snapshot(out) == before


def test_cli_refuses_bad_output_folders_with_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "thesis.tex").write_text("years of work")
    for o, msg in ((tmp_path / "file", "is a file, not a folder"),
                   (tmp_path / "file" / "o", "is not a folder"),
                   (tmp_path / "foreign", "not empty and was not written by tinytrain")):
        assert main([*COMPILE, "-o", str(o)]) == 2
        assert msg in one_line_error(capsys)
        assert main(["quantize", str(MODEL), "--calib", str(CALIB), "-o", str(o)]) == 2
        assert msg in one_line_error(capsys)
    assert (tmp_path / "foreign" / "thesis.tex").read_text() == "years of work"
    assert sorted(os.listdir(tmp_path)) == ["file", "foreign"]


def test_train_checks_the_output_folder_before_training(tmp_path, capsys, monkeypatch):
    from tinytrain.train import loop

    def no_training(*a, **k):
        raise AssertionError("trained before checking -o")
    monkeypatch.setattr(loop, "fit", no_training)
    (tmp_path / "file").write_text("")
    (tmp_path / "ro").mkdir()
    train = ["train", str(MODEL), "--data", str(CALIB), "--update", "classifier", "--max-samples", "4", "--quiet"]
    assert main([*train, "-o", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in one_line_error(capsys)
    assert main([*train, "-o", str(tmp_path / "file" / "o"), "--backend", "c"]) == 2
    assert "is not a folder" in one_line_error(capsys)
    real = os.access
    monkeypatch.setattr(outdir.os, "access", lambda p, mode: False if Path(p).name == "ro" else real(p, mode))
    assert main([*train, "-o", str(tmp_path / "ro")]) == 2
    assert "is not writable" in one_line_error(capsys)
    assert sorted(os.listdir(tmp_path)) == ["file", "ro"] and os.listdir(tmp_path / "ro") == []


def test_train_writes_a_manifest_and_a_rerun_keeps_user_files(tmp_path, capsys):
    out = tmp_path / "t"
    train = ["train", str(MODEL), "--data", str(CALIB), "--update", "classifier", "--max-samples", "8", "--quiet",
             "-o", str(out)]
    assert main(train) == 0
    rep = json.loads((out / "train_report.json").read_text())
    assert Path(rep["trained_model"]) == out / "mcu_cnn_mnist.trained.tt.npz"   # the final path, not the staging one
    assert sorted(json.loads((out / MANIFEST).read_text())["files"]) == ["mcu_cnn_mnist.trained.tt.npz",
                                                                        "train_report.json"]
    (out / "my_notes.txt").write_text("lr sweep")
    assert main(train) == 0
    assert (out / "my_notes.txt").read_text() == "lr sweep"


def test_in_place_builds_replace_their_own_files_only(tmp_path):
    """build/run write BUILD_DIR/<board>/ in place: the previous build's files go, a user's stay,
    and a failed build still records what it wrote."""
    from tinytrain.outdir import in_place
    board = tmp_path / "qemu-board"
    with pytest.raises(TinytrainError, match="link failed"):
        with in_place(board, command="build") as out:
            write(out, {"main.o": "1", "link.log": "overflow"})
            raise TinytrainError("link failed")
    assert sorted(json.loads((board / MANIFEST).read_text())["files"]) == ["link.log", "main.o"]
    write(board, {"flash_notes.txt": "mine"})
    with in_place(board, command="build") as out:
        assert sorted(os.listdir(out)) == [MANIFEST, "flash_notes.txt"]   # the old build's files removed
        write(out, {"firmware.elf": "elf"})
    assert sorted(os.listdir(board)) == [MANIFEST, "firmware.elf", "flash_notes.txt"]
    (board / "firmware.elf").write_text("patched by hand")
    with pytest.raises(TinytrainError, match="firmware.elf was written by tinytrain and has been modified"):
        with in_place(board, command="build"):
            pass
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.c").write_text("mine")
    with pytest.raises(TinytrainError, match="not written by tinytrain"):
        with in_place(tmp_path / "foreign", command="build"):
            pass
    with in_place(tmp_path / "foreign", force=True, command="build") as out:
        write(out, {"a.o": ""})
    assert (tmp_path / "foreign" / "x.c").read_text() == "mine"


def test_an_existing_folder_is_staged_inside_it(tmp_path, monkeypatch):
    """`-o .` or a mount point: the parent may not be writable, the folder itself is enough."""
    t = tmp_path / "mnt"
    t.mkdir()
    real = os.access
    monkeypatch.setattr(outdir.os, "access", lambda p, mode: Path(p) != tmp_path and real(p, mode))
    with prepare(t, command="compile") as tmp:
        assert tmp.parent == t
        write(tmp, {"model.c": "m"})
    assert sorted(os.listdir(t)) == [MANIFEST, "model.c"]
    with prepare(t, command="compile") as tmp:
        write(tmp, {"model.c": "m2"})
    assert sorted(os.listdir(t)) == [MANIFEST, "model.c"] and (t / "model.c").read_text() == "m2"
