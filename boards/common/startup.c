/* startup.c: vector table and reset handler for the Cortex-M boards (M4F, M7).
 *
 * Reset: enable the FPU (CPACR) before any floating-point instruction, copy
 * .data from flash, zero .bss, paint the unused stack with a pattern (so the
 * peak can be measured), call main().  Every fault and unexpected interrupt
 * ends the program with exit status 200 + exception number (3 HardFault,
 * 4 MemManage, 5 BusFault, 6 UsageFault), after resetting the stack pointer:
 * a stack overflow runs off the bottom of RAM (the stack sits below .data and
 * .bss, see cortex-m.ld), and the handler must not need that stack. */
#include <stdint.h>

#include "board.h"

#define TT_STACK_PAINT 0xDEADBEEFu

extern uint32_t _sidata[], _sdata[], _edata[], _sbss[], _ebss[], _sstack[], _estack[];

int main(void);
void Reset_Handler(void);
void board_reset_c(void);
void board_fault_exit(uint32_t ipsr, uint32_t sp);
void Default_Handler(void);
void SysTick_Handler(void);

/* Naked: no prologue, no stack use.  FPU first: CP10 and CP11 full access. */
__attribute__((naked, noreturn)) void Reset_Handler(void)
{
    __asm__ volatile(
        "ldr r0, =0xE000ED88\n"
        "ldr r1, [r0]\n"
        "orr r1, r1, #(0xF << 20)\n"
        "str r1, [r0]\n"
        "dsb\n"
        "isb\n"
        "b board_reset_c\n");
}

void board_reset_c(void)
{
    uint32_t *src = _sidata, *dst = _sdata;
    volatile uint32_t *p;
    uint32_t sp;
    while (dst < _edata) {
        *dst++ = *src++;
    }
    for (dst = _sbss; dst < _ebss; ++dst) {
        *dst = 0u;
    }
    /* volatile: never turned into a memset call, whose frame would sit in the
     * area being painted */
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (p = _sstack; (uint32_t)p < sp - 64u; ++p) {
        *p = TT_STACK_PAINT;
    }
    board_exit(main());
}

uint32_t board_stack_peak(void)
{
    const volatile uint32_t *p = _sstack;
    while (p < _estack && *p == TT_STACK_PAINT) {
        ++p;
    }
    return (uint32_t)((uintptr_t)_estack - (uintptr_t)p);
}

uint32_t board_stack_size(void)
{
    return (uint32_t)((uintptr_t)_estack - (uintptr_t)_sstack);
}

/* A fresh stack at the top of the stack region, then report IPSR and the
 * stack pointer at the fault. */
__attribute__((naked, noreturn)) void Default_Handler(void)
{
    __asm__ volatile(
        "mov r1, sp\n"
        "ldr r0, =_estack\n"
        "mov sp, r0\n"
        "mrs r0, ipsr\n"
        "b board_fault_exit\n");
}

typedef void (*tt_vector)(void);

/* Core exceptions only: the program enables no peripheral interrupt. */
__attribute__((section(".isr_vector"), used)) const tt_vector tt_vectors[16] = {
    (tt_vector)(uintptr_t)_estack,  /* 0: initial main stack pointer */
    Reset_Handler,                   /* 1 */
    Default_Handler,                 /* 2: NMI */
    Default_Handler,                 /* 3: HardFault */
    Default_Handler,                 /* 4: MemManage */
    Default_Handler,                 /* 5: BusFault */
    Default_Handler,                 /* 6: UsageFault */
    0, 0, 0, 0,                      /* 7-10: reserved */
    Default_Handler,                 /* 11: SVCall */
    Default_Handler,                 /* 12: DebugMonitor */
    0,                               /* 13: reserved */
    Default_Handler,                 /* 14: PendSV */
    SysTick_Handler,                 /* 15: SysTick (board.c) */
};
