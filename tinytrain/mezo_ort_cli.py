"""`tinytrain mezo`: zeroth-order training of a float ONNX model on onnxruntime
(tinytrain/mezo_ort.py), its data files, the training loop, and `--replay`.

    tinytrain mezo model.onnx --data train.npz [--test test.npz] [--trainable 'classifier.*,...']
                   --steps N --batch B --lr LR --eps EPS [--queries n] [--z rademacher|normal] --seed S -o out/
    tinytrain mezo model.onnx --replay out/model.mezo.json -o out/     # -> out/model.mezo.onnx

Data: .npz with one array per data input of the model, named like the input
(e.g. input_ids, attention_mask), or `x` for a single-input model, and labels `y`;
.csv / .npy for a single-input model (tinytrain.data.load_dataset).  Arrays are
cast to the input's dtype (token ids stored as int32 become int64).
"""
import json
import time
from pathlib import Path

import numpy as np

from .compiler.errors import TinytrainError
from .data import load_dataset, read_npz
from .mezo_ort import (MezoSession, MezoTrainer, load_checkpoint, replay, save_checkpoint, weights_digest,
                       write_model)


def load_data(path, sess, need_labels=True):
    """-> ({input name: array [N, ...] of the input's dtype}, y int64 [N] or None)."""
    import onnx
    path = Path(path)
    if not path.is_file():
        raise TinytrainError("no such file", file=path)
    names = list(sess.inputs)
    if path.suffix.lower() == ".npz":
        try:                          # bounded: each member's header is checked before it is read
            arrays = {k: a for k, (a, _) in read_npz(path, names + ["x", "y"]).items()}
        except TinytrainError:
            raise
        except Exception as e:
            raise TinytrainError(f"cannot read data: {type(e).__name__}: {e}", file=path) from None
        if all(n in arrays for n in names):
            feeds = {n: arrays[n] for n in names}
        elif len(names) == 1 and "x" in arrays:
            feeds = {names[0]: arrays["x"]}
        else:
            raise TinytrainError(f"needs arrays {', '.join(names)} (or x for a single-input model); has "
                                 f"{', '.join(arrays) or 'nothing'}", file=path)
        y = arrays.get("y")
    elif len(names) == 1:
        shape = sess.inputs[names[0]][1]
        x, y = load_dataset(path, shape if None not in shape[1:] else None)
        feeds = {names[0]: x}
    else:
        raise TinytrainError(f"the model has {len(names)} inputs ({', '.join(names)}): use an .npz with one "
                             f"array per input", file=path)
    n = None
    for name, arr in list(feeds.items()):
        elem, shape = sess.inputs[name]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
        if not np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_:
            raise TinytrainError(f"array has dtype {arr.dtype}, the model takes {dtype}", file=path, field=name)
        want = ["N" if d is None else d for d in shape]
        if arr.ndim != len(shape) or any(d is not None and d != a for d, a in zip(shape[1:], arr.shape[1:])):
            raise TinytrainError(f"array has shape {list(arr.shape)}, the model takes {want}", file=path, field=name)
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            raise TinytrainError("contains NaN or Inf", file=path, field=name)
        feeds[name] = np.ascontiguousarray(arr.astype(dtype, copy=False))
        if n is not None and len(arr) != n:
            raise TinytrainError(f"arrays have different lengths ({n} and {len(arr)})", file=path, field=name)
        n = len(arr)
    if y is not None:
        y = np.asarray(y)
        if y.shape != (n,) or not np.all(np.equal(np.mod(y, 1), 0)):
            raise TinytrainError(f"labels y have shape {list(y.shape)}, expected {n} integers", file=path, field="y")
        y = y.astype(np.int64)
    if need_labels and y is None:
        raise TinytrainError("this command needs labels: an array 'y'", file=path, field="y")
    return feeds, y


def fixed_batch(sess):
    dims = {shape[0] for _, shape in sess.inputs.values() if shape}
    dims.discard(None)
    return dims.pop() if len(dims) == 1 else None


def take(feeds, idx):
    return {k: np.ascontiguousarray(v[idx]) for k, v in feeds.items()}


