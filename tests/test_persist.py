"""Trained weights survive a power cut: runtime_c/src/tt_persist.c saves the state blob
into one of two flash slots (payload, then a header with sequence number, model
signature and CRC).  Cutting the power at every single byte of a save (the byte being
written half programmed or not), the next boot restores exactly the old or exactly the
new state, never a mix or garbage.  Flaky flash: a read that fails, or one byte that reads
back flipped once, at every read of a save or a load: the load still returns the newest
state, a save never erases the only (or the newest) valid copy, and bytes that failed the
CRC never reach the caller.  The generated <name>_init(..., restore=1) checks the CRC,
signature, size and magic of a blob kept in RAM."""
import struct
import zlib

import numpy as np
import pytest

from .cbuild import INCLUDE, ROOT, build, header_cdef

CDEF = """
void shim_reset(uint32_t slot_size);
void shim_budget(long bytes);
void shim_tear(uint8_t keep_erased);
void shim_fault(int kind, long from, long count, uint8_t mask);
long shim_reads(int bytes);
uint8_t *shim_flash(void);
int shim_save(const uint8_t *state, uint32_t size, uint32_t signature);
int shim_load(uint8_t *state, uint32_t size, uint32_t signature);
""" + header_cdef(INCLUDE / "tt_persist.h")      # tt_crc32, tt_state_save / _load as declared
SIZE, SLOT, SIG = 600, 1024, 0x1234ABCD


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return build([ROOT / "tests" / "c" / "persist_shim.c", ROOT / "runtime_c" / "src" / "tt_persist.c"], CDEF,
                 tmp_path_factory.mktemp("persist"), name="persist")


def _buf(ffi, a):
    return ffi.cast("uint8_t *", ffi.from_buffer(a))


def _load(ffi, lib, sig=SIG):
    out = np.zeros(SIZE, np.uint8)
    return lib.shim_load(_buf(ffi, out), SIZE, sig), out


def test_crc_is_zlibs(lib):
    ffi, lib = lib
    data = np.random.default_rng(0).integers(0, 256, 1000).astype(np.uint8)
    assert lib.tt_crc32(0, _buf(ffi, data), data.size) == zlib.crc32(data.tobytes())


def test_save_load_and_newest_wins(lib):
    ffi, lib = lib
    rng = np.random.default_rng(1)
    lib.shim_reset(SLOT)
    assert _load(ffi, lib)[0] == -3                       # nothing saved yet
    states = [rng.integers(0, 256, SIZE).astype(np.uint8) for _ in range(5)]
    for s in states:
        assert lib.shim_save(_buf(ffi, s), SIZE, SIG) == 0
        rc, got = _load(ffi, lib)
        assert rc == 0 and np.array_equal(got, s)
    assert _load(ffi, lib, sig=SIG + 1)[0] == -3           # another model's state is never loaded


@pytest.mark.parametrize("tear", [0xFF, 0x0F, 0xA5])
def test_power_cut_at_every_byte_gives_old_or_new(lib, tear):
    """tear: the bits of the byte being programmed at the cut that stay erased (0xFF: the
    byte is not written at all; else it is half programmed, a torn write)."""
    ffi, lib = lib
    rng = np.random.default_rng(2)
    old, new = (rng.integers(0, 256, SIZE).astype(np.uint8) for _ in range(2))
    total = SLOT + SIZE + 24                                # erase + payload + header, in bytes
    seen = {"old": 0, "new": 0}
    for first in (True, False):                             # the new state goes to slot 1, or to slot 0
        for cut in range(total + 1):
            lib.shim_reset(SLOT)
            if not first:
                lib.shim_save(_buf(ffi, new), SIZE, SIG)    # move the newest to slot 0 first
            assert lib.shim_save(_buf(ffi, old), SIZE, SIG) == 0
            lib.shim_budget(cut)
            lib.shim_tear(tear)
            rc_save = lib.shim_save(_buf(ffi, new), SIZE, SIG)
            lib.shim_budget(-1)                             # reboot
            rc, got = _load(ffi, lib)
            assert rc == 0, cut
            if np.array_equal(got, new):
                seen["new"] += 1
                # only once the payload and the CRC-covered header fields (all but the reserved word) are
                # written; a torn last CRC byte can happen to hold the right value
                assert cut >= SLOT + SIZE + (20 if tear == 0xFF else 19), cut
            else:
                assert np.array_equal(got, old), f"cut after {cut} bytes restored a mix"
                assert rc_save != 0 and cut < total, cut
                seen["old"] += 1
    assert seen["old"] > 0 and seen["new"] > 0


