/* board_hw.h: what a real board adds to board_hw.c (the porting layer of
 * board.h for boards on a desk, not under QEMU): its console.
 *
 * board_hw.c implements board.h with the core's own peripherals (DWT cycle
 * counter, SysTick, ITM stimulus port 0, the exit status word) and writes
 * every line both to ITM (when a debugger has enabled it) and to the board's
 * console, a UART on the debug probe's virtual COM port, given by one file per
 * board (boards/<board>/console.c).  The console must never wait forever: a
 * board without a terminal attached still runs to its end. */
#ifndef TT_BOARD_HW_H
#define TT_BOARD_HW_H

#include <stdint.h>

/** Set up the UART (clocks, pins, 115200 8N1).  Called by board_init(), and
 * by the first write if a fault comes before it. */
void board_console_init(void);

/** Send n bytes; returns when they are handed to the UART (or after a bounded
 * wait if it does not respond). */
void board_console_write(const char *text, uint32_t n);

/** Wait (bounded) until the last byte has left the UART. */
void board_console_flush(void);

#endif /* TT_BOARD_HW_H */
