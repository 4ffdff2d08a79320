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


def registered_names():
    """Every registered op name (tests/test_op_decl.py scans the passes for lists of them)."""
    return tuple(_REGISTRY)


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

    # Capabilities: what the passes may do with the op.  They are declared here, on the op,
    # and every pass reads them (never a list of op names):
    #   fuses_activation  a following ReLU/ReLU6/Clip can become its output clamp, attrs["act"]
    #                     (passes/fuse_activation.py)
    #   in_place          elementwise, reads element i before writing element i: the output may
    #                     take the bytes of a same-sized input that dies there (passes/plan_memory.py)
    #   overwrites_input  always writes its output over its (dying) input 0 (plan_memory.py)
    #   pointwise         each output element reads only the same position of its inputs, so a
    #                     spatial tile of the output needs the same tile of the inputs
    #                     (passes/patch_prefix.py)
    #   windowed          a sliding window: window(node, graph) gives its receptive field
    #                     (patch_prefix.py re-pads it per tile)
    #   weight_input, bias_input   parameter roles: the input index of the trainable int8 weight
    #                     (output channels on axis 0) and of its int32 bias, or None
    #                     (quantize, weight_headroom, zo_plan, scheme)
    fuses_activation = False
    in_place = False
    overwrites_input = False
    pointwise = False
    windowed = False
    weight_input = None
    bias_input = None
    #   channelwise       per element with at most per-channel constants, seen between a 1-D conv
    #                     and the reshapes the importer wraps it in (passes/simplify_reshapes.py)
    #   loss              the training loss node: kept by the dead-code pass (passes/prune.py)
    channelwise = False
    loss = False

    @property
    def weighted(self):
        return self.weight_input is not None

    def view_of(self, node):
        """The input index whose bytes the output is (a view: no copy, plan_memory.py), or None."""
        return None

    def window(self, node, graph):
        """A windowed op's receptive field: ((kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw))."""
        raise NotImplementedError

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
