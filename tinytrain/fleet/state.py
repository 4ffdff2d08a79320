"""The fleet's view of a learned-state blob (compiler/layout.py): which bytes are
trained, their ranges, and the integer-exact aggregation of clients' updates.

An update is the new values of the trained tensors only (int8 weights, int32
biases, in the blob's order), never a frozen weight nor the header; the server
forms each client's delta against the global state it sent that round.

Aggregation (all integer, the same on every host):
  * deltas are int64; FedAvg: q = sum_c n_c * d_c / sum_c n_c with n_c the
    client's sample count, rounded half away from zero (|q| = floor((2|num| + den)
    / (2 den)), sign of num), done on Python ints so nothing overflows;
  * "median": coordinate-wise median of the deltas (an even count: the two
    middle values averaged, half away from zero); "trim:<k>": drop the k
    largest and k smallest per coordinate, plain mean of the rest (same rounding);
  * norm clipping (clip > 0): per tensor, a client's delta whose integer L2 norm
    exceeds clip x the median of that round's norms is scaled down to it,
    d' = round_half_away(d * bound / norm) with norms from math.isqrt (exact);
  * the new global value is global + q saturated to the tensor's range: int8
    weights [-127, 127], int32 biases [-limit, limit] (the sgd_update node's
    limit, quant/qparams.py bias_limit), the ranges every device's step keeps.
"""
import json
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..compiler.errors import TinytrainError

MAGIC_OFFSET, STEPS_OFFSET, CRC_OFFSET, HEADER = 0, 12, 16, 24
W_LIMIT = 127


def crc(blob):
    """The blob's CRC-32 (zlib's) of every byte but the CRC field (bytes 16-19), as the C's _state_crc."""
    return zlib.crc32(blob[CRC_OFFSET + 4:], zlib.crc32(blob[:CRC_OFFSET])) & 0xFFFFFFFF


def seal(blob):
    b = bytearray(blob)
    b[CRC_OFFSET:CRC_OFFSET + 4] = struct.pack("<I", crc(b))
    return bytes(b)


def header(blob):
    """-> (magic, signature, size, steps, crc)"""
    return struct.unpack_from("<5I", blob, 0)


class Manifest:
    """What a device and the server need to know of a compiled model (written by fleet/device.py prepare):
    facts (signature, state and arena sizes), and per trained tensor its name, offset, dtype, size, limit."""

    def __init__(self, d):
        self.d = d
        self.signature = int(d["signature"])
        self.state_size = int(d["state"])
        self.tensors = d["tensors"]
        self.trainer = d.get("trainer", "backprop")

    @classmethod
    def load(cls, path):
        return cls(json.loads(Path(path).read_text()))

    def save(self, path):
        Path(path).write_text(json.dumps(self.d, indent=1) + "\n")

    def update_bytes(self):
        return sum(t["size"] * np.dtype(t["dtype"]).itemsize for t in self.tensors)

    def float_bytes(self):
        return sum(t["size"] * 4 for t in self.tensors)

    def read(self, blob):
        """-> [array] of the trained tensors of a blob (copies)"""
        return [np.frombuffer(blob, dtype=t["dtype"], count=t["size"], offset=t["offset"]).copy()
                for t in self.tensors]

    def write(self, blob, arrays, steps=None):
        """-> a sealed copy of blob with the trained tensors replaced (and the steps counter)."""
        b = bytearray(blob)
        for t, a in zip(self.tensors, arrays):
            a = np.ascontiguousarray(a, dtype=t["dtype"])
            b[t["offset"]:t["offset"] + a.nbytes] = a.tobytes()
        if steps is not None:
            b[STEPS_OFFSET:STEPS_OFFSET + 4] = struct.pack("<i", int(steps) & 0x7FFFFFFF)
        return seal(bytes(b))

    def check_blob(self, blob, where="state"):
        """A state blob of this model, sealed: else TinytrainError (what a device's _init(..., 1) checks)."""
        if len(blob) != self.state_size:
            raise TinytrainError(f"{where}: {len(blob)} bytes, this model's state is {self.state_size}")
        magic, sig, size, _, c = header(blob)
        if sig != self.signature:
            raise TinytrainError(f"{where}: state of another model (signature {sig:#010x}, "
                                 f"this model {self.signature:#010x})")
        if size != self.state_size or c != crc(blob):
            raise TinytrainError(f"{where}: corrupt state (size field {size}, CRC {'ok' if c == crc(blob) else 'bad'})")

    def check_update(self, arrays, signature, where="update"):
        """The arrays of a client's update: right model, count, dtypes, sizes, finite, in range."""
        if int(signature) != self.signature:
            raise TinytrainError(f"{where}: signature {int(signature):#010x} is not this model's "
                                 f"{self.signature:#010x}")
        if len(arrays) != len(self.tensors):
            raise TinytrainError(f"{where}: {len(arrays)} tensors, the model trains {len(self.tensors)}")
        for t, a in zip(self.tensors, arrays):
            a = np.asarray(a)
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise TinytrainError(f"{where}: tensor '{t['name']}' has non-finite values")
            if a.dtype != np.dtype(t["dtype"]):
                raise TinytrainError(f"{where}: tensor '{t['name']}' is {a.dtype}, expected {t['dtype']}")
            if a.size != t["size"]:
                raise TinytrainError(f"{where}: tensor '{t['name']}' has {a.size} values, expected {t['size']}")
            lim = t["limit"]
            if a.size and (int(a.min()) < -lim or int(a.max()) > lim):
                raise TinytrainError(f"{where}: tensor '{t['name']}' has values outside +-{lim}")


