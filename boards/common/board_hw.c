/* board_hw.c: the porting layer (board.h) for real Cortex-M4/M7 boards
 * (stm32f746g-disco, nrf52840-dk): no semihosting, nothing that stops the core
 * when no debugger is attached.
 *
 *   board_print         each line to the board's console (UART on the probe's
 *                       virtual COM port, boards/<board>/console.c) and, when
 *                       a debugger has enabled ITM and stimulus port 0, to ITM
 *                       (SWO); both with bounded waits
 *   board_instructions  CPU cycles from the DWT cycle counter (DEMCR.TRCENA,
 *                       DWT_CTRL.CYCCNTENA), extended to 64 bits by SysTick
 *                       every 2^24 cycles: on a real board "instr" is cycles
 *   board_exit          the status in tt_exit_status (a RAM symbol: word 0 the
 *                       magic 0x54545845 "TTXE" once the program has ended,
 *                       word 1 the status), the console flushed, then BKPT if a
 *                       debugger is attached (DHCSR.C_DEBUGEN; without one a
 *                       BKPT would be a HardFault) or an endless loop
 *   board_fault_exit    a fault report line, then board_exit(200 + exception)
 *
 * On a Cortex-M7 (CPUID part 0xC27) board_init also turns on the instruction
 * and data caches (invalidate by set/way, then CCR.IC/DC), as any M7
 * application does; the MPU (startup.c) maps the SRAM write-back. */
#include "board.h"
#include "board_hw.h"

#include <stdint.h>

#define REG(addr) (*(volatile uint32_t *)(addr))

#define SCB_CPUID REG(0xE000ED00u)
#define SCB_CCR REG(0xE000ED14u)
#define SCB_CFSR REG(0xE000ED28u)
#define SCB_HFSR REG(0xE000ED2Cu)
#define SCB_MMFAR REG(0xE000ED34u)
#define SCB_BFAR REG(0xE000ED38u)
#define SCB_CCSIDR REG(0xE000ED80u)
#define SCB_CSSELR REG(0xE000ED84u)
#define SCB_ICIALLU REG(0xE000EF50u)
#define SCB_DCISW REG(0xE000EF60u)
#define CCR_DC (1u << 16)
#define CCR_IC (1u << 17)

#define DHCSR REG(0xE000EDF0u)
#define DEMCR REG(0xE000EDFCu)
#define DHCSR_C_DEBUGEN 1u
#define DEMCR_TRCENA (1u << 24)

#define DWT_CTRL REG(0xE0001000u)
#define DWT_CYCCNT REG(0xE0001004u)
#define DWT_LAR REG(0xE0001FB0u)
#define DWT_CTRL_CYCCNTENA 1u
#define DWT_CTRL_NOCYCCNT (1u << 25)
#define CORESIGHT_UNLOCK 0xC5ACCE55u

#define ITM_PORT0 REG(0xE0000000u)
#define ITM_TER REG(0xE0000E00u)
#define ITM_TCR REG(0xE0000E80u)
#define ITM_TCR_ITMENA 1u

#define SYST_CSR REG(0xE000E010u)
#define SYST_RVR REG(0xE000E014u)
#define SYST_CVR REG(0xE000E018u)
#define SYSTICK_RELOAD 0x00FFFFFFu

#define CPUID_PARTNO_M7 0xC27u
#define TT_EXIT_MAGIC 0x54545845u     /* "TTXE" */
#define ITM_SPIN_LIMIT 100000u

void SysTick_Handler(void);
void board_fault_exit(uint32_t ipsr, uint32_t sp);

extern uint32_t _sstack[];

/* Read by the host through the debug probe (its address: `arm-none-eabi-nm
 * firmware.elf | grep tt_exit_status`): {TT_EXIT_MAGIC, status} after exit. */
volatile uint32_t tt_exit_status[2];

static volatile uint32_t cycles_high, cycles_last;

/* CYCCNT extended to 64 bits.  Called from SysTick every 2^24 cycles and from
 * board_instructions with interrupts masked, so it sees every wrap. */
static uint64_t cycles_update(void)
{
    const uint32_t v = DWT_CYCCNT;
    if (v < cycles_last) {
        cycles_high = cycles_high + 1u;
    }
    cycles_last = v;
    return ((uint64_t)cycles_high << 32) | v;
}

void SysTick_Handler(void)
{
    (void)cycles_update();
}

