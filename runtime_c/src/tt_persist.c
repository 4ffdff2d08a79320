/**
 * @file tt_persist.c
 * @brief Two-slot, power-cut-safe saving of the learned state (see tt_persist.h).
 */
#include "tt_persist.h"

#include <stddef.h>
#include <string.h>

uint32_t tt_crc32(uint32_t crc, const uint8_t *data, uint32_t size)
{
    crc = ~crc;
    for (uint32_t i = 0; i < size; ++i) {
        crc ^= data[i];
        for (int k = 0; k < 8; ++k) {
            crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
        }
    }
    return ~crc;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

enum { SLOT_IO = -1, SLOT_INVALID = 0, SLOT_VALID = 1 };

/* The header: magic, seq, size, signature, crc, reserved (0). The CRC covers the payload
 * and then the 16 header bytes before it.  Reads the slot's header into h and streams its
 * payload through the CRC: SLOT_VALID, SLOT_INVALID, or SLOT_IO when a read failed (then
 * nothing can be said about the slot). */
static int check_slot(const tt_flash *f, uint32_t slot, uint32_t size, uint32_t signature, uint8_t *h)
{
    uint8_t buf[64];
    const uint32_t base = slot * f->slot_size;
    uint32_t crc = 0u;
    if (f->read(f->user, base + f->slot_size - TT_PERSIST_HEADER_SIZE, h, TT_PERSIST_HEADER_SIZE) != 0) {
        return SLOT_IO;
    }
    if (get32(h) != TT_PERSIST_MAGIC || get32(h + 8) != size || get32(h + 12) != signature) {
        return SLOT_INVALID;
    }
    for (uint32_t off = 0; off < size; off += (uint32_t)sizeof buf) {
        const uint32_t n = (size - off < (uint32_t)sizeof buf) ? size - off : (uint32_t)sizeof buf;
        if (f->read(f->user, base + off, buf, n) != 0) {
            return SLOT_IO;
        }
        crc = tt_crc32(crc, buf, n);
    }
    crc = tt_crc32(crc, h, 16u);
    return crc == get32(h + 16) ? SLOT_VALID : SLOT_INVALID;
}

/* -> the slot holding the newest valid state (0 or 1), or -1 */
static int newest(const int v[2], uint8_t h[2][TT_PERSIST_HEADER_SIZE])
{
    if (v[0] == SLOT_VALID && (v[1] != SLOT_VALID || (int32_t)(get32(h[0] + 4) - get32(h[1] + 4)) > 0)) {
        return 0;
    }
    return v[1] == SLOT_VALID ? 1 : -1;
}

int tt_state_save(const tt_flash *f, const uint8_t *state, uint32_t size, uint32_t signature)
{
    uint8_t h[TT_PERSIST_HEADER_SIZE];
    uint8_t hs[2][2][TT_PERSIST_HEADER_SIZE];
    int v[2][2];
    if (f == NULL || state == NULL || f->erase == NULL || f->write == NULL || f->read == NULL ||
        f->slot_size < TT_PERSIST_HEADER_SIZE || size > f->slot_size - TT_PERSIST_HEADER_SIZE) {
        return TT_PERSIST_ERR_ARG;
    }
    /* Which slot to overwrite is decided only from reads that agree: both slots are checked
     * twice; a failed read, or two checks that disagree (a bit flip on read), and nothing is
     * erased.  A transient flip can make a valid slot look invalid once, never valid. */
    for (int pass = 0; pass < 2; ++pass) {
        for (uint32_t s = 0; s < 2u; ++s) {
            v[pass][s] = check_slot(f, s, size, signature, hs[pass][s]);
            if (v[pass][s] == SLOT_IO) {
                return TT_PERSIST_ERR_IO;
            }
        }
    }
    for (int s = 0; s < 2; ++s) {
        if (v[0][s] != v[1][s] || (v[0][s] == SLOT_VALID && memcmp(hs[0][s], hs[1][s], TT_PERSIST_HEADER_SIZE) != 0)) {
            return TT_PERSIST_ERR_READ;
        }
    }
    const int cur = newest(v[0], hs[0]);
    const uint32_t slot = (cur == 0) ? 1u : 0u;
    const uint32_t base = slot * f->slot_size;
    put32(h, TT_PERSIST_MAGIC);
    put32(h + 4, cur < 0 ? 1u : get32(hs[0][cur] + 4) + 1u);
    put32(h + 8, size);
    put32(h + 12, signature);
    put32(h + 16, tt_crc32(tt_crc32(0u, state, size), h, 16u));
    put32(h + 20, 0u);
    if (f->erase(f->user, base, f->slot_size) != 0 || f->write(f->user, base, state, size) != 0 ||
        f->write(f->user, base + f->slot_size - TT_PERSIST_HEADER_SIZE, h, TT_PERSIST_HEADER_SIZE) != 0) {
        return TT_PERSIST_ERR_IO;
    }
    /* read the new copy back: a write the flash acknowledged but did not program is an error
     * (the other slot still holds the previous state) */
    if (check_slot(f, slot, size, signature, hs[0][slot]) != SLOT_VALID ||
        memcmp(hs[0][slot], h, TT_PERSIST_HEADER_SIZE) != 0) {
        return TT_PERSIST_ERR_IO;
    }
    return TT_PERSIST_OK;
}

int tt_state_load(const tt_flash *f, uint8_t *state, uint32_t size, uint32_t signature)
{
    uint8_t h[2][TT_PERSIST_HEADER_SIZE];
    int v[2];
    int io = 0;
    if (f == NULL || state == NULL || f->read == NULL || f->slot_size < TT_PERSIST_HEADER_SIZE ||
        size > f->slot_size - TT_PERSIST_HEADER_SIZE) {
        return TT_PERSIST_ERR_ARG;
    }
    /* 1. find the valid slots without touching `state` (a slot that fails is checked twice:
     *    one failed or flipped read does not hide the newest copy) */
    for (uint32_t s = 0; s < 2u; ++s) {
        for (int tries = 0; tries < TT_PERSIST_READ_TRIES; ++tries) {
            v[s] = check_slot(f, s, size, signature, h[s]);
            if (v[s] == SLOT_VALID) {
                break;
            }
        }
        io |= v[s] == SLOT_IO;
    }
    const int first = newest(v, h);
    if (first < 0) {
        return io ? TT_PERSIST_ERR_IO : TT_PERSIST_ERR_EMPTY;   /* `state` untouched */
    }
    /* 2. copy a verified slot into `state` and check the CRC of exactly the bytes copied;
     *    newest first, then the other valid slot */
    const int order[2] = {first, 1 - first};
    for (int k = 0; k < 2; ++k) {
        const int s = order[k];
        if (v[s] != SLOT_VALID) {
            continue;
        }
        for (int tries = 0; tries < TT_PERSIST_READ_TRIES; ++tries) {
            if (f->read(f->user, (uint32_t)s * f->slot_size, state, size) == 0 &&
                tt_crc32(tt_crc32(0u, state, size), h[s], 16u) == get32(h[s] + 16)) {
                return TT_PERSIST_OK;
            }
        }
    }
    memset(state, 0, size);                      /* never hand out bytes that failed the check */
    return TT_PERSIST_ERR_READ;
}
