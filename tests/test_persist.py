"""Trained weights survive a power cut: runtime_c/src/tt_persist.c saves the state blob
into one of two flash slots (payload, then a header with sequence number, model
signature and CRC).  Cutting the power at every single byte of a save, the next boot
restores exactly the old or exactly the new state, never a mix or garbage."""
import zlib

import numpy as np
import pytest

from .cbuild import ROOT, build

CDEF = """
void shim_reset(uint32_t slot_size);
void shim_budget(long bytes);
int shim_save(const uint8_t *state, uint32_t size, uint32_t signature);
int shim_load(uint8_t *state, uint32_t size, uint32_t signature);
uint32_t tt_crc32(uint32_t crc, const uint8_t *data, uint32_t size);
"""
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


def test_power_cut_at_every_byte_gives_old_or_new(lib):
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
            rc_save = lib.shim_save(_buf(ffi, new), SIZE, SIG)
            lib.shim_budget(-1)                             # reboot
            rc, got = _load(ffi, lib)
            assert rc == 0, cut
            if np.array_equal(got, new):
                seen["new"] += 1
                # only once the payload and the CRC-covered header fields (all but the reserved word) are written
                assert cut >= SLOT + SIZE + 20, cut
            else:
                assert np.array_equal(got, old), f"cut after {cut} bytes restored a mix"
                assert rc_save != 0 and cut < total, cut
                seen["old"] += 1
    assert seen["old"] > 0 and seen["new"] > 0
