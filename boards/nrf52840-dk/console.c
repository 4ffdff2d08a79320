/* console.c (nrf52840-dk): UARTE0 on P0.06 (TX) and P0.08 (RX), the pins the
 * DK routes to the interface MCU's virtual COM port, 115200 8N1.
 *
 * Register level, from the nRF52840 Product Specification: CLOCK at
 * 0x40000000, UARTE0 0x40002000, GPIO P0 0x50000000.  The UARTE sends by
 * EasyDMA, which reads only data RAM: text is copied through a RAM buffer of
 * 64 bytes.  The 64 MHz crystal oscillator (HFXO) is started first so the
 * baud rate is accurate; the core runs at 64 MHz either way. */
#include "board_hw.h"

#include <stdint.h>

#define REG(addr) (*(volatile uint32_t *)(addr))

#define CLOCK_BASE 0x40000000u
#define CLOCK_TASKS_HFCLKSTART REG(CLOCK_BASE + 0x000u)
#define CLOCK_EVENTS_HFCLKSTARTED REG(CLOCK_BASE + 0x100u)

#define P0_BASE 0x50000000u
#define P0_OUTSET REG(P0_BASE + 0x508u)
#define P0_PIN_CNF(pin) REG(P0_BASE + 0x700u + 4u * (pin))
#define PIN_CNF_OUTPUT_NO_INPUT 3u       /* DIR output, input buffer disconnected */
#define PIN_CNF_INPUT_PULLUP (3u << 2)   /* DIR input, input connected, pull-up */
#define TX_PIN 6u
#define RX_PIN 8u

#define UARTE0_BASE 0x40002000u
#define UARTE_TASKS_STARTTX REG(UARTE0_BASE + 0x008u)
#define UARTE_TASKS_STOPTX REG(UARTE0_BASE + 0x00Cu)
#define UARTE_EVENTS_ENDTX REG(UARTE0_BASE + 0x120u)
#define UARTE_EVENTS_TXSTOPPED REG(UARTE0_BASE + 0x158u)
#define UARTE_ENABLE REG(UARTE0_BASE + 0x500u)
#define UARTE_PSEL_RTS REG(UARTE0_BASE + 0x508u)
#define UARTE_PSEL_TXD REG(UARTE0_BASE + 0x50Cu)
#define UARTE_PSEL_CTS REG(UARTE0_BASE + 0x510u)
#define UARTE_PSEL_RXD REG(UARTE0_BASE + 0x514u)
#define UARTE_BAUDRATE REG(UARTE0_BASE + 0x524u)
#define UARTE_TXD_PTR REG(UARTE0_BASE + 0x544u)
#define UARTE_TXD_MAXCNT REG(UARTE0_BASE + 0x548u)
#define UARTE_CONFIG REG(UARTE0_BASE + 0x56Cu)
#define UARTE_ENABLE_ON 8u
#define PSEL_DISCONNECTED 0xFFFFFFFFu
#define BAUDRATE_115200 0x01D7E000u

#define SPIN_LIMIT 2000000u       /* 64 bytes take ~5.6 ms = 360,000 cycles at 64 MHz */

static int console_ready;
static uint8_t tx_buffer[64];     /* in RAM: EasyDMA cannot read flash */

void board_console_init(void)
{
    uint32_t spin;
    CLOCK_EVENTS_HFCLKSTARTED = 0u;
    CLOCK_TASKS_HFCLKSTART = 1u;
    for (spin = 0u; CLOCK_EVENTS_HFCLKSTARTED == 0u && spin < SPIN_LIMIT; ++spin) {
    }

    P0_OUTSET = 1u << TX_PIN;     /* idle high before the pin becomes an output */
    P0_PIN_CNF(TX_PIN) = PIN_CNF_OUTPUT_NO_INPUT;
    P0_PIN_CNF(RX_PIN) = PIN_CNF_INPUT_PULLUP;

    UARTE_ENABLE = 0u;
    UARTE_PSEL_TXD = TX_PIN;
    UARTE_PSEL_RXD = PSEL_DISCONNECTED;   /* the program only sends */
    UARTE_PSEL_RTS = PSEL_DISCONNECTED;
    UARTE_PSEL_CTS = PSEL_DISCONNECTED;
    UARTE_BAUDRATE = BAUDRATE_115200;
    UARTE_CONFIG = 0u;                    /* no parity, one stop bit, no flow control */
    UARTE_ENABLE = UARTE_ENABLE_ON;
    console_ready = 1;
}

static void send(uint32_t n)
{
    uint32_t spin;
    UARTE_EVENTS_ENDTX = 0u;
    UARTE_TXD_PTR = (uint32_t)(uintptr_t)tx_buffer;
    UARTE_TXD_MAXCNT = n;
    UARTE_TASKS_STARTTX = 1u;
    for (spin = 0u; UARTE_EVENTS_ENDTX == 0u && spin < SPIN_LIMIT; ++spin) {
    }
}

void board_console_write(const char *text, uint32_t n)
{
    uint32_t i, k = 0u;
    if (!console_ready) {
        board_console_init();
    }
    for (i = 0u; i < n; ++i) {
        if (text[i] == '\n') {            /* terminals want CR LF */
            tx_buffer[k++] = '\r';
        }
        tx_buffer[k++] = (uint8_t)text[i];
        if (k >= sizeof tx_buffer - 1u) {
            send(k);
            k = 0u;
        }
    }
    if (k > 0u) {
        send(k);
    }
}

void board_console_flush(void)
{
    uint32_t spin;
    if (!console_ready) {
        return;
    }
    UARTE_EVENTS_TXSTOPPED = 0u;          /* each send already waited for ENDTX; stop the transmitter */
    UARTE_TASKS_STOPTX = 1u;
    for (spin = 0u; UARTE_EVENTS_TXSTOPPED == 0u && spin < SPIN_LIMIT; ++spin) {
    }
}
