"""The fleet's Flower apps: a ClientApp whose client is a device (the compiled C library for
backprop, the bit-exact simulator's MeZO kernels for seeds), and the server loop run as a Flower
ServerApp (Deployment Runtime: `flwr run` on a SuperLink with SuperNodes) or in this process over
the same Messages (`InProcessGrid`: the ClientApp called directly, for many clients without ray).

Wire format (one ConfigRecord "tt" each way; sizes reported are these payload bytes):
  down, backprop:  round, signature, blob (the sealed global state), steps
  down, zo:        round, signature, rseed, k, steps, and either blob (a device without the
                   previous round) or prev (the previous round's merged pairs) + prev_rseed
  up, backprop:    round, signature, n (samples), crc (of the state it restored), u<i>/d<i> (the
                   trained tensors' bytes and dtype, manifest order)
  up, zo:          round, signature, n, crc (of its state at the round's start), idx (uint16), sc (float32)
"""
import os
import struct
import time
from pathlib import Path

import numpy as np

from ..compiler.errors import TinytrainError
from . import state as st

try:
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
except ImportError:                     # flwr is the optional extra `fleet`
    ClientApp = ServerApp = None

_DEVICES = {}


def _cfg(msg):
    return msg.content["tt"]


def payload_bytes(cfg):
    """Bytes of a message's payload: bytes values at their length, numbers at 4 (8 for floats)."""
    n = 0
    for v in cfg.values():
        n += len(v) if isinstance(v, (bytes, str)) else 8 if isinstance(v, float) else 4
    return n


def pack_pairs(parts):
    """[(idx uint16, sc float32, n)] -> bytes: per client count(uint32) n(uint32) idx.. sc.."""
    out = bytearray()
    for idx, sc, n in parts:
        out += struct.pack("<II", len(idx), int(n)) + np.asarray(idx, "<u2").tobytes() + \
            np.asarray(sc, "<f4").tobytes()
    return bytes(out)


def unpack_pairs(b):
    parts, off = [], 0
    while off < len(b):
        c, n = struct.unpack_from("<II", b, off)
        off += 8
        idx = np.frombuffer(b, "<u2", c, off).astype(np.int64)
        off += 2 * c
        sc = np.frombuffer(b, "<f4", c, off).astype(np.float32)
        off += 4 * c
        parts.append((idx, sc, n))
    return parts


# ----------------------------------------------------------------------------------------- client

def _device(build, pid):
    from .device import Device, load_data
    from .state import Manifest
    key = (str(build), pid)
    if key not in _DEVICES:
        m = Manifest.load(Path(build) / "manifest.json")
        data, parts = load_data(build)
        if not 0 <= pid < len(parts):
            raise TinytrainError(f"partition-id {pid}: the build has {len(parts)} partitions")
        p = parts[pid]
        if m.trainer == "mezo":
            from .zo import ZoDevice
            dev = ZoDevice(Path(build), m)
            x = data["xo"][p]
        else:
            dev = Device(build, seed=1000 + pid)
            x = data["x"][p]
        _DEVICES[key] = dict(dev=dev, m=m, x=x, y=data["y"][p], init=None)
    return _DEVICES[key]


def _initial_blob(build):
    from .device import Device
    return Device(build).initial_blob()


def _crashes(fault, r):
    """fault 'crash' (every round) or 'crash@<round>'"""
    return fault == "crash" or (fault.startswith("crash@") and fault[6:] == str(r))


