"""Folders of images, one subfolder per class, read as users bring them: labels in sorted
subfolder order, resized to the model's input, scaled to [0, 1], in the model's layout."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinytrain.cli import main
from tinytrain.compiler.errors import TinytrainError
from tinytrain.data import load_dataset

ROOT = Path(__file__).resolve().parent.parent


def _folder(tmp_path, size=(40, 30), mode="RGB"):
    rng = np.random.default_rng(0)
    pixels = {}
    for cls in ("b_dogs", "a_cats"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            a = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(a).convert(mode).save(tmp_path / cls / f"{i}.png")
            pixels[(cls, i)] = a
    (tmp_path / "a_cats" / "notes.txt").write_text("not an image")
    return pixels


def test_labels_resize_and_layout(tmp_path):
    pixels = _folder(tmp_path)
    x, y = load_dataset(tmp_path, [1, 3, 16, 20], need_labels=True)
    assert x.shape == (6, 3, 16, 20) and x.dtype == np.float32
    assert y.tolist() == [0, 0, 0, 1, 1, 1]                       # a_cats before b_dogs
    assert 0.0 <= x.min() and x.max() <= 1.0
    # the same image, resized independently with Pillow, in the model's NCHW layout
    ref = np.asarray(Image.fromarray(pixels[("a_cats", 0)]).resize((20, 16), Image.BILINEAR), np.float32) / 255
    np.testing.assert_array_equal(x[0], ref.transpose(2, 0, 1))
    xh, _ = load_dataset(tmp_path, [1, 16, 20, 3], model_layout="nhwc")
    np.testing.assert_array_equal(xh, x.transpose(0, 2, 3, 1))
    xg, _ = load_dataset(tmp_path, [1, 1, 28, 28])
    assert xg.shape == (6, 1, 28, 28)


def test_mistakes_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TinytrainError, match="no images found"):
        load_dataset(tmp_path / "empty", [1, 3, 8, 8])
    (tmp_path / "bad" / "c").mkdir(parents=True)
    (tmp_path / "bad" / "c" / "x.png").write_bytes(b"not a png")
    with pytest.raises(TinytrainError, match="cannot read the image"):
        load_dataset(tmp_path / "bad", [1, 3, 8, 8])
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(TinytrainError, match="one subfolder per class"):
        load_dataset(tmp_path / "flat", [1, 3, 8, 8], need_labels=True)


def test_cli_trains_on_a_folder(tmp_path, capsys):
    rng = np.random.default_rng(1)
    data = tmp_path / "digits"
    for k in range(10):
        (data / f"{k}").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(data / f"{k}" / f"{i}.png")
    rc = main(["train", str(ROOT / "models" / "mcu_cnn_mnist.onnx"), "--data", str(data), "--update", "classifier",
               "--quiet", "-o", str(tmp_path / "out")])
    assert rc == 0 and (tmp_path / "out" / "mcu_cnn_mnist.trained.tt.npz").is_file()
