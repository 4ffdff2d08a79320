/* main.c: a training run on the board, generic over the model.
 *
 * The build (tinytrain build / run) generates, beside this file's objects:
 *   tt_app.h      includes the model's <name>.h and maps APP_* to its symbols,
 *                 the run's steps, learning rate and seed
 *   tt_samples.c  the training samples (const, so in flash) and their labels
 * The program trains APP_STEPS steps (step s uses sample s % APP_NUM_SAMPLES)
 * and prints, one line each:
 *   tinytrain board <board> model <name> steps <n> samples <n> arena <bytes> state <bytes>
 *   init instr <instructions of <name>_init>
 *   step <s> loss <float bits, hex> pred <class> label <class> instr <instructions>
 *   state size <bytes> crc32 <hex>
 *   state <offset> <64 bytes of the learned state blob, hex>      (the whole blob)
 *   stack peak <bytes> of <bytes>
 *   done steps <n> skipped <n>
 * Built with profiling (tinytrain run --profile: tt_app.h defines
 * APP_PROFILE_NODES and the model's <NAME>_PROFILE(k) calls app_profile(k)),
 * after the steps, the instructions of each node summed over all steps:
 *   profile nodes <n> steps <n>
 *   profile <k> instr <instructions>                           (k = 0 .. n-1)
 * Exit status: 0 done; 10 + k init failed with status -k; 20 + k a train step
 * failed with status -k; 30 the stack reached the bottom of its region;
 * 200 + n fault with exception n (startup.c). */
#include <stdint.h>
#include <string.h>

#include "board.h"
#include "tt_app.h"

#ifdef APP_PROFILE_NODES
/* The generated code calls app_profile(k) before node k, and once more after
 * the last node of the forward and of the backward (k = the count of nodes so
 * far).  The instructions since the previous mark go to the node that mark
 * opened; a mark repeating the previous one (the end of the forward, then the
 * first backward node: the argmax between them) and marks past the last node
 * open nothing, so the loss, argmax and input quantization stay unattributed. */
static uint64_t prof_sum[APP_PROFILE_NODES];
static uint64_t prof_last;
static int32_t prof_open = -1;

void app_profile(int32_t k)
{
    const uint64_t t = board_instructions();
    if (prof_open >= 0 && prof_open < APP_PROFILE_NODES && k != prof_open) {
        prof_sum[prof_open] += t - prof_last;
    }
    prof_open = k;
    prof_last = t;
}
#endif

static APP_CTX ctx;
static uint8_t arena[APP_ARENA_SIZE] __attribute__((aligned(APP_ALIGN)));
static uint8_t state[APP_STATE_SIZE] __attribute__((aligned(APP_ALIGN)));

typedef struct {
    char text[192];
    uint32_t n;
} line_t;

static void put_str(line_t *l, const char *s)
{
    while (*s != '\0' && l->n + 2u < sizeof l->text) {
        l->text[l->n++] = *s++;
    }
}

static void put_u64(line_t *l, uint64_t v)
{
    char digits[24];
    int k = 0;
    do {
        digits[k++] = (char)('0' + (int)(v % 10u));
        v /= 10u;
    } while (v != 0u);
    while (k > 0 && l->n + 2u < sizeof l->text) {
        l->text[l->n++] = digits[--k];
    }
}

static void put_hex(line_t *l, uint32_t v, int nibbles)
{
    while (nibbles-- > 0 && l->n + 2u < sizeof l->text) {
        l->text[l->n++] = "0123456789abcdef"[(v >> (4 * nibbles)) & 0xFu];
    }
}

static void put_i32(line_t *l, int32_t v)
{
    if (v < 0) {
        put_str(l, "-");
        put_u64(l, (uint64_t)(-(int64_t)v));
    } else {
        put_u64(l, (uint64_t)v);
    }
}

static void flush(line_t *l)
{
    l->text[l->n++] = '\n';
    l->text[l->n] = '\0';
    board_print(l->text);
    l->n = 0u;
}