def client_train(msg, context, build=None, fault=None):
    """One round on a device. -> reply ConfigRecord values (dict)."""
    cfg = _cfg(msg)
    build = build or context.run_config["build"]
    pid = int(context.node_config.get("partition-id", 0))
    fault = fault if fault is not None else str(context.node_config.get("fault", ""))
    d = _device(build, pid)
    m, dev = d["m"], d["dev"]
    r = int(cfg["round"])
    if int(cfg["signature"]) != m.signature:
        raise TinytrainError(f"round {r}: the server's state is for another model (signature "
                             f"{int(cfg['signature']):#010x}, this device {m.signature:#010x})")
    rng = np.random.default_rng([int(context.run_config.get("seed", 0)), pid, r])
    if _crashes(fault, r):
        os._exit(3)                      # a device that dies mid-round (the Deployment test)
    if m.trainer == "mezo":
        from .zo import candidates
        mem = context.state.get("tt", None) if hasattr(context.state, "get") else None
        if "blob" in cfg:
            blob = bytes(cfg["blob"])
        else:
            if mem is None or int(mem["round"]) != r - 1:
                raise TinytrainError(f"round {r}: pairs without a state of round {r - 1}")
            prev = unpack_pairs(bytes(cfg["prev"]))
            pr = int(cfg["prev_rseed"])
            blob = dev.replay(bytes(mem["blob"]), pr, candidates(pr, int(cfg["k"])), prev)
        m.check_blob(blob, where=f"round {r} state")
        context.state["tt"] = ConfigRecord({"round": r, "blob": blob})
        dev.set_blob(blob)
        cands = candidates(int(cfg["rseed"]), int(cfg["k"]))
        idx, sc = dev.local_round(d["x"], d["y"], cands, int(cfg["steps"]), rng, int(cfg["rseed"]) ^ pid)
        out = {"round": r, "signature": m.signature, "n": len(d["y"]), "crc": st.crc(blob),
               "idx": idx.astype("<u2").tobytes(), "sc": sc.astype("<f4").tobytes()}
    else:
        blob = bytes(cfg["blob"])
        dev.restore(blob)               # the library's own check: magic, signature, size, CRC
        crc = st.crc(dev.blob())
        dev.train(d["x"], d["y"], int(cfg["steps"]), rng)
        arrays = m.read(dev.blob())
        if fault == "poison":            # malicious but well-formed: 10x its change, reversed, in range
            arrays = [np.clip(g.astype(np.int64) - 10 * (a.astype(np.int64) - g), -t["limit"], t["limit"]).astype(
                a.dtype) for a, g, t in zip(arrays, m.read(blob), m.tensors)]
        out = {"round": r, "signature": m.signature, "n": len(d["y"]), "crc": crc}
        for i, a in enumerate(arrays):
            out[f"u{i}"], out[f"d{i}"] = a.tobytes(), str(a.dtype)
    _inject(out, fault, m)
    return out