READ_FAIL, READ_FLIP = 1, 2
EVER = 1 << 40


def _states(n, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, SIZE).astype(np.uint8) for _ in range(n)]


def _setup(ffi, lib, saved):
    lib.shim_reset(SLOT)
    for s in saved:
        assert lib.shim_save(_buf(ffi, s), SIZE, SIG) == 0


def _count_reads(ffi, lib, saved, op):
    """(read calls, bytes read) of op() after saving `saved`, on a healthy flash."""
    _setup(ffi, lib, saved)
    lib.shim_fault(0, 0, 0, 0)
    op()
    return lib.shim_reads(0), lib.shim_reads(1)


def _faults(ffi, lib, saved, op):
    """Every single read fault of op(): each read call failing, each byte read flipped once."""
    calls, nbytes = _count_reads(ffi, lib, saved, op)
    assert calls > 0 and nbytes > 0
    for k in range(calls):
        yield READ_FAIL, k, 0
    for k in range(nbytes):
        yield READ_FLIP, k, 1 << (k % 8)


# the slots before the save: only one valid copy (the new state goes to the empty slot 1), or
# two (an older one in slot 0 that the new state replaces, the newest in slot 1)
@pytest.mark.parametrize("before", [1, 2])
def test_a_flaky_read_while_saving_never_erases_the_newest_copy(lib, before):
    ffi, lib = lib
    *saved, new = _states(before + 1, 10 + before)
    old = saved[-1]

    def save():
        return lib.shim_save(_buf(ffi, new), SIZE, SIG)
    outcomes = set()
    for kind, k, mask in _faults(ffi, lib, saved, save):
        # a) power cut one byte into the save: had it started erasing the newest copy, that copy is gone
        _setup(ffi, lib, saved)
        lib.shim_fault(kind, k, 1, mask)
        lib.shim_budget(1)
        rc_save = save()
        lib.shim_budget(-1)
        lib.shim_fault(0, 0, 0, 0)
        rc, got = _load(ffi, lib)
        assert rc == 0 and np.array_equal(got, old), (kind, k)
        assert rc_save != 0
        # b) no cut: the save succeeds, or fails and the old state stays
        _setup(ffi, lib, saved)
        before_flash = bytes(ffi.buffer(lib.shim_flash(), 2 * SLOT))
        lib.shim_fault(kind, k, 1, mask)
        rc_save = save()
        lib.shim_fault(0, 0, 0, 0)
        rc, got = _load(ffi, lib)
        assert rc == 0, (kind, k)
        if rc_save == 0:
            assert np.array_equal(got, new), (kind, k)
        else:
            assert rc_save in (-2, -4)
            assert np.array_equal(got, new) or np.array_equal(got, old), (kind, k)
            if np.array_equal(got, old):               # refused before erasing: the flash is untouched
                assert bytes(ffi.buffer(lib.shim_flash(), 2 * SLOT)) == before_flash, (kind, k)
        outcomes.add(rc_save)
    # failed reads and flips seen; with one valid copy some faults (in the empty slot's header) are harmless
    assert outcomes >= ({0, -2, -4} if before == 1 else {-2, -4})


