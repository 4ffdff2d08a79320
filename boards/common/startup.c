/* startup.c: vector table and reset handler for the Cortex-M boards (M4F, M7).
 *
 * Reset: enable the FPU (CPACR) before any floating-point instruction, copy
 * .data from flash, zero .bss, paint the unused stack with a pattern (so the
 * peak can be measured), call main().  Every fault and unexpected interrupt
 * ends the program with exit status 200 + exception number (3 HardFault,
 * 4 MemManage, 5 BusFault, 6 UsageFault), after resetting the stack pointer:
 * a stack overflow runs into the guard below the stack (the stack sits below
 * .data and .bss, see cortex-m.ld), and the handler must not need that stack.
 *
 * The MPU guard (PMSAv7, Cortex-M4/M7), programmed first thing at reset:
 *   region 0  the board's flash (cortex-m.ld: ORIGIN/LENGTH(FLASH)): read-only,
 *             executable, normal memory write-through
 *   region 1  the board's SRAM budget (ORIGIN/LENGTH(RAM)): read/write,
 *             execute-never, normal memory write-back
 *   region 2  0x40000000-0x5FFFFFFF, the peripherals of the parts and of the
 *             MPS2 boards: read/write, execute-never, device memory
 *   region 3  the 32-byte stack guard at the bottom of the stack: no access
 * Background region off (PRIVDEFENA = 0): anything else, for example RAM past
 * the budget (QEMU's MPS2 boards have 4 MiB), raises MemManage.  The system
 * space (0xE0000000 up: SCB, SysTick, DWT, ITM) always uses the default map.
 * MemManage, BusFault and UsageFault are enabled so they report their own
 * exception number instead of escalating to HardFault.  A region whose size
 * is not a power of two (the STM32F746's 320 KB) is the next power of two with
 * its top eighths disabled (subregions), rounded up to an eighth. */
#include <stdint.h>

#include "board.h"

#define TT_STACK_PAINT 0xDEADBEEFu

#define SCB_VTOR (*(volatile uint32_t *)0xE000ED08u)
#define SCB_SHCSR (*(volatile uint32_t *)0xE000ED24u)
#define MPU_TYPE (*(volatile uint32_t *)0xE000ED90u)
#define MPU_CTRL (*(volatile uint32_t *)0xE000ED94u)
#define MPU_RNR (*(volatile uint32_t *)0xE000ED98u)
#define MPU_RBAR (*(volatile uint32_t *)0xE000ED9Cu)
#define MPU_RASR (*(volatile uint32_t *)0xE000EDA0u)

#define SHCSR_MEMFAULTENA (1u << 16)
#define SHCSR_BUSFAULTENA (1u << 17)
#define SHCSR_USGFAULTENA (1u << 18)

/* RASR fields (ARMv7-M ARM, B3.5.9) */
#define RASR_XN (1u << 28)
#define RASR_AP_NONE (0u << 24)
#define RASR_AP_RW (3u << 24)
#define RASR_AP_RO (6u << 24)
#define RASR_NORMAL_WT (1u << 17)                           /* TEX 000, C 1, B 0 */
#define RASR_NORMAL_WB ((1u << 19) | (1u << 17) | (1u << 16)) /* TEX 001, C 1, B 1: write-back, allocate */
#define RASR_DEVICE ((1u << 18) | (1u << 16))               /* TEX 000, C 0, B 1, shareable */
#define RASR_ENABLE 1u

#define MPU_REGION_FLASH 0u
#define MPU_REGION_RAM 1u
#define MPU_REGION_PERIPH 2u
#define MPU_REGION_GUARD 3u
#define PERIPH_BASE 0x40000000u
#define PERIPH_SIZE 0x20000000u

extern uint32_t _sidata[], _sdata[], _edata[], _sbss[], _ebss[], _sstack[], _estack[], _sguard[];
extern uint32_t __flash_start__[], __flash_size__[], __ram_start__[], __ram_size__[], __stack_guard_size__[];