def _inject(out, fault, m):
    """Faulty devices for the tests and the benchmark (node_config fault=...)."""
    if fault == "nan" and "u0" in out:
        out["u0"], out["d0"] = np.full(m.tensors[0]["size"], np.nan, np.float32).tobytes(), "float32"
    elif fault == "nan":
        out["sc"] = np.full(4, np.nan, np.float32).tobytes()
        out["idx"] = np.zeros(4, np.uint16).tobytes()
    elif fault == "signature":
        out["signature"] = (m.signature ^ 1) & 0xFFFFFFFF
    elif fault == "size":
        key = "u0" if "u0" in out else "sc"
        out[key] = out[key][:-1]
    elif fault == "range" and "u1" in out:
        a = np.frombuffer(out["u1"], out["d1"]).copy()
        a[0] = np.iinfo(a.dtype).max if a.dtype == np.int32 else a[0]
        out["u1"] = a.tobytes()
    elif fault == "range":
        out["idx"] = np.full(len(out["idx"]) // 2, 65535, np.uint16).tobytes()


if ClientApp is not None:
    client_app = ClientApp()

    @client_app.train()
    def _train(msg, context):
        try:
            out = client_train(msg, context)
        except TinytrainError as e:              # refused (another model, stale state): say why
            out = {"round": int(_cfg(msg)["round"]), "refused": str(e)}
        return Message(content=RecordDict({"tt": ConfigRecord(out)}), reply_to=msg)
else:
    client_app = None


# ----------------------------------------------------------------------------------------- server

def decode_update(m, cfg, r):
    """A backprop reply -> (arrays, n) or TinytrainError naming what is wrong."""
    if "refused" in cfg:
        raise TinytrainError(f"device refused the state: {cfg['refused']}")
    if int(cfg.get("round", -1)) != r:
        raise TinytrainError(f"update for round {cfg.get('round')}, this is round {r}")
    arrays = []
    for i, t in enumerate(m.tensors):
        b, dt = cfg.get(f"u{i}"), cfg.get(f"d{i}")
        if not isinstance(b, bytes) or not isinstance(dt, str) or dt not in ("int8", "int32", "float32"):
            raise TinytrainError(f"tensor '{t['name']}' missing or of an unknown type")
        if len(b) % np.dtype(dt).itemsize:
            raise TinytrainError(f"tensor '{t['name']}': {len(b)} bytes is not a whole number of {dt}")
        arrays.append(np.frombuffer(b, dt))
    if f"u{len(m.tensors)}" in cfg:
        raise TinytrainError("more tensors than the model trains")
    m.check_update(arrays, cfg.get("signature", -1))
    n = cfg.get("n")
    if not isinstance(n, int) or not 0 < n < 1 << 20:
        raise TinytrainError(f"sample count {n!r}: expected a positive integer")
    return arrays, n


def decode_pairs(m, cfg, r, k, steps, global_crc):
    from .zo import check_pairs
    if "refused" in cfg:
        raise TinytrainError(f"device refused: {cfg['refused']}")
    if int(cfg.get("round", -1)) != r:
        raise TinytrainError(f"update for round {cfg.get('round')}, this is round {r}")
    if int(cfg.get("signature", -1)) != m.signature:
        raise TinytrainError(f"signature {int(cfg.get('signature', -1)):#010x} is not this model's")
    if int(cfg.get("crc", -1)) != global_crc:
        raise TinytrainError("device state differs from the server's (stale or diverged): pairs dropped")
    ib, sb = cfg.get("idx"), cfg.get("sc")
    if not isinstance(ib, bytes) or not isinstance(sb, bytes) or len(ib) % 2 or len(sb) % 4:
        raise TinytrainError("pairs of a wrong size")
    idx, sc = check_pairs((np.frombuffer(ib, "<u2"), np.frombuffer(sb, "<f4")), k, steps)
    n = cfg.get("n")
    if not isinstance(n, int) or not 0 < n < 1 << 20:
        raise TinytrainError(f"sample count {n!r}: expected a positive integer")
    return idx, sc, n


class Server:
    """The federation's server loop over a grid (Flower's, or InProcessGrid)."""

    def __init__(self, build, rounds=5, steps=20, rule="fedavg", clip=0.0, k=64, seed=0, checkpoint=None,
                 timeout=None, log=print, eval_samples=500):
        from .state import Manifest
        self.build = Path(build)
        self.m = Manifest.load(self.build / "manifest.json")
        self.rounds, self.steps, self.rule, self.clip, self.k, self.seed = rounds, steps, st.check_rule(rule), \
            clip, k, seed
        self.checkpoint, self.timeout, self.log, self.eval_samples = checkpoint, timeout, log, eval_samples
        self.history = []
        self.rejected = []
        self.node_round = {}            # node -> the round whose end state it holds (zo)
        self.prev = None                # (merged pairs, rseed) of the last round (zo)
        from .device import load_data
        data, _ = load_data(self.build)
        n = eval_samples
        if self.m.trainer == "mezo":
            from .zo import ZoDevice
            self.zo = ZoDevice(self.build, self.m)
            self.tx, self.ty = data["txo"][:n], data["ty"][:n]
        else:
            from .device import Device
            self.evaluator = Device(self.build)
            self.tx, self.ty = data["tx"][:n], data["ty"][:n]

    def evaluate(self, blob):
        if self.m.trainer == "mezo":
            self.zo.set_blob(blob)
            return self.zo.evaluate(self.tx, self.ty)
        self.evaluator.restore(blob)
        return self.evaluator.evaluate(self.tx, self.ty)

    def run(self, grid):
        blob, start = _initial_blob(self.build), 1
        if self.checkpoint:
            got = st.load_checkpoint(self.checkpoint, self.m)
            if got is not None:
                blob, done, _ = got
                start = done + 1
                self.log(f"resumed from {self.checkpoint} after round {done}")
        if start > self.rounds:
            self.log(f"the checkpoint is at round {start - 1}: nothing left of {self.rounds} rounds")
        if start == 1:
            acc = self.evaluate(blob)
            self.history.append({"round": 0, "accuracy": acc})
            self.log(f"round 0: accuracy {100 * acc:.2f}%")
        for r in range(start, self.rounds + 1):
            blob = self.round(grid, r, blob)
            if self.checkpoint:
                st.save_checkpoint(self.checkpoint, blob, r)
        return blob

    def round(self, grid, r, blob):
        from .zo import candidates, round_seed
        t0 = time.time()
        nodes = sorted(grid.get_node_ids())
        zo = self.m.trainer == "mezo"
        rseed = round_seed(self.seed, r)
        msgs, down = [], {}
        for node in nodes:
            cfg = {"round": r, "signature": self.m.signature, "steps": self.steps}
            if zo:
                cfg.update(rseed=rseed, k=self.k)
                if self.prev is not None and self.node_round.get(node) == r - 1:
                    cfg.update(prev=self.prev[0], prev_rseed=self.prev[1])
                else:
                    cfg["blob"] = blob
            else:
                cfg["blob"] = blob
            down[node] = payload_bytes(cfg)
            msgs.append(grid.create_message(RecordDict({"tt": ConfigRecord(cfg)}), "train", node, str(r)))
        replies = list(grid.send_and_receive(msgs, timeout=self.timeout))
        accepted, up, rej = [], {}, []
        gcrc = st.crc(blob)
        for rep in sorted(replies, key=lambda x: x.metadata.src_node_id):
            node = rep.metadata.src_node_id
            if rep.has_error():
                rej.append((node, f"client error: {rep.error.reason[:200]}"))
                continue
            cfg = rep.content["tt"]
            up[node] = payload_bytes(cfg)
            try:
                item = decode_pairs(self.m, cfg, r, self.k, self.steps, gcrc) if zo else \
                    decode_update(self.m, cfg, r)
            except TinytrainError as e:
                rej.append((node, str(e)))
                continue
            if not zo and int(cfg.get("crc", -1)) != gcrc:
                rej.append((node, "device restored a state other than the server's"))
                continue
            accepted.append((node, item))
        for node, why in rej:
            self.log(f"round {r}: rejected node {node}: {why}")
        self.rejected += [(r, n, w) for n, w in rej]
        if zo:
            parts = [item for _, item in accepted]
            new = self.zo.replay(blob, rseed, candidates(rseed, self.k), parts)
            self.prev = (pack_pairs(parts), rseed)
            # nodes that sent pairs hold this round's start state: they replay `prev` next round
            self.node_round = {node: r for node, _ in accepted}
        else:
            g = self.m.read(blob)
            arrays = st.aggregate(self.m, g, [item for _, item in accepted], self.rule, self.clip)
            steps = struct.unpack_from("<i", blob, 12)[0] + self.steps * len(accepted)
            new = self.m.write(blob, arrays, steps=steps)
        acc = self.evaluate(new)
        rec = {"round": r, "accuracy": acc, "accepted": len(accepted), "sent": len(nodes),
               "rejected": len(rej), "down_bytes": _median(down.values()), "down_max": max(down.values(), default=0),
               "up_bytes": _median(up[n] for n, _ in accepted), "seconds": round(time.time() - t0, 2),
               "crc": st.crc(new)}
        self.history.append(rec)
        self.log(f"round {r}: accuracy {100 * acc:.2f}%, {len(accepted)}/{len(nodes)} updates, "
                 f"{rec['up_bytes']} B up / {rec['down_bytes']} B down per client (median)")
        return new


def _median(values):
    v = sorted(values)
    return int(v[len(v) // 2]) if v else 0


class InProcessGrid:
    """Flower Messages delivered to the ClientApp in this process: one Context per node (its
    node_config, persistent state), optional drop-outs (a dropped node's reply never arrives)."""

    def __init__(self, build, n_nodes, run_config=None, faults=None, drop=0.0, seed=0):
        self.build = str(build)
        self.run_config = {"build": self.build, **(run_config or {})}
        self.faults = faults or {}
        self.drop = float(drop)
        self.rng = np.random.default_rng([seed, 7])
        self.contexts = {}
        from flwr.supercore.task_identity import TaskIdentity    # what a SuperLink/SuperNode process sets
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        for i in range(n_nodes):
            node = i + 1
            self.contexts[node] = Context(run_id=1, node_id=node, node_config={
                "partition-id": i, "fault": self.faults.get(i, "")}, state=RecordDict(),
                run_config=self.run_config)

    def get_node_ids(self):
        return list(self.contexts)

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            ctx = self.contexts[node]
            if (self.drop and self.rng.random() < self.drop) or \
                    _crashes(str(ctx.node_config["fault"]), int(_cfg(msg)["round"])):
                continue                                    # dropped out mid-round: no reply
            try:
                out = client_train(msg, ctx)
            except TinytrainError as e:
                out = {"round": int(_cfg(msg)["round"]), "refused": str(e)}
            rep = Message(content=RecordDict({"tt": ConfigRecord(out)}), reply_to=msg)
            replies.append(rep)
        return replies


if ServerApp is not None:
    server_app = ServerApp()

    @server_app.main()
    def _main(grid, context):
        c = context.run_config
        srv = Server(c["build"], rounds=int(c.get("rounds", 3)), steps=int(c.get("steps", 20)),
                     rule=str(c.get("aggregate", "fedavg")), clip=float(c.get("clip", 0.0)), k=int(c.get("k", 64)),
                     seed=int(c.get("seed", 0)), checkpoint=c.get("checkpoint") or None,
                     timeout=float(c.get("timeout", 60)), eval_samples=int(c.get("eval-samples", 500)))
        want = int(c.get("min-nodes", 1))
        t0 = time.time()
        while len(list(grid.get_node_ids())) < want and time.time() - t0 < 60:
            time.sleep(0.5)
        srv.run(grid)
        import json
        out = c.get("history")
        if out:
            Path(out).write_text(json.dumps({"history": srv.history, "rejected": srv.rejected}, indent=1))
else:
    server_app = None
