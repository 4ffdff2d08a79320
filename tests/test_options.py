"""compiler/options.py: the build record round-trips, and as a file it is data: a field that is
unknown, of the wrong type or outside its choices is refused with one line naming it."""
import json

import pytest

from tinytrain.cli import main
from tinytrain.compiler.errors import TinytrainError
from tinytrain.compiler.options import BUILD_FILE, BuildOptions, from_dict, read_build, write_build


def test_round_trip(tmp_path):
    o = BuildOptions(update="last-2", rounding="shadow", qas=False, weight_headroom=1.5, plan_sram=65536,
                     input_shape=[1, 1, 28, 28], normalization={"scale": 0.1, "zero_point": -3})
    write_build(tmp_path, o)
    assert read_build(tmp_path) == o
    assert read_build(tmp_path / "nothing") is None
    assert o.steer_sram() == 65536 and o.with_(sram=1000).steer_sram() == 1000


@pytest.mark.parametrize("patch, match", [
    ({"exec": "import os"}, "unknown field 'exec'"),
    ({"qas": "yes"}, "field 'qas' has the wrong type"),
    ({"sram": True}, "field 'sram' has the wrong type"),
    ({"rounding": "nearest"}, "field 'rounding' is 'nearest'"),
    ({"format": 99}, "not a build record of format 1"),
])
def test_bad_fields_are_refused(patch, match):
    with pytest.raises(TinytrainError, match=match):
        from_dict({**BuildOptions().to_dict(), **patch})


def test_a_broken_record_is_one_line_from_the_cli(tmp_path, capsys):
    (tmp_path / BUILD_FILE).write_text("{not json")
    assert main(["build", str(tmp_path), "--board", "qemu-mps2-an386"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "build.json" in err[0] and "not valid JSON" in err[0]
    (tmp_path / BUILD_FILE).write_text(json.dumps([1, 2]))
    assert main(["build", str(tmp_path), "--board", "qemu-mps2-an386"]) == 2
    assert "not a build record" in capsys.readouterr().err
