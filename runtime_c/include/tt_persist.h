/**
 * @file tt_persist.h
 * @brief Saving the learned state blob to flash so that a power cut at any moment
 *        leaves either the old or the new state, never a mix.
 *
 * Two slots of `slot_size` bytes each (slot k at offset k * slot_size). A save
 * goes to the slot that does not hold the newest valid state: erase it, write the
 * payload, then write a 24-byte header at the end of the slot (magic, sequence
 * number, payload size, model signature, CRC-32 of the payload and those fields).
 * At boot `tt_state_load` takes the valid slot with the highest sequence number.
 * A cut during the payload or the header leaves that slot invalid (wrong magic or
 * CRC), so the other slot, the previous save, wins.
 *
 * Flaky flash (a read that fails, or returns a flipped bit once):
 * - `tt_state_save` picks the slot to overwrite only from reads that agree: it checks
 *   both slots twice, and a failed read or two checks that disagree return an error
 *   before anything is erased, so the only valid copy is never the one overwritten.
 *   After writing, it reads the new copy back and checks it.
 * - `tt_state_load` first verifies the slots (header and CRC) without touching `state`,
 *   then copies the newest verified slot into `state` and checks the CRC of exactly the
 *   bytes it copied (up to TT_PERSIST_READ_TRIES reads per slot, then the other valid
 *   slot).  `state` receives only bytes that passed that check: on TT_PERSIST_ERR_EMPTY
 *   and TT_PERSIST_ERR_IO it is unchanged; on TT_PERSIST_ERR_READ (a verified slot read
 *   back differently every time) it is zeroed.
 *
 * Flash access goes through a small struct of caller-supplied functions (no weak
 * symbols): erase (to 0xFF), write (program bytes), read; each returns 0 on success.
 */
#ifndef TT_PERSIST_H
#define TT_PERSIST_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int (*erase)(void *user, uint32_t offset, uint32_t size);
    int (*write)(void *user, uint32_t offset, const uint8_t *data, uint32_t size);
    int (*read)(void *user, uint32_t offset, uint8_t *data, uint32_t size);
    void *user;
    uint32_t slot_size;   /* >= payload size + TT_PERSIST_HEADER_SIZE */
} tt_flash;

#define TT_PERSIST_HEADER_SIZE 24u
#define TT_PERSIST_MAGIC 0x54544653u   /* "TTFS" */
#define TT_PERSIST_READ_TRIES 2        /* reads of a slot before tt_state_load gives it up */

enum {
    TT_PERSIST_OK = 0,
    TT_PERSIST_ERR_ARG = -1,     /* NULL pointer or a payload that does not fit a slot */
    TT_PERSIST_ERR_IO = -2,      /* a flash function failed (save: if a read, nothing was erased) */
    TT_PERSIST_ERR_EMPTY = -3,   /* no valid state for this model in either slot */
    TT_PERSIST_ERR_READ = -4     /* reads of the same bytes disagreed (save: nothing erased;
                                    load: `state` zeroed) */
};

/** CRC-32 (IEEE 802.3, reflected, as zlib.crc32) of `size` bytes, continuing from `crc`. */
uint32_t tt_crc32(uint32_t crc, const uint8_t *data, uint32_t size);
/** Save `size` bytes of `state` for the model `signature`. */
int tt_state_save(const tt_flash *f, const uint8_t *state, uint32_t size, uint32_t signature);
/** Load the newest valid state of the model `signature` (exactly `size` bytes) into `state`;
 *  `state` is unchanged unless the result is TT_PERSIST_OK or TT_PERSIST_ERR_READ (zeroed). */
int tt_state_load(const tt_flash *f, uint8_t *state, uint32_t size, uint32_t signature);

#ifdef __cplusplus
}
#endif

#endif /* TT_PERSIST_H */
