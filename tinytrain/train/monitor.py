"""The divergence monitor: one place that watches every trainer's steps (backprop
in the simulator or in C, MeZO in the simulator or in C) and stops a run that has
gone wrong, keeping the weights of the last window that looked healthy.

Windows.  The steps are cut into consecutive windows of W = min(200, steps per
epoch) steps (they run across epoch boundaries).  The first W // 4 steps are a
warm-up that no window counts.  At the end of every window the monitor looks at
that window's steps:

  (a) non-finite loss   a NaN or infinite loss on >= 25% of the window's steps;
  (b) pinned loss       the loss at its cap on >= 25% of the steps.  With int8
                        logits of scale s the cross-entropy is bounded: the logits
                        span R = 255 s, so the loss is at most R + ln(K - 1) and
                        sits at R when one class holds the top code and the label
                        the bottom one.  "At the cap" is loss >= 0.9 R (MCU CNN with
                        logits in [-16, 16]: R = 32).  Off for float logits;
  (c) one-class collapse  one class predicted on >= 90% of the steps while the
                        window's labels hold more than one class and that class is
                        at most half of them (a data set that is mostly one class
                        does not trip it);
  (d) skipped updates   more updates skipped by the trainer's divergence guard
                        (`trainer.skipped`, non-finite loss or gradient) than half the
                        window's steps.

A window with none of these is good: the trainable state is copied (the
checkpoint; the first one is taken before step 1).  On a bad window the trainer's
state goes back to the checkpoint and `fit` raises DivergenceError, whose message
is one line naming the step, the symptom and the fix.

The thresholds leave a wide margin on healthy runs: the README's command (MCU CNN,
fmnist, sparse, 2 epochs, sim) and MeZO / hybrid runs at their usual learning rates
show no pinned loss and at most 45% of a window on one class; --lr 1e6 pins the
loss on 30-85% of the first window or predicts one class on 99-100% of it.  A last window shorter than
W is checked too when it holds at least W / 2 steps.
"""
import math

import numpy as np

from ..compiler.errors import TinytrainError

WINDOW = 200
NONFINITE_SHARE = 0.25
PINNED_SHARE = 0.25
PINNED_LEVEL = 0.9
COLLAPSE_SHARE = 0.90
COLLAPSE_LABEL_SHARE = 0.50
SKIPPED_SHARE = 0.50


class DivergenceError(TinytrainError):
    """Training diverged.  Carries what the caller needs to keep the last good weights:
    step (where it stopped), reason ('nonfinite', 'pinned', 'collapse' or 'skipped'),
    last_good_step (the checkpoint the trainer's weights were set back to), record (a
    dict for reports) and, set by the layer that has them, history, model, trainer and path."""

    def __init__(self, problem, *, step, reason, last_good_step, record):
        super().__init__(problem)
        self.step, self.reason, self.last_good_step, self.record = step, reason, last_good_step, record
        self.history = None
        self.model = None
        self.trainer = None
        self.path = None


def loss_cap(graph):
    """R = 255 * the logits' scale for int8 logits (the loss's ceiling, see above), or None."""
    node = next((n for n in graph.nodes if n.op == "softmax_xent"), None)
    t = graph.t(node.inputs[0] if node is not None else graph.outputs[0])
    if t.dtype != "int8" or t.q is None:
        return None
    return 255.0 * float(np.max(t.q.scale))


def _trainable_tensors(trainer):
    """The tensors a (simulator) trainer updates, each once."""
    seen, out = set(), []
    for tr in (trainer, getattr(trainer, "backprop", None)):
        if tr is None:
            continue
        g = tr.graph
        tids = g.meta.get("training", {}).get("trainable") or [it["tid"] for it in g.meta.get("zo", {}).get("items", [])]
        for tid in tids:
            t = g.t(tid)
            if id(t.data) not in seen:
                seen.add(id(t.data))
                out.append(t)
    return out


def snapshot(trainer):
    """A copy of the trainer's trainable state: the C state blob, or the tensors' values."""
    model = getattr(trainer, "model", None)
    if model is not None and hasattr(model, "state_bytes"):
        return model.state_bytes()
    return [(t, t.data.copy()) for t in _trainable_tensors(trainer)]


