"""<name>_init(..., restore=1) refuses a state blob of another model even when its size, magic and
layout match (same network and update scheme, other quantization): only the signature tells them
apart.  (test_compile's refusal check uses a model whose state size differs, which the size check
alone catches.)"""
from pathlib import Path

import pytest

import tinytrain as tt
from tinytrain.compiler.pipeline import compile_graph
from tinytrain.data import load_dataset
from tinytrain.host import HostModel

ROOT = Path(__file__).resolve().parent.parent
D = ROOT / "models" / "data"


@pytest.fixture(scope="module")
def fmnist():
    return load_dataset(D / "fmnist_train.npz")


def test_restore_refuses_a_same_sized_blob_of_another_model(fmnist, tmp_path):
    x, y = fmnist
    model = tt.load(ROOT / "models" / "mcu_cnn_mnist.onnx")
    ga = tt.quantize(model, x[:200], output_range=(-16, 16))
    gb = tt.quantize(tt.load(ROOT / "models" / "mcu_cnn_mnist.onnx"), x[200:300], output_range=(-8, 8))
    tga, _, fa = compile_graph(ga, tmp_path / "a", name="m", update="classifier")
    tgb, _, fb = compile_graph(gb, tmp_path / "b", name="m", update="classifier")
    assert fa["state"] == fb["state"] and fa["signature"] != fb["signature"]
    a = HostModel(tmp_path / "a", "m", tga, fa, lr=0.05, seed=1)
    b = HostModel(tmp_path / "b", "m", tgb, fb, lr=0.05, seed=1)
    for i in range(3):
        a.train_step(x[i], y[i])
    assert a.lib.m_state_seal(a.ctx) == 0                # a blob kept by the caller is sealed first
    saved = a.state_bytes()
    S = fa["state"]

    def restore(hm, facts):
        ffi = hm.ffi
        ctx = ffi.new("m_ctx *")
        state = ffi.new("uint8_t[]", S + 16)
        ffi.memmove(state, saved, S)
        return hm.lib.m_init(ctx, hm.arena, facts["arena"], state, S, 0.05, 1, 1), ctx

    rc, ctx = restore(a, fa)
    assert rc == 0 and ctx.steps == 3                    # its own model takes it back
    rc, _ = restore(b, fb)
    assert rc == -5, "a state blob of another model was restored"
