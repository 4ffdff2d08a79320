"""Bad data and bad flags: one `tinytrain: error:` line naming the file or flag, exit 2.

Also: data files are read within limits (a .npz that expands to far more than it
weighs is refused from its headers, before decompressing), calibration reads only
its documented subset, and data in the other layout (NHWC for an NCHW model) is
refused or, with --layout, transposed -- never reshaped into scrambled pixels.
"""
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import tinytrain as tt
from tinytrain import data as D
from tinytrain.cli import main
from tinytrain.compiler.errors import TinytrainError
from tinytrain.data import CALIB_SAMPLES, LIMIT_ENV, load_calibration, load_dataset

from .onnx_builder import Builder

ROOT = Path(__file__).resolve().parent.parent
MNIST = ROOT / "models" / "mcu_cnn_mnist.onnx"        # input [1, 1, 28, 28] (NCHW)
IMU = ROOT / "models" / "imu_cnn.onnx"                # input [1, 6, 100] (NCW)
RNG = np.random.default_rng(0)


def one_error(argv, capsys):
    """Run the CLI: exit 2 and exactly one error line; -> that line."""
    status = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("tinytrain: error:"), err
    return lines[0]


def small_cnn(path, channels_last=False):
    """x [1, 3, 8, 8] (or [1, 8, 8, 3] read through a Transpose, as TensorFlow exports) ->
    Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> 2 logits."""
    b = Builder([1, 8, 8, 3] if channels_last else [1, 3, 8, 8])
    x = b.op("Transpose", [b.input], perm=[0, 3, 1, 2]) if channels_last else b.input
    c = b.op("Conv", [x, b.init(RNG.standard_normal((4, 3, 3, 3)) * 0.3), b.init(np.zeros(4))], pads=[1, 1, 1, 1])
    r = b.op("GlobalAveragePool", [b.op("Relu", [c])])
    b.model(b.op("Gemm", [b.op("Flatten", [r]), b.init(RNG.standard_normal((2, 4))), b.init(np.zeros(2))],
                 transB=1), path)
    return path


def npz(path, **arrays):
    np.savez(path, **arrays)
    return path


X1 = RNG.random((4, 1, 28, 28), dtype=np.float32)


# -- bad data: quantize --calib and train --data ------------------------------
BAD_X = {
    "empty": (np.zeros((0, 1, 28, 28), np.float32), "no samples"),
    "complex": (X1.astype(np.complex64), "complex"),
    "uint8": ((X1 * 255).astype(np.uint8), "x is uint8: convert"),
    "int8": ((X1 * 100).astype(np.int8), "x is int8"),
    "bool": (X1 > 0.5, "bool"),
    "nan": (np.where(X1 > 0.9, np.nan, X1), "NaN"),
    "inf": (np.where(X1 > 0.9, np.inf, X1), "Inf"),
    "float64_beyond_float32": (np.where(X1 > 0.9, 1e300, X1.astype(np.float64)), "float32 range"),
    "strings": (np.array([["a"] * 784] * 4).reshape(4, 1, 28, 28), "dtype <U1"),
    "wrong_shape": (np.zeros((4, 3, 28, 28), np.float32), "the model takes [N, 1, 28, 28]"),
    "flat": (X1.reshape(4, 784), "flat samples of 784 values"),
    "scalar": (np.float32(1.0), "single number"),
}


@pytest.mark.parametrize("case", list(BAD_X))
def test_bad_x(case, tmp_path, capsys):
    x, expect = BAD_X[case]
    path = npz(tmp_path / "calib.npz", x=x)
    line = one_error(["quantize", MNIST, "--calib", path, "-o", tmp_path / "o"], capsys)
    assert "calib.npz" in line and expect in line, line
    assert not (tmp_path / "o").exists()


BAD_Y = {
    "strings": (np.array(["0", "1", "2", "3"]), "dtype <U1"),
    "complex": (np.arange(4) + 0j, "complex"),
    "bool": (np.array([True, False, True, False]), "bool (ambiguous)"),
    "fraction": (np.array([0, 1, 2.5, 3]), "y[2] is 2.5"),
    "nan": (np.array([0, 1, np.nan, 3]), "y[2] is nan"),
    "two_d": (np.zeros((4, 1), np.int64), "expected 4 integers"),
    "length_mismatch": (np.arange(3), "x has 4 samples, y has 3"),
    "object": (np.array([0, 1, 2, None], dtype=object), "pickle"),
}


