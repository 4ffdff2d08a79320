"""The state blob's layout: one owner for the byte offsets that the emitter
writes into the C (codegen/emit_c.py), and that the host runtime (tinytrain/host.py)
and QEMU runs (tinytrain/qemu.py) read back.  A leaf module: graph facts in, numbers out.

    [0, 24)                header: magic, signature, size, steps (offset 12), CRC-32 (offset 16)
                           of every other byte of the blob, a reserved 0 word (6 x uint32)
    trainable parameters   in graph.meta["training"]["trainable"] order, each ALIGN-aligned
    int16 shadows          with rounding "shadow": one per trainable int8 weight, same order

ALIGN is also the arena's alignment (passes/plan_memory.py) and the C macro <NAME>_ALIGN.

The context (<name>_ctx, owned by the caller) is CONTEXT_FIELDS: the emitted header's struct
(codegen/emit_c.py) and the host runtime's cffi declaration (tinytrain/host.py) are both
written from it, and context_bytes() is its size under the C ABI (pointers 8 bytes on a 64-bit
host, 4 on a Cortex-M board).

sram_total() is the one SRAM figure: arena + state blob + context + stack.  Compile's budget
check, --update auto, --trainer auto, the "what fits" suggestions, the reports and the
benchmarks all use it.
"""
from typing import NamedTuple

ALIGN = 8
STATE_HEADER = 24


class StateLayout(NamedTuple):
    offsets: dict       # trainable tensor id -> byte offset in the state blob
    shadow: dict        # trainable int8 weight id -> byte offset of its int16 shadow ("shadow" rounding)
    size: int           # bytes of the whole blob (the C macro <NAME>_STATE_SIZE)


def _aligned(n):
    return (n + ALIGN - 1) // ALIGN * ALIGN


def state_layout(graph, rounding="stochastic"):
    """-> StateLayout of the training graph's state blob."""
    trainable = list(graph.meta.get("training", {}).get("trainable", []))
    offsets, off = {}, STATE_HEADER
    for tid in trainable:
        offsets[tid] = off
        off += _aligned(graph.t(tid).nbytes)
    shadow = {}
    for tid in trainable if rounding == "shadow" else []:
        if graph.t(tid).dtype == "int8":
            shadow[tid] = off
            off += _aligned(graph.t(tid).size * 2)
    return StateLayout(offsets, shadow, off)


# (C type, field, comment or None): the <name>_ctx struct, in order
CONTEXT_FIELDS = (
    ("uint8_t *", "arena", None),
    ("uint8_t *", "state", None),
    ("float", "lr", None),
    ("uint32_t", "prng", "the shared xorshift32 state (stochastic rounding)"),
    ("int32_t", "steps", None),
    ("int32_t", "skipped", "steps / updates skipped by the divergence guard (a NaN/inf loss or gradient)"),
    ("int32_t", "saturated", "updated / perturbed elements that hit their clamp (int8 +-127 or the "
                             "bias limit); both counters saturate at INT32_MAX"),
)
_SCALAR_BYTES = {"float": 4, "uint32_t": 4, "int32_t": 4}


def context_bytes(pointer_bytes=8):
    """sizeof(<name>_ctx) under the C ABI: every field aligned to its size, the struct to its
    largest field (40 on a 64-bit host, 28 on a 32-bit board)."""
    off = widest = 0
    for ctype, _, _ in CONTEXT_FIELDS:
        size = pointer_bytes if ctype.endswith("*") else _SCALAR_BYTES[ctype]
        off = (off + size - 1) // size * size + size
        widest = max(widest, size)
    return (off + widest - 1) // widest * widest


def context_struct(name, comments=True):
    """The C typedef of the context, `<name>_ctx`, from CONTEXT_FIELDS."""
    lines = []
    for ctype, field, note in CONTEXT_FIELDS:
        decl = f"    {ctype}{'' if ctype.endswith('*') else ' '}{field};"
        lines.append(f"{decl:<28}/* {note} */" if comments and note else decl)
    return "typedef struct {\n" + "\n".join(lines) + f"\n}} {name}_ctx;"


def state_bytes(graph, rounding="stochastic"):
    """-> (SRAM bytes of the state blob, as compiled: header, trainable parameters and the int16
    shadows of rounding "shadow"; flash bytes of the frozen constants)."""
    trainable = set(graph.meta.get("training", {}).get("trainable", []))
    flash = sum(t.nbytes for t in graph.tensors.values() if t.kind == "const" and t.id not in trainable)
    return state_layout(graph, rounding).size, flash


def sram_total(plan, graph, rounding="stochastic", stack=0, pointer_bytes=8):
    """The SRAM a build needs: arena + state blob + context + stack -> dict of the parts and 'total'."""
    parts = {"arena": plan.arena_size, "state": state_layout(graph, rounding).size,
             "context": context_bytes(pointer_bytes), "stack": int(stack)}
    parts["total"] = sum(parts.values())
    return parts