def evaluate(sess, feeds, y, batch=64):
    """-> (accuracy, mean cross-entropy) over all samples; a fixed batch dim pads the last batch."""
    fb = fixed_batch(sess)
    batch = fb or batch
    n, correct, total = len(y), 0, 0.0
    for i in range(0, n, batch):
        idx = np.arange(i, min(i + batch, n))
        pad = np.concatenate([idx, np.full(batch - len(idx), idx[-1])]) if fb and len(idx) < batch else idx
        loss_all, z = _per_sample_loss(sess, take(feeds, pad), y[pad])
        correct += int(np.sum(z[:len(idx)].argmax(1) == y[idx]))
        total += float(loss_all[:len(idx)].sum())
    return correct / n, total / n


def _per_sample_loss(sess, feeds, y):
    z = sess.logits(feeds).astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y], z


def check_labels(sess, feeds, y, path):
    n_cls = sess.logits(take(feeds, np.arange(min(len(y), fixed_batch(sess) or 1)) % len(y))).shape[-1]
    if y.min() < 0 or y.max() >= n_cls:
        raise TinytrainError(f"labels outside the model's {n_cls} classes", file=path, field="y")


def cmd_mezo(args):
    from .outdir import prepare          # -o checked before any work; written only on success
    with prepare(args.output, force=args.force, command="mezo --replay" if args.replay else "mezo") as tmp:
        return _cmd_replay(args, tmp) if args.replay else _mezo(args, tmp)


