"""One module per op family; one class per IR op.

Every op class gathers everything tinytrain knows about the op:
  infer(node, graph)        -> output shapes (the shape rule)
  check(node, graph, fail)  -> extra IR invariants (dtypes, attributes)
  ref(node, graph, ins)     -> float32 semantics in numpy (calibration, reports)
  quantize(node, graph)     -> turn float weights/attrs into the int8 form (in place)
  sim(node, graph, ins)     -> the integer-only int8 forward (numba kernels)
  macs(node, graph)         -> multiply-accumulates per sample
Later issues add the gradient rule and the C emitter in the same class.
"""

_REGISTRY = {}


def register(cls):
    _REGISTRY[cls.name] = cls()
    return cls


def get_op(name):
    return _REGISTRY.get(name)


class Op:
    name = "?"
    # the output has the input's quantization parameters (pure int8 data movement)
    same_qparams = False
    # float-only op: must be gone (folded) before quantization
    float_only = False
    # training: does the backward gate the output gradient by the 1-bit clamp mask,
    # and which grad op (with which operands: dy, dpre, in0, in1, ...) produces the
    # gradient of each input ({input index or "*": (grad op, operands)}) and parameter
    uses_mask = False
    input_grads = {}
    param_grads = {}
    # an op with no outputs that changes a parameter in place (SGD)
    side_effect = False

    @staticmethod
    def grad_attrs(node, graph, grad_op, k):
        return {}

    def infer(self, node, graph):
        raise NotImplementedError

    def check(self, node, graph, fail):
        pass

    def ref(self, node, graph, ins):
        raise NotImplementedError

    def quantize(self, node, graph):
        pass

    def sim(self, node, graph, ins, masks=None):
        """int8 forward; with a dict `masks`, also keep {node id: 1-bit clamp mask}."""
        raise NotImplementedError

    def macs(self, node, graph):
        return 0

    def params(self, node, graph):
        return sum(graph.tensors[i].size for i in node.inputs if graph.tensors[i].kind == "const")



# importing the modules registers the ops
from . import activation, affine, conv, eltwise, linear, lowmem, pool, shape, train, update  # noqa: E402,F401
