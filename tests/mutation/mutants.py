"""Planted bugs for tests/mutation/run.py: each one realistic, applied alone to a copy of the repository.

A mutant: id, side ("py", "c" or "both": the same mistake in the Python twin and the C runtime, which
no Python-versus-C comparison can see), why (the mistake it stands for), edits ([file, old, new]: `old`
occurs exactly once in `file`, tests/test_mutation_list.py checks that), tests (pytest arguments: the
smallest selection that should catch it).
"""

FIXEDPOINT = "compiler/quant/fixedpoint.py"
FIXEDPOINT_H = "runtime_c/include/tt_fixedpoint.h"
PRNG = "compiler/quant/prng.py"
PRNG_H = "runtime_c/include/tt_prng.h"
LINEAR = "compiler/ops/linear.py"
FC_C = "runtime_c/src/tt_fc.c"
ELTWISE_C = "runtime_c/src/tt_eltwise.c"
TRAIN_OPS = "compiler/ops/train.py"
PERSIST_C = "runtime_c/src/tt_persist.c"

PY_TIES = ("rounded = asr64(prod + (np.int64(1) << (n - np.int64(1))), n)",
           "rounded = asr64(prod + (np.int64(1) << (n - np.int64(1))) - np.int64(1), n)")
C_TIES = ("const uint64_t u = (uint64_t)prod + ((uint64_t)1 << (n - 1)) + ((uint64_t)1 << 63);",
          "const uint64_t u = (uint64_t)prod + ((uint64_t)1 << (n - 1)) - 1u + ((uint64_t)1 << 63);")
PY_XORSHIFT = ("_U17 = np.uint64(17)", "_U17 = np.uint64(15)")
C_XORSHIFT = ("x = x ^ (x >> 17);", "x = x ^ (x >> 15);")
PY_FC_GW = ("            dwt[m, k] = acc * x_scale\n", "            dwt[m, k] = -acc * x_scale\n")
C_FC_GW = ("            dwt[j * k_n + kk] = acc * x_scale;", "            dwt[j * k_n + kk] = -acc * x_scale;")
PY_FC_GI = ("                acc += (dpre[n, m] * w_scale[m]) * np.float32(w[m, k])",
            "                acc += (dpre[n, m] * w_scale[m]) * np.float32(-w[m, k])")
C_FC_GI = ("acc = acc + (dpre[n * m + j] * w_scale[j]) * (float)w[j * k + kk];",
           "acc = acc + (dpre[n * m + j] * w_scale[j]) * (float)-w[j * k + kk];")
PY_MASK_GRAD = ("out[i] = dy[i] if mask[i] != 0 else np.float32(0.0)",
                "out[i] = dy[i] if mask[i] == 0 else np.float32(0.0)")
C_MASK_GRAD_BYTES = ("v[j] &= 0u - ((m >> j) & 1u);", "v[j] &= 0u - (((m >> j) & 1u) ^ 1u);")
C_MASK_GRAD_TAIL = ("out[i] = tt_mask_get(mask, i) != 0 ? dy[i] : 0.0f;",
                    "out[i] = tt_mask_get(mask, i) == 0 ? dy[i] : 0.0f;")

FIXEDPOINT_TESTS = ["tests/test_fixedpoint.py"]
PRNG_TESTS = ["tests/test_prng_fmath.py", "-k", "prng"]
# torch autograd and finite differences: independent of both twins
GRADIENT_TESTS = ["tests/test_gradients.py", "-k", "op_case_gradients or fc_parameter_gradients"]