typedef void (*tt_vector)(void);
typedef struct {
    tt_vector v[16];
} tt_vector_table_t;

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

/* One MPU region over [base, base + size): RASR with SIZE and, when size is
 * not a power of two, the subregions past it disabled.  base must be aligned
 * to the power of two that covers size (true for the boards' origins). */
static void mpu_region(uint32_t number, uint32_t base, uint32_t size, uint32_t attributes)
{
    uint32_t log2 = 5u, srd = 0u, eighth, used;
    while (log2 < 32u && (1u << log2) < size) {
        ++log2;
    }
    if (log2 >= 8u && (1u << log2) != size) {
        eighth = (1u << log2) / 8u;
        used = (size + eighth - 1u) / eighth;
        srd = (0xFFu << used) & 0xFFu;
    }
    MPU_RNR = number;
    MPU_RBAR = base & ~31u;
    MPU_RASR = attributes | (srd << 8) | ((log2 - 1u) << 1) | RASR_ENABLE;
}

static void mpu_setup(void)
{
    uint32_t regions = (MPU_TYPE >> 8) & 0xFFu, r;
    if (regions < 4u) {            /* no MPU (or too small): the link-time budget only */
        return;
    }
    MPU_CTRL = 0u;
    __asm__ volatile("dsb\n" "isb\n" ::: "memory");
    mpu_region(MPU_REGION_FLASH, (uint32_t)(uintptr_t)__flash_start__, (uint32_t)(uintptr_t)__flash_size__,
               RASR_AP_RO | RASR_NORMAL_WT);
    mpu_region(MPU_REGION_RAM, (uint32_t)(uintptr_t)__ram_start__, (uint32_t)(uintptr_t)__ram_size__,
               RASR_XN | RASR_AP_RW | RASR_NORMAL_WB);
    mpu_region(MPU_REGION_PERIPH, PERIPH_BASE, PERIPH_SIZE, RASR_XN | RASR_AP_RW | RASR_DEVICE);
    mpu_region(MPU_REGION_GUARD, (uint32_t)(uintptr_t)_sguard, (uint32_t)(uintptr_t)__stack_guard_size__,
               RASR_XN | RASR_AP_NONE | RASR_NORMAL_WB);
    for (r = MPU_REGION_GUARD + 1u; r < regions; ++r) {
        MPU_RNR = r;
        MPU_RASR = 0u;
    }
    SCB_SHCSR |= SHCSR_MEMFAULTENA | SHCSR_BUSFAULTENA | SHCSR_USGFAULTENA;
    MPU_CTRL = 1u;                 /* ENABLE; HFNMIENA 0, PRIVDEFENA 0: no background region */
    __asm__ volatile("dsb\n" "isb\n" ::: "memory");
}

extern const tt_vector_table_t tt_vectors;

void board_reset_c(void)
{
    uint32_t *src = _sidata, *dst = _sdata;
    volatile uint32_t *p;
    uint32_t sp;
    SCB_VTOR = (uint32_t)(uintptr_t)&tt_vectors;    /* the table at the flash origin (0x08000000 on an STM32) */
    mpu_setup();
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

/* A fresh stack at the top of the stack region, the MPU off (the program
 * ends here; its report must not fault again), then report IPSR and the
 * stack pointer at the fault. */
__attribute__((naked, noreturn)) void Default_Handler(void)
{
    __asm__ volatile(
        "mov r1, sp\n"
        "ldr r0, =_estack\n"
        "mov sp, r0\n"
        "ldr r0, =0xE000ED94\n"   /* MPU_CTRL = 0: the report must not fault again */
        "movs r2, #0\n"
        "str r2, [r0]\n"
        "dsb\n"
        "isb\n"
        "mrs r0, ipsr\n"
        "b board_fault_exit\n");
}

/* Core exceptions only: the program enables no peripheral interrupt. */
__attribute__((section(".isr_vector"), used)) const tt_vector_table_t tt_vectors = {{
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
}};