def restore(trainer, snap):
    """Put a snapshot back (in place: trainers that share arrays keep sharing them)."""
    if isinstance(snap, bytes):
        trainer.model.ffi.memmove(trainer.model.state, snap, len(snap))
    else:
        for t, data in snap:
            t.data[...] = data


class Monitor:
    """Feed it every step (`observe`); it raises DivergenceError at the end of a bad window.
    trainer=None runs the checks alone (unit tests): no checkpoint is kept."""

    def __init__(self, trainer, steps_per_epoch, loss_cap=None, lr=None, lr_flag="--lr", window=WINDOW):
        self.trainer = trainer
        self.window = max(1, min(int(window), int(steps_per_epoch)))
        self.warmup = self.window // 4
        self.cap = loss_cap
        self.lr, self.lr_flag = lr, lr_flag
        self.step = 0
        self.good_step = 0
        self.good = snapshot(trainer) if trainer is not None else None
        self._skip_count = 0
        self._reset()

    def _skipped(self):
        return self._skip_count if self.trainer is None else int(self.trainer.skipped)

    def _reset(self):
        self.losses, self.preds, self.labels = [], [], []
        self.skipped0 = self._skipped()

    def observe(self, loss, pred, label, skipped=None):
        """One step: its loss (None or non-finite counts as non-finite), predicted class, label.
        skipped: the trainer's running skipped count (default: read from the trainer)."""
        self.step += 1
        if skipped is not None:
            self._skip_count = int(skipped)
        if self.step <= self.warmup:
            if self.step == self.warmup:
                self._reset()
            return
        self.losses.append(math.nan if loss is None else float(loss))
        self.preds.append(int(pred))
        self.labels.append(int(label))
        if len(self.losses) >= self.window:
            self.check()

    def finish(self):
        """End of training: check the last, partial window if it is long enough."""
        if len(self.losses) >= max(1, self.window // 2):
            self.check()

    def verdict(self):
        """-> (reason, explanation) for the current window, or None when it looks healthy."""
        n = len(self.losses)
        if n == 0:
            return None
        loss = np.asarray(self.losses, np.float64)
        lr = "" if self.lr is None else f"; lower {self.lr_flag} (now {self.lr:.3g})"
        bad = int(np.sum(~np.isfinite(loss)))
        if bad >= NONFINITE_SHARE * n:
            return "nonfinite", f"the loss is not finite on {bad} of the last {n} steps{lr}"
        if self.cap is not None:
            pinned = int(np.sum(np.isfinite(loss) & (loss >= PINNED_LEVEL * self.cap)))
            if pinned >= PINNED_SHARE * n:
                return "pinned", f"the loss is pinned at its cap ({self.cap:.1f}) on {pinned} of the last {n} steps{lr}"
        preds, labels = np.asarray(self.preds), np.asarray(self.labels)
        top = int(np.bincount(preds).argmax())
        n_top = int(np.sum(preds == top))
        classes = np.unique(labels).size
        if classes > 1 and n_top >= COLLAPSE_SHARE * n and np.sum(labels == top) <= COLLAPSE_LABEL_SHARE * n:
            return "collapse", (f"the model predicts class {top} on {n_top} of the last {n} steps while their "
                                f"labels hold {classes} classes{lr}")
        skipped = self._skipped() - self.skipped0
        if skipped > SKIPPED_SHARE * n:
            return "skipped", (f"{skipped} updates were skipped (non-finite loss or gradients) in the last {n} "
                               f"steps{lr}")
        return None

    def check(self):
        v = self.verdict()
        n = len(self.losses)
        if v is None:
            if self.trainer is not None:
                self.good = snapshot(self.trainer)
            self.good_step = self.step
            self._reset()
            return
        reason, why = v
        if self.trainer is not None:
            restore(self.trainer, self.good)
        record = {"step": self.step, "reason": reason, "explanation": why, "window": n,
                  "last_good_step": self.good_step, "loss_cap": self.cap}
        raise DivergenceError(f"training diverged at step {self.step}: {why}; the weights are those of step "
                              f"{self.good_step}, the last good checkpoint", step=self.step, reason=reason,
                              last_good_step=self.good_step, record=record)
