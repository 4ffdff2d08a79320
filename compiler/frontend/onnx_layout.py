"""Layouts shared by the importer (onnx_import.py) and the converters (onnx_ops.py):
a leaf, so the converters need not import the importer.  An ONNX activation maps
to an IR tensor plus an `order`, the ONNX axis held by each IR axis."""


def channels_last(rank):
    """The IR order for an ONNX tensor of this rank (channels innermost)."""
    return {4: (0, 2, 3, 1), 3: (0, 2, 1)}.get(rank, tuple(range(rank)))