@pytest.mark.parametrize("case", list(BAD_Y))
def test_bad_labels(case, tmp_path, capsys):
    y, expect = BAD_Y[case]
    path = tmp_path / "train.npz"
    np.savez(path, x=X1, y=y)          # the object case is written with pickle: it must not be read
    line = one_error(["train", MNIST, "--data", path, "-o", tmp_path / "o"], capsys)
    assert "train.npz" in line and "'y'" in line and expect in line, line


def test_integer_valued_float_labels_are_accepted(tmp_path):
    path = npz(tmp_path / "d.npz", x=X1, y=np.array([0.0, 1.0, 2.0, 3.0]))
    x, y = load_dataset(path, [1, 1, 28, 28], need_labels=True)
    assert y.dtype == np.int64 and list(y) == [0, 1, 2, 3] and x.dtype == np.float32


@pytest.mark.parametrize("case", ["empty_file", "header_only", "text"])
def test_bad_csv(case, tmp_path, capsys):
    path = tmp_path / "d.csv"
    path.write_text({"empty_file": "", "header_only": "\n\n", "text": "a,b,c\n"}[case])
    line = one_error(["train", MNIST, "--data", path, "-o", tmp_path / "o"], capsys)
    assert "d.csv" in line


def test_not_a_zip(tmp_path, capsys):
    path = tmp_path / "d.npz"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    assert "d.npz" in one_error(["quantize", MNIST, "--calib", path, "-o", tmp_path / "o"], capsys)


def test_npy_header_lies_about_its_size(tmp_path, capsys):
    """A .npy header declaring (10**6, 1, 28, 28) over a few bytes of data."""
    path = tmp_path / "x.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": (10**6, 1, 28, 28)})
        f.write(b"\0" * 64)
    line = one_error(["quantize", MNIST, "--calib", path, "-o", tmp_path / "o"], capsys)
    assert "x.npy" in line and "truncated" in line


# -- bounded reading ---------------------------------------------------------
def zeros_npz(path, n, shape=(1, 28, 28), with_labels=True):
    """An honest .npz of n zero samples, streamed into the zip (zeros compress ~1000x)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("x.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                     "shape": (n,) + shape})
            row = bytes(4 * int(np.prod(shape)))
            for _ in range(n):
                f.write(row)
        if with_labels:
            with z.open("y.npy", "w") as f:
                np.lib.format.write_array(f, np.zeros(n, np.int64))
    return path


@pytest.fixture
def read_counter(monkeypatch):
    """Counts the bytes decompressed from zip members."""
    count = [0]
    real = zipfile.ZipExtFile.read

    def read(self, n=-1):
        data = real(self, n)
        count[0] += len(data)
        return data
    monkeypatch.setattr(zipfile.ZipExtFile, "read", read)
    return count


def test_zip_bomb_refused_before_decompressing(tmp_path, monkeypatch, capsys, read_counter):
    """20000 samples (63 MB of float32) in a ~60 KB file, with the limit lowered to 16 MB
    through the documented override: refused from the member's header."""
    path = zeros_npz(tmp_path / "bomb.npz", 20000)
    assert path.stat().st_size < 200_000
    monkeypatch.setenv(LIMIT_ENV, str(16 << 20))
    line = one_error(["train", MNIST, "--data", path, "-o", tmp_path / "o"], capsys)
    assert "bomb.npz" in line and "limit" in line and LIMIT_ENV in line, line
    assert read_counter[0] < 4096          # the headers only


def test_crafted_zip_refused_under_the_default_2_gib_limit(tmp_path, capsys, read_counter):
    """A 1 KB .npz whose member declares 4.29 GB (in the zip's central directory and in its
    .npy header): refused under the default limit from the headers, without decompressing."""
    import struct
    n = 1_369_568                                      # x [n, 1, 28, 28] float32: 4,294,965,248 bytes
    path = tmp_path / "crafted.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("x.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                     "shape": (n, 1, 28, 28)})
            f.write(bytes(4096))
    raw = bytearray(path.read_bytes())
    cd = raw.index(b"PK\x01\x02")
    raw[cd + 24:cd + 28] = struct.pack("<I", 0xFFFFFFFE)      # the uncompressed size it claims
    path.write_bytes(bytes(raw))
    assert path.stat().st_size < 2000 and D.MAX_BYTES == 2 << 30
    line = one_error(["train", MNIST, "--data", path, "-o", tmp_path / "o"], capsys)
    assert "crafted.npz" in line and "over the 2048 MiB limit" in line, line
    assert read_counter[0] < 4096