@pytest.mark.parametrize("before", [1, 2, 3])
def test_a_flaky_read_while_loading_still_gives_the_newest_state(lib, before):
    ffi, lib = lib
    saved = _states(before, 20 + before)
    for kind, k, mask in _faults(ffi, lib, saved, lambda: _load(ffi, lib)):
        _setup(ffi, lib, saved)
        lib.shim_fault(kind, k, 1, mask)
        rc, got = _load(ffi, lib)
        assert rc == 0 and np.array_equal(got, saved[-1]), (kind, k)


def _phase1_reads(ffi, lib, saved):
    """Read calls / bytes of a load before it copies into the caller's buffer (its last read)."""
    calls, nbytes = _count_reads(ffi, lib, saved, lambda: _load(ffi, lib))
    return calls - 1, nbytes - SIZE


def _load_filled():
    return np.full(SIZE, 0xAA, np.uint8)


def test_bytes_that_fail_the_crc_never_reach_the_caller(lib):
    ffi, lib = lib
    older, old = _states(2, 30)
    calls, nbytes = _phase1_reads(ffi, lib, [older, old])
    # the flash goes bad after the slots were verified: every later read fails, or flips a bit
    for kind, k in ((READ_FAIL, calls), (READ_FLIP, nbytes)):
        for mask in (0x01, 0x80) if kind == READ_FLIP else (0,):
            _setup(ffi, lib, [older, old])
            lib.shim_fault(kind, k, EVER, mask)
            out = _load_filled()
            rc = lib.shim_load(_buf(ffi, out), SIZE, SIG)
            assert rc == -4 and not out.any(), (kind, mask)             # zeroed, not the flipped bytes
    # one flip in the copy of the newest slot: it is read again
    _setup(ffi, lib, [older, old])
    lib.shim_fault(READ_FLIP, nbytes + 7, 1, 0x10)
    rc, got = _load(ffi, lib)
    assert rc == 0 and np.array_equal(got, old)
    # the newest slot reads back wrong every time after verifying: the older, verified slot is used
    _setup(ffi, lib, [older, old])
    lib.shim_fault(READ_FLIP, nbytes + 7, SIZE + 1, 0x10)             # byte 7 of both copies, and between
    rc, got = _load(ffi, lib)
    assert rc == 0 and np.array_equal(got, older)
    # a slot that is corrupt in flash is skipped
    _setup(ffi, lib, [older, old])
    lib.shim_flash()[SLOT + 123] ^= 0x04                                  # old went to slot 1
    rc, got = _load(ffi, lib)
    assert rc == 0 and np.array_equal(got, older)
    lib.shim_flash()[123] ^= 0x04
    out = _load_filled()
    assert lib.shim_load(_buf(ffi, out), SIZE, SIG) == -3 and (out == 0xAA).all()   # untouched
    # every read fails: an error, the caller's buffer untouched
    _setup(ffi, lib, [older, old])
    lib.shim_fault(READ_FAIL, 0, EVER, 0)
    out = _load_filled()
    assert lib.shim_load(_buf(ffi, out), SIZE, SIG) == -2 and (out == 0xAA).all()


def test_a_write_that_did_not_program_is_an_error(lib):
    """A flash that acknowledges a write it did not make: the save reads the copy back."""
    ffi, lib = lib
    old, new = _states(2, 40)
    _setup(ffi, lib, [old])
    lib.shim_fault(READ_FLIP, 0, 0, 0)
    flash = lib.shim_flash()
    assert lib.shim_save(_buf(ffi, new), SIZE, SIG) == 0
    flash[SLOT + 5] ^= 0x01                                               # as if one bit never programmed
    assert _load(ffi, lib)[0] == 0 and np.array_equal(_load(ffi, lib)[1], old)


