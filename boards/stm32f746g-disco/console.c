/* console.c (stm32f746g-disco): USART1 on PA9 (TX) / PB7 (RX), the pins the
 * board routes to the ST-LINK/V2-1 virtual COM port, 115200 8N1.
 *
 * Register level, from the STM32F74x reference manual (RM0385): RCC at
 * 0x40023800, GPIOA 0x40020000, GPIOB 0x40020400, USART1 0x40011000.  After
 * reset the core and APB2 run from the 16 MHz HSI and USART1's kernel clock
 * is PCLK2 (RCC_DCKCFGR2.USART1SEL = 00), so BRR = 16 MHz / 115200 = 139
 * (oversampling by 16).  The program does not change the clocks: the DWT
 * figures are cycles at 16 MHz with zero flash wait states. */
#include "board_hw.h"

#include <stdint.h>

#define REG(addr) (*(volatile uint32_t *)(addr))

#define RCC_BASE 0x40023800u
#define RCC_AHB1ENR REG(RCC_BASE + 0x30u)
#define RCC_APB2ENR REG(RCC_BASE + 0x44u)
#define RCC_AHB1ENR_GPIOAEN (1u << 0)
#define RCC_AHB1ENR_GPIOBEN (1u << 1)
#define RCC_APB2ENR_USART1EN (1u << 4)

#define GPIOA_BASE 0x40020000u
#define GPIOB_BASE 0x40020400u
#define GPIO_MODER(base) REG((base) + 0x00u)
#define GPIO_OSPEEDR(base) REG((base) + 0x08u)
#define GPIO_PUPDR(base) REG((base) + 0x0Cu)
#define GPIO_AFRL(base) REG((base) + 0x20u)
#define GPIO_AFRH(base) REG((base) + 0x24u)
#define GPIO_MODE_AF 2u
#define GPIO_PULL_UP 1u
#define AF7_USART1 7u

#define USART1_BASE 0x40011000u
#define USART_CR1 REG(USART1_BASE + 0x00u)
#define USART_CR2 REG(USART1_BASE + 0x04u)
#define USART_CR3 REG(USART1_BASE + 0x08u)
#define USART_BRR REG(USART1_BASE + 0x0Cu)
#define USART_ISR REG(USART1_BASE + 0x1Cu)
#define USART_TDR REG(USART1_BASE + 0x28u)
#define USART_CR1_UE (1u << 0)
#define USART_CR1_RE (1u << 2)
#define USART_CR1_TE (1u << 3)
#define USART_ISR_TC (1u << 6)
#define USART_ISR_TXE (1u << 7)

#define PCLK2_HZ 16000000u
#define BAUD 115200u
#define SPIN_LIMIT 200000u        /* a byte takes ~1,400 cycles at 16 MHz; this is >> that */

static int console_ready;

void board_console_init(void)
{
    volatile uint32_t sink;
    RCC_AHB1ENR |= RCC_AHB1ENR_GPIOAEN | RCC_AHB1ENR_GPIOBEN;
    RCC_APB2ENR |= RCC_APB2ENR_USART1EN;
    sink = RCC_APB2ENR;           /* the clock needs two cycles before the peripheral answers */
    (void)sink;

    /* PA9: alternate function 7 (USART1_TX), fast */
    GPIO_MODER(GPIOA_BASE) = (GPIO_MODER(GPIOA_BASE) & ~(3u << 18)) | (GPIO_MODE_AF << 18);
    GPIO_OSPEEDR(GPIOA_BASE) |= 2u << 18;
    GPIO_AFRH(GPIOA_BASE) = (GPIO_AFRH(GPIOA_BASE) & ~(0xFu << 4)) | (AF7_USART1 << 4);
    /* PB7: alternate function 7 (USART1_RX), pull-up */
    GPIO_MODER(GPIOB_BASE) = (GPIO_MODER(GPIOB_BASE) & ~(3u << 14)) | (GPIO_MODE_AF << 14);
    GPIO_PUPDR(GPIOB_BASE) = (GPIO_PUPDR(GPIOB_BASE) & ~(3u << 14)) | (GPIO_PULL_UP << 14);
    GPIO_AFRL(GPIOB_BASE) = (GPIO_AFRL(GPIOB_BASE) & ~(0xFu << 28)) | (AF7_USART1 << 28);

    USART_CR1 = 0u;               /* UE off while configuring */
    USART_CR2 = 0u;               /* 1 stop bit */
    USART_CR3 = 0u;               /* no flow control */
    USART_BRR = (PCLK2_HZ + BAUD / 2u) / BAUD;
    USART_CR1 = USART_CR1_TE | USART_CR1_RE | USART_CR1_UE;   /* 8 data bits, no parity, oversampling 16 */
    console_ready = 1;
}

void board_console_write(const char *text, uint32_t n)
{
    uint32_t i, spin;
    if (!console_ready) {
        board_console_init();
    }
    for (i = 0u; i < n; ++i) {
        if (text[i] == '\n') {    /* terminals want CR LF */
            for (spin = 0u; (USART_ISR & USART_ISR_TXE) == 0u && spin < SPIN_LIMIT; ++spin) {
            }
            USART_TDR = '\r';
        }
        for (spin = 0u; (USART_ISR & USART_ISR_TXE) == 0u && spin < SPIN_LIMIT; ++spin) {
        }
        USART_TDR = (uint8_t)text[i];
    }
}

void board_console_flush(void)
{
    uint32_t spin;
    if (!console_ready) {
        return;
    }
    for (spin = 0u; (USART_ISR & USART_ISR_TC) == 0u && spin < SPIN_LIMIT; ++spin) {
    }
}