static void caches_on(void)
{
    uint32_t ccsidr, sets, ways, set, way, line_log2, way_shift;
    if (((SCB_CPUID >> 4) & 0xFFFu) != CPUID_PARTNO_M7 || (SCB_CCR & (CCR_IC | CCR_DC)) != 0u) {
        return;
    }
    __asm__ volatile("dsb\n" "isb\n" ::: "memory");
    SCB_ICIALLU = 0u;
    __asm__ volatile("dsb\n" "isb\n" ::: "memory");
    SCB_CCR |= CCR_IC;
    __asm__ volatile("dsb\n" "isb\n" ::: "memory");

    SCB_CSSELR = 0u;                               /* level 1 data cache */
    __asm__ volatile("dsb\n" ::: "memory");
    ccsidr = SCB_CCSIDR;
    sets = ((ccsidr >> 13) & 0x7FFFu) + 1u;
    ways = ((ccsidr >> 3) & 0x3FFu) + 1u;
    line_log2 = (ccsidr & 7u) + 4u;                /* log2 of the line size in bytes */
    way_shift = ways > 1u ? (uint32_t)__builtin_clz(ways - 1u) : 31u;
    for (set = 0u; set < sets; ++set) {
        for (way = 0u; way < ways; ++way) {
            SCB_DCISW = (way << way_shift) | (set << line_log2);
        }
    }
    __asm__ volatile("dsb\n" ::: "memory");
    SCB_CCR |= CCR_DC;
    __asm__ volatile("dsb\n" "isb\n" ::: "memory");
}

void board_init(void)
{
    tt_exit_status[0] = 0u;
    tt_exit_status[1] = 0u;
    caches_on();
    board_console_init();

    DEMCR |= DEMCR_TRCENA;
    DWT_LAR = CORESIGHT_UNLOCK;                    /* needed on the Cortex-M7, ignored where unlocked */
    DWT_CYCCNT = 0u;
    DWT_CTRL |= DWT_CTRL_CYCCNTENA;
    cycles_high = 0u;
    cycles_last = 0u;

    SYST_CSR = 0u;
    SYST_RVR = SYSTICK_RELOAD;
    SYST_CVR = 0u;
    SYST_CSR = 7u;                                 /* enable, interrupt, processor clock */
    if ((DWT_CTRL & DWT_CTRL_NOCYCCNT) != 0u) {
        board_print("warning: this core has no DWT cycle counter: instr reads 0\n");
    }
}

uint64_t board_instructions(void)
{
    uint32_t primask;
    uint64_t now;
    __asm__ volatile("mrs %0, primask\n" "cpsid i\n" : "=r"(primask) :: "memory");
    now = cycles_update();
    __asm__ volatile("msr primask, %0\n" :: "r"(primask) : "memory");
    return now;
}

static void itm_write(const char *text, uint32_t n)
{
    uint32_t i, spin;
    if ((DEMCR & DEMCR_TRCENA) == 0u || (ITM_TCR & ITM_TCR_ITMENA) == 0u || (ITM_TER & 1u) == 0u) {
        return;                                    /* no debugger listening on SWO */
    }
    for (i = 0u; i < n; ++i) {
        for (spin = 0u; (ITM_PORT0 & 1u) == 0u; ++spin) {
            if (spin == ITM_SPIN_LIMIT) {
                return;
            }
        }
        *(volatile uint8_t *)&ITM_PORT0 = (uint8_t)text[i];
    }
}

void board_print(const char *text)
{
    uint32_t n = 0u;
    while (text[n] != '\0') {
        ++n;
    }
    itm_write(text, n);
    board_console_write(text, n);
}

void board_exit(int code)
{
    tt_exit_status[1] = (uint32_t)code;
    tt_exit_status[0] = TT_EXIT_MAGIC;
    board_console_flush();
    SYST_CSR = 0u;
    __asm__ volatile("dsb\n" ::: "memory");
    if ((DHCSR & DHCSR_C_DEBUGEN) != 0u) {
        __asm__ volatile("bkpt #0\n");
    }
    for (;;) {
        __asm__ volatile("" ::: "memory");
    }
}

static char *put_text(char *p, const char *s)
{
    while (*s != '\0') {
        *p++ = *s++;
    }
    return p;
}

static char *put_hex(char *p, uint32_t v)
{
    int i;
    p = put_text(p, "0x");
    for (i = 7; i >= 0; --i) {
        *p++ = "0123456789abcdef"[(v >> (4 * i)) & 0xFu];
    }
    return p;
}

/* Reached from Default_Handler (startup.c) on a fresh stack with the MPU off. */
void board_fault_exit(uint32_t ipsr, uint32_t sp)
{
    char line[160], *p = line;
    const uint32_t exc = ipsr & 0x1FFu;
    p = put_text(p, "fault: exception ");
    *p++ = (char)('0' + (exc / 10u) % 10u);
    *p++ = (char)('0' + exc % 10u);
    p = put_text(p, " cfsr ");
    p = put_hex(p, SCB_CFSR);
    p = put_text(p, " hfsr ");
    p = put_hex(p, SCB_HFSR);
    p = put_text(p, " mmfar ");
    p = put_hex(p, SCB_MMFAR);
    p = put_text(p, " bfar ");
    p = put_hex(p, SCB_BFAR);
    p = put_text(p, " sp ");
    p = put_hex(p, sp);
    /* the stack sits at the bottom of RAM above a guard: an overflow leaves SP below it */
    if (sp < (uint32_t)(uintptr_t)_sstack + 32u || board_stack_peak() >= board_stack_size()) {
        p = put_text(p, " (the stack overflowed its region)");
    }
    *p++ = '\n';
    *p = '\0';
    board_print(line);
    board_exit(200 + (int)(exc < 56u ? exc : 55u));
}
