"""The ONNX ops `graphc import` reads, each as a function writing graphc nodes:
`IMPORTERS[op_type](reader, node, attrs)` (reader: importer.Reader)."""
from __future__ import annotations

import numpy as np

from ..ops import OPS

UNARY = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Exp": "exp", "Log": "log",
         "Abs": "abs", "Sqrt": "sqrt", "Neg": "neg", "Reciprocal": "reciprocal",
         "Softplus": "softplus", "Identity": "identity", "Dropout": "identity"}
BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "MatMul": "matmul",
          "Max": "maximum", "Min": "minimum"}


def _unary(op: str):
    return lambda r, n, a: r.emit(n.output[0], op, [r.value(n.input[0])])


def _binary(op: str):
    return lambda r, n, a: r.emit(n.output[0], op, [r.value(x) for x in n.input])


def _with_alpha(op: str, default: float):
    return lambda r, n, a: r.emit(n.output[0], op, [r.value(n.input[0])],
                                  alpha=float(a.get("alpha", default)))


def transposed(r, value: str, perm) -> str:
    """`value` transposed by `perm` (None reverses): a weight is folded (the param is
    stored transposed), anything else gets a transpose node."""
    if value in r.weights and value not in r.names:
        key = f"{value}^T"
        w = r.weights[value]
        r.fold(key, value, np.transpose(w, perm))
        return key
    name = f"{value}_T"
    r.emit(name, "transpose", [r.value(value)], axes=None if perm is None else list(perm))
    return name


def _transpose(r, n, a):
    perm = a.get("perm")
    source = n.input[0]
    if source in r.weights and source not in r.names:
        r.fold(n.output[0], source, np.transpose(r.weights[source], perm))
        return None
    return r.emit(n.output[0], "transpose", [r.value(source)],
                  axes=None if perm is None else list(perm))


def _gemm(r, n, a):
    """Y = A @ B' + C with alpha = beta = 1 and transA = 0 (what nn.Linear exports)."""
    if float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0 or \
            a.get("transA", 0):
        raise r.error("graphc reads Gemm with alpha = 1, beta = 1 and transA = 0 (nn.Linear's "
                      f"form), this one has {a}")
    b = transposed(r, n.input[1], None) if a.get("transB", 0) else n.input[1]
    product = [r.value(n.input[0]), r.value(b)]
    if len(n.input) < 3 or not n.input[2]:
        return r.emit(n.output[0], "matmul", product)
    h = r.emit(f"{n.output[0]}_matmul", "matmul", product)
    return r.emit(n.output[0], "add", [h, r.value(n.input[2])])


def _softmax(op: str):
    def read(r, n, a):
        rank = r.rank(n.input[0])
        axis = int(a.get("axis", -1 if r.opset >= 13 else 1))
        if r.opset < 13 and axis % rank != rank - 1:
            raise r.error(f"{n.op_type} before opset 13 flattens the axes from {axis} on; "
                          "graphc reads it over the last axis only")
        return r.emit(n.output[0], op, [r.value(n.input[0])], axis=axis)
    return read


def _graphc_op(r, n, name: str) -> str:
    if name not in OPS:
        raise r.error(f"ONNX {n.op_type} maps to graphc's {name}, which this graphc lacks")
    return name


def _flatten(r, n, a):
    if int(a.get("axis", 1)) != 1:
        raise r.error("graphc reads Flatten with axis 1 (torch.flatten(x, 1))")
    return r.emit(n.output[0], _graphc_op(r, n, "flatten"), [r.value(n.input[0])])


def _reshape(r, n, a):
    """Reshape to a constant shape; a leading 0 keeps the batch dim."""
    shape = [int(d) for d in r.const(n.input[1])]
    if 0 in shape[1:] or a.get("allowzero", 0):
        raise r.error(f"graphc reads Reshape to a fixed shape (a 0 only first), got {shape}")
    if shape[:1] == [0]:
        shape[0] = r.batch
    return r.emit(n.output[0], "reshape", [r.value(n.input[0])], shape=shape)


def _window(r, n, a, d: int) -> dict:
    """kernel/stride/padding/dilation of a Conv or pool node; symmetric padding only."""
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise r.error(f"auto_pad={a['auto_pad']!r}: graphc reads explicit pads")
    pads = list(a.get("pads", [0] * 2 * d))
    if pads[:d] != pads[d:]:
        raise r.error(f"pads {pads} are not the same at both ends",
                      hint="graphc pads each axis alike at both ends, as PyTorch")
    return {"stride": list(a.get("strides", [1] * d)), "padding": pads[:d],
            "dilation": list(a.get("dilations", [1] * d))}


def _conv(r, n, a):
    d = r.rank(n.input[1]) - 2
    if int(a.get("group", 1)) != 1:
        raise r.error(f"group={a['group']}: graphc's conv{d}d has no groups")
    op = _graphc_op(r, n, f"conv{d}d")
    return r.emit(n.output[0], op, [r.value(x) for x in n.input if x], **_window(r, n, a, d))


def _pool(kind: str):
    def read(r, n, a):
        kernel = list(a["kernel_shape"])
        w = _window(r, n, a, len(kernel))
        if a.get("ceil_mode", 0) or set(w.pop("dilation")) != {1}:
            raise r.error("graphc reads pools with ceil_mode=0 and dilation 1")
        if kind == "avg" and any(w["padding"]) and not a.get("count_include_pad", 0):
            raise r.error("count_include_pad=0: graphc's avg pools count the padding, as "
                          "PyTorch's default")
        op = _graphc_op(r, n, f"{kind}_pool{len(kernel)}d")
        return r.emit(n.output[0], op, [r.value(n.input[0])], kernel=kernel, **w)
    return read


def _global_average_pool(r, n, a):
    axes = list(range(2, r.rank(n.input[0])))
    return r.emit(n.output[0], "mean", [r.value(n.input[0])], axis=axes, keepdims=True)


IMPORTERS = {
    **{k: _unary(v) for k, v in UNARY.items()},
    **{k: _binary(v) for k, v in BINARY.items()},
    "LeakyRelu": _with_alpha("leaky_relu", 0.01), "Elu": _with_alpha("elu", 1.0),
    "Gemm": _gemm, "Transpose": _transpose,
    "Softmax": _softmax("softmax"), "LogSoftmax": _softmax("log_softmax"),
    "Flatten": _flatten, "Reshape": _reshape, "Conv": _conv,
    "MaxPool": _pool("max"), "AveragePool": _pool("avg"),
    "GlobalAveragePool": _global_average_pool,
}