@pytest.mark.parametrize("before", [1, 2])
def test_a_slot_that_stops_reading_during_a_save_is_never_erased(lib, before):
    """From some read on, every read fails (the flash, or its bus, gives out): the save
    returns an error and, if that happened before it chose a slot, has erased nothing."""
    ffi, lib = lib
    *saved, new = _states(before + 1, 50 + before)
    calls, _ = _count_reads(ffi, lib, saved, lambda: lib.shim_save(_buf(ffi, new), SIZE, SIG))
    for k in range(calls):
        _setup(ffi, lib, saved)
        before_flash = bytes(ffi.buffer(lib.shim_flash(), 2 * SLOT))
        lib.shim_fault(READ_FAIL, k, EVER, 0)
        rc_save = lib.shim_save(_buf(ffi, new), SIZE, SIG)
        lib.shim_fault(0, 0, 0, 0)
        assert rc_save == -2, k
        rc, got = _load(ffi, lib)
        assert rc == 0, k
        if not np.array_equal(got, new):               # the read-back failed: the new copy is there
            assert np.array_equal(got, saved[-1]), k
            assert bytes(ffi.buffer(lib.shim_flash(), 2 * SLOT)) == before_flash, k


# ---- the generated library: a blob kept in RAM, restored with <name>_init(..., restore=1) ----

@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import tinytrain as tt
    from tinytrain.compiler.pipeline import compile_graph
    from tinytrain.data import load_dataset
    from tinytrain.host import HostModel
    x, y = load_dataset(ROOT / "models" / "data" / "fmnist_train.npz")
    gq = tt.quantize(tt.load(ROOT / "models" / "mcu_cnn_mnist.onnx"), x[:64], output_range=(-16, 16))
    out = tmp_path_factory.mktemp("model")
    tg, plan, facts = compile_graph(gq, out, name="m", update="classifier")
    hm = HostModel(out, "m", tg, facts, lr=0.05, seed=1)
    hm.ffi.cdef(next(line for line in header_cdef(INCLUDE / "tt_persist.h").splitlines()   # tt_flash: host.cdef's
                     if line.startswith("int tt_state_save(")))
    return hm, x, y


def _seal_crc(blob):
    """The blob's CRC, computed here with zlib: every byte but the CRC field (16-19)."""
    return zlib.crc32(bytes(blob[:16]) + bytes(blob[20:]))


def _with(blob, off, value, reseal=True):
    b = bytearray(blob)
    b[off:off + 4] = struct.pack("<I", value)
    if reseal:
        b[16:20] = struct.pack("<I", _seal_crc(b))
    return bytes(b)


def _restore(hm, blob):
    ffi, S, A = hm.ffi, hm.facts["state"], hm.facts["arena"]
    ctx = ffi.new("m_ctx *")
    arena = ffi.new("uint8_t[]", A + 8)
    state = ffi.new("uint8_t[]", S + 8)
    ffi.memmove(state, blob, S)
    return hm.lib.m_init(ctx, arena, A, state, S, 0.05, 1, 1), ctx