def _mezo(args, out):
    if not args.data:
        raise TinytrainError("needs --data (training) or --replay (a checkpoint)", field="--data")
    if args.steps < 1 or args.batch < 1:
        raise TinytrainError("--steps and --batch must be >= 1", field="--steps/--batch")
    sess = MezoSession(args.model, args.trainable, threads=args.threads)
    feeds, y = load_data(args.data, sess)
    fb = fixed_batch(sess)
    if fb and fb != args.batch:
        raise TinytrainError(f"the model's batch dimension is fixed to {fb}: use --batch {fb}", file=args.model)
    check_labels(sess, feeds, y, args.data)
    test = load_data(args.test, sess) if args.test else None
    if test is not None:
        check_labels(sess, *test, args.test)
    trainer = MezoTrainer(sess, lr=args.lr, eps=args.eps, queries=args.queries, z=args.z, seed=args.seed)
    print(f"mezo: {len(sess.names)} trainable tensors, {sess.n_params} parameters "
          f"({', '.join(sess.names[:4])}{', ...' if len(sess.names) > 4 else ''}); "
          f"z {args.z}, eps {args.eps}, lr {args.lr}, {args.queries} quer{'y' if args.queries == 1 else 'ies'}, "
          f"batch {args.batch}")
    report = {"model": str(args.model), "trainable": sess.names, "params": sess.n_params, "steps": args.steps,
              "batch": args.batch, "lr": args.lr, "eps": args.eps, "queries": args.queries, "z": args.z,
              "seed": args.seed, "threads": args.threads, "history": [], "evals": []}
    if test is not None:
        acc, loss = evaluate(sess, *test)
        report["evals"].append({"step": 0, "test_accuracy": acc, "test_loss": loss})
        print(f"test accuracy before: {100 * acc:.2f}% (loss {loss:.4f}, {len(test[1])} samples)")
    rng = np.random.default_rng(args.seed)
    order, pos, t_steps = rng.permutation(len(y)), 0, 0.0
    log_every = args.log_every or max(1, args.steps // 20)
    for step in range(1, args.steps + 1):
        if pos + args.batch > len(y):
            order, pos = rng.permutation(len(y)), 0
        idx = order[pos:pos + args.batch] if args.batch <= len(y) else rng.integers(0, len(y), args.batch)
        pos += args.batch
        t0 = time.perf_counter()
        loss, est = trainer.step(take(feeds, idx), y[idx])
        t_steps += time.perf_counter() - t0
        report["history"].append({"step": step, "loss": loss, "g": [g for _, g in est]})
        evaluated = ""
        if test is not None and args.eval_every and step % args.eval_every == 0 and step != args.steps:
            acc, tl = evaluate(sess, *test)
            report["evals"].append({"step": step, "test_accuracy": acc, "test_loss": tl})
            evaluated = f", test accuracy {100 * acc:.2f}%"
        if not args.quiet and (step % log_every == 0 or step == args.steps or evaluated):
            recent = np.mean([h["loss"] for h in report["history"][-log_every:]])
            print(f"step {step}/{args.steps}: loss {recent:.4f} (mean of the last {min(step, log_every)}), "
                  f"{1000 * t_steps / step:.0f} ms/step{evaluated}", flush=True)
    report["ms_per_step"] = 1000 * t_steps / args.steps
    if test is not None:
        acc, loss = evaluate(sess, *test)
        report["evals"].append({"step": args.steps, "test_accuracy": acc, "test_loss": loss})
        print(f"test accuracy after {args.steps} steps: {100 * acc:.2f}% (loss {loss:.4f})")
    final = Path(args.output)
    stem = Path(args.model).name.split(".")[0]
    ckpt = trainer.checkpoint()
    save_checkpoint(ckpt, out / f"{stem}.mezo.json")
    report["checkpoint"] = str(final / f"{stem}.mezo.json")
    (out / "mezo_report.json").write_text(json.dumps(report, indent=1))
    print(f"checkpoint: {report['checkpoint']} ({args.steps * args.queries} (seed, g) pairs); "
          f"report: {final / 'mezo_report.json'}; {report['ms_per_step']:.0f} ms/step; "
          f"`tinytrain mezo {args.model} --replay {report['checkpoint']} -o {final}` writes the trained model")
    return 0


def _cmd_replay(args, out):
    ckpt = load_checkpoint(args.replay)
    t0 = time.perf_counter()
    names, w = replay(ckpt, args.model)
    same = ckpt.get("weights_sha256") == weights_digest(w)
    path = write_model(args.model, names, w, out / (Path(args.model).name.split(".")[0] + ".mezo.onnx"))
    print(f"replayed {len(ckpt['steps'])} steps on {len(names)} tensors in {time.perf_counter() - t0:.2f} s: "
          f"{Path(args.output) / path.relative_to(out)}; weights identical to training's (sha256): {'yes' if same else 'NO'}")
    if args.test:
        sess = MezoSession(path, names, threads=args.threads)
        acc, loss = evaluate(sess, *load_data(args.test, sess))
        print(f"test accuracy of the replayed model: {100 * acc:.2f}% (loss {loss:.4f})")
    return 0 if same or "weights_sha256" not in ckpt else 1


def add_commands(sub):
    s = sub.add_parser("mezo", help="zeroth-order (MeZO) training of a float ONNX model on onnxruntime, "
                                    "at inference memory; --replay rebuilds the trained model from its seeds")
    s.add_argument("model", help="float model.onnx (the base model, for --replay too)")
    s.add_argument("--data", help="labelled training data: .npz with one array per model input (or x) and y; .csv")
    s.add_argument("--test", help="labelled test data, evaluated before and after")
    s.add_argument("--trainable", help="comma-separated globs of initializer names, e.g. "
                                       "'classifier.*,bert.encoder.layer.5.*' (default: every float initializer)")
    s.add_argument("--steps", type=int, default=500)
    s.add_argument("--batch", type=int, default=16, help="samples per loss (default 16)")
    s.add_argument("--lr", type=float, default=1e-5)
    s.add_argument("--eps", type=float, default=1e-3, help="perturbation size (default 1e-3)")
    s.add_argument("--queries", type=int, default=1, help="estimates averaged per step, each with its own seed")
    s.add_argument("--z", choices=["rademacher", "normal"], default="rademacher",
                   help="perturbation: +-1 (default) or the PRNG's bounded normal")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    s.add_argument("--eval-every", type=int, default=0, help="also evaluate --test every N steps")
    s.add_argument("--log-every", type=int, default=0, help="print every N steps (default steps/20)")
    s.add_argument("--replay", help="a checkpoint (.mezo.json): rebuild the trained weights into <model>.mezo.onnx")
    s.add_argument("--quiet", action="store_true")
    s.add_argument("-o", "--output", required=True, help="output folder")
    s.add_argument("--force", action="store_true",
                   help="write into a non-empty -o tinytrain did not write, or over generated files you edited "
                        "(only the files tinytrain writes are replaced; nothing else is deleted)")
    s.set_defaults(func=cmd_mezo)
