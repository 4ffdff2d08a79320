"""The training loop shared by the CLI and the Python API: epochs over a data
set, a progress line, evaluation, a history."""
import sys
import time

import numpy as np

from .monitor import DivergenceError, Monitor, loss_cap


def fit(trainer, x, y, epochs=1, seed=0, test=None, progress=True, out=sys.stderr, limit=0, monitor=True,
        lr_flag="--lr"):
    """Train `trainer` (step(x, label) -> (loss, logits)) on (x, y) for `epochs`.
    -> history: one dict per epoch (loss, train accuracy, test accuracy, seconds).

    monitor: watch for divergence (tinytrain/train/monitor.py); on it the trainer's weights
    go back to the last good checkpoint and DivergenceError is raised (its `history`
    holds the finished epochs).  lr_flag names the learning rate in its message."""
    rng = np.random.default_rng(seed)
    history = []
    n = len(x) if not limit else min(limit, len(x))
    tty = progress and hasattr(out, "isatty") and out.isatty()
    mon = None
    if monitor:
        ctx = getattr(trainer, "ctx", None) or getattr(getattr(trainer, "model", None), "ctx", None)
        lr = getattr(trainer, "lr", None) or getattr(ctx, "lr", None)      # sim MeZO, sim backprop, C
        mon = Monitor(trainer, n, loss_cap=loss_cap(trainer.graph), lr=None if lr is None else float(lr),
                      lr_flag=lr_flag)
    try:
        _epochs(trainer, x, y, epochs, rng, test, progress, out, n, tty, mon, history)
    except DivergenceError as e:
        if tty:
            print(file=out)
        e.history = history
        raise
    return history


def rate_eta(done, total, seconds):
    """'123.4 samples/s, ETA 0:42' (the epoch's remaining time at the rate so far)."""
    if done <= 0 or seconds <= 0:
        return "-- samples/s, ETA --"
    rate = done / seconds
    left = int(round((total - done) / rate))
    eta = f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}" if left >= 3600 else f"{left // 60}:{left % 60:02d}"
    return f"{rate:.1f} samples/s, ETA {eta}"


def _epochs(trainer, x, y, epochs, rng, test, progress, out, n, tty, mon, history):
    for ep in range(epochs):
        t0 = time.perf_counter()
        order = rng.permutation(len(x))[:n]
        loss_sum, correct, seen = 0.0, 0, 0
        for k, i in enumerate(order):
            loss, logits = trainer.step(x[i], y[i])
            if loss is not None and np.isfinite(loss):
                loss_sum += loss
                seen += 1
            pred = int(np.argmax(logits.reshape(-1)))
            correct += int(pred == y[i])
            if mon is not None:
                mon.observe(loss, pred, y[i])
            if progress and (tty or (k + 1) % max(1, n // 4) == 0 or k + 1 == n):
                bar = "#" * int(30 * (k + 1) / n)
                line = (f"epoch {ep + 1}/{epochs} [{bar:<30}] {k + 1}/{n}  loss {loss_sum / max(seen, 1):.4f}  "
                        f"acc {100 * correct / (k + 1):.1f}%  {rate_eta(k + 1, n, time.perf_counter() - t0)}")
                print(("\r" + line) if tty else line, end="" if tty else "\n", file=out, flush=True)
        if tty:
            print(file=out)
        rec = {"epoch": ep + 1, "loss": loss_sum / max(seen, 1), "train_accuracy": correct / n,
               "seconds": time.perf_counter() - t0}
        if test is not None:
            rec["test_accuracy"] = trainer.evaluate(*test)
            if progress:
                print(f"epoch {ep + 1}: test accuracy {100 * rec['test_accuracy']:.2f}%", file=out)
        history.append(rec)
    if mon is not None:
        mon.finish()