def test_a_sealed_blob_restores_and_a_garbage_one_is_refused(model):
    hm, x, y = model
    S, sig = hm.facts["state"], hm.facts["signature"]
    assert hm.lib.m_reset(hm.ctx) == 0
    for i in range(3):
        hm.train_step(x[i], y[i])
    assert hm.lib.m_state_seal(hm.ctx) == 0
    blob = hm.state_bytes()
    magic, sig_, size, steps, crc, reserved = struct.unpack("<6I", blob[:24])
    assert (magic, sig_, size, steps, reserved) == (0x31535454, sig, S, 3, 0)
    assert crc == _seal_crc(blob)                                   # an independent CRC: zlib's
    rc, ctx = _restore(hm, blob)
    assert rc == 0 and ctx.steps == 3
    assert _restore(hm, _with(blob, 0, 0x31535454))[0] == 0        # re-sealing here gives the same blob
    # garbage is refused, whatever the header says
    rng = np.random.default_rng(5)
    for off in (24, S // 2, S - 1, 12, 20):                        # payload, steps, the reserved word
        b = bytearray(blob)
        b[off] ^= 1 << int(rng.integers(0, 8))
        assert _restore(hm, bytes(b))[0] == -5, off
    assert _restore(hm, _with(blob, 16, crc ^ 1, reseal=False))[0] == -5          # wrong CRC
    # a wrong signature, size or magic is refused even with a CRC that matches it
    assert _restore(hm, _with(blob, 4, sig ^ 0x80))[0] == -5                       # another model
    assert _restore(hm, _with(blob, 8, S - 8))[0] == -5                            # another size
    assert _restore(hm, _with(blob, 0, 0x31535455))[0] == -5                       # not a state blob
    assert _restore(hm, rng.integers(0, 256, S).astype(np.uint8).tobytes())[0] == -5
    assert _restore(hm, bytes(S))[0] == -5
    # training changes the blob without re-sealing: an unsealed blob is refused
    hm.train_step(x[3], y[3])
    assert _restore(hm, hm.state_bytes())[0] == -5
    assert hm.lib.m_state_seal(hm.ctx) == 0 and _restore(hm, hm.state_bytes())[0] == 0
    # a fresh state (init without restore, or reset) is sealed
    assert hm.lib.m_reset(hm.ctx) == 0 and _restore(hm, hm.state_bytes())[0] == 0


def test_load_of_a_bad_blob_resets_and_of_nothing_keeps_the_state(model):
    """<name>_load: nothing in flash -> error, the state as it was; a slot that verifies but
    holds an unsealed (or foreign) blob -> error, the initial state, never the bytes loaded."""
    hm, x, y = model
    ffi, lib, S = hm.ffi, hm.lib, hm.facts["state"]
    slot = (S + 24 + 255) // 256 * 256
    flash = bytearray(b"\xff" * (2 * slot))

    @ffi.callback("int(void *, uint32_t, uint32_t)", error=-1)
    def erase(user, off, size):
        flash[off:off + size] = b"\xff" * size
        return 0

    @ffi.callback("int(void *, uint32_t, const uint8_t *, uint32_t)", error=-1)
    def write(user, off, data, size):
        flash[off:off + size] = bytes(a & b for a, b in zip(flash[off:off + size], ffi.buffer(data, size)[:]))
        return 0

    @ffi.callback("int(void *, uint32_t, uint8_t *, uint32_t)", error=-1)
    def read(user, off, data, size):
        ffi.memmove(data, bytes(flash[off:off + size]), size)
        return 0

    dev = ffi.new("tt_flash *", {"erase": erase, "write": write, "read": read, "user": ffi.NULL, "slot_size": slot})
    assert lib.m_reset(hm.ctx) == 0
    fresh = hm.state_bytes()
    for i in range(2):
        hm.train_step(x[i], y[i])
    trained = hm.state_bytes()
    assert lib.m_load(hm.ctx, dev) == -5 and hm.state_bytes() == trained and hm.ctx.steps == 2
    unsealed = _with(trained, 16, _seal_crc(trained) ^ 1, reseal=False)
    buf = ffi.new("uint8_t[]", unsealed)
    assert lib.tt_state_save(dev, buf, S, hm.facts["signature"]) == 0     # a valid slot, a bad blob
    assert lib.m_load(hm.ctx, dev) == -5
    assert hm.state_bytes() == fresh and hm.ctx.steps == 0
    assert lib.m_save(hm.ctx, dev) == 0
    hm.train_step(x[0], y[0])
    assert lib.m_load(hm.ctx, dev) == 0 and hm.state_bytes() == fresh
    # _save seals a state that training left unsealed; the blob it loads restores in RAM too
    hm.train_step(x[1], y[1])
    assert lib.m_save(hm.ctx, dev) == 0
    saved = hm.state_bytes()
    assert struct.unpack("<I", saved[16:20])[0] == _seal_crc(saved)
    assert lib.m_reset(hm.ctx) == 0 and lib.m_load(hm.ctx, dev) == 0
    assert hm.state_bytes() == saved and hm.ctx.steps == 1 and _restore(hm, saved)[0] == 0
