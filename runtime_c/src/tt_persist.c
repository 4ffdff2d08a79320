/**
 * @file tt_persist.c
 * @brief Two-slot, power-cut-safe saving of the learned state (see tt_persist.h).
 */
#include "tt_persist.h"

#include <stddef.h>

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

/* The header: magic, seq, size, signature, crc, reserved (0). The CRC covers the payload
 * and then the 16 header bytes before it. */
static int slot_valid(const tt_flash *f, uint32_t slot, uint32_t size, uint32_t signature, uint32_t *seq)
{
    uint8_t h[TT_PERSIST_HEADER_SIZE];
    uint8_t buf[64];
    const uint32_t base = slot * f->slot_size;
    uint32_t crc = 0u;
    if (f->read(f->user, base + f->slot_size - TT_PERSIST_HEADER_SIZE, h, TT_PERSIST_HEADER_SIZE) != 0) {
        return 0;
    }
    if (get32(h) != TT_PERSIST_MAGIC || get32(h + 8) != size || get32(h + 12) != signature) {
        return 0;
    }
    for (uint32_t off = 0; off < size; off += (uint32_t)sizeof buf) {
        const uint32_t n = (size - off < (uint32_t)sizeof buf) ? size - off : (uint32_t)sizeof buf;
        if (f->read(f->user, base + off, buf, n) != 0) {
            return 0;
        }
        crc = tt_crc32(crc, buf, n);
    }
    crc = tt_crc32(crc, h, 16u);
    if (crc != get32(h + 16)) {
        return 0;
    }
    *seq = get32(h + 4);
    return 1;
}

/* -> the slot holding the newest valid state (0 or 1), or -1 */
static int newest(const tt_flash *f, uint32_t size, uint32_t signature, uint32_t *seq)
{
    uint32_t s0 = 0u, s1 = 0u;
    const int v0 = slot_valid(f, 0u, size, signature, &s0);
    const int v1 = slot_valid(f, 1u, size, signature, &s1);
    if (v0 && (!v1 || (int32_t)(s0 - s1) > 0)) {
        *seq = s0;
        return 0;
    }
    if (v1) {
        *seq = s1;
        return 1;
    }
    return -1;
}

int tt_state_save(const tt_flash *f, const uint8_t *state, uint32_t size, uint32_t signature)
{
    uint8_t h[TT_PERSIST_HEADER_SIZE];
    uint32_t seq = 0u;
    if (f == NULL || state == NULL || f->erase == NULL || f->write == NULL || f->read == NULL ||
        f->slot_size < TT_PERSIST_HEADER_SIZE || size > f->slot_size - TT_PERSIST_HEADER_SIZE) {
        return TT_PERSIST_ERR_ARG;
    }
    const int cur = newest(f, size, signature, &seq);
    const uint32_t slot = (cur == 0) ? 1u : 0u;
    const uint32_t base = slot * f->slot_size;
    put32(h, TT_PERSIST_MAGIC);
    put32(h + 4, cur < 0 ? 1u : seq + 1u);
    put32(h + 8, size);
    put32(h + 12, signature);
    put32(h + 16, tt_crc32(tt_crc32(0u, state, size), h, 16u));
    put32(h + 20, 0u);
    if (f->erase(f->user, base, f->slot_size) != 0 || f->write(f->user, base, state, size) != 0 ||
        f->write(f->user, base + f->slot_size - TT_PERSIST_HEADER_SIZE, h, TT_PERSIST_HEADER_SIZE) != 0) {
        return TT_PERSIST_ERR_IO;
    }
    return TT_PERSIST_OK;
}

int tt_state_load(const tt_flash *f, uint8_t *state, uint32_t size, uint32_t signature)
{
    uint32_t seq = 0u;
    if (f == NULL || state == NULL || f->read == NULL || f->slot_size < TT_PERSIST_HEADER_SIZE ||
        size > f->slot_size - TT_PERSIST_HEADER_SIZE) {
        return TT_PERSIST_ERR_ARG;
    }
    const int slot = newest(f, size, signature, &seq);
    if (slot < 0) {
        return TT_PERSIST_ERR_EMPTY;
    }
    if (f->read(f->user, (uint32_t)slot * f->slot_size, state, size) != 0) {
        return TT_PERSIST_ERR_IO;
    }
    return TT_PERSIST_OK;
}
