"""Zeroth-order (MeZO) training of the int8 graph in the simulator: two forward
passes per step, no backward, no saved activations: inference memory plus one
float per class.  Bit-exact with the emitted C (`tinytrain compile --trainer mezo`).

Hybrid mode: the classifier learns by backprop (its own tiny backward), the rest
by MeZO."""
import numpy as np

from ..compiler.errors import TinytrainError
from ..compiler.hparams import check_eps, check_lr, check_queries
from ..compiler.ops import zo
from ..compiler.ops.update import clamp_sym_s32
from ..compiler.passes.zo_plan import zo_plan
from ..compiler.quant.fmath import softmax_xent
from ..compiler.quant.prng import prng_next, prng_seed
from ..compiler.scheme import resolve
from ..sim.simulator import Simulator


class MezoTrainer:
    def __init__(self, graph_int8, update="sparse", lr=0.01, eps=1, queries=1, seed=0, hybrid=False, bp_lr=0.02):
        lr, eps, queries = check_lr(lr), check_eps(eps), check_queries(queries)
        if hybrid:
            bp_lr = check_lr(bp_lr, field="bp_lr")
        scheme = resolve(graph_int8, update)
        self.backprop = None
        if hybrid:
            # the classifier learns by backprop, the rest of the scheme by MeZO
            from ..compiler.scheme import weighted_layers
            head = weighted_layers(graph_int8)[-1].id
            scheme.weights.pop(head, None)
            scheme.biases.discard(head)
        self.graph = zo_plan(graph_int8, scheme, eps)
        self.items = self.graph.meta["zo"]["items"]
        self.eps = int(eps)
        self.lr = np.float32(lr)
        self.queries = int(queries)
        self.prng = np.zeros(1, np.uint32)
        prng_seed(self.prng, np.uint32(seed))
        self.sim = Simulator(self.graph)
        if hybrid:
            from ..compiler.pipeline import training_graph
            from .backprop import BackpropTrainer
            tg = training_graph(self.graph, "classifier", weight_headroom=1.0)
            for tid, t in tg.tensors.items():         # one set of weights for both trainers
                if t.kind == "const" and tid in self.graph.tensors:
                    t.data = self.graph.t(tid).data
            self.backprop = BackpropTrainer(tg, lr=bp_lr, seed=seed + 1)
        self.skipped = 0            # estimates skipped by the divergence guard (a non-finite loss difference)
        self.saturated = 0          # perturbed / updated elements that hit their clamp
        self.steps = 0
        self.n_cls = self.graph.t(self.graph.outputs[0]).size

    def _loss(self, xq, label):
        out = self.sim.run_int8(xq)[0]
        t = self.graph.t(self.graph.outputs[0])
        z = (np.float32(t.q.scale) * (out.astype(np.int32) - np.int32(t.q.zero_point)).astype(np.float32))
        z = np.ascontiguousarray(z.reshape(-1), np.float32)
        grad = np.empty_like(z)
        return np.float32(softmax_xent(z, np.int32(label), grad)), z

    def _perturb(self, seed, sign):
        zs = np.zeros(1, np.uint32)
        prng_seed(zs, np.uint32(seed))
        for it in self.items:
            t = self.graph.t(it["tid"])
            if it["kind"] == "weight":
                self.saturated += zo.zo_perturb_s8(t.data, it["w_inner"], it["w_k"], it["rows"], it["g_inner"],
                                                    it["g_k"], sign * self.eps, zs)
            else:
                self.saturated += zo.zo_perturb_s32(t.data, it["amount"], sign, np.int32(it["perturb_limit"]), zs)

    def _update(self, seed, scaled_p):
        zs = np.zeros(1, np.uint32)
        prng_seed(zs, np.uint32(seed))
        for it in self.items:
            t = self.graph.t(it["tid"])
            if it["kind"] == "weight":
                self.saturated += zo.zo_update_s8(t.data, it["w_inner"], it["w_k"], it["rows"], it["g_inner"],
                                                   it["g_k"], it["factor"], scaled_p, it["limit"], zs, self.prng)
            else:
                self.saturated += zo.zo_update_s32(t.data, it["factor"], scaled_p, np.int32(it["limit"]), zs,
                                                    self.prng)

    def step(self, x, label):
        """One sample: `queries` two-point estimates, each applied at once. -> (loss, logits of the + pass)"""
        x = np.asarray(x, np.float32)
        if x.ndim == len(self.graph.meta["input_shape"]) - 1:
            x = x[None]
        label = int(label)
        if not 0 <= label < self.n_cls:
            raise TinytrainError(f"label {label} is outside the model's {self.n_cls} classes", field="y")
        xq = self.sim.quantize_input(x)
        self.guard()
        inv_q = np.float32(1.0 / self.queries)
        loss_sum, logits = np.float32(0.0), None
        for _ in range(self.queries):
            seed = np.uint32(prng_next(self.prng))
            self._perturb(seed, 1)
            lp, logits_p = self._loss(xq, label)
            self._perturb(seed, -2)
            lm, _ = self._loss(xq, label)
            self._perturb(seed, 1)
            if logits is None:
                logits = logits_p
            p = (lp - lm) * np.float32(0.5)
            if not np.isfinite(p):
                self.skipped += 1
                continue
            self._update(seed, np.float32((p * self.lr) * inv_q))
            loss_sum = loss_sum + (lp + lm) * np.float32(0.5)
        if self.backprop is not None:
            self.backprop.step(x, label)
        self.steps += 1
        return float(loss_sum * inv_q), logits

    def guard(self):
        """Trained biases back inside +-(L - a) (a restored or modified state), before any forward,
        counted as saturations: mirrors the C's <name>_guard."""
        for it in self.items:
            if it["kind"] == "bias":
                self.saturated += clamp_sym_s32(self.graph.t(it["tid"]).data, np.int32(it["limit"]))

    def evaluate(self, x, y, batch=256):
        self.guard()
        return float(np.mean(self.sim.predict(x, batch) == np.asarray(y)))