def test_limit_checked_against_declared_size(tmp_path):
    """_plan refuses a 3.1 GB array under the default 2 GiB limit from its header alone."""
    budget = [D.max_bytes()]
    with pytest.raises(TinytrainError, match="over the 2048 MiB limit"):
        D._plan((10**6, 1, 28, 28), np.dtype("<f4"), 4 * 784 * 10**6, None, budget, "f.npz", "x")
    # the calibration subset of the same array fits
    rows, need = D._plan((10**6, 1, 28, 28), np.dtype("<f4"), 4 * 784 * 10**6, CALIB_SAMPLES, [D.max_bytes()],
                         "f.npz", "x")
    assert rows == CALIB_SAMPLES and need == CALIB_SAMPLES * 784 * 4


def test_calibration_reads_only_its_subset(tmp_path, monkeypatch, read_counter):
    """5000 samples (15.7 MB) under a 4 MB limit: the whole file is refused, the calibration
    subset (the first 500, 1.6 MB) is read, and only it is decompressed."""
    path = zeros_npz(tmp_path / "calib.npz", 5000)
    monkeypatch.setenv(LIMIT_ENV, str(4 << 20))
    with pytest.raises(TinytrainError, match="limit"):
        load_dataset(path, [1, 1, 28, 28])
    read_counter[0] = 0
    x, y = load_calibration(path, [1, 1, 28, 28])
    assert x.shape == (CALIB_SAMPLES, 1, 28, 28) and y.shape == (CALIB_SAMPLES,)
    assert read_counter[0] < CALIB_SAMPLES * 784 * 4 + 2 * 4096 + CALIB_SAMPLES * 8


def test_calibration_subset_is_the_first_samples(tmp_path):
    x = RNG.random((CALIB_SAMPLES + 37, 1, 28, 28), dtype=np.float32)
    path = npz(tmp_path / "c.npz", x=x)
    cx, _ = load_calibration(path, [1, 1, 28, 28])
    assert np.array_equal(cx, x[:CALIB_SAMPLES])
    np.save(tmp_path / "c.npy", x)
    assert np.array_equal(load_calibration(tmp_path / "c.npy", [1, 1, 28, 28])[0], x[:CALIB_SAMPLES])
    np.savetxt(tmp_path / "c.csv", x.reshape(len(x), -1), delimiter=",")
    assert len(load_calibration(tmp_path / "c.csv", [1, 1, 28, 28])[0]) == CALIB_SAMPLES


def test_fortran_order_array_reads_right(tmp_path):
    x = np.asfortranarray(RNG.random((6, 1, 28, 28), dtype=np.float32))
    np.save(tmp_path / "f.npy", x)
    assert np.array_equal(load_dataset(tmp_path / "f.npy", [1, 1, 28, 28])[0], x)
    assert np.array_equal(load_dataset(tmp_path / "f.npy", [1, 1, 28, 28], max_samples=2)[0], x[:2])


