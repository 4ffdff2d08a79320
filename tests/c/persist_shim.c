/* A simulated NOR flash for tests/test_persist.py: erase sets bytes to 0xFF, a write can
 * only clear bits, and a "power cut" stops every erase/write after `budget` bytes (the byte
 * being written when the power goes may be half programmed: `tear` keeps some of its bits
 * erased).  Flaky reads: read calls number `from` .. `from + count - 1` fail (and fill their
 * buffer with junk), or the bytes read number `from` .. `from + count - 1` come back XORed
 * with `mask` (one byte: a transient flip, the next read of that byte is right). */
#include <string.h>

#include "tt_persist.h"

#define FLASH_BYTES 65536
static uint8_t flash[FLASH_BYTES];
static long budget = -1;        /* bytes that may still be erased or programmed; -1: no cut */
static uint8_t tear = 0xFF;     /* bits of the cut byte left erased (0xFF: the cut byte is not written) */
static int fault_kind;          /* 0 none, 1 failing read calls, 2 flipped bytes */
static long fault_from, fault_count;
static uint8_t fault_mask;
static long read_calls, read_bytes;

static int take(void)
{
    if (budget == 0) {
        return 0;
    }
    if (budget > 0) {
        --budget;
    }
    return 1;
}

static int sim_erase(void *user, uint32_t offset, uint32_t size)
{
    (void)user;
    for (uint32_t i = 0; i < size; ++i) {
        if (!take()) {
            return -1;
        }
        flash[offset + i] = 0xFF;
    }
    return 0;
}

static int sim_write(void *user, uint32_t offset, const uint8_t *data, uint32_t size)
{
    (void)user;
    for (uint32_t i = 0; i < size; ++i) {
        if (!take()) {
            flash[offset + i] = (uint8_t)(flash[offset + i] & (data[i] | tear));
            return -1;
        }
        flash[offset + i] = (uint8_t)(flash[offset + i] & data[i]);
    }
    return 0;
}

static int sim_read(void *user, uint32_t offset, uint8_t *data, uint32_t size)
{
    const long call = read_calls++;
    (void)user;
    if (fault_kind == 1 && call >= fault_from && call < fault_from + fault_count) {
        memset(data, 0x5A, size);
        return -1;
    }
    memcpy(data, flash + offset, size);
    for (uint32_t i = 0; i < size; ++i, ++read_bytes) {
        if (fault_kind == 2 && read_bytes >= fault_from && read_bytes < fault_from + fault_count) {
            data[i] = (uint8_t)(data[i] ^ fault_mask);
        }
    }
    return 0;
}

static tt_flash dev = {sim_erase, sim_write, sim_read, NULL, 0};

void shim_reset(uint32_t slot_size)
{
    memset(flash, 0xFF, sizeof flash);
    dev.slot_size = slot_size;
    budget = -1;
    tear = 0xFF;
    fault_kind = 0;
    read_calls = read_bytes = 0;
}

void shim_budget(long bytes) { budget = bytes; }

void shim_tear(uint8_t keep_erased) { tear = keep_erased; }

void shim_fault(int kind, long from, long count, uint8_t mask)
{
    fault_kind = kind;
    fault_from = from;
    fault_count = count;
    fault_mask = mask;
    read_calls = read_bytes = 0;
}

long shim_reads(int bytes) { return bytes ? read_bytes : read_calls; }

uint8_t *shim_flash(void) { return flash; }

int shim_save(const uint8_t *state, uint32_t size, uint32_t signature)
{
    return tt_state_save(&dev, state, size, signature);
}

int shim_load(uint8_t *state, uint32_t size, uint32_t signature)
{
    return tt_state_load(&dev, state, size, signature);
}
