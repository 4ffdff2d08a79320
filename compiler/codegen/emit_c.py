"""emit_c: a training graph + its memory plan -> a self-contained C99 library.

Output (folder `out`, prefix `name`):
  <name>.h          the API: sizes and alignment as macros, the context struct,
                    status codes, init / train_step / predict / reset / state access
  <name>.c          frozen weights as const arrays (behind <NAME>_WEIGHTS_SECTION),
                    the factory values of the trainable parameters, one kernel call
                    per node in schedule order, offsets from the plan
  runtime/          the kernels (runtime_c/include, runtime_c/src) with a version check
Every symbol carries the prefix, so two models link into one firmware.  No
globals, no malloc, no I/O: the caller owns the context, the arena and the
state blob.  Each op class writes its own call (`emit_c`, one place per op).
"""
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from .. import recipe
from ..cfmt import CTYPE, c_float, c_int
from ..errors import TinytrainError
from ..layout import ALIGN, context_struct, state_layout
from ..hparams import LR_MAX
from ..ops import get_op
from .cformat import check_name, comment_text

RUNTIME_VERSION = 1


def signature(graph):
    h = hashlib.sha256()
    for n in graph.nodes:
        h.update(f"{n.op}{n.inputs}{n.outputs}".encode())
    for t in graph.tensors.values():
        h.update(f"{t.id}{t.shape}{t.dtype}".encode())
        if t.kind == "const":
            h.update(np.ascontiguousarray(t.data).tobytes())
    return int.from_bytes(h.digest()[:4], "little")


class Emitter:
    def __init__(self, graph, plan, name, rounding="stochastic"):
        self.rounding = rounding
        check_name(name)
        self.g, self.plan, self.name, self.NAME = graph, plan, name, name.upper()
        self.decls, self.body = [], []
        self.profile = []                                  # node index -> name, op, phase ({name}_profile.json)
        self._n = 0
        tr = graph.meta.get("training", {})
        self.trainable = list(tr.get("trainable", []))
        self.state_off, self.shadow_off, self.state_size = state_layout(graph, rounding)   # compiler/layout.py
        self.train = "train"                               # the C variable that turns masks on
        self.bias_limits = {}                              # trained int32 bias -> its accumulator-safe limit

    def sym(self, hint):
        self._n += 1
        return f"{self.name}_{hint}{self._n}"

    def array(self, hint, data, ctype, section=False):
        data = np.asarray(data).reshape(-1)
        fmt = c_float if ctype == "float" else c_int
        s = self.sym(hint)
        items = ", ".join(fmt(v) for v in data) if data.size else "0"
        sec = f"{self.NAME}_WEIGHTS_SECTION " if section else ""
        self.decls.append(f"{sec}static const {ctype} {s}[{max(data.size, 1)}] = {{{items}}};")
        return s

    def struct(self, ctype, fields):
        s = self.sym(ctype.replace("tt_", ""))
        self.decls.append(f"static const {ctype} {s} = {{{', '.join(c_int(f) for f in fields)}}};")
        return f"&{s}"

    def dims(self, shape):
        shape = tuple(int(d) for d in shape)
        if len(shape) == 4:
            d = shape
        elif len(shape) == 3:
            d = (shape[0], 1, shape[1], shape[2])
        elif len(shape) == 2:
            d = (shape[0], 1, 1, shape[1])
        else:
            d = (1, 1, 1, shape[0])
        return self.struct("tt_dims", d)

    def ptr(self, tid):
        t = self.g.t(tid)
        ct = CTYPE[t.dtype]
        if t.kind == "const":
            if tid in self.state_off:
                return f"(({ct} *)(ctx->state + {self.state_off[tid]}))"
            return self.const(tid)
        return f"(({ct} *)(ctx->arena + {self.plan.offsets[tid]}))"

    def const(self, tid):
        t = self.g.t(tid)
        if not hasattr(self, "_consts"):
            self._consts = {}
        if tid not in self._consts:
            self._consts[tid] = self.array("w", t.data, CTYPE[t.dtype], section=True)
        return self._consts[tid]

    def mask(self, node):
        if node.attrs.get("keep_mask"):
            return f"({self.train} ? (uint8_t *)(ctx->arena + {self.plan.offsets[node.outputs[1]]}) : NULL)"
        return "NULL"

    def line(self, text):
        self.body.append("    " + text)