def test_bad_limit_env(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(LIMIT_ENV, "lots")
    path = npz(tmp_path / "d.npz", x=X1)
    assert LIMIT_ENV in one_error(["quantize", MNIST, "--calib", path, "-o", tmp_path / "o"], capsys)


# -- flags -------------------------------------------------------------------
@pytest.mark.parametrize("flag,value,expect", [
    ("--sram", "inf", "not a finite size"), ("--flash", "inf", "not a finite size"),
    ("--sram", "nan", "not a finite size"), ("--sram", "0.5", "not a whole number of bytes"),
    ("--sram", "-1", "not a positive size"), ("--sram", "0", "not a positive size"),
    ("--sram", "10q", "not a size like"), ("--flash", "1e300", "more than 1 TiB")])
def test_bad_size_flags(flag, value, expect, tmp_path, capsys):
    line = one_error(["compile", MNIST, flag, value, "-o", tmp_path / "o"], capsys)
    assert f"'{flag}'" in line and f"'{value}'" in line and expect in line, line


def test_fractional_kilobytes_are_whole_bytes():
    from tinytrain.memreport import parse_size
    assert parse_size("1.5k") == 1536 and parse_size("256k") == 262144 and parse_size("1m") == 1 << 20


def test_input_shape_of_wrong_rank(capsys):
    line = one_error(["inspect", MNIST, "--input-shape", "1,784"], capsys)
    assert "'--input-shape'" in line and "[1, 784]" in line and "4" in line


def test_negative_max_calib(tmp_path, capsys):
    path = npz(tmp_path / "d.npz", x=X1)
    assert "--max-calib" in one_error(["quantize", MNIST, "--calib", path, "--max-calib", "-3",
                                       "-o", tmp_path / "o"], capsys)


def test_duplicated_graph_output(tmp_path, capsys):
    b = Builder([1, 4])
    r = b.op("Relu", [b.input])
    b.model([r, r], tmp_path / "dup.onnx")
    line = one_error(["inspect", tmp_path / "dup.onnx"], capsys)
    assert "dup.onnx" in line and f"graph output '{r}' is listed twice" in line


# -- layouts -----------------------------------------------------------------
def test_nhwc_data_for_nchw_model_refused(tmp_path, capsys):
    model = small_cnn(tmp_path / "m.onnx")
    x = RNG.random((8, 3, 8, 8), dtype=np.float32)
    path = npz(tmp_path / "nhwc.npz", x=x.transpose(0, 2, 3, 1), y=np.arange(8) % 2)
    line = one_error(["quantize", model, "--calib", path, "-o", tmp_path / "o"], capsys)
    assert "nhwc.npz" in line and "[8, 8, 3] (NHWC)" in line and "[3, 8, 8] (NCHW)" in line
    assert "--layout nhwc" in line
    line = one_error(["train", model, "--data", path, "-o", tmp_path / "o"], capsys)
    assert "--layout nhwc" in line
    line = one_error(["compile", model, "--calib", path, "-o", tmp_path / "o"], capsys)
    assert "--layout nhwc" in line


def test_layout_flag_reads_nhwc_correctly(tmp_path, capsys):
    """quantize on NHWC data with --layout nhwc == quantize on the same data in NCHW."""
    model = small_cnn(tmp_path / "m.onnx")
    x = RNG.random((16, 3, 8, 8), dtype=np.float32)
    y = np.arange(16) % 2
    npz(tmp_path / "nchw.npz", x=x, y=y)
    npz(tmp_path / "nhwc.npz", x=x.transpose(0, 2, 3, 1), y=y)
    for name, extra in (("nchw", []), ("nhwc", ["--layout", "nhwc"])):
        assert main(["quantize", str(model), "--calib", str(tmp_path / f"{name}.npz"), "--report-samples", "4",
                     "-o", str(tmp_path / name)] + extra) == 0
    capsys.readouterr()
    a, b = tt.load(tmp_path / "nchw" / "m.tt.npz"), tt.load(tmp_path / "nhwc" / "m.tt.npz")
    def scales(g):
        return [(t.name, np.asarray(t.q.scale).tolist()) for t in g.tensors.values() if t.q is not None]
    assert scales(a) == scales(b) and len(scales(a)) > 3
    assert np.array_equal(tt.Simulator(a).run(x), tt.Simulator(b).run(x))
    # the same through the Python API
    g = tt.load(model)
    qa = tt.quantize(g, x)
    qb = tt.quantize(g, x.transpose(0, 2, 3, 1), layout="nhwc")
    assert np.array_equal(tt.Simulator(qa).run(x), tt.Simulator(qb).run(x))
    with pytest.raises(TinytrainError, match="--layout nhwc"):
        tt.quantize(g, x.transpose(0, 2, 3, 1))


def test_channels_last_model(tmp_path):
    """A TensorFlow-style model (input [1, 8, 8, 3] through a Transpose) records NHWC: its data
    is taken as it is, NCHW data needs --layout nchw."""
    model = small_cnn(tmp_path / "tf.onnx", channels_last=True)
    g = tt.load(model)
    assert g.meta["input_layout"] == "nhwc"
    x = RNG.random((4, 3, 8, 8), dtype=np.float32)
    npz(tmp_path / "nhwc.npz", x=x.transpose(0, 2, 3, 1))
    npz(tmp_path / "nchw.npz", x=x)
    shape, lay = g.meta["input_shape"], g.meta["input_layout"]
    assert np.array_equal(load_dataset(tmp_path / "nhwc.npz", shape, model_layout=lay)[0], x.transpose(0, 2, 3, 1))
    with pytest.raises(TinytrainError, match=r"\(NCHW\).*\(NHWC\): pass --layout nchw"):
        load_dataset(tmp_path / "nchw.npz", shape, model_layout=lay)
    got = load_dataset(tmp_path / "nchw.npz", shape, layout="nchw", model_layout=lay)[0]
    assert np.array_equal(got, x.transpose(0, 2, 3, 1))


def test_mcu_cnn_channels_last_data_is_the_same_pixels(tmp_path):
    """The shipped MCU CNN has one channel: NHWC [N, 28, 28, 1] and [N, 28, 28] hold the pixels in
    NCHW order already, so they are read as they are (no value moves), with or without --layout."""
    g = tt.load(MNIST)
    shape = g.meta["input_shape"]
    assert shape == [1, 1, 28, 28] and D.model_layout(shape, g.meta.get("input_layout")) == "nchw"
    for name, arr in (("nhwc", X1.transpose(0, 2, 3, 1)), ("hw", X1[:, 0])):
        path = npz(tmp_path / f"{name}.npz", x=arr)
        assert np.array_equal(load_dataset(path, shape)[0], X1)
        assert np.array_equal(load_dataset(path, shape, layout="nhwc")[0], X1)


def test_imu_nwc_data(tmp_path, capsys):
    """The shipped IMU CNN takes [N, 6, 100] (NCW); [N, 100, 6] sensor windows are refused with
    the fix, and read correctly with --layout nwc."""
    x = RNG.standard_normal((5, 6, 100)).astype(np.float32)
    path = npz(tmp_path / "nwc.npz", x=x.transpose(0, 2, 1), y=np.arange(5) % 4)
    line = one_error(["quantize", IMU, "--calib", path, "-o", tmp_path / "o"], capsys)
    assert "[100, 6] (NWC)" in line and "[6, 100] (NCW)" in line and "--layout nwc" in line
    assert np.array_equal(load_dataset(path, [1, 6, 100], layout="nwc")[0], x)
    # a csv row is one sample flattened in the --layout's order
    np.savetxt(tmp_path / "nwc.csv", x.transpose(0, 2, 1).reshape(5, -1), delimiter=",")
    assert np.array_equal(load_dataset(tmp_path / "nwc.csv", [1, 6, 100], layout="nwc")[0], x)
    np.savetxt(tmp_path / "ncw.csv", x.reshape(5, -1), delimiter=",")
    assert np.array_equal(load_dataset(tmp_path / "ncw.csv", [1, 6, 100])[0], x)


def test_layout_of_wrong_rank(tmp_path, capsys):
    path = npz(tmp_path / "d.npz", x=RNG.standard_normal((5, 6, 100)).astype(np.float32))
    line = one_error(["quantize", IMU, "--calib", path, "--layout", "nhwc", "-o", tmp_path / "o"], capsys)
    assert "'--layout'" in line and "NCW" in line


def test_ambiguous_square_samples_refused(tmp_path):
    """C == H == W: both layouts have the same shape; a file must say which."""
    x = RNG.random((2, 3, 3, 3), dtype=np.float32)
    path = npz(tmp_path / "sq.npz", x=x)
    with pytest.raises(TinytrainError, match="--layout nchw or --layout nhwc"):
        load_dataset(path, [1, 3, 3, 3])
    assert np.array_equal(load_dataset(path, [1, 3, 3, 3], layout="nchw")[0], x)
    assert np.array_equal(load_dataset(path, [1, 3, 3, 3], layout="nhwc")[0], x.transpose(0, 3, 1, 2))


def test_subprocess_one_line(tmp_path):
    path = npz(tmp_path / "d.npz", x=np.zeros((0, 1, 28, 28), np.float32))
    r = subprocess.run([sys.executable, "-m", "tinytrain.cli", "quantize", str(MNIST), "--calib", str(path),
                        "-o", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "d.npz" in r.stderr, r.stderr


def test_api_train_checks_the_layout(tmp_path):
    """tt.train refuses NHWC arrays for an NCHW model before anything is quantized or trained."""
    from tinytrain.api import train        # tt.train is shadowed by the tinytrain.train package once imported
    model = small_cnn(tmp_path / "m.onnx")
    x = RNG.random((4, 8, 8, 3), dtype=np.float32)
    with pytest.raises(TinytrainError, match="--layout nhwc"):
        train(model, x, np.arange(4) % 2, progress=False)
    with pytest.raises(TinytrainError, match="'test'"):
        train(model, x, np.arange(4) % 2, test=(x[:, :2], np.zeros(4)), layout="nhwc", progress=False)