MUTANTS = [
    # ---- rounding
    dict(id="ties-py", side="py", why="requantize rounds ties down in Python",
         edits=[[FIXEDPOINT, *PY_TIES]], tests=FIXEDPOINT_TESTS),
    dict(id="ties-c", side="c", why="tt_requantize rounds ties down in C",
         edits=[[FIXEDPOINT_H, *C_TIES]], tests=FIXEDPOINT_TESTS),
    dict(id="ties-both", side="both", why="ties rounded down in both twins",
         edits=[[FIXEDPOINT, *PY_TIES], [FIXEDPOINT_H, *C_TIES]], tests=FIXEDPOINT_TESTS),
    dict(id="asr-py", side="py", why="asr64 of a negative value rounds towards zero, not -inf",
         edits=[[FIXEDPOINT, "return np.int64(-1) - ((np.int64(-1) - x) >> n)", "return -((-x) >> n)"]],
         tests=FIXEDPOINT_TESTS),
    dict(id="requant-mult-c", side="c", why="acc * mult multiplied in int32 before widening (C only)",
         edits=[[FIXEDPOINT_H, "const int64_t prod = (int64_t)acc * (int64_t)mult;",
                 "const int64_t prod = (int64_t)(int32_t)((uint32_t)acc * (uint32_t)mult);"]],
         tests=FIXEDPOINT_TESTS),
    # ---- gradient signs
    dict(id="fc-grad-input-py", side="py", why="fc input gradient with the weight's sign flipped (Python)",
         edits=[[LINEAR, *PY_FC_GI]], tests=["tests/test_c_backward.py", "-k", "fc_grad_input"]),
    dict(id="fc-grad-weight-c", side="c", why="fc weight gradient negated (C)",
         edits=[[FC_C, *C_FC_GW]], tests=["tests/test_c_backward.py", "-k", "fc_grad_weight"]),
    dict(id="fc-grad-weight-both", side="both", why="fc weight gradient negated in both twins",
         edits=[[LINEAR, *PY_FC_GW], [FC_C, *C_FC_GW]], tests=GRADIENT_TESTS),
    dict(id="fc-grad-input-both", side="both", why="fc input gradient sign flipped in both twins",
         edits=[[LINEAR, *PY_FC_GI], [FC_C, *C_FC_GI]], tests=GRADIENT_TESTS),
    # ---- quantization-aware scaling
    dict(id="qas-weight", side="py", why="the weight's QAS factor is s_w instead of 1/s_w",
         edits=[["compiler/passes/autodiff.py", "    return (1.0 / s if qas else s).astype(np.float32)",
                 "    return (1.0 / s if qas and k == 2 else s).astype(np.float32)"]],
         tests=["tests/test_training.py", "-k", "qas"]),
    dict(id="qas-bias", side="py", why="the bias's QAS factor forgets s_x (1/s_w instead of 1/(s_w s_x))",
         edits=[["compiler/passes/autodiff.py", "        s = s * float(graph.t(node.inputs[0]).q.scale)",
                 "        s = s * 1.0"]],
         tests=["tests/test_training.py", "tests/test_guards.py", "-k", "qas"]),
    # ---- memory planner
    dict(id="planner-touching-lifetimes", side="py",
         why="buffers whose lifetimes meet at one step placed as if disjoint (a node's input and output overlap)",
         edits=[["compiler/passes/plan_memory.py",
                 "live = np.flatnonzero(~((end[:k] < b.start) | (b.end < start[:k])))",
                 "live = np.flatnonzero(~((end[:k] <= b.start) | (b.end <= start[:k])))"]],
         tests=["tests/test_compile.py", "-k", "plan_verifier or in_place_and_reordering"]),
    dict(id="planner-off-by-size", side="py", why="first fit tests the gap without the buffer's size",
         edits=[["compiler/passes/plan_memory.py", "free = ((cand + b.size <= plo) | (cand >= phi)).all(axis=1)",
                 "free = ((cand < plo) | (cand >= phi)).all(axis=1)"]],
         tests=["tests/test_lowmem.py", "-k", "memory_plan_without"]),
    dict(id="planner-and-verifier", side="py",
         why="touching lifetimes placed as disjoint, and the plan verifier blind to it (only the C's results can tell)",
         edits=[["compiler/passes/plan_memory.py",
                 "live = np.flatnonzero(~((end[:k] < b.start) | (b.end < start[:k])))",
                 "live = np.flatnonzero(~((end[:k] <= b.start) | (b.end <= start[:k])))"],
                ["compiler/passes/plan_memory.py",
                 "            if not (a.end < b.start or b.end < a.start):\n                raise AssertionError(",
                 "            if False:\n                raise AssertionError("]],
         tests=["tests/test_compile.py", "-k", "c_trains_bit_exact"]),
    # ---- patch-based inference: receptive field
    dict(id="patch-halo", side="py", why="a tile's receptive field one row short at the bottom",
         edits=[["compiler/passes/patch_prefix.py",
                 "min(x[1], (y1 - 1) * sh - pt + (kh - 1) * dh + 1)",
                 "min(x[1], (y1 - 1) * sh - pt + (kh - 1) * dh)"]],
         tests=["tests/test_lowmem.py", "-k", "every_cut"]),
    # ---- ReLU / clamp masks
    dict(id="clamp-mask-py", side="py", why="the clamp's mask marks the clipped elements instead of the kept ones",
         edits=[["compiler/ops/activation.py", "mask[i] = np.uint8(lo <= v <= hi)",
                 "mask[i] = np.uint8(not (lo <= v <= hi))"]],
         tests=["tests/test_c_forward.py", "-k", "clamp_s8"]),
    dict(id="mask-grad-c", side="c", why="the mask gradient keeps the masked-out elements (C, bytewise path)",
         edits=[[ELTWISE_C, *C_MASK_GRAD_BYTES]], tests=["tests/test_c_backward.py", "-k", "mask_grad"]),
    dict(id="mask-grad-both", side="both", why="mask polarity inverted in both twins",
         edits=[[TRAIN_OPS, *PY_MASK_GRAD], [ELTWISE_C, *C_MASK_GRAD_BYTES], [ELTWISE_C, *C_MASK_GRAD_TAIL]],
         tests=GRADIENT_TESTS),
    # ---- PRNG
    dict(id="xorshift-py", side="py", why="xorshift32 (13, 15, 5) in Python", edits=[[PRNG, *PY_XORSHIFT]],
         tests=PRNG_TESTS),
    dict(id="xorshift-c", side="c", why="xorshift32 (13, 15, 5) in C", edits=[[PRNG_H, *C_XORSHIFT]],
         tests=PRNG_TESTS),
    dict(id="xorshift-both", side="both", why="xorshift32 (13, 15, 5) in both twins",
         edits=[[PRNG, *PY_XORSHIFT], [PRNG_H, *C_XORSHIFT]], tests=PRNG_TESTS),
    # ---- persistence
    dict(id="crc-poly", side="c", why="CRC-32C's polynomial instead of CRC-32's",
         edits=[[PERSIST_C, "(0xEDB88320u & (0u - (crc & 1u)))", "(0x82F63B78u & (0u - (crc & 1u)))"]],
         tests=["tests/test_persist.py"]),
    dict(id="crc-init", side="c", why="the CRC starts from the caller's value without inverting it",
         edits=[[PERSIST_C, "    crc = ~crc;\n    for (uint32_t i = 0;", "    for (uint32_t i = 0;"]],
         tests=["tests/test_persist.py"]),
    dict(id="restore-signature", side="c", why="restore=1 accepts a state blob of another model (no signature check)",
         edits=[["compiler/codegen/emit_c.py",
                 "return h[0] == {N}_STATE_MAGIC && h[1] == {N}_SIGNATURE && h[2] == {N}_STATE_SIZE",
                 "return h[0] == {N}_STATE_MAGIC && h[2] == {N}_STATE_SIZE"]],
         tests=["tests/test_restore_signature.py", "tests/test_persist.py"]),
    # ---- divergence guards
    dict(id="guard-c", side="c", why="the C update's NaN/Inf guard checks the gradient's first element only",
         edits=[["compiler/ops/update.py",
                 'e.line(f"if (!{e.name}_finite({gp}, {d.size})) {{ {e.name}_count(&ctx->skipped, 1); }} else {{")',
                 'e.line(f"if (!{e.name}_finite({gp}, 1)) {{ {e.name}_count(&ctx->skipped, 1); }} else {{")']],
         tests=["tests/test_guards.py", "-k", "guard_skips"]),
    dict(id="guard-sim", side="py", why="the simulator steps on a NaN/Inf gradient (guard removed)",
         edits=[["tinytrain/train/backprop.py", "                if not np.all(np.isfinite(ins[1])):",
                 "                if False:"]],
         tests=["tests/test_training.py", "tests/test_update_guard.py", "-k", "divergence or non_finite"]),
]