def emit(graph, plan, out, name="model", rounding="stochastic"):
    """Write <name>.h, <name>.c and runtime/ into `out`.  -> dict of facts for reports."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    e = Emitter(graph, plan, name, rounding)
    fwd = set(graph.meta["training"]["forward"])
    nodes_f = [n for n in graph.nodes if n.id in fwd]
    nodes_b = [n for n in graph.nodes if n.id not in fwd]
    for n in nodes_f:
        _emit_node(e, n)
    e.line(f"{e.NAME}_PROFILE({len(e.profile)});")
    forward_body, e.body = e.body, []
    for n in nodes_b:
        _emit_node(e, n)
    e.line(f"{e.NAME}_PROFILE({len(e.profile)});")
    backward_body = e.body
    x = graph.t(graph.inputs[0])
    logits = graph.t(graph.outputs[0])
    sig = signature(graph)
    facts = dict(arena=plan.arena_size, state=e.state_size, signature=sig, input=x.size,
                 classes=logits.size, name=name, rounding=rounding)
    (out / f"{name}.h").write_text(_header(e, facts))
    (out / f"{name}.c").write_text(_source(e, facts, forward_body, backward_body))
    (out / f"{name}_profile.json").write_text(json.dumps(e.profile, indent=1) + "\n")
    rt = out / "runtime"
    pkg = runtime_dir()
    for sub in ("include", "src"):       # file by file: never deletes what else the folder holds
        shutil.copytree(pkg / sub, rt / sub, dirs_exist_ok=True)
    return facts


def runtime_dir():
    """runtime_c/: beside compiler/ in the source tree, tinytrain/runtime_c in a wheel
    (compiler/ installs as tinytrain/compiler): two levels above this file either way."""
    d = Path(__file__).resolve().parents[2] / "runtime_c"
    if not (d / "include" / "tt_kernels.h").is_file():
        raise TinytrainError(f"the C runtime is missing from this installation (looked in {d})")
    return d


def _emit_node(e, node):
    op = get_op(node.op)
    fn = getattr(op, "emit_c", None)
    if fn is None:
        raise TinytrainError(f"op {node.op} has no C kernel yet (the simulator runs it; `tinytrain compile` "
                             "cannot)", node=node.name, op=node.op)
    e.line(f"/* {comment_text(node.op)}: {comment_text(node.name)} */")
    e.line(f"{e.NAME}_PROFILE({len(e.profile)});")
    e.profile.append(dict(index=len(e.profile), node=node.name, op=node.op, phase=_phase(e.g, node)))
    fn(node, e.g, e)


def _phase(graph, node):
    """forward, backward or update: the phase a node's cost counts towards (profiles, reports)."""
    if node.id in set(graph.meta.get("training", {}).get("forward", ())):
        return "forward"
    return "update" if get_op(node.op).side_effect else "backward"


def _input_doc(g, N):
    """The header's lines on the input: its shape, layout and the float range it expects."""
    x = g.t(g.inputs[0])
    onnx_shape = g.meta.get("input_shape")
    layout = g.meta.get("input_layout") or {4: "nchw", 3: "ncw"}.get(len(onnx_shape or ()))
    lines = [f" * input: {N}_INPUT_SIZE floats, one sample in channels-last order "
             f"({'x'.join(map(str, x.shape[1:]))}, {'NHWC' if len(x.shape) == 4 else 'NWC'})"
             if len(x.shape) in (3, 4) else f" * input: {N}_INPUT_SIZE floats"]
    if onnx_shape:
        lines.append(f" *   from the ONNX input '{comment_text(g.meta.get('input_name', '?'), 60)}' {list(onnx_shape)}"
                     + (f" ({layout.upper()}{': move the channels last' if layout in ('nchw', 'ncw') else ''})"
                        if layout else ""))
    q = x.q
    if q is not None and np.ndim(q.scale) == 0:
        lo = float(q.scale) * (-128 - int(q.zero_point))
        hi = float(q.scale) * (127 - int(q.zero_point))
        lines.append(f" *   normalized as the calibration data was: values in [{lo:.4g}, {hi:.4g}] (its range;"
                     " beyond it they clip)")
    return "\n".join(lines)


