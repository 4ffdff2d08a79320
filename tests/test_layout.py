"""compiler/layout.py: the state blob's offsets, worked out by hand for a tiny graph
(the bit-exact C tests check them against real training runs)."""
import numpy as np

from tinytrain.compiler.codegen.emit_c import Emitter
from tinytrain.compiler.ir import Graph
from tinytrain.compiler.layout import ALIGN, STATE_HEADER, state_layout


def _graph():
    g = Graph("t")
    w = g.add_const("w", np.zeros((2, 5), np.int8))        # 10 bytes -> 16
    b = g.add_const("b", np.zeros(3, np.int32))            # 12 bytes -> 16
    g.add_const("frozen", np.zeros(7, np.int8))             # not trainable: not in the blob
    g.meta["training"] = {"trainable": [w.id, b.id]}
    return g, w.id, b.id


def test_offsets_by_hand():
    g, w, b = _graph()
    assert (ALIGN, STATE_HEADER) == (8, 24)
    lay = state_layout(g)
    assert lay.offsets == {w: 24, b: 40} and lay.shadow == {} and lay.size == 56
    sh = state_layout(g, "shadow")                          # int16 shadow of the int8 weight: 20 bytes -> 24
    assert sh.offsets == {w: 24, b: 40} and sh.shadow == {w: 56} and sh.size == 80


def test_the_emitter_uses_the_layout():
    g, w, b = _graph()
    for rounding in ("stochastic", "shadow"):
        e = Emitter(g, None, "m", rounding)
        assert (e.state_off, e.shadow_off, e.state_size) == tuple(state_layout(g, rounding))


def test_context_is_one_field_list():
    """The context's size by hand (C ABI), the header's struct and the host's cffi one from the same fields."""
    import cffi
    from tinytrain.compiler.layout import CONTEXT_FIELDS, context_bytes, context_struct
    from tinytrain.host import cdef
    assert [f for _, f, _ in CONTEXT_FIELDS] == ["arena", "state", "lr", "prng", "steps", "skipped", "saturated"]
    assert context_bytes(8) == 2 * 8 + 5 * 4 + 4 and context_bytes(4) == 2 * 4 + 5 * 4   # 40 (padded), 28
    ffi = cffi.FFI()
    ffi.cdef(cdef("m"))
    assert ffi.sizeof("m_ctx") == context_bytes(ffi.sizeof("void *"))
    assert context_struct("m", comments=False) in cdef("m")


def test_state_bytes_and_sram_total_follow_the_layout():
    from types import SimpleNamespace
    from tinytrain.compiler.layout import context_bytes, sram_total, state_bytes
    g, w, b = _graph()
    assert state_bytes(g) == (56, 7) and state_bytes(g, "shadow") == (80, 7)      # the frozen 7 bytes: flash
    parts = sram_total(SimpleNamespace(arena_size=1000), g, "shadow", stack=512)
    assert parts == {"arena": 1000, "state": 80, "context": context_bytes(), "stack": 512,
                     "total": 1000 + 80 + context_bytes() + 512}
