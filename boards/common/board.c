/* board.c: the porting layer (board.h) for the QEMU MPS2 boards: semihosting
 * output and exit status, a SysTick instruction counter, fault reports. */
#include "board.h"

#include <stdint.h>

#define SEMIHOST_SYS_WRITE0 0x04
#define SEMIHOST_SYS_EXIT_EXTENDED 0x20
#define ADP_STOPPED_APPLICATION_EXIT 0x20026u

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define SCB_CFSR (*(volatile uint32_t *)0xE000ED28u)
#define SCB_HFSR (*(volatile uint32_t *)0xE000ED2Cu)
#define SCB_MMFAR (*(volatile uint32_t *)0xE000ED34u)
#define SCB_BFAR (*(volatile uint32_t *)0xE000ED38u)

#define SYSTICK_RELOAD 0x00FFFFFFu       /* 24 bits: a wrap every 671 M instructions */
#define INSTRUCTIONS_PER_TICK 40u        /* 25 MHz SysTick, 1 ns per instruction */

void SysTick_Handler(void);
void board_fault_exit(uint32_t ipsr, uint32_t sp);

extern uint32_t _sstack[];                /* the linker script's stack region */

static volatile uint32_t systick_wraps;

static int semihost(int op, const void *arg)
{
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void board_print(const char *text)
{
    (void)semihost(SEMIHOST_SYS_WRITE0, text);
}

void board_exit(int code)
{
    const uint32_t block[2] = {ADP_STOPPED_APPLICATION_EXIT, (uint32_t)code};
    for (;;) {
        (void)semihost(SEMIHOST_SYS_EXIT_EXTENDED, block);
    }
}

void SysTick_Handler(void)
{
    systick_wraps = systick_wraps + 1u;
}

void board_init(void)
{
    systick_wraps = 0u;
    SYST_CSR = 0u;
    SYST_RVR = SYSTICK_RELOAD;
    SYST_CVR = 0u;
    SYST_CSR = 7u;              /* enable, interrupt on wrap, processor clock */
    while (SYST_CVR == 0u) {    /* the counter loads the reload value on its first tick */
    }
}

uint64_t board_instructions(void)
{
    uint32_t w, v;
    do {                        /* a wrap between the reads, or at the tick of the wrap: read again */
        w = systick_wraps;
        v = SYST_CVR;
    } while (w != systick_wraps || v == 0u);
    return ((uint64_t)w * (SYSTICK_RELOAD + 1u) + (SYSTICK_RELOAD - v)) * INSTRUCTIONS_PER_TICK;
}

static char *put_hex(char *p, uint32_t v)
{
    int i;
    *p++ = '0';
    *p++ = 'x';
    for (i = 7; i >= 0; --i) {
        *p++ = "0123456789abcdef"[(v >> (4 * i)) & 0xFu];
    }
    return p;
}

/* Reached from Default_Handler on a fresh stack. */
void board_fault_exit(uint32_t ipsr, uint32_t sp)
{
    char line[128], *p = line;
    const char *s;
    const uint32_t exc = ipsr & 0x1FFu;
    for (s = "fault: exception "; *s != '\0'; ++s) {
        *p++ = *s;
    }
    *p++ = (char)('0' + (exc / 10u) % 10u);
    *p++ = (char)('0' + exc % 10u);
    for (s = " cfsr "; *s != '\0'; ++s) {
        *p++ = *s;
    }
    p = put_hex(p, SCB_CFSR);
    for (s = " hfsr "; *s != '\0'; ++s) {
        *p++ = *s;
    }
    p = put_hex(p, SCB_HFSR);
    for (s = " bfar "; *s != '\0'; ++s) {
        *p++ = *s;
    }
    p = put_hex(p, SCB_BFAR);
    for (s = " sp "; *s != '\0'; ++s) {
        *p++ = *s;
    }
    p = put_hex(p, sp);
    /* the stack sits at the bottom of RAM: an overflow leaves SP below it */
    if (sp < (uint32_t)(uintptr_t)_sstack + 32u || board_stack_peak() >= board_stack_size()) {
        for (s = " (the stack overflowed its region)"; *s != '\0'; ++s) {
            *p++ = *s;
        }
    }
    *p++ = '\n';
    *p = '\0';
    board_print(line);
    board_exit(200 + (int)(exc < 56u ? exc : 55u));
}
