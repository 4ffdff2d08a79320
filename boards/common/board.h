/* board.h: the porting layer the tinytrain board programs use (boards/common).
 *
 * Implemented for the QEMU MPS2 Cortex-M boards in board.c: ARM semihosting for
 * output and the exit status, SysTick for an instruction counter, and the
 * stack that startup.c paints at reset.  A real board supplies the same five
 * functions (UART print, a reset or breakpoint for exit, DWT CYCCNT, ...). */
#ifndef TT_BOARD_H
#define TT_BOARD_H

#include <stdint.h>

/** Start the instruction counter (call once, first thing in main). */
void board_init(void);

/** Write a NUL-terminated string to the host console. */
void board_print(const char *text);

/** End the program; under QEMU the emulator exits with status `code` (0..255). */
void board_exit(int code) __attribute__((noreturn));

/** Guest instructions since board_init(), in steps of 40: under QEMU's
 * `-icount shift=0` one instruction is 1 ns and SysTick counts 25 MHz.
 * Without -icount the figure is meaningless. */
uint64_t board_instructions(void);

/** Bytes of the stack region ever used (the painted stack scanned from its
 * bottom), and the size of the region (the linker script's reservation). */
uint32_t board_stack_peak(void);
uint32_t board_stack_size(void);

#endif /* TT_BOARD_H */
