"""The op registry and the Op base class (the interface is described in
ops/__init__.py).  A leaf of the ops package: the op modules import it, and
ops/__init__.py imports the op modules, so no op module imports its package.
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
