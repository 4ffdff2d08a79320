"""A tiny helper to hand-make ONNX models in tests."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Builder:
    def __init__(self, shape, opset=13, name="x"):
        self.opset = opset
        self.input = name
        self.shape = list(shape)
        self.nodes, self.inits = [], []
        self._n = 0

    def init(self, arr, name=None, dtype=np.float32):
        name = name or f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype=dtype), name))
        return name

    def const_node(self, arr, dtype=np.float32):
        """A weight stored as a Constant node instead of an initializer."""
        return self.op("Constant", [], value=numpy_helper.from_array(np.asarray(arr, dtype=dtype)))

    def op(self, op_type, inputs, outputs=1, domain="", **attrs):
        self._n += 1
        outs = [f"{op_type.lower()}{self._n}_{k}" for k in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=f"{op_type}_{self._n}",
                                           domain=domain, **attrs))
        return outs[0] if outputs == 1 else outs

    def model(self, outputs, path=None, out_shapes=None):
        outputs = [outputs] if isinstance(outputs, str) else list(outputs)
        g = helper.make_graph(self.nodes, "test",
                              [helper.make_tensor_value_info(self.input, TensorProto.FLOAT, self.shape)],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              initializer=self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)], producer_name="tests")
        m.ir_version = 8
        if path is not None:
            onnx.save(m, str(path))
        return m


def rand(rng, *shape, lo=-1.0, hi=1.0):
    return rng.uniform(lo, hi, shape).astype(np.float32)
