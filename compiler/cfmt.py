"""C99 source text for Python values: a leaf module (numpy only).

The emitter (codegen/emit_c.py) and every op's C emitter (ops/*.py `emit_c`)
format their literals here, so the ops never import the code generator.
float32 literals are written in hex (exact); INT32_MIN as an expression
(the literal 2147483648 does not fit an int).
"""
import numpy as np

CTYPE = {"int8": "int8_t", "int32": "int32_t", "float32": "float", "uint8": "uint8_t", "int16": "int16_t"}


def c_float(v):
    v = float(np.float32(v))
    if np.isnan(v):
        return "(0.0f / 0.0f)"
    if np.isinf(v):
        return "(1.0f / 0.0f)" if v > 0 else "(-1.0f / 0.0f)"
    return f"{v.hex()}f" if v != 0 else ("-0.0f" if np.signbit(v) else "0.0f")


def c_int(v):
    v = int(v)
    return "(-2147483647 - 1)" if v == -2147483648 else str(v)