def _header(e, f):
    N, n = e.NAME, e.name
    g = e.g
    tr = g.meta.get("training", {})
    trainer = "mezo" if g.meta.get("zo") else "backprop"
    lr = recipe.default_lr(trainer)
    ctx_struct = context_struct(n)          # compiler/layout.py CONTEXT_FIELDS
    return f"""/* {n}.h: generated by tinytrain from {comment_text(Path(str(g.meta.get('source', '?'))).name)}
 * (update scheme '{comment_text(tr.get('scheme'))}', QAS {'on' if tr.get('qas') else 'off'}).  Do not edit: regenerate.
 *
 * Usage: the caller owns every buffer.
 *   static {n}_ctx ctx;
 *   static uint8_t arena[{N}_ARENA_SIZE] __attribute__((aligned({N}_ALIGN)));
 *   static uint8_t state[{N}_STATE_SIZE] __attribute__((aligned({N}_ALIGN)));
 *   {n}_init(&ctx, arena, sizeof arena, state, sizeof state, {lr:g}f, 1u, 0);   (lr: the CLI's {trainer} default)
 *   {n}_train_step(&ctx, input, label, &loss, &predicted);
{_input_doc(g, N)}
 * The learned state is the blob `state` ({N}_STATE_SIZE bytes, header + parameters).  Either
 * {n}_save / {n}_load it (two flash slots, power-cut safe), or keep it yourself: call
 * {n}_state_seal(&ctx) (it writes the blob's CRC; training changes the blob and does not update
 * the CRC) and then store the blob; {n}_init(..., restore = 1) accepts it only if its magic,
 * model signature, size and CRC check, else {N}_ERR_STATE.
 * {n}_reset puts the trained parameters back to the compiled (pretrained) ones and the step
 * count to 0, and seals the blob (the learning rate and the rounding seed stay);
 * {n}_init(..., restore = 0) does it.
 */
#ifndef {N}_H
#define {N}_H

#include <stddef.h>
#include <stdint.h>

#include "tt_persist.h"

#ifdef __cplusplus
extern "C" {{
#endif

#define {N}_ARENA_SIZE {f['arena']}u
#define {N}_STATE_SIZE {e.state_size}u
#define {N}_ALIGN {ALIGN}u
#define {N}_INPUT_SIZE {f['input']}
#define {N}_NUM_CLASSES {f['classes']}
#define {N}_SIGNATURE 0x{f['signature']:08x}u
#define {N}_RUNTIME_VERSION {RUNTIME_VERSION}

typedef enum {{
    {N}_OK = 0,
    {N}_ERR_NULL = -1,      /* a NULL pointer */
    {N}_ERR_ALIGN = -2,     /* a buffer not aligned to {N}_ALIGN */
    {N}_ERR_SIZE = -3,      /* a buffer smaller than its size macro */
    {N}_ERR_LABEL = -4,     /* label outside [0, {N}_NUM_CLASSES) */
    {N}_ERR_STATE = -5,     /* a state blob from another model, or corrupt */
    {N}_ERR_INPUT = -6,     /* a NaN or infinite input value */
    {N}_ERR_PARAM = -7      /* a learning rate that is NaN, infinite, <= 0 or > {N}_LR_MAX */
}} {n}_status;

/* the largest learning rate init / set_lr accept (compiler/hparams.py LR_MAX) */
#define {N}_LR_MAX {c_float(LR_MAX)}

{ctx_struct}

int {n}_init({n}_ctx *ctx, void *arena, size_t arena_size, void *state, size_t state_size, float lr, uint32_t seed,
             int restore);
int {n}_reset({n}_ctx *ctx);
/* Write the CRC of the state blob into its header: call before keeping the blob yourself. */
int {n}_state_seal({n}_ctx *ctx);
/* a new learning rate for the next steps ({N}_ERR_PARAM unless 0 < lr <= {N}_LR_MAX) */
int {n}_set_lr({n}_ctx *ctx, float lr);
/* the divergence guard's and the saturation counters since init (either pointer may be NULL) */
int {n}_stats(const {n}_ctx *ctx, int32_t *skipped, int32_t *saturated);
int {n}_train_step({n}_ctx *ctx, const float *input, int32_t label, float *loss, int32_t *predicted);
int {n}_predict({n}_ctx *ctx, const float *input, float *logits, int32_t *predicted);
/* Power-cut-safe persistence of the learned state (two flash slots, see tt_persist.h).  _save
   seals the blob first.  _load on failure ({N}_ERR_STATE): the state is unchanged, except when the
   flash returned bytes that failed the checks: then it is the initial state, as after {n}_reset. */
int {n}_save({n}_ctx *ctx, const tt_flash *flash);
int {n}_load({n}_ctx *ctx, const tt_flash *flash);

#ifdef __cplusplus
}}
#endif

#endif /* {N}_H */
"""


