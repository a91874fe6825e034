"""Make the ONNX fixtures of tests/test_onnx_import.py with PyTorch's exporter.

    python scripts/make_onnx_fixtures.py        # needs torch (and onnx); the tests do not

Writes tests/fixtures/onnx/NAME.onnx and NAME.npz (the input `x` and the output PyTorch
computed for it, under the output's name). Every model is exported by
`torch.onnx.export(..., dynamo=False)` (the TorchScript exporter) at opset 17 with a
symbolic batch dim, so each file holds the node patterns PyTorch writes:

- mlp_gemm: nn.Linear on a 2-D input, written as Gemm(transB=1); tanh; softmax output.
- mlp_matmul: `x @ W.t() + b` with constant folding off, written as Transpose + MatMul +
  Add (the pattern nn.Linear gets on inputs of rank > 2); relu; sigmoid output.
- cnn: Conv (padding 1), Relu, MaxPool, Conv, Relu, AveragePool, Flatten, Gemm.
- cnn_gap: Conv (stride 2), Relu, GlobalAveragePool (nn.AdaptiveAvgPool2d(1)), Flatten,
  Gemm.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "onnx"
OPSET = 17
ROWS = 5


def models(nn, torch):
    """name -> (module, input shape without the batch dim, output name)."""

    class MatMulMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1, self.b1 = nn.Parameter(torch.randn(8, 4) / 2), nn.Parameter(torch.randn(8))
            self.w2, self.b2 = nn.Parameter(torch.randn(1, 8) / 3), nn.Parameter(torch.randn(1))

        def forward(self, x):
            h = torch.relu(x @ self.w1.t() + self.b1)
            return torch.sigmoid(h @ self.w2.t() + self.b2)

    return {
        "mlp_gemm": (nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3),
                                   nn.Softmax(dim=1)), (4,), "probs"),
        "mlp_matmul": (MatMulMLP(), (4,), "prob"),
        "cnn": (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                              nn.Flatten(), nn.Linear(16, 3)), (1, 8, 8), "scores"),
        "cnn_gap": (nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)),
                    (1, 8, 8), "scores"),
    }


def main() -> int:
    try:
        import torch
        from torch import nn
    except ImportError:
        print("make_onnx_fixtures: needs PyTorch (pip install torch)", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore")
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for name, (module, shape, output) in models(nn, torch).items():
        module.eval()
        x = torch.randn(ROWS, *shape)
        torch.onnx.export(module, (x,), str(OUT / f"{name}.onnx"), dynamo=False,
                          opset_version=OPSET, input_names=["x"], output_names=[output],
                          dynamic_axes={"x": {0: "batch"}, output: {0: "batch"}},
                          do_constant_folding=name != "mlp_matmul")
        with torch.no_grad():
            y = module(x).numpy()
        np.savez(OUT / f"{name}.npz", x=x.numpy(), **{output: y})
        print(f"wrote {name}.onnx and {name}.npz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
