"""Small ONNX graphs, one per op configuration the importer supports.

Each case is a function (rng) -> (Builder, output name, input range).  Used by
test_ops.py (float vs onnxruntime, int8 vs the naive reference, int8 vs float)
and by test_jit_off.py."""
import numpy as np

from .onnx_builder import Builder, rand

# The torch float function of an op that tests/torch_ref.py has no branch for, declared beside
# the op's case: {IR op: (torch.nn.functional, [inputs], attrs) -> value}.  With it, a new
# table op is tested by its case alone: float vs onnxruntime, int8 vs the naive reference (a
# table lookup), gradients vs torch (test_gradients.py) and the C (test_op_decl.py).
TORCH_RULES = {}
# Likewise the naive integer reference of an op that tests/naive.py has no entry for (a table op
# needs none): {IR op: (graph, node, *activation inputs) -> int8 output}
NAIVE_RULES = {}
# cases also compiled to C and trained against the simulator (test_op_decl.py)
C_TRAIN_CASES = []


def _conv(b, x, rng, cin, cout, k, group=1, bias=True, **attrs):
    kk = (k,) if isinstance(k, int) and len(b.shape) == 3 else ((k, k) if isinstance(k, int) else k)
    w = b.init(rand(rng, cout, cin // group, *kk) * (1.0 / np.sqrt(cin // group * np.prod(kk))))
    ins = [x, w] + ([b.init(rand(rng, cout, lo=-0.2, hi=0.2))] if bias else [])
    return b.op("Conv", ins, group=group, **attrs)


def conv_relu(rng):
    b = Builder([1, 3, 12, 12])
    y = _conv(b, "x", rng, 3, 8, 3, strides=[2, 2], pads=[1, 1, 1, 1])
    return b, b.op("Relu", [y]), (-1, 1)


def conv_depthwise_dilated_asym_pads(rng):
    b = Builder([1, 6, 11, 9])
    y = _conv(b, "x", rng, 6, 6, 3, group=6, dilations=[2, 2], pads=[1, 2, 0, 1])
    return b, b.op("Clip", [y, b.init(np.float32(0)), b.init(np.float32(6))]), (-2, 2)


def conv_depthwise_multiplier_same_upper(rng):
    b = Builder([1, 4, 9, 9])
    return b, _conv(b, "x", rng, 4, 8, 5, group=4, strides=[2, 2], auto_pad="SAME_UPPER"), (-1, 1)


def conv_grouped_nobias(rng):
    b = Builder([1, 8, 6, 6])
    return b, _conv(b, "x", rng, 8, 6, 1, group=2, bias=False), (-1, 1)


def conv1d(rng):
    b = Builder([1, 4, 20])
    y = _conv(b, "x", rng, 4, 5, 5, strides=[2], pads=[2, 2])
    return b, b.op("Relu", [y]), (-1, 1)


def conv_bn_relu6_constant_weights(rng):
    b = Builder([1, 3, 8, 8])
    w = b.const_node(rand(rng, 4, 3, 3, 3) * 0.3)
    y = b.op("Conv", ["x", w], pads=[1, 1, 1, 1])
    bn = [b.init(rng.uniform(0.5, 1.5, 4)), b.init(rng.uniform(-0.3, 0.3, 4)), b.init(rng.uniform(-0.2, 0.2, 4)),
          b.init(rng.uniform(0.5, 2.0, 4))]
    y = b.op("BatchNormalization", [y] + bn, epsilon=1e-3)
    return b, b.op("Clip", [y, b.init(np.float32(0)), b.init(np.float32(6))]), (-1, 1)


def batchnorm_standalone(rng):
    b = Builder([1, 5, 4, 4])
    bn = [b.init(rng.uniform(0.5, 1.5, 5)), b.init(rng.uniform(-0.3, 0.3, 5)), b.init(rng.uniform(-0.2, 0.2, 5)),
          b.init(rng.uniform(0.5, 2.0, 5))]
    return b, b.op("BatchNormalization", ["x"] + bn), (-1, 1)


def const_arith(rng):
    """Sub/Div/Mul/Add by scalar and per-channel constants (input normalisation)."""
    b = Builder([1, 3, 6, 6])
    y = b.op("Sub", ["x", b.init(rng.uniform(0, 0.5, (1, 3, 1, 1)))])
    y = b.op("Div", [y, b.init(rng.uniform(0.2, 0.4, (3, 1, 1)))])
    y = _conv(b, y, rng, 3, 4, 3)
    y = b.op("Mul", [y, b.init(np.float32(0.5))])
    return b, b.op("Add", [b.init(rng.uniform(-0.1, 0.1, (1, 4, 1, 1))), y]), (0, 1)


def residual_add_and_standalone_clamp(rng):
    b = Builder([1, 4, 6, 6])
    y = _conv(b, "x", rng, 4, 4, 3, pads=[1, 1, 1, 1])
    r = b.op("Relu", [y])                    # y has two consumers: relu cannot fuse into the conv
    s = b.op("Add", [y, r])
    return b, b.op("Add", [s, "x"]), (-1, 1)


def squeeze_excite_mul(rng):
    b = Builder([1, 6, 5, 5])
    p = b.op("GlobalAveragePool", ["x"])
    g = _conv(b, p, rng, 6, 6, 1)
    g = b.op("Sigmoid", [g])
    return b, b.op("Mul", ["x", g]), (-1, 1)


def hardswish_hardsigmoid(rng):
    b = Builder([1, 4, 5, 5], opset=14)
    y = _conv(b, "x", rng, 4, 4, 1)
    y = b.op("HardSwish", [y])
    y = _conv(b, y, rng, 4, 4, 1)
    return b, b.op("HardSigmoid", [y], alpha=0.2, beta=0.5), (-3, 3)


def leaky_relu(rng):
    """ONNX LeakyRelu (alpha 0.1) after a conv and before a linear layer."""
    b = Builder([1, 3, 6, 6])
    y = _conv(b, "x", rng, 3, 4, 3, pads=[1, 1, 1, 1])
    y = b.op("LeakyRelu", [y], alpha=0.1)
    y = b.op("Flatten", [y])
    return b, b.op("Gemm", [y, b.init(rand(rng, 5, 144)), b.init(rand(rng, 5))], transB=1), (-1, 1)


TORCH_RULES["leaky_relu"] = lambda F, xs, a: F.leaky_relu(xs[0], a["alpha"])
C_TRAIN_CASES.append(leaky_relu)


def pools(rng):
    b = Builder([1, 3, 9, 9])
    a = b.op("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=0)
    m = b.op("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    c = b.op("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)
    return b, b.op("Concat", [a, m, c], axis=1), (-1, 1)


def reduce_mean_gemm(rng):
    b = Builder([1, 4, 5, 5])
    y = b.op("ReduceMean", ["x"], axes=[2, 3], keepdims=0)
    y = b.op("Gemm", [y, b.init(rand(rng, 4, 3)), b.init(rand(rng, 3))], alpha=0.5, beta=2.0)
    return b, b.op("Softmax", [y], axis=1), (-1, 1)


def flatten_gemm_nhwc_order(rng):
    """Flatten of a 3x3 map: the IR must reorder NHWC back to ONNX's C-major order."""
    b = Builder([1, 3, 6, 6])
    y = _conv(b, "x", rng, 3, 4, 3, strides=[2, 2], pads=[1, 1, 1, 1])
    y = b.op("Flatten", [y])
    return b, b.op("Gemm", [y, b.init(rand(rng, 5, 36)), b.init(rand(rng, 5))], transB=1), (-1, 1)


def matmul_add_logsoftmax(rng):
    b = Builder([1, 12])
    y = b.op("MatMul", ["x", b.init(rand(rng, 12, 7))])
    y = b.op("Add", [y, b.init(rand(rng, 7))])
    y = b.op("Relu", [y])
    y = b.op("MatMul", [y, b.init(rand(rng, 7, 3))])
    return b, b.op("LogSoftmax", [y], axis=-1), (-1, 1)


def reshape_squeeze_unsqueeze(rng):
    b = Builder([1, 2, 3, 4])
    y = b.op("Reshape", ["x", b.init(np.array([1, -1, 4], np.int64), dtype=np.int64)])
    y = b.op("Unsqueeze", [y, b.init(np.array([3], np.int64), dtype=np.int64)])
    y = b.op("Squeeze", [y, b.init(np.array([3], np.int64), dtype=np.int64)])
    y = b.op("Flatten", [y])
    return b, b.op("Gemm", [y, b.init(rand(rng, 3, 24)), b.init(rand(rng, 3))], transB=1), (-1, 1)


def layout_only_transposes(rng):
    """NCHW -> NHWC -> NCHW transposes cost nothing; a Transpose+Flatten does."""
    b = Builder([1, 3, 4, 5])
    t = b.op("Transpose", ["x"], perm=[0, 2, 3, 1])
    t = b.op("Identity", [t])
    t = b.op("Transpose", [t], perm=[0, 3, 1, 2])
    y = _conv(b, t, rng, 3, 4, 1)
    y = b.op("Transpose", [y], perm=[0, 3, 2, 1])
    y = b.op("Flatten", [y])
    return b, b.op("Gemm", [y, b.init(rand(rng, 2, 80)), b.init(rand(rng, 2))], transB=1), (-1, 1)


def shape_subgraph_reshape(rng):
    """The TorchScript exporter's Shape -> Gather -> Unsqueeze -> Concat -> Reshape flatten."""
    b = Builder([1, 2, 3, 3])
    s = b.op("Shape", ["x"])
    n = b.op("Gather", [s, b.init(np.array(0, np.int64), dtype=np.int64)], axis=0)
    n = b.op("Unsqueeze", [n, b.init(np.array([0], np.int64), dtype=np.int64)])
    shp = b.op("Concat", [n, b.init(np.array([-1], np.int64), dtype=np.int64)], axis=0)
    y = b.op("Reshape", ["x", shp])
    return b, b.op("Gemm", [y, b.init(rand(rng, 4, 18)), b.init(rand(rng, 4))], transB=1), (-1, 1)


CASES = [conv_relu, conv_depthwise_dilated_asym_pads, conv_depthwise_multiplier_same_upper, conv_grouped_nobias,
         conv1d, conv_bn_relu6_constant_weights, batchnorm_standalone, const_arith,
         residual_add_and_standalone_clamp, squeeze_excite_mul, hardswish_hardsigmoid, pools, reduce_mean_gemm,
         flatten_gemm_nhwc_order, matmul_add_logsoftmax, reshape_squeeze_unsqueeze, layout_only_transposes,
         shape_subgraph_reshape, leaky_relu]


def build_case(case, tmp_path, seed=0):
    rng = np.random.default_rng(seed)
    b, out, (lo, hi) = case(rng)
    path = tmp_path / f"{case.__name__}.onnx"
    b.model(out, path)
    calib = rng.uniform(lo, hi, [64] + b.shape[1:]).astype(np.float32)
    test = rng.uniform(lo, hi, [16] + b.shape[1:]).astype(np.float32)
    # the test samples are part of the calibration set: these cases check the kernels, not clipping
    return path, np.concatenate([calib, test]), test
