"""The state blob's layout: one owner for the byte offsets that the emitter
writes into the C (codegen/emit_c.py), and that the host runtime (tinytrain/host.py)
and QEMU runs (tinytrain/qemu.py) read back.  A leaf module: graph facts in, numbers out.

    [0, 24)                header: magic, signature, size, steps (offset 12), CRC-32 (offset 16)
                           of every other byte of the blob, a reserved 0 word (6 x uint32)
    trainable parameters   in graph.meta["training"]["trainable"] order, each ALIGN-aligned
    int16 shadows          with rounding "shadow": one per trainable int8 weight, same order

ALIGN is also the arena's alignment (passes/plan_memory.py) and the C macro <NAME>_ALIGN.
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
