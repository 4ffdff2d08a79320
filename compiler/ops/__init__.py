"""One module per op family; one class per IR op.

Every op class gathers everything tinytrain knows about the op:
  infer(node, graph)        -> output shapes (the shape rule)
  check(node, graph, fail)  -> extra IR invariants (dtypes, attributes)
  ref(node, graph, ins)     -> float32 semantics in numpy (calibration, reports)
  quantize(node, graph)     -> turn float weights/attrs into the int8 form (in place)
  sim(node, graph, ins)     -> the integer-only int8 forward (numba kernels)
  macs(node, graph)         -> multiply-accumulates per sample
  emit_c(node, graph, e)    -> the C call (the emitter function is defined above the class)
  uses_mask, input_grads, param_grads, grad_attrs -> the gradient rule, as data
  capabilities (fuses_activation, in_place, windowed, weight_input, ...) -> what the
                               passes may do with the op (ops/base.py lists them)
Shared helpers live in ops/common.py (docs/architecture.md, "An op is one declaration").
"""
from .base import Op, get_op, register  # noqa: F401  (the registry: ops/base.py)

# importing the modules registers the ops
from . import activation, affine, conv, eltwise, linear, lowmem, pool, shape, train, update  # noqa: E402,F401
