/* board.c: the porting layer (boards/common/board.h) for a Linux user-space
 * target (a phone's application processor), here AArch64 under qemu-user.
 *
 * Output goes to stdout, the exit status is the process's.
 *
 * The instruction counter: qemu-user (QEMU 7.2 `qemu-aarch64`) has no -icount
 * (a system-emulation option), and wall time under a user-mode emulator says
 * nothing about a phone.  So the count comes from icount_plugin.c, a TCG
 * plugin `tinytrain run` loads into qemu-aarch64: board_instructions() reads
 * 8 bytes at TT_ICOUNT_OFFSET of a temporary file, and the plugin writes the
 * number of guest instructions executed there just before that read runs.
 * Without the plugin (plain qemu-aarch64, a real phone) it reads nothing and
 * returns 0; on a phone use clock_gettime(CLOCK_MONOTONIC) or the PMU (perf).
 *
 * The stack peak: board_init() paints BOARD_STACK_PAINT bytes of the stack
 * below its own frame, board_stack_peak() scans the painted area from its
 * bottom.  main() calls board_init() first, so the figure is the stack used
 * below main's frame (the C library's output calls included). */
#define _POSIX_C_SOURCE 200809L
#include "board.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define TT_ICOUNT_OFFSET 0x747400        /* icount_plugin.c */

#define BOARD_STACK_PAINT (64u * 1024u)
#define PAINT_WORD 0xDEADBEEFu

static uintptr_t paint_bottom, paint_top;
static int counter_fd = -1;

/* noinline: its frame (the painted array) lies below board_init's caller */
static __attribute__((noinline)) void paint_stack(void)
{
    volatile uint32_t area[BOARD_STACK_PAINT / 4u];
    uint32_t i;
    for (i = 0; i < BOARD_STACK_PAINT / 4u; ++i) {
        area[i] = PAINT_WORD;
    }
    paint_bottom = (uintptr_t)&area[0];
    paint_top = (uintptr_t)&area[BOARD_STACK_PAINT / 4u];
}

void board_init(void)
{
    FILE *f = tmpfile();
    setvbuf(stdout, NULL, _IOFBF, 1u << 16);
    counter_fd = f != NULL ? fileno(f) : -1;
    paint_stack();
}

void board_print(const char *text)
{
    fputs(text, stdout);
}

void board_exit(int code)
{
    fflush(stdout);
    exit(code);
}

uint64_t board_instructions(void)
{
    uint64_t n = 0u;
    if (counter_fd < 0 || pread(counter_fd, &n, sizeof n, TT_ICOUNT_OFFSET) != (ssize_t)sizeof n) {
        return 0u;
    }
    return n;
}

uint32_t board_stack_peak(void)
{
    /* the painted words lie below every live frame: read them as plain memory */
    const volatile uint32_t *p = (const volatile uint32_t *)paint_bottom;
    while ((uintptr_t)p < paint_top && *p == PAINT_WORD) {
        ++p;
    }
    return (uint32_t)(paint_top - (uintptr_t)p);
}

uint32_t board_stack_size(void)
{
    return BOARD_STACK_PAINT;
}
