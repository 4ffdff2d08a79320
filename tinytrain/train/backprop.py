"""Backprop training of the int8 graph in the simulator, one sample per step
(the device's batch 1), bit-exact with the C runtime by construction."""
import numpy as np

from ..compiler.errors import TinytrainError
from ..compiler.hparams import check_accumulate, check_lr, check_momentum
from ..compiler.ops import get_op
from ..compiler.ops import update as update_ops
from ..compiler.quant.prng import prng_seed
from ..sim.simulator import Simulator


class TrainContext:
    """Run-time hyper-parameters and state that the update ops read."""

    def __init__(self, lr, rounding="stochastic", seed=0, momentum=0.0, accumulate=1):
        if rounding not in ("stochastic", "shadow"):
            raise TinytrainError(f"unknown rounding '{rounding}' (stochastic or shadow)", field="rounding")
        lr = check_lr(lr)
        momentum = check_momentum(momentum)
        accumulate = check_accumulate(accumulate)
        self.lr = np.float32(lr)
        self.rounding = rounding
        self.prng = np.zeros(1, np.uint32)
        prng_seed(self.prng, np.uint32(seed))
        self.shadow = {}
        self.skipped = 0            # steps or updates skipped by the divergence guard
        self.saturated = 0          # updated elements that hit their clamp (int8 +-127, the bias limit)
        self.momentum = float(momentum)
        self.velocity = {}
        self.accumulate = int(accumulate)
        self.accum = {}
        self.phase = 0              # which sample of an accumulation group this step is


class BackpropTrainer:
    def __init__(self, train_graph, lr=0.01, rounding="stochastic", seed=0, momentum=0.0, accumulate=1):
        self.graph = train_graph
        self.ctx = TrainContext(lr, rounding, seed, momentum, accumulate)
        fwd = set(train_graph.meta["training"]["forward"])
        self.forward_nodes = [n for n in train_graph.nodes if n.id in fwd]
        self.sim = Simulator(train_graph, self.forward_nodes)
        self.steps = 0
        # trained int32 biases and their accumulator-safe limits (the C's <name>_guard)
        self.bias_limits = sorted({n.inputs[0]: int(n.attrs["limit"]) for n in train_graph.nodes
                                   if n.op == "sgd_update" and "limit" in n.attrs}.items())

    def guard(self):
        """Trained biases back inside their accumulator-safe range (a restored or modified state),
        before any forward, counted as saturations: mirrors the C's <name>_guard."""
        for tid, lim in self.bias_limits:
            self.ctx.saturated += update_ops.clamp_sym_s32(self.graph.t(tid).data, np.int32(lim))

    def step(self, x_onnx, label):
        """One sample: forward, loss, backward with in-place updates.  -> (loss, logits)"""
        env, loss = self._run(x_onnx, label, apply=True)
        self.steps += 1
        self.ctx.phase = self.steps % self.ctx.accumulate
        return loss, env[self.graph.outputs[0]]

    def gradients(self, x_onnx, label):
        """One sample's forward and backward without updating anything.
        -> {tensor id: value} for every tensor of the step (activations, masks,
        gradients; a parameter's gradient is the second input of its sgd_update)."""
        env, _ = self._run(x_onnx, label, apply=False)
        return env

    def _run(self, x_onnx, label, apply):
        g = self.graph
        x = np.asarray(x_onnx, np.float32)
        if x.ndim == len(g.meta["input_shape"]) - 1:
            x = x[None]
        xq = self.sim.quantize_input(x)
        self.guard()
        n_cls = g.t(g.outputs[0]).size         # the logits of one sample, flattened: one per class
        label = int(label)
        if not 0 <= label < n_cls:
            raise TinytrainError(f"label {label} is outside the model's {n_cls} classes", field="y")
        env = {g.inputs[0]: xq, g.inputs[1]: np.array([label], np.int32)}
        masks = {}
        loss = None
        for node in g.nodes:
            op = get_op(node.op)
            ins = [env[i] if i in env else g.t(i).data for i in node.inputs]
            if op.side_effect:
                if not apply:
                    continue
                if not np.all(np.isfinite(ins[1])):
                    self.ctx.skipped += 1            # divergence guard: this update is skipped
                    continue
                op.apply(node, g, ins[1], self.ctx)
                continue
            outs = op.sim(node, g, ins, masks if node.attrs.get("keep_mask") else None)
            if node.attrs.get("keep_mask"):
                outs = list(outs) + [masks[node.id]]
            for o, v in zip(node.outputs, outs):
                env[o] = v
            if get_op(node.op).loss:
                loss = float(outs[0][0])
                if not np.isfinite(loss):
                    self.ctx.skipped += 1           # divergence guard: no update this step
                    break
        return env, loss

    @property
    def skipped(self):
        return self.ctx.skipped

    @property
    def saturated(self):
        return self.ctx.saturated

    def evaluate(self, x, y, batch=256):
        self.guard()
        pred = self.sim.predict(x, batch)
        return float(np.mean(pred == np.asarray(y)))
