"""Ops that never reach a kernel: the graph's leaves, and layers the spec loader expands."""
from __future__ import annotations

from .. import shapes as S
from .record import REQUIRED, OpDef, attr_shape

_LEAF = {"group": "leaf"}


def _dense(shapes, attrs):
    """The layer's output shape: x's shape with its last axis replaced by `units`."""
    x, units = shapes[0], attrs["units"]
    if not x:
        raise S.ShapeError("dense needs an input of rank >= 1, got a scalar")
    return tuple(x[:-1]) + (units,)


OPS = (
    OpDef("input", 0, attr_shape, "fed per batch", attrs={"shape": REQUIRED}, **_LEAF),
    OpDef("param", 0, attr_shape, "trainable leaf", attrs={"shape": REQUIRED}, **_LEAF),
    OpDef("state", 0, attr_shape, "optimizer state (zeros at start)",
          attrs={"shape": REQUIRED}, **_LEAF),
    OpDef("hyper", 0, attr_shape, "scalar set by the trainer each step (learning rate)",
          attrs={"shape": ()}, **_LEAF),
    OpDef("const", 0, attr_shape, "constant leaf (a number in an expression)",
          attrs={"shape": (), "value": REQUIRED}, **_LEAF),
    # expanded by the spec loader into params and forward ops (layers.py)
    OpDef("dense", 1, _dense, "dense(x, units=N, activation=None, init=None, bias=True) = "
          "activation(x @ <node>.W + <node>.b); W [in, N], b [N]", group="layer",
          attrs={"units": REQUIRED, "activation": None, "init": None, "bias": True}),
)
