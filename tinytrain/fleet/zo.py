"""Zeroth-order fleet in seeds (FedKSeed-style): every round has K candidate seeds that all devices
derive from the round seed with the shared PRNG (compiler/quant/prng.py == tt_prng.h); a client's
update is (seed index, scalar) pairs, one a local step; the server and every client apply the round's
accepted pairs in one fixed order with the MeZO update kernels (compiler/ops/zo.py, bit-exact with
the C), the stochastic rounding drawn from a PRNG seeded with the round seed, so every device's
trained tensors stay bit-identical to the server's without any weight leaving a device.

Order and weights of the replay: clients by their id, each client's pairs in step order; a pair's
scalar is multiplied by n_c / sum(n) (float32, one rounding) of the accepted clients' samples.
Bytes on the wire: 6 per pair (uint16 index + float32 scalar) up, and the merged list down."""
import numpy as np

from ..compiler.errors import TinytrainError
from ..compiler.ops import zo as zo_ops
from ..compiler.quant.fmath import softmax_xent
from ..compiler.quant.prng import prng_next, prng_seed

PAIR_BYTES = 6
MAX_SCALAR = 1e6


def round_seed(base, round_no):
    """The round's seed: the shared PRNG's first draw after seeding with base * 1000003 + round."""
    st = np.zeros(1, np.uint32)
    prng_seed(st, np.uint32((int(base) * 1000003 + int(round_no)) & 0xFFFFFFFF))
    return int(prng_next(st))


def candidates(rseed, k):
    """K candidate step seeds of a round: consecutive draws of the shared PRNG seeded with the round seed."""
    st = np.zeros(1, np.uint32)
    prng_seed(st, np.uint32(rseed))
    return [int(prng_next(st)) for _ in range(int(k))]


def check_pairs(pairs, k, steps_max, where="update"):
    """(index, scalar) pairs from a client: integer indices in [0, K), finite bounded float32 scalars."""
    idx = np.asarray(pairs[0])
    sc = np.asarray(pairs[1])
    if idx.dtype.kind not in "iu" or sc.dtype != np.float32 or idx.shape != sc.shape or idx.ndim != 1:
        raise TinytrainError(f"{where}: pairs must be an integer index array and a float32 scalar array "
                             f"of one length")
    if len(idx) > steps_max:
        raise TinytrainError(f"{where}: {len(idx)} pairs, at most {steps_max} a round")
    if len(idx) and (idx.min() < 0 or idx.max() >= k):
        raise TinytrainError(f"{where}: seed index outside the round's {k} candidates")
    if not np.isfinite(sc).all() or (len(sc) and np.abs(sc).max() > MAX_SCALAR):
        raise TinytrainError(f"{where}: non-finite or out-of-range scalar")
    return idx.astype(np.int64), sc


class ZoDevice:
    """The trained tensors of the zeroth-order graph in the simulator, set from / written to the
    compiled ZO library's state blob (the manifest's offsets)."""

    def __init__(self, build, manifest):
        from ..api import load
        from ..train.mezo import MezoTrainer
        self.m = manifest
        d = manifest.d
        self.trainer = MezoTrainer(load(str(build / "int8.tt.npz")), d["update"], lr=d["lr"], eps=d.get("eps", 1))
        g = self.trainer.graph
        by_name = {it_name: it for it_name, it in ((g.t(it["tid"]).name, it) for it in self.trainer.items)}
        self.items = [by_name[t["name"]] for t in manifest.tensors]
        self.tensors = [g.t(it["tid"]) for it in self.items]
        self.eps = int(d.get("eps", 1))
        self.lr = np.float32(d["lr"])

    def set_blob(self, blob):
        for t, a in zip(self.tensors, self.m.read(blob)):
            t.data.reshape(-1)[...] = a

    def arrays(self):
        return [t.data.reshape(-1).copy() for t in self.tensors]

    def _perturb(self, seed, sign):
        zs = np.zeros(1, np.uint32)
        prng_seed(zs, np.uint32(seed))
        for it, t in zip(self.items, self.tensors):
            if it["kind"] == "weight":
                zo_ops.zo_perturb_s8(t.data, it["w_inner"], it["w_k"], it["rows"], it["g_inner"], it["g_k"],
                                     sign * self.eps, zs)
            else:
                zo_ops.zo_perturb_s32(t.data, it["amount"], sign, np.int32(it["perturb_limit"]), zs)

    def apply(self, seed, scaled, sr):
        """One MeZO update along seed's direction by the scalar `scaled` (= p * lr), rounding from sr."""
        zs = np.zeros(1, np.uint32)
        prng_seed(zs, np.uint32(seed))
        for it, t in zip(self.items, self.tensors):
            if it["kind"] == "weight":
                zo_ops.zo_update_s8(t.data, it["w_inner"], it["w_k"], it["rows"], it["g_inner"], it["g_k"],
                                    it["factor"], np.float32(scaled), it["limit"], zs, sr)
            else:
                zo_ops.zo_update_s32(t.data, it["factor"], np.float32(scaled), np.int32(it["limit"]), zs, sr)

    def _loss(self, xq, label):
        g = self.trainer.graph
        out = self.trainer.sim.run_int8(xq)[0]
        t = g.t(g.outputs[0])
        z = np.float32(t.q.scale) * (out.astype(np.int32) - np.int32(t.q.zero_point)).astype(np.float32)
        z = np.ascontiguousarray(z.reshape(-1), np.float32)
        return np.float32(softmax_xent(z, np.int32(label), np.empty_like(z)))

    def local_round(self, x_onnx, y, cands, steps, rng, sr_seed):
        """`steps` local MeZO steps, each along a candidate seed picked by rng. -> (indices, scalars)"""
        sr = np.zeros(1, np.uint32)
        prng_seed(sr, np.uint32(sr_seed))
        idx, sc = [], []
        for s in range(steps):
            i = int(rng.integers(len(x_onnx)))
            k = int(rng.integers(len(cands)))
            xq = self.trainer.sim.quantize_input(x_onnx[i:i + 1])
            self._perturb(cands[k], 1)
            lp = self._loss(xq, int(y[i]))
            self._perturb(cands[k], -2)
            lm = self._loss(xq, int(y[i]))
            self._perturb(cands[k], 1)
            p = (lp - lm) * np.float32(0.5)
            if not np.isfinite(p):
                continue
            scaled = np.float32(p * self.lr)
            self.apply(cands[k], scaled, sr)
            idx.append(k)
            sc.append(scaled)
        return np.array(idx, np.uint16), np.array(sc, np.float32)

    def replay(self, blob, rseed, cands, accepted):
        """From the round's global blob, apply accepted = [(indices, scalars, n_samples)] in order.
        -> the next global blob (sealed)."""
        self.set_blob(blob)
        sr = np.zeros(1, np.uint32)
        prng_seed(sr, np.uint32(rseed ^ 0x5A5A5A5A))
        total = sum(int(n) for _, _, n in accepted)
        for idx, sc, n in accepted:
            w = np.float32(int(n) / total) if total else np.float32(0)
            for k, s in zip(idx, sc):
                self.apply(cands[int(k)], np.float32(np.float32(s) * w), sr)
        import struct
        steps = struct.unpack_from("<i", blob, 12)[0] + sum(len(i) for i, _, _ in accepted)
        return self.m.write(blob, self.arrays(), steps=steps)

    def evaluate(self, x_onnx, y):
        return float(np.mean(self.trainer.sim.predict(x_onnx) == np.asarray(y)))