def round_div(num, den):
    """num / den rounded half away from zero, on Python ints (den > 0)."""
    q = (2 * abs(num) + den) // (2 * den)
    return q if num >= 0 else -q


def _round_div_arr(num, den):
    """Elementwise round_div on int64 arrays (|num| < 2^62 / 2, den > 0)."""
    num = np.asarray(num, np.int64)
    den = np.asarray(den, np.int64)
    q = (2 * np.abs(num) + den) // (2 * den)
    return np.where(num >= 0, q, -q)


def _clip(deltas, clip):
    """Per tensor: deltas whose L2 norm exceeds clip x the median norm scaled to it (integer-exact)."""
    if not clip or len(deltas) < 2:
        return deltas
    out = [list(d) for d in deltas]
    for j in range(len(deltas[0])):
        norms = [math.isqrt(int(np.dot(d[j].astype(object), d[j].astype(object)))) for d in deltas]
        med = sorted(norms)[len(norms) // 2]
        bound = int(clip * med) if med else 0
        for i, nrm in enumerate(norms):
            if nrm > bound:
                d = deltas[i][j]
                out[i][j] = (np.zeros_like(d) if bound == 0 else
                             np.array([round_div(int(v) * bound, nrm) for v in d], np.int64))
    return out


def aggregate(manifest, global_arrays, updates, rule="fedavg", clip=0.0):
    """global_arrays: the trained tensors sent this round; updates: [(arrays, n_samples)] of accepted
    clients. -> new global arrays (dtypes of the model), every value inside its tensor's range."""
    if not updates:
        return [a.copy() for a in global_arrays]
    deltas = [[np.asarray(a, np.int64) - np.asarray(g, np.int64) for a, g in zip(arrs, global_arrays)]
              for arrs, _ in updates]
    deltas = _clip(deltas, clip)
    weights = np.array([int(n) for _, n in updates], np.int64)
    new = []
    for j, (t, g) in enumerate(zip(manifest.tensors, global_arrays)):
        stack = np.stack([d[j] for d in deltas])                 # clients x values, int64
        if rule == "fedavg":
            # |delta| <= 2^32 and n < 2^20 per client: the sum stays far below 2^63
            q = _round_div_arr((stack * weights[:, None]).sum(axis=0), np.int64(weights.sum()))
        elif rule == "median":
            s = np.sort(stack, axis=0)
            m = len(s)
            q = s[m // 2] if m % 2 else _round_div_arr(s[m // 2 - 1] + s[m // 2], 2)
        elif rule.startswith("trim:"):
            k = int(rule[5:])
            s = np.sort(stack, axis=0)
            if len(s) <= 2 * k:
                raise TinytrainError(f"--aggregate {rule}: {len(s)} updates, trimming needs more than {2 * k}")
            q = _round_div_arr(s[k:len(s) - k].sum(axis=0), len(s) - 2 * k)
        else:
            raise TinytrainError(f"--aggregate '{rule}': expected fedavg, median or trim:<k>")
        lim = t["limit"]
        new.append(np.clip(np.asarray(g, np.int64) + q, -lim, lim).astype(t["dtype"]))
    return new


def check_rule(rule):
    if rule in ("fedavg", "median") or (rule.startswith("trim:") and rule[5:].isdigit()):
        return rule
    raise TinytrainError(f"--aggregate '{rule}': expected fedavg, median or trim:<k>")


def save_checkpoint(path, blob, round_no, extra=None):
    """The global state blob + round number, written atomically (temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"round": int(round_no), **(extra or {})}).encode()
    data = b"TTFL" + struct.pack("<II", len(meta), zlib.crc32(meta + blob) & 0xFFFFFFFF) + meta + blob
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path, manifest):
    """-> (blob, round, meta) of a checkpoint, or None when there is none; a damaged one is an error."""
    path = Path(path)
    if not path.exists():
        return None
    data = path.read_bytes()
    if len(data) < 12 or data[:4] != b"TTFL":
        raise TinytrainError("not a fleet checkpoint", file=path)
    n, c = struct.unpack_from("<II", data, 4)
    meta, blob = data[12:12 + n], data[12 + n:]
    if zlib.crc32(meta + blob) & 0xFFFFFFFF != c:
        raise TinytrainError("fleet checkpoint is damaged (CRC)", file=path)
    manifest.check_blob(blob, where=str(path))
    meta = json.loads(meta)
    return blob, int(meta["round"]), meta