static uint32_t crc32(const uint8_t *p, uint32_t n)
{
    uint32_t c = 0xFFFFFFFFu, i;
    int k;
    for (i = 0; i < n; ++i) {
        c ^= p[i];
        for (k = 0; k < 8; ++k) {
            c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
        }
    }
    return ~c;
}

int main(void)
{
    line_t l;
    uint64_t t0, t1;
    uint32_t off, i, bits;
    int32_t s, pred = -1;
    float loss = 0.0f;
    int rc;

    board_init();
    l.n = 0u;
    put_str(&l, "tinytrain board " APP_BOARD " model " APP_MODEL " steps ");
    put_u64(&l, APP_STEPS);
    put_str(&l, " samples ");
    put_u64(&l, APP_NUM_SAMPLES);
    put_str(&l, " arena ");
    put_u64(&l, APP_ARENA_SIZE);
    put_str(&l, " state ");
    put_u64(&l, APP_STATE_SIZE);
    flush(&l);

    t0 = board_instructions();
    rc = APP_INIT(&ctx, arena, sizeof arena, state, sizeof state, APP_LR, APP_SEED, 0);
    t1 = board_instructions();
    if (rc != 0) {
        put_str(&l, "error: init returned status ");
        put_i32(&l, rc);
        flush(&l);
        return 10 - rc;
    }
    put_str(&l, "init instr ");
    put_u64(&l, t1 - t0);
    flush(&l);

    for (s = 0; s < APP_STEPS; ++s) {
        const int32_t k = s % APP_NUM_SAMPLES;
        t0 = board_instructions();
        rc = APP_TRAIN_STEP(&ctx, app_samples[k], app_labels[k], &loss, &pred);
        t1 = board_instructions();
        if (rc != 0) {
            put_str(&l, "error: train_step returned status ");
            put_i32(&l, rc);
            flush(&l);
            return 20 - rc;
        }
        memcpy(&bits, &loss, sizeof bits);
        put_str(&l, "step ");
        put_i32(&l, s);
        put_str(&l, " loss ");
        put_hex(&l, bits, 8);
        put_str(&l, " pred ");
        put_i32(&l, pred);
        put_str(&l, " label ");
        put_i32(&l, app_labels[k]);
        put_str(&l, " instr ");
        put_u64(&l, t1 - t0);
        flush(&l);
    }

#ifdef APP_PROFILE_NODES
    put_str(&l, "profile nodes ");
    put_u64(&l, APP_PROFILE_NODES);
    put_str(&l, " steps ");
    put_u64(&l, APP_STEPS);
    flush(&l);
    for (i = 0; i < (uint32_t)APP_PROFILE_NODES; ++i) {
        put_str(&l, "profile ");
        put_u64(&l, i);
        put_str(&l, " instr ");
        put_u64(&l, prof_sum[i]);
        flush(&l);
    }
#endif

    put_str(&l, "state size ");
    put_u64(&l, APP_STATE_SIZE);
    put_str(&l, " crc32 ");
    put_hex(&l, crc32(state, APP_STATE_SIZE), 8);
    flush(&l);
    for (off = 0; off < APP_STATE_SIZE; off += 64u) {
        put_str(&l, "state ");
        put_u64(&l, off);
        put_str(&l, " ");
        for (i = off; i < off + 64u && i < APP_STATE_SIZE; ++i) {
            put_hex(&l, state[i], 2);
        }
        flush(&l);
    }

    put_str(&l, "stack peak ");
    put_u64(&l, board_stack_peak());
    put_str(&l, " of ");
    put_u64(&l, board_stack_size());
    flush(&l);
    if (board_stack_peak() >= board_stack_size()) {
        put_str(&l, "error: the stack reached the bottom of its region");
        flush(&l);
        return 30;
    }
    put_str(&l, "done steps ");
    put_i32(&l, ctx.steps);
    put_str(&l, " skipped ");
    put_i32(&l, ctx.skipped);
    flush(&l);
    return 0;
}
