/* icount_plugin.c: a QEMU TCG plugin (host code, loaded by qemu-aarch64 with
 * -plugin) that gives the guest an exact count of the instructions it has
 * executed, the user-mode replacement for system emulation's -icount.
 *
 * It counts every translated block's instructions when the block runs (an
 * inline add, no callback), and when the guest calls
 *     pread(fd, &count, 8, TT_ICOUNT_OFFSET)
 * it writes the count into that file at that offset just before the system
 * call runs (qemu-user passes guest file descriptors through unchanged), so
 * the guest reads it back (board.c, board_instructions).  Without the plugin
 * the read finds nothing and the guest reports 0.
 *
 * Debian ships no qemu-plugin.h, so the few declarations of QEMU's plugin API
 * version 1 (QEMU 7.x) this uses are written out below; the symbols are
 * resolved from the qemu-aarch64 binary when it loads the plugin.
 * Build: gcc -shared -fPIC -O2 -o icount_plugin.so icount_plugin.c */
#define _POSIX_C_SOURCE 200809L
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>

#define TT_ICOUNT_OFFSET 0x747400
#define AARCH64_SYS_PREAD64 67

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t;           /* not used: opaque here */
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*tt_tb_trans_cb)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*tt_syscall_cb)(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1, uint64_t a2,
                              uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, tt_tb_trans_cb cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr,
                                              uint64_t imm);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, tt_syscall_cb cb);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;
__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                                               int argc, char **argv);

static uint64_t executed;

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &executed, qemu_plugin_tb_n_insns(tb));
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    (void)id, (void)vcpu_index, (void)a2, (void)a5, (void)a6, (void)a7, (void)a8;
    if (num == AARCH64_SYS_PREAD64 && a3 == sizeof executed && a4 == TT_ICOUNT_OFFSET) {
        const uint64_t now = executed;
        if (pwrite((int)a1, &now, sizeof now, TT_ICOUNT_OFFSET) != (ssize_t)sizeof now) {
            /* the guest then reads 0: no count */
        }
    }
}

int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    (void)info, (void)argc, (void)argv;
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    return 0;
}
