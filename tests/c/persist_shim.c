/* A simulated NOR flash for tests/test_persist.py: erase sets bytes to 0xFF, a write can
 * only clear bits, and a "power cut" stops every erase/write after `budget` bytes. */
#include <string.h>

#include "tt_persist.h"

#define FLASH_BYTES 65536
static uint8_t flash[FLASH_BYTES];
static long budget = -1;        /* bytes that may still be erased or programmed; -1: no cut */

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
            return -1;
        }
        flash[offset + i] = (uint8_t)(flash[offset + i] & data[i]);
    }
    return 0;
}

static int sim_read(void *user, uint32_t offset, uint8_t *data, uint32_t size)
{
    (void)user;
    memcpy(data, flash + offset, size);
    return 0;
}

static tt_flash dev = {sim_erase, sim_write, sim_read, NULL, 0};

void shim_reset(uint32_t slot_size)
{
    memset(flash, 0xFF, sizeof flash);
    dev.slot_size = slot_size;
    budget = -1;
}

void shim_budget(long bytes) { budget = bytes; }

int shim_save(const uint8_t *state, uint32_t size, uint32_t signature)
{
    return tt_state_save(&dev, state, size, signature);
}

int shim_load(uint8_t *state, uint32_t size, uint32_t signature)
{
    return tt_state_load(&dev, state, size, signature);
}
