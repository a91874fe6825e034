"""ONNX export and import (the optional extra `graphc[onnx]`).

export.py writes a graph's nodes as ONNX ops through each op record's `onnx` mapping
(graphc/ops/record.py), with the spec's names, symbolic batch dims and the params as
initializers; importer.py reads the MLP and CNN subset of ONNX, as PyTorch's
exporters write it, back into a spec and a parameter file. Nothing here is imported
unless a command asks for ONNX, so graphc runs without the extra.
"""
from __future__ import annotations

from ..errors import SpecError

INSTALL = "pip install 'graphc[onnx]'"
LOWEST_OPSET = 13     # Softmax over one axis, ReduceSum/Squeeze/Unsqueeze with axes inputs
DEFAULT_OPSET = 17


def require_onnx(command: str):
    """The onnx module, or a SpecError saying what to install (exit 2)."""
    try:
        import onnx
    except ImportError:
        raise SpecError(f"graphc {command} needs the onnx package, which is not installed",
                        hint=f"install it with: {INSTALL}") from None
    return onnx