def _source(e, f, forward_body, backward_body, zo_body=None):
    """The C source.  Backprop: train_step runs the forward with masks, then the backward body.
    Zeroth-order (zo_body given): train_step runs the zo step, which calls the forward itself."""
    N, n, g = e.NAME, e.name, e.g
    x = g.t(g.inputs[0])
    logits = g.t(g.outputs[0])
    float_logits = logits.dtype == "float32"
    resets = []
    for tid in e.trainable:
        t = g.t(tid)
        init = e.array("init", t.data, CTYPE[t.dtype])
        resets.append(f"    memcpy(ctx->state + {e.state_off[tid]}, {init}, sizeof {init});")
        if tid in e.shadow_off:
            resets.append(f"    {{ int32_t i; for (i = 0; i < {t.size}; ++i) {{ ((int16_t *)(ctx->state + "
                          f"{e.shadow_off[tid]}))[i] = (int16_t)({init}[i] * 256); }} }}")
    lq = logits.q
    argmax = (f"    for (i = 1; i < {N}_NUM_CLASSES; ++i) {{\n        if ({e.ptr(logits.id)}[i] > "
              f"{e.ptr(logits.id)}[best]) {{\n            best = i;\n        }}\n    }}")
    count_fn = f"""/* counter += k, saturating at INT32_MAX (k >= 0) */
static void {n}_count(int32_t *counter, int32_t k)
{{
    *counter = (*counter > INT32_MAX - k) ? INT32_MAX : *counter + k;
}}
"""
    finite_fn = count_fn if zo_body is not None else count_fn + f"""static int {n}_finite(const float *g, int32_t count)
{{{{
    int32_t i;
    for (i = 0; i < count; ++i) {{{{
        if (!(g[i] - g[i] == 0.0f)) {{{{
            return 0;
        }}}}
    }}}}
    return 1;
}}}}
"""
    guards = [f"    {n}_count(&ctx->saturated, tt_clamp_sym_s32({e.ptr(tid)}, {g.t(tid).size}, {lim}));"
              for tid, lim in sorted(e.bias_limits.items())]
    guard_fn = (f"/* trained biases back inside their accumulator-safe range (a state blob restored or\n"
                f"   modified in RAM), before any forward: docs/architecture.md, Numerics */\n"
                f"static void {n}_guard({n}_ctx *ctx)\n{{\n    (void)ctx;\n" + "\n".join(guards) + "\n}\n")
    finite_fn = finite_fn + guard_fn
    if zo_body is None:
        step_fn = f"static void {n}_backward({n}_ctx *ctx, float *loss)\n{{\n" + "\n".join(backward_body) + "\n}"
        step_call = (f"    {e.ptr(g.inputs[1])}[0] = label;\n    {n}_forward(ctx, 1, input);\n{argmax}\n"
                     f"    {n}_backward(ctx, &l);")
    else:
        step_fn = (f"static void {n}_zo_step({n}_ctx *ctx, int32_t label, float *loss, int32_t *pred)\n{{\n"
                   + "\n".join(zo_body) + "\n}")
        step_call = f"    (void)i;\n    {n}_zo_step(ctx, label, &l, &best);"
    if float_logits:
        logit_out = f"    for (i = 0; i < {N}_NUM_CLASSES; ++i) {{ logits[i] = {e.ptr(logits.id)}[i]; }}"
    else:
        logit_out = (f"    for (i = 0; i < {N}_NUM_CLASSES; ++i) {{ logits[i] = {c_float(lq.scale)} * "
                     f"(float)((int32_t){e.ptr(logits.id)}[i] - {c_int(lq.zero_point)}); }}")
    # a patched prefix quantizes its tiles straight from the caller's input (ops/lowmem.py crop):
    # the whole int8 input then never exists
    quantize_input = "" if g.meta.get("input_external") else (
        f"    tt_quantize_f32_s8({N}_INPUT_SIZE, input, {c_float(x.q.scale)}, {c_int(x.q.zero_point)}, "
        f"{e.ptr(x.id)});\n")
    decls = "\n".join(e.decls)
    fwd = "\n".join(forward_body)
    return f"""/* {n}.c: generated by tinytrain.  Do not edit: regenerate. */
#include "{n}.h"

#include <math.h>
#include <string.h>

#include "tt_fmath.h"
#include "tt_kernels.h"
#include "tt_lowmem.h"
#include "tt_prng.h"

#if TT_RUNTIME_VERSION != {RUNTIME_VERSION}
#error "{n}.c was generated for tinytrain runtime version {RUNTIME_VERSION}: regenerate it or use its runtime/"
#endif

/* profiling hook: {N}_PROFILE(k) runs before node k of {n}_profile.json and once more (k = node count)
   after the last node of the forward and of the backward; define it (e.g. to read a cycle counter) */
#ifndef {N}_PROFILE
#define {N}_PROFILE(k) ((void)0)
#endif

/* frozen weights live in flash; override to place them elsewhere (e.g. external flash) */
#ifndef {N}_WEIGHTS_SECTION
#define {N}_WEIGHTS_SECTION
#endif

#define {N}_STATE_MAGIC 0x31535454u

{decls}

{finite_fn}
static void {n}_forward({n}_ctx *ctx, int train, const float *input)
{{
    (void)train;
    (void)input;
{fwd}
}}

{step_fn}

static int {n}_check({n}_ctx *ctx, const float *input)
{{
    int32_t i;
    if (ctx == NULL || ctx->arena == NULL || ctx->state == NULL || input == NULL) {{
        return {N}_ERR_NULL;
    }}
    for (i = 0; i < {N}_INPUT_SIZE; ++i) {{
        if (!(input[i] - input[i] == 0.0f)) {{
            return {N}_ERR_INPUT;
        }}
    }}
    return {N}_OK;
}}

static void {n}_header({n}_ctx *ctx)
{{
    const uint32_t h[6] = {{{N}_STATE_MAGIC, {N}_SIGNATURE, {N}_STATE_SIZE, 0u, 0u, 0u}};
    memcpy(ctx->state, h, sizeof h);
    memcpy(ctx->state + 12, &ctx->steps, sizeof ctx->steps);
}}

/* the CRC-32 of the blob without its CRC field (bytes 16-19) */
static uint32_t {n}_state_crc(const uint8_t *state)
{{
    return tt_crc32(tt_crc32(0u, state, 16u), state + 20, {N}_STATE_SIZE - 20u);
}}

/* 1 if `state` is a sealed blob of this model: magic, signature, size and CRC */
static int {n}_state_ok(const uint8_t *state)
{{
    uint32_t h[5];
    memcpy(h, state, sizeof h);
    return h[0] == {N}_STATE_MAGIC && h[1] == {N}_SIGNATURE && h[2] == {N}_STATE_SIZE && h[4] == {n}_state_crc(state);
}}

int {n}_state_seal({n}_ctx *ctx)
{{
    uint32_t crc;
    if (ctx == NULL || ctx->state == NULL) {{
        return {N}_ERR_NULL;
    }}
    crc = {n}_state_crc(ctx->state);
    memcpy(ctx->state + 16, &crc, sizeof crc);
    return {N}_OK;
}}

int {n}_reset({n}_ctx *ctx)
{{
    if (ctx == NULL || ctx->state == NULL) {{
        return {N}_ERR_NULL;
    }}
{chr(10).join(resets)}
    ctx->steps = 0;
    {n}_header(ctx);
    return {n}_state_seal(ctx);
}}

static int {n}_lr_ok(float lr)
{{
    return lr > 0.0f && lr <= {N}_LR_MAX;     /* false for a NaN */
}}

int {n}_set_lr({n}_ctx *ctx, float lr)
{{
    if (ctx == NULL) {{
        return {N}_ERR_NULL;
    }}
    if (!{n}_lr_ok(lr)) {{
        return {N}_ERR_PARAM;
    }}
    ctx->lr = lr;
    return {N}_OK;
}}

int {n}_stats(const {n}_ctx *ctx, int32_t *skipped, int32_t *saturated)
{{
    if (ctx == NULL) {{
        return {N}_ERR_NULL;
    }}
    if (skipped != NULL) {{
        *skipped = ctx->skipped;
    }}
    if (saturated != NULL) {{
        *saturated = ctx->saturated;
    }}
    return {N}_OK;
}}

int {n}_init({n}_ctx *ctx, void *arena, size_t arena_size, void *state, size_t state_size, float lr, uint32_t seed,
             int restore)
{{
    if (ctx == NULL || arena == NULL || state == NULL) {{
        return {N}_ERR_NULL;
    }}
    if (!{n}_lr_ok(lr)) {{
        return {N}_ERR_PARAM;
    }}
    if (((uintptr_t)arena % {N}_ALIGN) != 0u || ((uintptr_t)state % {N}_ALIGN) != 0u) {{
        return {N}_ERR_ALIGN;
    }}
    if (arena_size < {N}_ARENA_SIZE || state_size < {N}_STATE_SIZE) {{
        return {N}_ERR_SIZE;
    }}
    ctx->arena = (uint8_t *)arena;
    ctx->state = (uint8_t *)state;
    ctx->lr = lr;
    ctx->skipped = 0;
    ctx->saturated = 0;
    tt_prng_seed(&ctx->prng, seed);
    if (!restore) {{
        return {n}_reset(ctx);
    }}
    if (!{n}_state_ok(ctx->state)) {{
        return {N}_ERR_STATE;
    }}
    memcpy(&ctx->steps, ctx->state + 12, sizeof ctx->steps);
    return {N}_OK;
}}

int {n}_train_step({n}_ctx *ctx, const float *input, int32_t label, float *loss, int32_t *predicted)
{{
    int32_t i, best = 0;
    float l = 0.0f;
    int st = {n}_check(ctx, input);
    if (st != {N}_OK) {{
        return st;
    }}
    if (label < 0 || label >= {N}_NUM_CLASSES) {{
        return {N}_ERR_LABEL;
    }}
    {n}_guard(ctx);
{quantize_input}{step_call}
    ctx->steps += 1;
    memcpy(ctx->state + 12, &ctx->steps, sizeof ctx->steps);
    if (loss != NULL) {{
        *loss = l;
    }}
    if (predicted != NULL) {{
        *predicted = best;
    }}
    return {N}_OK;
}}

int {n}_save({n}_ctx *ctx, const tt_flash *flash)
{{
    if (ctx == NULL || ctx->state == NULL || flash == NULL) {{
        return {N}_ERR_NULL;
    }}
    {n}_state_seal(ctx);
    return tt_state_save(flash, ctx->state, {N}_STATE_SIZE, {N}_SIGNATURE) == TT_PERSIST_OK ? {N}_OK : {N}_ERR_STATE;
}}

int {n}_load({n}_ctx *ctx, const tt_flash *flash)
{{
    int rc;
    if (ctx == NULL || ctx->state == NULL || flash == NULL) {{
        return {N}_ERR_NULL;
    }}
    rc = tt_state_load(flash, ctx->state, {N}_STATE_SIZE, {N}_SIGNATURE);
    if (rc == TT_PERSIST_ERR_READ || (rc == TT_PERSIST_OK && !{n}_state_ok(ctx->state))) {{
        {n}_reset(ctx);                       /* never keep bytes that failed a check */
        return {N}_ERR_STATE;
    }}
    if (rc != TT_PERSIST_OK) {{
        return {N}_ERR_STATE;                 /* the state is unchanged */
    }}
    memcpy(&ctx->steps, ctx->state + 12, sizeof ctx->steps);
    return {N}_OK;
}}

int {n}_predict({n}_ctx *ctx, const float *input, float *logits, int32_t *predicted)
{{
    int32_t i, best = 0;
    int st = {n}_check(ctx, input);
    if (st != {N}_OK) {{
        return st;
    }}
    {n}_guard(ctx);
{quantize_input}    {n}_forward(ctx, 0, input);
    for (i = 1; i < {N}_NUM_CLASSES; ++i) {{
        if ({e.ptr(logits.id)}[i] > {e.ptr(logits.id)}[best]) {{
            best = i;
        }}
    }}
    if (logits != NULL) {{
{logit_out}
    }}
    if (predicted != NULL) {{
        *predicted = best;
    }}
    return {N}_OK;
}}
"""
